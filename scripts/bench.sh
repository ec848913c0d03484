#!/usr/bin/env bash
# bench.sh: pushrun beside the tools ops people would otherwise use (xargs + ssh, pdsh,
# clush, pssh, parallel-ssh), on a loopback fleet of real sshd hosts started for the
# occasion. Every tool runs at the SAME key exchange (one ssh_config that all of them read,
# with `KexAlgorithms` first), and the runs of all tools are interleaved in one go, so the
# ratios compare (read ratios, not seconds: the machine is shared and noisy).
#
#   scripts/bench.sh [-n HOSTS] [-r RUNS] [-f FORKS] [-c CMD] [-k KEX] [TOOL...]
#
# -k KEX: the key exchange every ssh-based tool uses (default curve25519-sha256; e.g.
#   sntrup761x25519-sha512@openssh.com for OpenSSH 9's default). parallel-ssh is libssh2,
#   in-process, and negotiates its own (curve25519 where both sides have it).
# TOOLs: pushrun (a cold run: --persist 0), pushrun-first (a first run as pushrun's
#   defaults make it: it connects to every host and leaves the connections up, --persist;
#   its cpu_s leaves out the masters, which are no longer its children once logged in),
#   pushrun-warm (a run that finds the masters a previous run left up: --persist),
#   xargs-ssh, pdsh, clush, pssh, parallel-ssh (default: all that are installed). Peers install with: apt-get install -y pdsh clustershell pssh;
#   pip install parallel-ssh. $PUSHRUN: the pushrun to measure (default: a release build).
# Prints per tool: median wall seconds, median client CPU seconds (user+sys of the tool and
# its ssh children, not the servers), output lines, and its wall and CPU over the fastest
# peer's (the fastest tool that is not pushrun).
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=100 RUNS=3 FORKS=64 CMD=hostname KEX=curve25519-sha256
while getopts "n:r:f:c:k:" o; do
  case $o in
    n) HOSTS=$OPTARG;; r) RUNS=$OPTARG;; f) FORKS=$OPTARG;; c) CMD=$OPTARG;; k) KEX=$OPTARG;;
    *) exit 2;;
  esac
done
shift $((OPTIND - 1))
[ -x /usr/bin/time ] || { echo "bench.sh: needs /usr/bin/time (apt-get install -y time)" >&2; exit 2; }

if [ -z "${PUSHRUN:-}" ]; then
  cargo build --release --quiet
  PUSHRUN=${CARGO_TARGET_DIR:-$PWD/target}/release/pushrun
fi
DIR=$(mktemp -d /tmp/pushrun-bench.XXXXXX)
# pushrun-warm's masters live here, and end with the benchmark: on a tmpfs where there is
# one, as pushrun's own default would be (a disk-backed /tmp costs an inode per socket)
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
  XDG_RUNTIME_DIR=$(mktemp -d /dev/shm/pushrun-bench.XXXXXX)
else
  XDG_RUNTIME_DIR=$DIR/run
  mkdir -m 700 "$XDG_RUNTIME_DIR"
fi
export XDG_RUNTIME_DIR
cleanup() {
  "$PUSHRUN" disconnect >/dev/null 2>&1 || true
  scripts/loopback-hosts down "$DIR" >/dev/null 2>&1 || true
  rm -rf "$DIR" "$XDG_RUNTIME_DIR"
}
trap cleanup EXIT
scripts/loopback-hosts up "$DIR" "$HOSTS" >&2
# One config for every tool: the key exchange first (for ssh the first value wins).
CFG=$DIR/ssh_config.kex LIST=$DIR/hosts.txt
{ echo "KexAlgorithms $KEX"; cat "$DIR/ssh_config"; } > "$CFG"
PORT=$(awk '$1 == "Port" {print $2; exit}' "$DIR/ssh_config")
PY=$DIR/pssh_run.py
cat > "$PY" <<'PYEOF'
import sys
from pssh.clients import ParallelSSHClient
hosts = [l.strip() for l in open(sys.argv[1]) if l.strip()]
c = ParallelSSHClient(hosts, port=int(sys.argv[2]), pkey=sys.argv[3], pool_size=int(sys.argv[4]))
out = c.run_command(sys.argv[5])
c.join(out)
for o in out:
    for line in o.stdout:
        print(f"{o.host}: {line}")
