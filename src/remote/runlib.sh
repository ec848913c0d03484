# shellcheck shell=sh # prepended to run.sh and to the check that runs its payload itself, never run as a file
# pushrun runlib: what run.sh and a check that runs the payload on its own
# channel (check.sh, "Then": the word "run") share: the run's arguments
# checked, the watcher that ends the run when the initiator goes away, and
# the payload's environment. See run.sh for the arguments and the ending.

run_die() { # MESSAGE
    printf 'pushrun-run: %s\n' "$1" >&2
    return 1
}

# checks BASE PAYLOAD_DIR RUN_ID HOST ENTRY (the payload's arguments may
# follow: the caller shifts them in) and enters the run dir; sets base,
# payload, run_id, host, entry and rundir. Fails (1), having said why on
# stderr, where they are not right.
run_enter() { # BASE PAYLOAD_DIR RUN_ID HOST ENTRY [ARGS...]
    [ $# -ge 5 ] || { run_die "usage: run.sh BASE PAYLOAD_DIR RUN_ID HOST ENTRY [ARGS...]"; return; }
    base=$1 payload=$2 run_id=$3 host=$4 entry=$5
    valid_base "$base" || { run_die "bad BASE '$base'"; return; }
    case $payload in
        /*) ;;
        *) run_die "PAYLOAD_DIR must be absolute, not '$payload'"; return ;;
    esac
    valid_run_id "$run_id" || { run_die "bad run id '$run_id'"; return; }
    case /$entry/ in
        // | //* | */../*) run_die "bad entry point '$entry'"; return ;;
    esac
    for d in "$base/runs" "$base/runs/$run_id"; do
        [ ! -L "$d" ] || { run_die "$d is a symlink: refusing to use it"; return; }
    done
    rundir=$base/runs/$run_id
    cd "$rundir" 2>/dev/null || run_die "no run directory $rundir"
}

# Run as root through sudo (--become): hand the run dir back to the login
# user, who collects and removes it.
give_back() {
    if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ] && [ "$(id -u)" = 0 ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$rundir" 2>/dev/null
    fi
}

# The watcher's last step, once the run's processes are gone: after "stop"
# the run dir stays for the collect (handed back, its .stopping removed),
# otherwise it goes.
run_release() {
    if [ -n "$keep" ]; then
        give_back
        rm -f "$rundir/.stopping"
    else
        rm -rf "$rundir"
    fi
}

# Starts the watcher (its pid: watcher). It reads stdin: a line "stop" (a
# timeout) ends the run and keeps its directory for the collect, which
# waits until the processes are gone (BASE/runs/RUN_ID/.stopping); the end
# of stdin (Ctrl-C, the initiator killed, the connection lost) ends the
# run and removes its directory. Ending: as in exec.sh, sshd makes every
# non-PTY session its own process group (setsid()) and `exec` makes the
# shell its leader, so $$ is the group id ($pg: pgroup.sh, which also
# handles sudo). It sends TERM to the whole group, waits up to 2 s for it
# to go, then KILLs whatever is left one process at a time (found in
# /proc: a KILL to the group would take the watcher too), never this
# watcher nor the shell that started it ($$: a check that collects once
# the payload has ended catches the TERM), and removes BASE/runs/RUN_ID.
# It ignores TERM, and uses only builtins, sleep and rm. When the entry
# point ends by itself the watcher is killed and the run directory stays
# for the collect.
run_watch() {
    exec 3<&0
    (
        trap '' TERM HUP
        keep=
        while IFS= read -r line <&3; do
            if [ "$line" = stop ]; then
                keep=1
                break
            fi
        done
        exec 3<&-
        if [ -n "$keep" ]; then
            # (true: a failed redirection of ':' would end the watcher)
            true 2>/dev/null >"$rundir/.stopping"
        fi

        # this watcher's own pid ($$ is the main shell's in a subshell)
        me=
        read -r me _ </proc/self/stat

        # 0 when a live process of group $pg other than this watcher and
        # the main shell exists; sends each such process SIGNAL when given
        others() { # [SIGNAL]
            found=1
            for f in /proc/[0-9]*/stat; do
                line=
                read -r line 2>/dev/null <"$f" || continue
                p=${f#/proc/}
                p=${p%/stat}
                { [ "$p" = "$me" ] || [ "$p" = "$$" ]; } && continue
                # after "pid (comm) ": state ppid pgrp ...
                rest=${line##*) }
                state=${rest%% *}
                rest=${rest#* }
                rest=${rest#* }
                # shellcheck disable=SC2154 # pg is set by pgroup.sh
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
            # no /proc: exec.sh's way, the run dir removed before the KILL
            # that ends this watcher too
            sleep 2
            run_release
            kill -KILL -"$pg"
        fi
        # a grace period of 2 s, cut short once everything is gone
        tenths=0
        while others && [ "$tenths" -lt 20 ]; do
            nap
            # shellcheck disable=SC2154 # nap (lib.sh) sets nap_tenths
            tenths=$((tenths + nap_tenths))
        done
        # whatever is left: KILL, one by one, until nothing is (new
        # processes may be forked meanwhile: go round again)
        rounds=0
        while others KILL && [ "$rounds" -lt 50 ]; do
            rounds=$((rounds + 1))
            nap
        done
        run_release
    ) >/dev/null 2>&1 &
    # shellcheck disable=SC2034 # for the caller
    watcher=$!
    exec 3<&-
}

# the payload's environment
run_env() {
    PUSHRUN_OUT=$rundir/out
    PUSHRUN_HOST=$host
    PUSHRUN_RUN_ID=$run_id
    PUSHRUN_PAYLOAD=$payload
    export PUSHRUN_OUT PUSHRUN_HOST PUSHRUN_RUN_ID PUSHRUN_PAYLOAD
}
