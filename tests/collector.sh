#!/usr/bin/env bash
# shellcheck disable=SC2015,SC2016 # "ok || fail" is intended (ok never fails); python snippets are single-quoted
# Tests for the default collector payload (payload/run).
#
#   bash tests/collector.sh
#
# Runs the collector on this machine under dash, busybox sh (also with a
# busybox-only PATH) and with every awk found (mawk, gawk, original-awk,
# busybox awk); validates facts.json and the summary line; checks that fields
# are absent when ip / lldpctl are missing; runs it on a fake /etc, /proc and
# /sys tree (PUSHRUN_COLLECTOR_ROOT) with fake ip, lldpctl, df and hostname to
# check exact values; and tests json_escape by sourcing the script with
# PUSHRUN_COLLECTOR_LIB=1. Ends with "N passed, N failed"; exit 1 on failure.

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$ROOT/payload/run
TMP=$(mktemp -d "${TMPDIR:-/tmp}/collector-test.XXXXXX")
trap '[ -n "${KEEP:-}" ] || rm -rf "$TMP"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/     /'; }
note() { printf 'note %s\n' "$1"; }

HAVE_PY=
if command -v python3 >/dev/null 2>&1; then HAVE_PY=1; else note "python3 missing: JSON validation and field checks skipped"; fi

# check_json FILE [EXPECTATIONS-PYTHON]: FILE is valid JSON with the required
# fields; the optional python snippet gets the parsed object as `f` and may
# assert more.
check_json() {
	local file=$1 extra=${2:-}
	if [ -z "$HAVE_PY" ]; then
		[ -s "$file" ]
		return
	fi
	python3 -m json.tool "$file" >/dev/null || return 1
	python3 - "$file" "$extra" <<'PY'
import json, sys
f = json.load(open(sys.argv[1], encoding="utf-8"))
def req(cond, what):
    if not cond:
        sys.exit("check failed: " + what)
req(isinstance(f.get("hostname"), str) and f["hostname"], "hostname")
req(isinstance(f.get("kernel", {}).get("release"), str), "kernel.release")
c = f.get("cpu", {}).get("count")
req(isinstance(c, int) and not isinstance(c, bool) and c > 0, "cpu.count > 0")
m = f.get("memory", {}).get("total_kib")
req(isinstance(m, int) and m > 0, "memory.total_kib > 0")
req(isinstance(f.get("interfaces"), list), "interfaces is a list")
req(f.get("collector_version") == "1", "collector_version")
req(isinstance(f.get("collected_at"), str) and f["collected_at"].endswith("Z"), "collected_at")
for d in f.get("disks", []):
    req(isinstance(d["name"], str) and isinstance(d.get("size_bytes", 0), int), "disk " + repr(d))
for i in f["interfaces"]:
    req(i.get("name") != "lo", "lo is skipped")
    if "speed_mbps" in i:
        req(isinstance(i["speed_mbps"], int) and i["speed_mbps"] > 0, "speed_mbps > 0")
exec(sys.argv[2])
PY
}

# run_collector NAME SHELL... : run payload/run with PUSHRUN_OUT=$TMP/NAME,
# record stdout in $TMP/NAME.stdout; fails on non-zero exit or not exactly one
# line of output.
run_collector() {
	local name=$1
	shift
	local out=$TMP/$name
	mkdir -p "$out"
	if ! (cd "$ROOT/payload" && PUSHRUN_OUT=$out PUSHRUN_HOST=testhost PUSHRUN_RUN_ID=r1 "$@" ./run) >"$out.stdout" 2>"$out.stderr"; then
		fail "$name: exit status" "$(cat "$out.stderr")"
		return 1
	fi
	if [ "$(wc -l <"$out.stdout")" -ne 1 ] || [ ! -s "$out.stdout" ]; then
		fail "$name: exactly one summary line" "$(cat "$out.stdout")"
		return 1
	fi
	if [ -s "$out.stderr" ]; then
		fail "$name: no stderr" "$(cat "$out.stderr")"
		return 1
	fi
	if [ "$(ls -A "$out")" != "facts.json" ]; then
		fail "$name: only facts.json in PUSHRUN_OUT" "$(ls -A "$out")"
		return 1
	fi
	return 0
}

