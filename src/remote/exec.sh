# shellcheck shell=sh # sent after pgroup.sh and login.sh to the host's sh -c, never run as a file
# pushrun exec wrapper: run one command on a host, and end every process it
# started when the initiator goes away.
#
# Invoked as: pushrun-exec 'COMMAND' [WORD...] (behind the bootstrap line:
# src/remote/boot.rs). The WORDs are COMMAND's own, given when it is a plain
# external command that every shell runs alike (src/remote/line.rs,
# plain_words): where the login shell is sh, dash or bash, they are run
# straight from here, without starting the login shell a second time.
#
# sshd makes every non-PTY session its own process group (it calls setsid()),
# and the `exec` above makes this shell that group's leader, so $$ is the
# group id ($pg: pgroup.sh, prepended to this, also handles sudo). The initiator keeps our stdin open for as long as it wants the
# command to live. When stdin closes (command timeout, Ctrl-C on the
# initiator, the connection dropping, the initiator being killed), the
# watcher below signals the whole group: TERM, then KILL after a grace period.
exec 3<&0
(
    trap '' TERM
    while IFS= read -r _ <&3; do :; done
    # shellcheck disable=SC2154 # pg is set by pgroup.sh, prepended to this
    kill -TERM -"$pg" 2>/dev/null
    sleep 2
    kill -KILL -"$pg" 2>/dev/null
) >/dev/null 2>&1 &
watcher=$!
exec 3<&-
# The login shell runs the command, as under plain ssh, without reading
# its start-up files a second time ($norc: login.sh, prepended to this);
# a plain command's words are run as that shell would run them (found in
# PATH; bash's level of nesting as bash would set it), else by it.
direct=
if [ $# -gt 1 ]; then
    case ${SHELL:-/bin/sh} in
    */bash)
        direct=1
        SHLVL=$((SHLVL + 1))
        ;;
    */sh | */dash) direct=1 ;;
    esac
    # not found: the login shell says so, in its own words
    [ -z "$direct" ] || command -v "$2" >/dev/null 2>&1 || direct=
fi
if [ -n "$direct" ]; then
    shift
    "$@" </dev/null
else
    # shellcheck disable=SC2154 # norc is set by login.sh
    "${SHELL:-/bin/sh}" ${norc:+"$norc"} -c "$1" </dev/null
fi
rc=$?
kill -KILL "$watcher" 2>/dev/null
exit "$rc"
