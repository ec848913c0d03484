# shellcheck shell=sh # sent before run.sh to the host's sh -c, never run as a file
# Sets pg to this shell's process group, the group run.sh ends when the
# initiator goes away (exec.sh, a line of its own, does the same itself).
# sshd makes every non-PTY session its own process group (setsid()) and
# the `exec` that starts the script
# keeps the shell its leader, so it is $$; under sudo (--become) the group
# may be sudo's own, so it is read from /proc where there is one. Prepended
# to run.sh by src/remote/mod.rs.
# shellcheck disable=SC2034 # used by the script that follows
pg=$$
# (a group $$ exists only if this shell leads it: then /proc, which sh
# reads a byte per call, is not read)
if kill -0 -$$ 2>/dev/null; then
    :
elif read -r st 2>/dev/null </proc/$$/stat; then
    # after "pid (comm) ": state ppid pgrp ...
    st=${st##*) }
    st=${st#* }
    st=${st#* }
    pg=${st%% *}
fi
# Dropbear does not make a session its own process group: the group is the
# server's connection process, which the wrappers must never signal. Then
# the script starts again in a session of its own (setsid(1) does not fork
# for a process that leads no group, so $$ and stdin stay), from the text
# that the bootstrap line read (pushrun_script; see src/remote/boot.rs). Under
# sudo the group is sudo's own and is kept.
if [ "$pg" != "$$" ] && [ -n "${pushrun_script:-}" ]; then
    leader=
    read -r leader 2>/dev/null <"/proc/$pg/comm"
    if [ "$leader" != sudo ] && command -v setsid >/dev/null 2>&1; then
        exec setsid /bin/sh -c "$pushrun_script" "$0"
    fi
fi