# ---------------------------------------------------------------------------
# static checks
# ---------------------------------------------------------------------------
[ -x "$RUN" ] && ok "payload/run is executable" || fail "payload/run is executable"
[ "$(head -n 1 "$RUN")" = "#!/bin/sh" ] && ok "shebang is #!/bin/sh" || fail "shebang is #!/bin/sh"
if command -v dash >/dev/null 2>&1; then
	dash -n "$RUN" && ok "dash -n" || fail "dash -n"
else
	note "dash missing: dash checks skipped"
fi
if command -v shellcheck >/dev/null 2>&1; then
	r=$(shellcheck -s sh "$RUN" 2>&1) && ok "shellcheck -s sh" || fail "shellcheck -s sh" "$r"
else
	note "shellcheck missing: skipped"
fi
if command -v checkbashisms >/dev/null 2>&1; then
	r=$(checkbashisms -f -p "$RUN" 2>&1) && ok "checkbashisms" || fail "checkbashisms" "$r"
else
	note "checkbashisms missing: skipped"
fi

# ---------------------------------------------------------------------------
# real host, several shells
# ---------------------------------------------------------------------------
SHELLS=()
command -v dash >/dev/null 2>&1 && SHELLS+=("dash:dash")
command -v busybox >/dev/null 2>&1 && SHELLS+=("busybox:busybox sh")
SHELLS+=("sh:sh")
for entry in "${SHELLS[@]}"; do
	name=host-${entry%%:*}
	read -r -a cmd <<<"${entry#*:}"
	if run_collector "$name" "${cmd[@]}"; then
		if r=$(check_json "$TMP/$name/facts.json" 2>&1); then
			ok "$name: valid facts.json with required fields ($(cat "$TMP/$name.stdout"))"
		else
			fail "$name: facts.json" "$r"
		fi
	fi
done

# busybox-only host: PATH holds nothing but busybox applets
if command -v busybox >/dev/null 2>&1; then
	BB=$(command -v busybox)
	mkdir -p "$TMP/bbbin"
	for a in $("$BB" --list); do ln -s "$BB" "$TMP/bbbin/$a"; done
	if run_collector host-busybox-only env PATH="$TMP/bbbin" PUSHRUN_COLLECTOR_EXTRA_PATH= "$BB" sh; then
		r=$(check_json "$TMP/host-busybox-only/facts.json" 2>&1) &&
			ok "busybox-only PATH: valid facts.json ($(cat "$TMP/host-busybox-only.stdout"))" ||
			fail "busybox-only PATH: facts.json" "$r"
	fi
else
	note "busybox missing: busybox runs skipped"
fi

# each awk implementation found
for a in mawk gawk original-awk nawk busybox; do
	p=$(command -v "$a" 2>/dev/null) || continue
	mkdir -p "$TMP/awk-$a"
	if [ "$a" = busybox ]; then
		printf '#!/bin/sh\nexec %s awk "$@"\n' "$p" >"$TMP/awk-$a/awk"
		chmod +x "$TMP/awk-$a/awk"
	else
		ln -s "$p" "$TMP/awk-$a/awk"
	fi
	if run_collector "host-awk-$a" env PATH="$TMP/awk-$a:$PATH" sh; then
		r=$(check_json "$TMP/host-awk-$a/facts.json" 2>&1) &&
			ok "awk=$a: valid facts.json" || fail "awk=$a: facts.json" "$r"
	fi
done

