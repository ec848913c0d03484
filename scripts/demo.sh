#!/usr/bin/env bash
# demo.sh: the README's demo. Starts 20 real sshd hosts on loopback addresses (see
# scripts/loopback-hosts), runs one command on all of them with pushrun, and stops them.
# Everything it writes stays under target/ of this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release

DIR=target/demo-fleet
mkdir -p "$DIR"
trap 'scripts/loopback-hosts down "$DIR"' EXIT
scripts/loopback-hosts up "$DIR" 20 --owner $$

# the remote command is expanded on each host, not here
# shellcheck disable=SC2016
REMOTE='echo "hello from $(hostname)"; uname -sr'
PR=target/release/pushrun
show() { printf '\n$ %s\n' "$*"; }
rc=0
show pushrun exec --hosts "$DIR/hosts.yaml" --ssh-config "$DIR/ssh_config" -- "'$REMOTE'"
$PR exec --hosts "$DIR/hosts.yaml" --ssh-config "$DIR/ssh_config" -- "$REMOTE" || rc=$?

# the main job: push the built-in collector payload to every host, run it, bring
# its facts.json back, clean up; the second run finds the payload cached
RES=target/demo-results
for round in cold warm; do
  show pushrun exec --hosts "$DIR/hosts.yaml" --ssh-config "$DIR/ssh_config" --results "$RES" "  # $round"
  $PR exec --hosts "$DIR/hosts.yaml" --ssh-config "$DIR/ssh_config" --results "$RES" || rc=$?
done
show ls "$RES/latest/$(head -1 "$DIR/hosts.txt")" "$RES/latest/$(head -1 "$DIR/hosts.txt")/out"
ls "$RES/latest/$(head -1 "$DIR/hosts.txt")" "$RES/latest/$(head -1 "$DIR/hosts.txt")/out"
show "grep -o '\"cache_hit\": [a-z]*' $RES/latest/summary.json | sort | uniq -c"
grep -o '"cache_hit": [a-z]*' "$RES/latest/summary.json" | sort | uniq -c
exit $rc
