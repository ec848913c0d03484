# shellcheck shell=sh # sent before exec.sh or run.sh to the host's sh -c, never run as a file
# Sets pg to this shell's process group, the group the wrappers (exec.sh,
# run.sh) end when the initiator goes away. sshd makes every non-PTY session
# its own process group (setsid()) and the `exec` that starts the script
# keeps the shell its leader, so it is $$; under sudo (--become) the group
# may be sudo's own, so it is read from /proc where there is one. Prepended
# to exec.sh and run.sh by src/remote.rs.
# shellcheck disable=SC2034 # used by the script that follows
pg=$$
if read -r st 2>/dev/null </proc/$$/stat; then
    # after "pid (comm) ": state ppid pgrp ...
    st=${st##*) }
    st=${st#* }
    st=${st#* }
    pg=${st%% *}
fi