# timing
start=$(date +%s%N)
(cd "$ROOT/payload" && PUSHRUN_OUT=$TMP/timing sh -c 'mkdir -p "$PUSHRUN_OUT"; ./run' >/dev/null 2>&1)
ms=$((($(date +%s%N) - start) / 1000000))
if [ "$ms" -lt 3000 ]; then ok "runtime ${ms} ms"; else fail "runtime ${ms} ms (limit 3000)"; fi

# manual run: PUSHRUN_OUT unset -> ./out
mkdir -p "$TMP/manual"
if (cd "$TMP/manual" && env -u PUSHRUN_OUT sh "$RUN" >/dev/null 2>&1) && [ -s "$TMP/manual/out/facts.json" ]; then
	ok "PUSHRUN_OUT unset: writes ./out/facts.json"
else
	fail "PUSHRUN_OUT unset: writes ./out/facts.json"
fi

# ---------------------------------------------------------------------------
# missing sources: PATH without ip and lldpctl (and without hostname, nproc)
# ---------------------------------------------------------------------------
mkdir -p "$TMP/minbin"
for c in awk cat date df getconf mkdir mv rm timeout tr uname sh; do
	p=$(command -v "$c" 2>/dev/null) && ln -s "$p" "$TMP/minbin/$c"
done
if run_collector missing env PATH="$TMP/minbin" PUSHRUN_COLLECTOR_EXTRA_PATH= sh; then
	r=$(check_json "$TMP/missing/facts.json" '
for i in f["interfaces"]:
    req("addresses" not in i, "no addresses without ip: %r" % i)
    req("lldp" not in i, "no lldp without lldpctl: %r" % i)
req("fqdn" not in f, "no fqdn without hostname")
' 2>&1) && ok "no ip/lldpctl/hostname: fields absent, still valid" || fail "missing sources" "$r"
fi

# ---------------------------------------------------------------------------
# fixture host: fake /etc /proc /sys + fake ip, lldpctl, df, hostname
# ---------------------------------------------------------------------------
FX=$TMP/fx
mkdir -p "$FX/etc" "$FX/proc/sys/kernel" "$FX/bin"
cat >"$FX/etc/os-release" <<'EOF'
# comment line
NAME="Fixture \"Quoted\" Linux"
ID=fixture
VERSION_ID='9.1'
PRETTY_NAME="Fixture Linux 9.1 \\ back\$lash"
IGNORED_$(touch /tmp/collector-pwned)=x
EOF
echo "fx-host" >"$FX/proc/sys/kernel/hostname"
# 2 sockets x 2 cores x 2 threads
: >"$FX/proc/cpuinfo"
p=0
for s in 0 1; do for c in 0 1; do for _ in 0 1; do # 2 threads per core
	printf 'processor\t: %d\nvendor_id\t: GenuineIntel\nmodel name\t: Fixture CPU @ 2.00GHz\nphysical id\t: %d\ncore id\t\t: %d\n\n' "$p" "$s" "$c" >>"$FX/proc/cpuinfo"
	p=$((p + 1))
done; done; done
printf 'MemTotal:       16384000 kB\nMemFree:         1000 kB\n' >"$FX/proc/meminfo" # no MemAvailable
echo "12345.67 999.00" >"$FX/proc/uptime"
printf '/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /srv/my\\040data xfs rw 0 0\ntmpfs /run tmpfs rw 0 0\noverlay /var/lib/docker/x overlay rw 0 0\n' >"$FX/proc/mounts"

mkblk() { # name size rotational removable [model]
	mkdir -p "$FX/sys/block/$1/queue" "$FX/sys/block/$1/device"
	echo "$2" >"$FX/sys/block/$1/size"
	echo "$3" >"$FX/sys/block/$1/queue/rotational"
	echo "$4" >"$FX/sys/block/$1/removable"
	[ -n "${5:-}" ] && printf '%s\n' "$5" >"$FX/sys/block/$1/device/model"
	return 0
}
mkblk sda 1953525168 1 0 "WDC WD10EZEX    "
mkblk nvme0n1 1000215216 0 0 'Samsung SSD 980 "PRO" 1TB          '
mkblk loop0 0 0 0
mkblk dm-0 100 0 0
mkblk sr0 2097151 1 1 "DVD-RW"
mkblk zram0 100 0 0
mkblk md127 100 0 0

mkdir -p "$FX/sys/bus/pci/drivers/ixgbe" "$FX/sys/devices/pci/0000:01:00.0" "$FX/sys/devices/pci/0000:02:00.0" "$FX/sys/class/net"
ln -s "$FX/sys/bus/pci/drivers/ixgbe" "$FX/sys/devices/pci/0000:01:00.0/driver"
mknic() { # name mac mtu state speed
	mkdir -p "$FX/sys/class/net/$1"
	echo "$2" >"$FX/sys/class/net/$1/address"
	echo "$3" >"$FX/sys/class/net/$1/mtu"
	echo "$4" >"$FX/sys/class/net/$1/operstate"
	case $5 in
	ERR) mkdir "$FX/sys/class/net/$1/speed" ;; # reading it fails, like EINVAL
	'') ;;
	*) echo "$5" >"$FX/sys/class/net/$1/speed" ;;
	esac
}
mknic lo 00:00:00:00:00:00 65536 unknown ""
mknic eth0 0c:c4:7a:00:00:01 9000 up 10000
ln -s "$FX/sys/devices/pci/0000:01:00.0" "$FX/sys/class/net/eth0/device"
mknic eth1 0c:c4:7a:00:00:02 1500 down ERR
ln -s "$FX/sys/devices/pci/0000:02:00.0" "$FX/sys/class/net/eth1/device" # no driver bound
mknic eth1.100 0c:c4:7a:00:00:02 1500 up -1
mknic veth0 aa:bb:cc:dd:ee:ff 1500 up 4294967295
echo bond0 >"$FX/sys/class/net/bonding_masters" # a file, not an interface

