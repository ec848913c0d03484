# shellcheck shell=sh # sent after login.sh to the host's sh -c, never run as a file
# pushrun PTY wrapper: run one command only if the session really has a
# terminal. ssh -tt goes on without one when the server refuses it
# ("PTY allocation request failed"); then we must not run the command, so
# that the initiator can report the refusal (or, with --pty auto, run it
# again without a PTY) instead of running it twice or in the wrong mode.
#
# Invoked as: pushrun-pty COMMAND (behind the PTY bootstrap line: src/remote/boot.rs)
if [ -t 0 ] && [ -t 1 ]; then
    # shellcheck disable=SC2154 # norc is set by login.sh, prepended to this
    exec "${SHELL:-/bin/sh}" ${norc:+"$norc"} -c "$1"
fi
echo "pushrun: no pseudo terminal on this session" >&2
exit 254
