#!/bin/sh
# pushrun run: run a payload's entry point, and end every process it started
# (and drop the run's directory) when the initiator goes away.
#
# Invoked as:
#   pushrun-run BASE PAYLOAD_DIR RUN_ID HOST ENTRY [ARGS...]  (behind the
#   bootstrap line, src/remote/boot.rs; on a PTY, as sh -c SCRIPT ARGS)
#   BASE         the absolute BASE that check.sh printed
#   PAYLOAD_DIR  absolute: BASE/cache/DIGEST or BASE/runs/RUN_ID/payload
#   RUN_ID       the run's id, as given to check.sh
#   HOST         the host's name in the inventory (for PUSHRUN_HOST)
#   ENTRY        the entry point, a path relative to PAYLOAD_DIR
#   ARGS         its arguments
# stdin: held open by the initiator for as long as the run may go on. A line
#   "stop" (a timeout) ends the run and keeps its directory for collect.sh,
#   which waits until the processes are gone (BASE/runs/RUN_ID/.stopping);
#   the end of stdin (Ctrl-C, the initiator killed, the connection lost) ends
#   the run and removes its directory. The entry point itself gets /dev/null.
# stdout, stderr: the entry point's.
# The entry point runs in BASE/runs/RUN_ID with these in its environment:
#   PUSHRUN_OUT=BASE/runs/RUN_ID/out  (files to bring back; see collect.sh)
#   PUSHRUN_HOST=HOST  PUSHRUN_RUN_ID=RUN_ID  PUSHRUN_PAYLOAD=PAYLOAD_DIR
# Exit code: the entry point's (126 not executable, 127 not found, 128+N
# killed by signal N); 125 when the run cannot start (bad arguments, no run
# directory), with a message on stderr.
#
# How the run is ended: as in exec.sh, sshd makes every non-PTY session its
# own process group (setsid()) and `exec` makes this shell its leader, so $$
# is the group id ($pg: pgroup.sh, which also handles sudo). A watcher reads
# our stdin; at its end it sends TERM to the whole group, waits up to 2 s
# for it to go, then KILLs whatever is left one process at a time (found in
# /proc: a KILL to the group would take the watcher too) and removes
# BASE/runs/RUN_ID. It ignores TERM, and uses only builtins, sleep and rm.
# When the entry point ends by itself the watcher is killed and the run
# directory stays for collect.sh.

die() {
    printf 'pushrun-run: %s\n' "$1" >&2
    exit 125
}

[ $# -ge 5 ] || die "usage: run.sh BASE PAYLOAD_DIR RUN_ID HOST ENTRY [ARGS...]"
base=$1 payload=$2 run_id=$3 host=$4 entry=$5
shift 5
valid_base "$base" || die "bad BASE '$base'"
case $payload in
    /*) ;;
    *) die "PAYLOAD_DIR must be absolute, not '$payload'" ;;
esac
valid_run_id "$run_id" || die "bad run id '$run_id'"
case /$entry/ in
    // | //* | */../*) die "bad entry point '$entry'" ;;
esac
# BASE again, where the payload is entered: check.sh's checks held then,
# they must still hold now
# shellcheck disable=SC2034 # read by base_recheck (lib.sh)
BASE=$base
why=$(base_recheck) || die "${why#error }"
for d in "$base/runs" "$base/runs/$run_id"; do
    [ ! -L "$d" ] || die "$d is a symlink: refusing to use it"
done
rundir=$base/runs/$run_id
cd "$rundir" 2>/dev/null || die "no run directory $rundir"

# Run as root through sudo (--become): hand the run dir back to the login
# user, who collects and removes it.
give_back() {
    if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ] && [ "$(id -u)" = 0 ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$rundir" 2>/dev/null
    fi
}

exec 3<&0
(
    trap '' TERM HUP
    # "stop" (a timeout): end the run but keep its directory for
    # collect.sh; the end of stdin (anything else): end it and remove it
    keep=
    while IFS= read -r line <&3; do
        if [ "$line" = stop ]; then
            keep=1
            break
        fi
    done
    exec 3<&-
    if [ -n "$keep" ]; then
        : >"$rundir/.stopping"
    fi

    # this watcher's own pid ($$ is the main shell's in a subshell)
    me=
    read -r me _ </proc/self/stat

    # 0 when a live process of group $pg other than this watcher exists;
    # sends each such process SIGNAL when one is given
    others() { # [SIGNAL]
        found=1
        for f in /proc/[0-9]*/stat; do
            line=
            read -r line 2>/dev/null <"$f" || continue
            p=${f#/proc/}
            p=${p%/stat}
            [ "$p" = "$me" ] && continue
            # after "pid (comm) ": state ppid pgrp ...
            rest=${line##*) }
            state=${rest%% *}
            rest=${rest#* }
            rest=${rest#* }
            # shellcheck disable=SC2154 # pg is set by pgroup.sh, prepended to this
            [ "${rest%% *}" = "$pg" ] || continue
            case $state in
                Z | X | x) continue ;;
            esac
            found=0
            if [ -n "${1:-}" ]; then
                kill -"$1" "$p" 2>/dev/null
            fi
        done
        return $found
    }

    kill -TERM -"$pg" 2>/dev/null
    if [ -z "$me" ]; then
        # no /proc: exec.sh's way, the run dir removed before the KILL that
        # ends this watcher too
        sleep 2
        if [ -n "$keep" ]; then
            give_back
            rm -f "$rundir/.stopping"
        else
            rm -rf "$rundir"
        fi
        kill -KILL -"$pg"
    fi
    # a grace period of 2 s, cut short once everything is gone
    tenths=0
    while others && [ "$tenths" -lt 20 ]; do
        nap
        # shellcheck disable=SC2154 # nap (lib.sh, prepended to this) sets nap_tenths
        tenths=$((tenths + nap_tenths))
    done
    # whatever is left: KILL, one by one, until nothing is (new processes
    # may be forked meanwhile: go round again)
    rounds=0
    while others KILL && [ "$rounds" -lt 50 ]; do
        rounds=$((rounds + 1))
        nap
    done
    if [ -n "$keep" ]; then
        give_back
        rm -f "$rundir/.stopping"
    else
        rm -rf "$rundir"
    fi
) >/dev/null 2>&1 &
watcher=$!
exec 3<&-

PUSHRUN_OUT=$rundir/out
PUSHRUN_HOST=$host
PUSHRUN_RUN_ID=$run_id
PUSHRUN_PAYLOAD=$payload
export PUSHRUN_OUT PUSHRUN_HOST PUSHRUN_RUN_ID PUSHRUN_PAYLOAD
"$payload/$entry" "$@" </dev/null
rc=$?
kill -KILL "$watcher" 2>/dev/null
give_back
exit "$rc"