cat >"$FX/bin/ip" <<'EOF'
#!/bin/sh
cat <<'OUT'
1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\       valid_lft forever preferred_lft forever
2: eth0    inet 10.1.2.4/24 scope global secondary eth0:1\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::ec4:7aff:fe00:1/64 scope link \       valid_lft forever preferred_lft forever
4: eth1.100    inet 192.0.2.10 peer 192.0.2.9/32 scope global eth1.100\       valid_lft forever preferred_lft forever
OUT
EOF
cat >"$FX/bin/lldpctl" <<'EOF'
#!/bin/sh
[ "$1 $2" = "-f keyvalue" ] || exit 2
cat <<'OUT'
lldp.eth0.via=LLDP
lldp.eth0.rid=1
lldp.eth0.age=0 day, 01:02:03
lldp.eth0.chassis.mac=00:11:22:33:44:55
lldp.eth0.chassis.name=tor-sw1
lldp.eth0.chassis.descr=Some NOS = 1.2
lldp.eth0.chassis.mgmt-ip=192.0.2.1
lldp.eth0.chassis.mgmt-ip=2001:db8::1
lldp.eth0.chassis.Bridge.enabled=on
lldp.eth0.port.ifname=Ethernet1/17
lldp.eth0.port.descr=server "rack 4" \ uplink
lldp.eth0.port.auto-negotiation.supported=yes
lldp.eth0.vlan.vlan-id=100
lldp.eth0.via=LLDP
lldp.eth0.rid=2
lldp.eth0.chassis.local=tor-sw2-chassis
lldp.eth0.chassis.name=tor-sw2
lldp.eth0.port.mac=00:aa:bb:cc:dd:ee
lldp.eth1.100.via=LLDP
lldp.eth1.100.chassis.mac=00:11:22:33:44:66
lldp.eth1.100.port.local=517
OUT
EOF
cat >"$FX/bin/df" <<'EOF'
#!/bin/sh
cat <<'OUT'
Filesystem     1024-blocks      Used Available Capacity Mounted on
/dev/sda1         51474912  20000000  28832504      41% /
tmpfs              1638400         0   1638400       0% /run
/dev/sdb1       1000000000 500000000 500000000      50% /srv/my data
overlay           51474912  20000000  28832504      41% /var/lib/docker/x
server:/export   100000000  10000000  90000000      10% /mnt/nfs
OUT
EOF
cat >"$FX/bin/hostname" <<'EOF'
#!/bin/sh
[ "${1:-}" = -f ] && echo fx-host.example.net || echo fx-host
EOF
chmod +x "$FX/bin/"*

