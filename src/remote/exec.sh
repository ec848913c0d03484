# shellcheck shell=sh # sent after pgroup.sh and login.sh to the host's sh -c, never run as a file
# pushrun exec wrapper: run one command on a host, and end every process it
# started when the initiator goes away.
#
# Invoked as: pushrun-exec 'COMMAND' (behind the bootstrap line: src/remote/boot.rs)
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
# its start-up files a second time ($norc: login.sh, prepended to this).
# shellcheck disable=SC2154 # norc is set by login.sh
"${SHELL:-/bin/sh}" ${norc:+"$norc"} -c "$1" </dev/null
rc=$?
kill -KILL "$watcher" 2>/dev/null
exit "$rc"