PYEOF

PR="$PUSHRUN exec --hosts $DIR/hosts.yaml --ssh-config $CFG --forks $FORKS"
cmd_for() {
  case $1 in
    pushrun) echo "$PR --persist 0 -- $CMD";;
    pushrun-first) echo "$PR --persist 120 -- $CMD";;
    pushrun-warm) echo "$PR --persist 120 -- $CMD";;
    xargs-ssh) echo "xargs -P$FORKS -I{} ssh -F $CFG {} $CMD < $LIST";;
    pdsh) command -v pdsh >/dev/null && echo "PDSH_SSH_ARGS='-F $CFG %h' pdsh -R ssh -f $FORKS -w ^$LIST $CMD";;
    clush) command -v clush >/dev/null && echo "clush -f $FORKS -o '-F $CFG' -w $(paste -sd, "$LIST") $CMD";;
    pssh) command -v parallel-ssh >/dev/null && echo "parallel-ssh -i -p $FORKS -x '-F $CFG' -h $LIST $CMD";;
    parallel-ssh) python3 -c 'import pssh' 2>/dev/null &&
      echo "python3 $PY $LIST $PORT $DIR/id_ed25519 $FORKS $CMD";;
  esac
  return 0
}

TOOLS=("$@")
[ ${#TOOLS[@]} -gt 0 ] || TOOLS=(pushrun pushrun-first pushrun-warm xargs-ssh pdsh clush pssh parallel-ssh)
declare -A WALL CPU LINES
for ((r = 0; r < RUNS; r++)); do
  for t in "${TOOLS[@]}"; do
    c=$(cmd_for "$t"); [ -n "$c" ] || continue
    # The warm run finds every master up: an untimed run leaves them, disconnect ends them.
    [ "$t" = pushrun-warm ] && $PR --persist 120 -- true >/dev/null 2>&1
    /usr/bin/time -f "%e %U %S" -o "$DIR/t" bash -c "$c" > "$DIR/out" 2>/dev/null || true
    case $t in pushrun-warm | pushrun-first) "$PUSHRUN" disconnect >/dev/null 2>&1;; esac
    read -r w u s < <(tail -1 "$DIR/t")
    WALL[$t]+="$w "; CPU[$t]+="$(awk -v u="$u" -v s="$s" 'BEGIN{print u+s}') "
    LINES[$t]=$(grep -c . "$DIR/out" || true)
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bw="" bc="" best=""
for t in "${TOOLS[@]}"; do
  case $t in pushrun*) continue;; esac
  [ -n "${WALL[$t]:-}" ] || continue
  w=$(echo "${WALL[$t]}" | med)
  if [ -z "$bw" ] || awk -v a="$w" -v b="$bw" 'BEGIN{exit !(a < b)}'; then
    bw=$w bc=$(echo "${CPU[$t]}" | med) best=$t
  fi
done
echo "# $HOSTS hosts, forks $FORKS, command '$CMD', KexAlgorithms $KEX, median of $RUNS interleaved runs"
echo "# fastest peer: ${best:-none}"
printf "%-14s %8s %8s %6s %14s %14s\n" tool wall_s cpu_s lines "wall/best_peer" "cpu/best_peer"
for t in "${TOOLS[@]}"; do
  [ -n "${WALL[$t]:-}" ] || continue
  w=$(echo "${WALL[$t]}" | med); c=$(echo "${CPU[$t]}" | med)
  rw=$(awk -v a="$w" -v b="$bw" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }')
  rc=$(awk -v a="$c" -v b="$bc" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }')
  printf "%-14s %8.2f %8.2f %6s %14s %14s\n" "$t" "$w" "$c" "${LINES[$t]}" "$rw" "$rc"
done