if run_collector fixture env PATH="$FX/bin:$PATH" PUSHRUN_COLLECTOR_ROOT="$FX" sh; then
	r=$(check_json "$TMP/fixture/facts.json" '
import os
req(not os.path.exists("/tmp/collector-pwned"), "os-release must not be executed")
req(f["hostname"] == "fx-host", "hostname")
req(f["fqdn"] == "fx-host.example.net", "fqdn")
req(f["os"] == {"id": "fixture", "name": "Fixture \"Quoted\" Linux", "version_id": "9.1",
                "pretty_name": "Fixture Linux 9.1 \\ back$lash"}, "os: %r" % f["os"])
req(f["uptime_s"] == 12345, "uptime_s")
req(f["cpu"] == {"model": "Fixture CPU @ 2.00GHz", "count": 8, "sockets": 2, "cores_per_socket": 2}, "cpu: %r" % f["cpu"])
req(f["memory"] == {"total_kib": 16384000}, "memory (no MemAvailable): %r" % f["memory"])
req(f["disks"] == [
    {"name": "nvme0n1", "size_bytes": 1000215216 * 512, "rotational": False, "model": "Samsung SSD 980 \"PRO\" 1TB", "removable": False},
    {"name": "sda", "size_bytes": 1953525168 * 512, "rotational": True, "model": "WDC WD10EZEX", "removable": False},
], "disks: %r" % f["disks"])
req(f["filesystems"] == [
    {"mount": "/", "type": "ext4", "size_kib": 51474912, "used_kib": 20000000},
    {"mount": "/srv/my data", "type": "xfs", "size_kib": 1000000000, "used_kib": 500000000},
    {"mount": "/mnt/nfs", "size_kib": 100000000, "used_kib": 10000000},
], "filesystems: %r" % f["filesystems"])
ifs = {i["name"]: i for i in f["interfaces"]}
req(sorted(ifs) == ["eth0", "eth1", "eth1.100", "veth0"], "interface names: %r" % sorted(ifs))
req(ifs["eth0"] == {"name": "eth0", "mac": "0c:c4:7a:00:00:01", "mtu": 9000, "state": "up", "speed_mbps": 10000,
    "driver": "ixgbe", "addresses": ["10.1.2.3/24", "10.1.2.4/24", "fe80::ec4:7aff:fe00:1/64"],
    "lldp": [
        {"chassis_id": "00:11:22:33:44:55", "system_name": "tor-sw1", "port_id": "Ethernet1/17", "port_descr": "server \"rack 4\" \\ uplink"},
        {"chassis_id": "tor-sw2-chassis", "system_name": "tor-sw2", "port_id": "00:aa:bb:cc:dd:ee"},
    ]}, "eth0: %r" % ifs["eth0"])
req(ifs["eth1"] == {"name": "eth1", "mac": "0c:c4:7a:00:00:02", "mtu": 1500, "state": "down", "addresses": [], "lldp": []}, "eth1: %r" % ifs["eth1"])
req(ifs["eth1.100"]["addresses"] == ["192.0.2.10/32"], "ptp address: %r" % ifs["eth1.100"])
req(ifs["eth1.100"]["lldp"] == [{"chassis_id": "00:11:22:33:44:66", "port_id": "517"}], "dotted ifname lldp: %r" % ifs["eth1.100"])
req("speed_mbps" not in ifs["eth1.100"] and "speed_mbps" not in ifs["veth0"], "unknown speeds absent")
req("driver" not in ifs["veth0"], "virtual: no driver")
' 2>&1) && ok "fixture: exact values" || fail "fixture: exact values" "$r"
	want="fx-host  Fixture \"Quoted\" Linux 9.1  $(uname -r)  8 cpu  15.6 GiB  2 disks  2 nics"
	got=$(cat "$TMP/fixture.stdout")
	[ "$got" = "$want" ] && ok "fixture: summary line" || fail "fixture: summary line" "got:  $got
want: $want"
fi
rm -f /tmp/collector-pwned

# fixture without /sys, /proc and os-release at all: still valid, fields absent
mkdir -p "$TMP/empty-root"
if run_collector empty-root env PATH="$TMP/minbin" PUSHRUN_COLLECTOR_EXTRA_PATH= PUSHRUN_COLLECTOR_ROOT="$TMP/empty-root" sh; then
	if [ -n "$HAVE_PY" ]; then
		r=$(python3 - "$TMP/empty-root/facts.json" <<'PY' 2>&1
import json, sys
f = json.load(open(sys.argv[1]))
for k in ("os", "memory", "uptime_s", "disks", "interfaces"):
    assert k not in f, "%s should be absent: %r" % (k, f)
assert f["kernel"]["release"] and f["cpu"]["count"] > 0 and "model" not in f["cpu"], f
PY
		) && ok "no /proc /sys /etc: sources absent, valid JSON" || fail "no /proc /sys /etc" "$r"
	else
		ok "no /proc /sys /etc: ran (validation skipped)"
	fi
fi

# ---------------------------------------------------------------------------
# json_escape, sourced with PUSHRUN_COLLECTOR_LIB=1
# ---------------------------------------------------------------------------
ESC_SH=$TMP/esc.sh
cat >"$ESC_SH" <<'EOF'
PUSHRUN_COLLECTOR_LIB=1 . "$1"
shift
for s in "$@"; do printf '"'; json_escape "$s"; printf '"\n'; done
EOF
CASES=(
	'plain-host01'
	'host"with"quotes'
	'back\slash\\host'
	"$(printf 'tab\there')"
	"$(printf 'new\nline')"
	"$(printf 'ctl\001\002\037end')"
	'ünïcode ✓ 🚀'
	"$(printf 'bad\377\300utf8')"
	"it's \"all\" \\ of /them/ \$x \`y\`"
)
for entry in "${SHELLS[@]}"; do
	name=${entry%%:*}
	read -r -a cmd <<<"${entry#*:}"
	out=$("${cmd[@]}" "$ESC_SH" "$RUN" "${CASES[@]}" 2>&1)
	if [ -z "$HAVE_PY" ]; then
		[ "$(printf '%s\n' "$out" | sed -n 2p)" = '"host\"with\"quotes"' ] && ok "json_escape ($name)" || fail "json_escape ($name)" "$out"
		continue
	fi
	r=$(printf '%s\n' "$out" | python3 -c '
import json, sys
cases = sys.argv[1:]
lines = sys.stdin.buffer.read().decode("utf-8").split("\n")[:-1]
assert len(lines) == len(cases), lines
for raw, line in zip(cases, lines):
    got = json.loads(line)
    # invalid UTF-8 bytes become U+FFFD; everything else must round-trip
    want = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert got == want, (raw, line, got)
    assert all(ord(ch) >= 0x20 for ch in line), ("raw control char", line)
' "${CASES[@]}" 2>&1) && ok "json_escape ($name): quotes, backslashes, control chars, UTF-8" || fail "json_escape ($name)" "$r"
done

echo
echo "collector: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
