#!/usr/bin/env bash
# bench.sh: pushrun beside the tools ops people would otherwise use (pdsh, clush, pssh,
# parallel-ssh), on a loopback fleet of real sshd hosts started for the occasion, with the
# runs of all tools interleaved in one go so that the ratios compare (read ratios, not
# seconds: the machine is shared and noisy).
#
#   scripts/bench.sh [-n HOSTS] [-r RUNS] [-f FORKS] [-c CMD] [TOOL...]
#
# TOOLs: pushrun pushrun-pqkex pdsh clush pssh parallel-ssh (default: all that are installed;
# pushrun-pqkex is pushrun with --kex default, i.e. OpenSSH's post-quantum key exchange, the
# one the other tools use). Peers install with: apt-get install -y pdsh clustershell pssh;
# pip install parallel-ssh. Prints per tool: median wall seconds, median client CPU seconds
# (user+sys of the tool and its ssh children, not the servers), output lines, and the ratios
# of pushrun's wall and CPU to each tool's.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=100 RUNS=3 FORKS=64 CMD=hostname
while getopts "n:r:f:c:" o; do
  case $o in n) HOSTS=$OPTARG;; r) RUNS=$OPTARG;; f) FORKS=$OPTARG;; c) CMD=$OPTARG;; *) exit 2;; esac
done
shift $((OPTIND - 1))
[ -x /usr/bin/time ] || { echo "bench.sh: needs /usr/bin/time (apt-get install -y time)" >&2; exit 2; }

cargo build --release --quiet
PUSHRUN=$PWD/target/release/pushrun
DIR=$(mktemp -d /tmp/pushrun-bench.XXXXXX)
trap 'scripts/loopback-hosts down "$DIR" >/dev/null 2>&1; rm -rf "$DIR"' EXIT
scripts/loopback-hosts up "$DIR" "$HOSTS" >&2
CFG=$DIR/ssh_config LIST=$DIR/hosts.txt
PY=$DIR/pssh_run.py
cat > "$PY" <<'EOF'
import sys
from pssh.clients import ParallelSSHClient
hosts = [l.strip() for l in open(sys.argv[1]) if l.strip()]
c = ParallelSSHClient(hosts, port=int(sys.argv[2]), pkey=sys.argv[3], pool_size=int(sys.argv[4]))
out = c.run_command(sys.argv[5])
c.join(out)
for o in out:
    for line in o.stdout:
        print(f"{o.host}: {line}")
EOF

cmd_for() {
  case $1 in
    pushrun) echo "$PUSHRUN exec --hosts $DIR/hosts.yaml --ssh-config $CFG --forks $FORKS -- $CMD";;
    pushrun-pqkex) echo "$PUSHRUN exec --kex default --hosts $DIR/hosts.yaml --ssh-config $CFG --forks $FORKS -- $CMD";;
    pdsh) command -v pdsh >/dev/null && echo "PDSH_SSH_ARGS='-F $CFG %h' pdsh -R ssh -f $FORKS -w ^$LIST $CMD";;
    clush) command -v clush >/dev/null && echo "clush -f $FORKS -o '-F $CFG' -w $(paste -sd, "$LIST") $CMD";;
    pssh) command -v parallel-ssh >/dev/null && echo "parallel-ssh -i -p $FORKS -x '-F $CFG' -h $LIST $CMD";;
    parallel-ssh) python3 -c 'import pssh' 2>/dev/null &&
      echo "python3 $PY $LIST $(grep -m1 Port "$CFG" | awk '{print $2}') $DIR/id_ed25519 $FORKS $CMD";;
  esac
  return 0
}

TOOLS=("$@"); [ ${#TOOLS[@]} -gt 0 ] || TOOLS=(pushrun pushrun-pqkex pdsh clush pssh parallel-ssh)
declare -A WALL CPU LINES
for ((r = 0; r < RUNS; r++)); do
  for t in "${TOOLS[@]}"; do
    c=$(cmd_for "$t"); [ -n "$c" ] || continue
    /usr/bin/time -f "%e %U %S" -o "$DIR/t" bash -c "$c" > "$DIR/out" 2>/dev/null || true
    read -r w u s < <(tail -1 "$DIR/t")
    WALL[$t]+="$w "; CPU[$t]+="$(awk -v u="$u" -v s="$s" 'BEGIN{print u+s}') "
    LINES[$t]=$(grep -c . "$DIR/out" || true)
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "# $HOSTS hosts, forks $FORKS, command '$CMD', median of $RUNS interleaved runs"
pw=$(echo "${WALL[pushrun]:-}" | med); pc=$(echo "${CPU[pushrun]:-}" | med)
printf "%-14s %8s %8s %6s %16s %16s\n" tool wall_s cpu_s lines "pushrun/tool wall" "pushrun/tool cpu"
for t in "${TOOLS[@]}"; do
  [ -n "${WALL[$t]:-}" ] || continue
  w=$(echo "${WALL[$t]}" | med); c=$(echo "${CPU[$t]}" | med)
  rw=$(awk -v a="$pw" -v b="$w" 'BEGIN{ if (a != "" && b > 0) printf "%.2f", a/b; else print "-" }')
  rc=$(awk -v a="$pc" -v b="$c" 'BEGIN{ if (a != "" && b > 0) printf "%.2f", a/b; else print "-" }')
  printf "%-14s %8.2f %8.2f %6s %16s %16s\n" "$t" "$w" "$c" "${LINES[$t]}" "$rw" "$rc"
done
