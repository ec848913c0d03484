# shellcheck shell=sh # joined into one line after login.sh (build.rs), sent as sshd's command line behind boot.rs's BOOT_LINES, never run as a file
# pushrun exec wrapper: run one command on a host, and end every process it
# started when the initiator goes away.
#
# The command line (src/remote/boot.rs, start_exec) is boot.rs's BOOT_LINES,
# which reads the few short lines on stdin (the exports, and `set --` with
# the command and its words), prints the frame marker and evaluates them,
# then login.sh (norc and SHLVL for the login shell that runs a command not
# of plain words), then this file: build.rs joins login.sh and this file
# into one line with spaces, so every command ends in `;` or a word that
# continues (then, do, else, in, &&, ||, ;;), and holds no single quote,
# backslash or `!` (the line is one single-quoted word that every login
# shell, csh and fish too, passes to /bin/sh unchanged). No script is read
# on stdin.
#
# $1 is the command as typed; the words after it are its own, given when it
# is a plain external command that every shell runs alike (src/remote/line.rs,
# plain_words): where the login shell is sh, dash or bash, they are run from
# here, without starting the login shell a second time.
#
# The process group to end. sshd makes every non-PTY session its own process
# group (setsid()) and the `exec` of the line keeps this shell its leader,
# so it is $$, and the command, exec'd in its place below, keeps it. Under
# sudo (--become) the group is sudo's own, read from /proc. Dropbear does
# not make a session its own group: the group is the server's connection
# process, which must never be signalled; the command then starts in a
# session of its own (setsid(1) does not fork for a process that leads no
# group, so $$ stays), or where there is no setsid, only the command's own
# process is signalled. (A group $$ exists only if this shell leads it:
# then nothing is read from /proc, which sh reads a byte per call.)
pg=$$;
pushrun_sid=;
if kill -0 -$$ 2>/dev/null; then
    :;
elif read -r st 2>/dev/null </proc/$$/stat; then
    st=${st##*) };
    st=${st#* };
    st=${st#* };
    st=${st%% *};
    case $st in
    "$$") ;;
    *)
        leader=;
        read -r leader 2>/dev/null <"/proc/$st/comm";
        if [ "$leader" = sudo ]; then
            pg=$st;
        elif command -v setsid >/dev/null 2>&1; then
            pushrun_sid=setsid;
        else
            pg=;
        fi ;;
    esac;
fi;
# The initiator keeps stdin open for as long as it wants the command to
# live. The watcher reads it to its end. sshd closes it when the command has
# ended and been reaped (then /proc/$$ is gone, and the watcher just goes),
# or when the initiator went away while the command runs (a timeout, Ctrl-C,
# the connection dropping, the initiator killed): then it ends the group,
# TERM and after a grace period KILL (itself too: it ignores the TERM).
exec 3<&0;
(
    trap "" TERM;
    while IFS= read -r _ <&3; do :; done;
    if [ -d /proc/$$ ] || kill -0 $$ 2>/dev/null; then
        kill -TERM ${pg:+-$pg} $$ 2>/dev/null;
        sleep 2;
        kill -KILL ${pg:+-$pg} $$ 2>/dev/null;
    fi
) >/dev/null 2>&1 &
exec 3<&-;
# The command takes this shell's place (its exit status is the session's):
# plain words as sh, dash or bash would run them (found in PATH; bash's
# level of nesting as bash sets it), anything else by the login shell. A
# plain command not found is left to the login shell, to say so in its words.
if [ $# -gt 1 ]; then
    case ${SHELL:-/bin/sh} in
    */bash)
        if command -v "$2" >/dev/null 2>&1; then
            SHLVL=$((SHLVL + 1));
            shift;
            exec $pushrun_sid "$@" </dev/null;
        fi ;;
    */sh | */dash)
        if command -v "$2" >/dev/null 2>&1; then
            shift;
            exec $pushrun_sid "$@" </dev/null;
        fi ;;
    esac;
fi;
# shellcheck disable=SC2154 # norc is set by login.sh, ahead of this in the line
exec $pushrun_sid "${SHELL:-/bin/sh}" ${norc:+"$norc"} -c "$1" </dev/null
