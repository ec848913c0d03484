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
#   the run and removes its directory (runlib.sh: run_watch). The entry
#   point itself gets /dev/null.
# stdout, stderr: the entry point's.
# The entry point runs in BASE/runs/RUN_ID with these in its environment:
#   PUSHRUN_OUT=BASE/runs/RUN_ID/out  (files to bring back; see collect.sh)
#   PUSHRUN_HOST=HOST  PUSHRUN_RUN_ID=RUN_ID  PUSHRUN_PAYLOAD=PAYLOAD_DIR
# Exit code: the entry point's (126 not executable, 127 not found, 128+N
# killed by signal N); 125 when the run cannot start (bad arguments, no run
# directory), with a message on stderr.
# A check that stays on its channel runs the payload itself instead, there
# (check.sh, "Then"), with the same functions (runlib.sh); this runs it
# where that check cannot (through sudo, under dropbear) or did not stay.

run_enter "$@" || exit 125
shift 5
# BASE again, where the payload is entered: check.sh's checks held then,
# they must still hold now
# shellcheck disable=SC2034,SC2154 # read by base_recheck (lib.sh); base: run_enter
BASE=$base
why=$(base_recheck) || { run_die "${why#error }"; exit 125; }

run_watch
run_env
# shellcheck disable=SC2154 # payload, entry, watcher: runlib.sh
"$payload/$entry" "$@" </dev/null
rc=$?
# shellcheck disable=SC2154 # watcher: runlib.sh
kill -KILL "$watcher" 2>/dev/null
give_back
exit "$rc"
