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
printf "\n\$ target/release/pushrun exec --hosts %s --ssh-config %s -- '%s'\n" \
  "$DIR/hosts.yaml" "$DIR/ssh_config" "$REMOTE"
rc=0
target/release/pushrun exec --hosts "$DIR/hosts.yaml" --ssh-config "$DIR/ssh_config" -- "$REMOTE" || rc=$?
exit $rc
