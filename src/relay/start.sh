#!/bin/sh
# pushrun relay start: run the staged pushrun binary as a relay for one run,
# then remove the run directories its staging made.
#
# Invoked as:
#   pushrun-relay BASE BINARY RUN_ID...  (behind the bootstrap line, src/remote/boot.rs)
#   BASE     the absolute BASE that check.sh printed
#   BINARY   the staged pushrun, absolute (under BASE/cache or BASE/runs)
#   RUN_ID   each run directory (BASE/runs/RUN_ID) that staging the binary
#            and the payload on this relay made; removed when the relay ends
# stdin:  `pushrun relay` reads its framed plan here; the end of stdin (the
#         initiator cancelled, went away or the connection dropped) cancels
#         the relay's run, which then stops and cleans its own hosts.
# stdout: pushrun relay's framed events.  stderr: its log.
# Exit code: pushrun relay's (125: bad arguments).
#
# The binary is not exec'd: this shell waits for it, so that the run
# directories go even when it was killed.

die() {
    printf 'pushrun-relay: %s\n' "$1" >&2
    exit 125
}

[ $# -ge 3 ] || die "usage: start.sh BASE BINARY RUN_ID..."
base=$1 binary=$2
shift 2
valid_base "$base" || die "bad BASE '$base'"
for run_id in "$@"; do
    valid_run_id "$run_id" || die "bad run id '$run_id'"
done
case $binary in
    "$base"/*) ;;
    *) die "the binary '$binary' is not under '$base'" ;;
esac
[ -x "$binary" ] || die "'$binary' is not executable"

"$binary" relay
rc=$?
for run_id in "$@"; do
    rm -rf "${base:?}/runs/$run_id"
done
exit "$rc"
