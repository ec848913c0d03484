#!/bin/sh
# pushrun check: prepare this host's pushrun directory for one run and say
# which payload files must be uploaded.
#
# Invoked as: pushrun-check REMOTE_TMP DIGEST RUN_ID MODE
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   REMOTE_TMP  absolute directory that holds BASE = REMOTE_TMP/.pushrun-<login user>,
#               or "auto": the first of /tmp, /var/tmp, /dev/shm, ~/.cache where
#               BASE can be made and a file in it executed (lib.sh: pick_tmp)
#   DIGEST      the payload's digest (lowercase hex)
#   RUN_ID      this run's id ([A-Za-z0-9][A-Za-z0-9._-]*)
#   MODE        cache: the payload lives in BASE/cache/DIGEST and is reused
#               nocache: the payload goes to BASE/runs/RUN_ID/payload, all of it
# stdin: the manifest:
#   pushrun-manifest 1
#   <sha256 hex> <755|644> <size> <path>        (one line per payload file)
# or, when the script text sets pushrun_manifest (the manifest's text) and
# pushrun_linger (and the script has receivelib.sh, collectlib.sh and
# runlib.sh before it), the check stays once it has answered (see "Then"
# below) and stdin is what the initiator says next.
#
# What it does: creates BASE (mode 0700) or refuses one that is a symlink, not
# a directory, not ours or not 0700 (in a shared /tmp any of those may be an
# attack), and refuses a REMOTE_TMP anyone may write to without the sticky
# bit (another user could swap BASE after this check); removes symlinks
# where BASE's own dirs belong and, in cache mode, a symlink (or anything
# but a directory) where a directory of a manifest path belongs in
# BASE/cache/DIGEST (damage: never trusted nor written through);
# a check that does not finish removes the run dir it made; creates BASE/runs/RUN_ID/out and writes BASE/runs/RUN_ID/digest
# and BASE/owners/RUN_ID (who holds the run dir: see conn_owner), and leaves
# a guard that removes the run dir once that connection is gone (pushrun
# interrupted or the connection lost before collect.sh removed it);
# under BASE/lock does the housekeeping: drops uploads abandoned for over an
# hour, run directories whose holder was a connection to this machine that
# is gone (a run cut short by a lost connection or a killed initiator: the
# next run removes it), run directories older than 24 hours (those of other
# machines sharing an NFS remote_tmp, of runs from before a reboot, and of
# runs whose holder cannot be told), and all but the 3 most recently
# used cached payloads (never one that a run directory names, nor one that a
# check is seeding from), with their stored manifests.
#
# In cache mode it then keeps this payload's manifest as BASE/manifests/DIGEST
# ("<sha256> <mode> <path>" lines) and seeds BASE/cache/DIGEST from the other
# cached payloads, so that a payload with a few files edited needs only
# those: the sources are the (up to 3) most recently used other payload
# directories (mtime, as eviction orders them; where no more than 3 are
# cached, all the others, by name: a file is the same in any) whose
# manifest is kept; every
# manifest path absent from BASE/cache/DIGEST whose line (sha256, mode and
# path) is in a source's manifest, and that is a regular file (not a symlink)
# there, is copied (one tar pipe per source, outside the lock: the check
# names its sources in BASE/runs/RUN_ID/.check.src meanwhile, which keeps
# eviction off them; they are only read, so their mtime and so their rank
# stays) into BASE/cache/.stage-RUN_ID.seed and given its manifest mode;
# then, under BASE/lock, that directory becomes BASE/cache/DIGEST by one
# rename when BASE/cache/DIGEST holds no file yet, else each file is
# hard-linked into place where nothing is (never replacing a file). Nothing
# is trusted for being seeded: then it verifies every manifest file in
# BASE/cache/DIGEST (regular file, not a symlink, exec bit as the mode says,
# sha256 matches: one hashing process for all of them (for big payloads,
# openssl, one per 64 KiB of names), each file hashed
# once, and no marker file is trusted); a seeded file that does not match is
# needed like any other.
#
# stdout, one item a line:
#   base <absolute BASE>
#   lacks <tar|gzip>          (a tool this host has not: upload with put.sh)
#   need <path>               (a file to upload, in manifest order)
#   runs                      (lingering only: see "With pushrun_linger")
#   checked <n>               (last line: how many files were found intact)
# or, on failure, the single line
#   error <message>
# Exit codes: 0 done; 3 error (refused BASE, bad arguments or manifest, lock
# timeout, cannot write); 4 a tool pushrun needs (sha256sum, awk) is missing
# on this host.
#
# With pushrun_linger set, the answer has the line "runs" (before
# "checked") where this check may run the payload itself (it leads its
# process group: not under dropbear), and a check that went well then
# removes its lock and reads one line, which may be, first:
#   "receive SIZE FORMAT" (FORMAT: receive.sh's), then the upload, SIZE
#     bytes: it does receive.sh's work (receivelib.sh, which this script
#     has with the others) on this check's BASE, digest, run id and mode in
#     a subshell that reads exactly those bytes (the rest of them are read
#     and dropped when it ends early), prints what receive.sh prints, then
#     "received RC" (its exit code), and reads one line again (a cold run's
#     files come on this channel too: no login shell and bootstrap of their
#     own, and no round trip before them);
#   then one of:
#   "collect" (the run, on a channel of its own, has ended): it prints the
#     frame marker on stdout and stderr and does collect.sh's work
#     (collectlib.sh) in this same process, on this channel;
#   "run NONCE COUNT", then COUNT lines of shell text setting run.sh's
#     arguments and pushrun_env (the exports of the payload's environment):
#     it prints the frame marker, runs the payload as run.sh would
#     (runlib.sh; stdin stays open for "stop" or its end), its stdout and
#     stderr this channel's, then prints "pushrun-end-NONCE RC" on stdout
#     and "pushrun-end-NONCE" on stderr (RC as run.sh's exit code; NONCE,
#     the initiator's, tells the end from anything the payload prints) and
#     does collect.sh's work, whose archive and message each end with the
#     line "pushrun-done-NONCE" (what comes after is the output of
#     processes the payload left running). The run dir goes on every way
#     out.
#   anything else, or the end of stdin: it exits 0, the run dir left to
#     whoever holds it (run.sh, a collect of its own, the guard).
# This saves a run the upload's, the run's and the collect's channels,
# login shells and bootstraps.

umask 077
LC_ALL=C
export LC_ALL
nl='
'

[ $# -eq 4 ] || fail 3 "usage: check.sh REMOTE_TMP DIGEST RUN_ID MODE (got $# arguments)"
tmp=$1 digest=$2 run_id=$3 mode=$4

for tool in sha256sum awk; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail 4 "this host has no $tool (pushrun needs coreutils or busybox)"
done
# tar and gzip are used where present; without them files travel one by
# one (put.sh) and results as plain entries (plain-out.sh)
lacks=
for tool in tar gzip; do
    command -v "$tool" >/dev/null 2>&1 || lacks="$lacks $tool"
done

case $tmp in
    /* | auto) ;;
    *) fail 3 "remote_tmp must be an absolute path, not '$tmp'" ;;
esac
valid_digest "$digest" || fail 3 "bad payload digest '$digest'"
valid_run_id "$run_id" || fail 3 "bad run id '$run_id'"
case $mode in
    cache | nocache) ;;
    *) fail 3 "bad mode '$mode' (cache or nocache)" ;;
esac

# the manifest's header first: a wrong one changes nothing on the host
header=
if [ -n "${pushrun_manifest+x}" ]; then
    header=${pushrun_manifest%%"$nl"*}
else
    IFS= read -r header
fi
[ "$header" = 'pushrun-manifest 1' ] || fail 3 "unexpected manifest header '$header'"

# ---------------------------------------------------------------- BASE
pick_tmp "$tmp"

# ---------------------------------------------------------------- lock
# BASE/lock (see lib.sh) is held only for the housekeeping below
# shellcheck disable=SC2034 # read by lock_release (lib.sh, prepended to this)
lock_held=

rundir=$BASE/runs/$run_id
work=$rundir/.check
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    rc=$?
    # a check that did not finish (full disk, a signal, a lost connection)
    # leaves no run dir behind to pin the cache
    if [ "$rc" != 0 ] && [ -n "${made_rundir:-}" ]; then
        rm -rf "$rundir" "$BASE/owners/$run_id"
    fi
    tidy
}
# the check's work files, its seed dir (unless renamed into place) and the
# lock. A check that lingers (see "then" below) leaves its work files to go
# with the run dir, which its collect removes (a process less on every
# warm run): they are beside the run's out dir, never in it.
tidy() {
    [ -n "${1:-}" ] ||
        rm -f "$work.list" "$work.sums" "$work.result" "$work.hashes" "$work.src" "$work.miss"
    [ -z "${seed:-}" ] || { [ ! -e "$seed" ] && [ ! -L "$seed" ]; } || rm -rf "$seed"
    lock_release ${stamp:+"$stamp"}
}
trap_cleanup

# ------------------------------------------------- run dir, housekeeping
# Who holds a run dir, set in owner as one line "<uname -n> <boot id> <pid>
# <start time>" (a variable, not output: no fork): the first sshd (or dropbear) process above this script,
# which is the server's process for this connection (every channel of the
# run's connection, from this check to collect.sh, is its child, and it
# ends when the connection does), with its start time (a pid can be
# reused). Nothing where that cannot be told (no /proc, a process we may
# not see, another server): such a run dir waits for the 24 h sweep.
conn_owner() {
    owner=
    boot=
    read -r boot 2>/dev/null </proc/sys/kernel/random/boot_id || return 0
    # from the parent: this shell is no server (and sh reads /proc a byte
    # per call)
    pid=$PPID
    hops=0
    while [ "$hops" -lt 16 ] && [ "$pid" -gt 1 ] 2>/dev/null; do
        st=
        read -r st 2>/dev/null <"/proc/$pid/stat" || return 0
        comm=${st#*(}
        comm=${comm%)*}
        # after "pid (comm) ": state ppid ... starttime (the 20th)
        # shellcheck disable=SC2086 # numbers and a state letter
        set -- ${st##*) }
        case $comm in
            sshd* | dropbear*)
                [ $# -ge 20 ] || return 0
                shift 19
                # the node name (uname -n), read without a process
                node=
                read -r node 2>/dev/null </proc/sys/kernel/hostname || node=$(uname -n)
                owner="$node $boot $pid $1"
                return 0
                ;;
        esac
        pid=$2
        hops=$((hops + 1))
    done
}

# proc_start and owner_gone, kept as text: this script defines them from
# it, and so does the guard below (a shell of its own, so that its command
# line is a short fixed one). No single quote in them.
# shellcheck disable=SC2016 # shell text, expanded where it runs
owner_fns='
# pstart = PID start time (proc(5): the 22nd field of /proc/PID/stat), or
# empty (a variable, not output: the guard calls it every few seconds for
# as long as a run lasts, and a command substitution is a fork each time)
proc_start() { # PID
    st= pstart=
    read -r st 2>/dev/null <"/proc/$1/stat" || return 0
    # shellcheck disable=SC2086 # numbers and a state letter
    set -- ${st##*) }
    [ $# -lt 20 ] || pstart=${20}
}

# Whether a run dir was held by a connection to this machine (this boot of
# it) that has ended: its owner file names this machine ($me_host, $me_boot)
# and a process that is gone or is another one now. Run dirs of other
# machines (an NFS remote_tmp), of another boot, or with no owner file are
# not judged here.
owner_gone() { # OWNER_FILE
    line=
    read -r line 2>/dev/null <"$1" || return 1
    # shellcheck disable=SC2086 # four words without globbing characters
    set -f && set -- $line && set +f
    [ $# -eq 4 ] && [ "$1" = "$me_host" ] && [ "$2" = "$me_boot" ] || return 1
    case $3 in "" | *[!0-9]*) return 1 ;; esac
    [ -e "/proc/$3/stat" ] || return 0
    proc_start "$3"
    [ "$pstart" != "$4" ]
}
'
eval "$owner_fns"

spawn_guard() {
    [ -n "$me_host" ] && [ -d "$rundir" ] || return 0
    # A guard, for as long as the run dir is there: once the connection
    # that holds it is gone (Ctrl-C on the initiator, a lost connection,
    # between two steps or within one) it ends this check if it still runs
    # (hashing a big cache: its process group, which sshd made the
    # session's with this script its leader; otherwise this script alone,
    # whose trap then waits for the command it is in) and removes the run
    # dir and its owner file. It looks once a second; its streams are not
    # the channel's, so it keeps no channel open (nor do the copies of them
    # that csh leaves open on fds 3 to 5 across its exec). Its script is
    # -c's word (no process to write it, no byte-at-a-time read of it),
    # owner_fns in its environment.
    # shellcheck disable=SC2016 # shell text, expanded where it runs
    guard_sh='
eval "$owner_fns"
trap "" TERM HUP PIPE
proc_start "$check_pid"
check_start=$pstart
pgid=
st=
read -r st 2>/dev/null <"/proc/$check_pid/stat"
# shellcheck disable=SC2086 # numbers and a state letter
[ -z "$st" ] || { set -- ${st##*) } && pgid=$3; }
# every second at first, then every 3: a process (sleep) at each look,
# for as long as the run lasts, on every host
looks=0 every=1
while sleep "$every"; do
    looks=$((looks + 1))
    [ "$looks" -lt 5 ] || every=3
    [ -d "$rundir" ] || exit 0
    owner_gone "$ownerf" || continue
    proc_start "$check_pid"
    if [ -n "$check_start" ] && [ "$pstart" = "$check_start" ]; then
        if [ "$pgid" = "$check_pid" ]; then
            kill -TERM "-$check_pid"
        else
            kill -TERM "$check_pid"
        fi
    fi
    rm -rf "$rundir" "$ownerf"
    exit 0
done
    '
    owner_fns=$owner_fns check_pid=$$ rundir=$rundir ownerf=$ownerf me_host=$me_host \
        me_boot=$me_boot /bin/sh -c "$guard_sh" pushrun-guard </dev/null >/dev/null 2>&1 \
        3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
}

seed=
if [ "$mode" = cache ]; then
    target=$BASE/cache/$digest
else
    target=$rundir/payload
fi

lock_take || fail 3 "cannot create $BASE/lock: $(reason "$err")"
# nothing under BASE is followed: a symlink where a dir of ours belongs goes
for d in "$BASE/cache" "$BASE/runs" "$BASE/manifests" "$BASE/owners" "$rundir"; do
    [ ! -L "$d" ] || rm -f "$d"
done
# In cache mode the mtime of the payload's directory records its last use
# (for eviction): a directory made in it now, and removed with the lock
# (no process of its own), marks it used. One that is not there yet is
# left to the upload to make (its mtime is then new).
stamp=
if [ "$mode" = cache ]; then
    if [ -L "$target" ] || { [ -e "$target" ] && [ ! -d "$target" ]; }; then
        rm -f "$target"
    fi
fi
target_new=
[ -e "$target" ] || [ -L "$target" ] || target_new=1
[ "$mode" != cache ] || [ -n "$target_new" ] || stamp=$target/.pushrun-used-$run_id
made_rundir=
[ -e "$rundir" ] || made_rundir=1
set -- "$BASE/cache" "$BASE/runs" "$BASE/owners" "$rundir/out"
[ "$mode" != cache ] || set -- "$@" "$BASE/manifests"
[ -z "$stamp" ] || set -- "$@" "$stamp"
err=$(mkdir -p "$@" 2>&1) || {
    made_rundir=1
    fail 3 "cannot write under $BASE: $(reason "$err")"
}
made_rundir=1
# another check's stamp is there only while that check holds the lock (not
# now), or where it was killed before its release: then it goes now
if [ -n "$stamp" ]; then
    set --
    for d in "$target"/.pushrun-used-*; do
        if [ "$d" != "$stamp" ] && { [ -e "$d" ] || [ -L "$d" ]; }; then
            set -- "$@" "$d"
        fi
    done
    [ $# -eq 0 ] || rm -rf "$@"
fi
# the digest file is written under the lock, so that no eviction running
# now can take the payload this run is about to use
printf '%s\n' "$digest" >"$rundir/digest" ||
    fail 3 "cannot write under $BASE: cannot write $rundir/digest"
conn_owner
me_host=''
me_boot=''
if [ -n "$owner" ]; then
    # (BASE/owners, not the run dir: that holds the run's own files only)
    ownerf=$BASE/owners/$run_id
    if [ ! -d "$BASE/owners" ]; then
        err=$(mkdir -p "$BASE/owners" 2>&1) ||
            fail 3 "cannot write under $BASE: $(reason "$err")"
    fi
    if [ -e "$ownerf" ] || [ -L "$ownerf" ]; then
        rm -f "$ownerf"
    fi
    printf '%s\n' "$owner" 2>/dev/null >"$ownerf" ||
        fail 3 "cannot write under $BASE: cannot write $ownerf"
    me_host=${owner%% *}
    me_boot=${owner#* } && me_boot=${me_boot%% *}
    spawn_guard
fi
if [ "$mode" = cache ] && [ -z "$target_new" ]; then
    # the upload's list, where a receive was cut short before it removed it
    [ ! -e "$target/.pushrun-expect" ] || rm -f "$target/.pushrun-expect"
fi

# uploads abandoned for over an hour, runs that crashed over a day ago
# (looked for only where there are such dirs, or runs other than this one)
for f in "$BASE"/cache/.stage-*; do
    [ -e "$f" ] || [ -L "$f" ] || break
    find "$BASE/cache" -mindepth 1 -maxdepth 1 -name '.stage-*' -mmin +60 \
        -exec rm -rf {} \; 2>/dev/null
    break
done
for f in "$BASE"/runs/* "$BASE"/runs/.[!.]*; do
    [ "$f" != "$rundir" ] || continue
    [ -e "$f" ] || [ -L "$f" ] || continue
    find "$BASE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} \; 2>/dev/null
    break
done
# runs whose connection to this machine is gone (see owner_gone), and the
# owner files of runs that ended (collect.sh removes its own; a run ended
# otherwise leaves it): never this run's own
if [ -n "$me_host" ]; then
    for f in "$BASE"/owners/*; do
        id=${f##*/}
        if [ "$id" = "$run_id" ] || { [ ! -f "$f" ] && [ ! -L "$f" ]; }; then
            continue
        fi
        if [ -L "$f" ] || { [ ! -e "$BASE/runs/$id" ] && [ ! -L "$BASE/runs/$id" ]; }; then
            rm -f "$f"
        elif owner_gone "$f"; then
            rm -rf "${BASE:?}/runs/$id" && rm -f "$f"
        fi
    done
fi
# keep the 3 most recently used payloads, and every one a run still names
# or a check is seeding from (a .check.src holds digests on one line)
in_use=' '
for f in "$BASE"/runs/*/digest "$BASE"/runs/*/.check.src; do
    [ -f "$f" ] || continue
    d=
    read -r d 2>/dev/null <"$f"
    in_use="$in_use$d "
done
# payload directories are named by hex digests: ls -t is safe, and is the
# one portable way to sort by mtime. Of those kept, this run's sources (cache
# mode): the 3 most recently used other ones with a kept manifest, gathered
# on one line. Where there are 3 or fewer, none goes and all are sources,
# in any order: then no ls.
# (this run's payload, when the upload is to make its dir, counts as the
# most recently used already: "ahead", 1 or 0)
ahead=0
[ "$mode" != cache ] || [ -z "$target_new" ] || ahead=1
ncached=$ahead
for f in "$BASE"/cache/*; do
    case ${f##*/} in
        '' | *[!0-9a-f]*) ;;
        *) ncached=$((ncached + 1)) ;;
    esac
done
if [ "$ncached" -gt 3 ]; then
    # shellcheck disable=SC2012
    cached=$(ls -t "$BASE/cache" 2>/dev/null)
else
    cached=
    for f in "$BASE"/cache/*; do
        cached="$cached${f##*/}$nl"
    done
fi
# in this shell (no fork for a pipe), a name a line
kept=$ahead nsrc=0 srcs=
saved_ifs=$IFS
IFS=$nl
set -f
for d in $cached; do
    case $d in
        '' | *[!0-9a-f]*) continue ;; # not a payload directory
    esac
    if [ "$kept" -lt 3 ]; then
        kept=$((kept + 1))
    else
        case $in_use in
            *" $d "*) ;;
            *)
                rm -rf "$BASE/cache/$d"
                continue
                ;;
        esac
    fi
    if [ "$mode" = cache ] && [ "$d" != "$digest" ] && [ "$nsrc" -lt 3 ] &&
        [ -f "$BASE/manifests/$d" ]; then
        srcs="$srcs$d "
        nsrc=$((nsrc + 1))
    fi
done
set +f
IFS=$saved_ifs
srcs=${srcs% }
# seeding copies through tar
[ -z "$lacks" ] || srcs=
# the manifests of payloads no longer cached
for f in "$BASE"/manifests/*; do
    [ -e "$f" ] || continue
    [ -d "$BASE/cache/${f##*/}" ] || rm -f "$f"
done
# the sources are named while the lock is held: no eviction can take them
# while they are copied from
if [ -n "$srcs" ]; then
    printf '%s\n' "$srcs" 2>/dev/null >"$work.src" || srcs=
fi
lock_release ${stamp:+"$stamp"}

# ------------------------------------------------------------ manifest
# One awk reads the rest of the manifest, to its end, and checks every line
# with malformed() (lib.sh's manifest_awk): a sha256, a mode (755 or 644), a
# size and a safe relative path. It prints shell assignments (values
# single-quoted):
#   n         the number of lines
#   bad       0, or the number of the first malformed line; then badline is
#             that line and entries is empty
#   entries   "<sha256> <755|644> <path>" per line, in order
#   bytes     the files' sizes added up
#   derived=1 last: the output is complete
# shellcheck disable=SC2016 # an awk program
validate=$(manifest_awk)'
BEGIN { n = 0; bad = 0 }
{
    n++
    if (malformed($0)) {
        bad = n
        badline = $0
        exit 0
    }
    ent[n] = sum " " fmode " " path
    bytes += size
}
END {
    if (bad) {
        printf "n=%d bad=%d badline=%s%s%s\n", n, bad, sq, esc(badline), sq
    } else {
        printf "n=%d bad=0 entries=%s", n, sq
        for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "\n" : ""), esc(ent[i])
        printf "%s\n", sq
    }
    printf "bytes=%.0f\n", bytes
    print "derived=1"
}'
n=0 bad=0 badline='' entries='' bytes=0 derived=
if [ -n "${pushrun_manifest+x}" ]; then
    case $pushrun_manifest in
        *"$nl"*) vars=$(printf '%s' "${pushrun_manifest#*"$nl"}" | awk -v "sq='" "$validate") ;;
        *) vars=$(awk -v "sq='" "$validate" </dev/null) ;;
    esac
else
    vars=$(awk -v "sq='" "$validate")
fi
eval "$vars"
[ "$derived" = 1 ] || fail 3 "cannot read the manifest"
[ "$bad" = 0 ] || fail 3 "bad manifest line $bad: '$badline'"

# (cache mode, a payload dir that was there) a symlink, or anything but a
# directory, where a directory of a manifest path belongs is damage: a
# symlinked dir would make files elsewhere pass as cached, and a seed or
# repair write through it. It goes (what was under it is needed again),
# before anything is seeded or hashed; each such directory is looked at
# once, by the shell's own tests (no find through the whole tree). A file
# that is a symlink is never taken for cached (below).
if [ "$mode" = cache ] && [ -z "$target_new" ]; then
    saved_ifs=$IFS
    IFS=$nl
    set -f
    seen=$nl
    for entry in $entries; do
        path=${entry#* } && path=${path#* }
        case $path in */*) ;; *) continue ;; esac
        rest=${path%/*}
        case $seen in *"$nl$rest$nl"*) continue ;; esac
        sub=
        while [ -n "$rest" ]; do
            part=${rest%%/*}
            case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
            case $part in '' | .) continue ;; esac
            sub=$sub${sub:+/}$part
            case $seen in *"$nl$sub$nl"*) continue ;; esac
            seen=$seen$sub$nl
            d=$target/$sub
            if [ -L "$d" ] || { [ -e "$d" ] && [ ! -d "$d" ]; }; then
                rm -f "$d" 2>/dev/null
            fi
        done
        # the path's own directory as written, so that its next files skip
        # this loop
        seen=$seen${path%/*}$nl
    done
    set +f
    IFS=$saved_ifs
fi

# ------------------------------------------------------------- seeding
# (cache mode; see the header) the copies need not be right: the
# verification below hashes every file of the target, seeded or not

# chmod MODE on each of LIST's files (one process when the argument list
# fits); a file it cannot be set on is removed (so it stays needed)
seed_chmod() { # MODE LIST
    [ -n "$2" ] || return 0
    # shellcheck disable=SC2086 # split on newlines only, with no globbing
    if ! chmod "$1" -- $2 2>/dev/null; then
        for f in $2; do
            chmod "$1" -- "$f" 2>/dev/null || rm -rf -- "$f"
        done
    fi
}

# copies CHUNK's files ("./path" lines) from the cached payload SOURCE into
# the seed directory: one tar pipe (a file gone meanwhile is left out, the
# rest still come); seed_ok is emptied when the extraction fails (a write
# error: then nothing is installed)
seed_copy() { # SOURCE CHUNK
    [ -n "$2" ] || return 0
    [ -d "$BASE/cache/$1" ] || return 0
    # shellcheck disable=SC2086 # split on newlines only, with no globbing
    (cd "$BASE/cache/$1" && exec tar -cf - $2) 2>/dev/null |
        (cd "$seed" && exec tar -xof -) 2>/dev/null || seed_ok=
}

# copies source N's chunk of files (c1, c2 or c3) into the seed directory,
# removes anything there but files and directories, and gives the chunk's
# files their manifest modes (x1.. the 755 ones, r1.. the 644 ones); the
# lists are bounded by the chunk's 64 KiB of names (a variable that grows
# a line at a time is copied whole each time)
seed_flush() { # N
    case $1 in
        1) fsrc=$src1 fc=$c1 fx=$x1 fr=$r1 c1='' x1='' r1='' ;;
        2) fsrc=$src2 fc=$c2 fx=$x2 fr=$r2 c2='' x2='' r2='' ;;
        *) fsrc=$src3 fc=$c3 fx=$x3 fr=$r3 c3='' x3='' r3='' ;;
    esac
    [ -n "$fc" ] || return 0
    seed_copy "$fsrc" "$fc"
    find "$seed" ! -type d ! -type f -exec rm -f {} \; 2>/dev/null
    seed_chmod 755 "$fx"
    seed_chmod 644 "$fr"
}

if [ "$mode" = cache ]; then
    # this payload's manifest, for later checks to seed from (written
    # once; only ever a hint of what to copy, so a check that reads it
    # while another writes it, both the same bytes, loses nothing)
    # (never written through a symlink)
    man=$BASE/manifests/$digest
    [ ! -L "$man" ] || rm -f "$man"
    if [ ! -f "$man" ]; then
        printf '%s\n' "$entries" 2>/dev/null >"$man"
    fi
fi
if [ "$mode" = cache ] && [ -n "$srcs" ] && true 2>/dev/null >"$work.miss"; then
    # the manifest's lines whose path is absent from the target
    exec 8>"$work.miss"
    saved_ifs=$IFS
    IFS=$nl
    set -f
    for entry in $entries; do
        path=${entry#* } && path=${path#* }
        [ -e "$target/$path" ] || [ -L "$target/$path" ] ||
            printf '%s\n' "$entry" >&8
    done
    exec 8>&-
    plan=
    if [ -s "$work.miss" ]; then
        # one awk matches them with the sources' manifests: it prints each
        # line that some source has as "<ranks> <line>", ranks being the
        # sources' numbers (1 the most recently used), in that order
        IFS=' '
        # shellcheck disable=SC2086 # split on spaces: digests
        set -- $srcs
        src1=${1:-} src2=${2:-} src3=${3:-}
        set --
        rank=0
        for s in $srcs; do
            rank=$((rank + 1))
            set -- "$@" "rank=$rank" "$BASE/manifests/$s"
        done
        IFS=$nl
        # shellcheck disable=SC2016 # an awk program
        plan=$(awk '
rank != "" { if (index(ranks[$0], rank) == 0) ranks[$0] = ranks[$0] rank; next }
($0 in ranks) { print ranks[$0] " " $0 }' "$@" rank= "$work.miss" 2>/dev/null)
    fi
    # beside the uploads' stage directories (the same file system as the
    # target, and dropped with them when abandoned)
    [ -z "$plan" ] || seed=$BASE/cache/.stage-$run_id.seed
    if [ -n "$plan" ] && rm -rf "$seed" 2>/dev/null && mkdir "$seed" 2>/dev/null; then
        # each file from the first source (by rank) where it is a regular
        # file; the copies go by source, in chunks of at most 64 KiB of names
        seed_ok=1 seeded='' c1='' c2='' c3='' x1='' x2='' x3='' r1='' r2='' r3=''
        for line in $plan; do
            ranks=${line%% *} rest=${line#* } && rest=${rest#* }
            fmode=${rest%% *} path=${rest#* }
            from=
            while [ -n "$ranks" ]; do
                r=${ranks%"${ranks#?}"} ranks=${ranks#?}
                case $r in
                    1) f=$BASE/cache/$src1/$path ;;
                    2) f=$BASE/cache/$src2/$path ;;
                    *) f=$BASE/cache/$src3/$path ;;
                esac
                if [ -f "$f" ] && [ ! -L "$f" ]; then
                    from=$r
                    break
                fi
            done
            case $from in
                1)
                    c1="$c1./$path$nl"
                    if [ "$fmode" = 755 ]; then x1="$x1$seed/$path$nl"; else r1="$r1$seed/$path$nl"; fi
                    [ "${#c1}" -lt 65536 ] || seed_flush 1
                    ;;
                2)
                    c2="$c2./$path$nl"
                    if [ "$fmode" = 755 ]; then x2="$x2$seed/$path$nl"; else r2="$r2$seed/$path$nl"; fi
                    [ "${#c2}" -lt 65536 ] || seed_flush 2
                    ;;
                3)
                    c3="$c3./$path$nl"
                    if [ "$fmode" = 755 ]; then x3="$x3$seed/$path$nl"; else r3="$r3$seed/$path$nl"; fi
                    [ "${#c3}" -lt 65536 ] || seed_flush 3
                    ;;
                *) continue ;;
            esac
            seeded=1
        done
        seed_flush 1
        seed_flush 2
        seed_flush 3
        if [ -n "$seed_ok" ] && [ -n "$seeded" ]; then
            # install, under the lock (as receive.sh installs)
            lock_take || fail 3 "cannot create $BASE/lock: $(reason "$err")"
            if [ -z "$(find "$target" ! -type d 2>/dev/null | head -n 1)" ]; then
                # no file there yet: the seed directory goes into place by one
                # rename, and is the target's last use
                { rm -rf "$target" && mv -f "$seed" "$target"; } 2>/dev/null
                mkdir -p "$target" 2>/dev/null && touch "$target" 2>/dev/null
            else
                # files there (another check, an upload): a hard link for
                # each missing one; ln replaces nothing
                for path in $(cd "$seed" && exec find . -type f 2>/dev/null); do
                    path=${path#./}
                    f=$target/$path
                    if [ ! -f "$seed/$path" ] || [ -L "$seed/$path" ] ||
                        [ -e "$f" ] || [ -L "$f" ]; then
                        continue
                    fi
                    case $path in
                        */*) [ -d "${f%/*}" ] || mkdir -p "${f%/*}" 2>/dev/null ;;
                    esac
                    ln "$seed/$path" "$f" 2>/dev/null
                done
            fi
            lock_release
        fi
    fi
    set +f
    IFS=$saved_ifs
fi

# Big payloads are hashed by OpenSSL's sha256 (lib.sh: sums_check says
# why), run from here in the target on the candidates' names, 64 KiB of
# them at a time (gathered one a line, then split into arguments at once:
# dash's set -- "$@" NAME per file costs more than the hashing): no shell
# in between, and the awk below reads its output beside the list. A name
# with a backslash (which openssl escapes), or output in a form that awk
# does not know, goes through sums_check instead.
direct=
if openssl_pays "$bytes"; then
    case $entries in
        *\\*) ;;
        *) direct=1 ;;
    esac
fi
saved_ifs=$IFS
IFS=$nl
set -f
# The list ("N path": needed, "C path": present, to be hashed, for each
# file) and the check lines for sha256sum -c ("<sha256>  <path>" for each
# candidate) are kept in variables while they are short, with what intact
# candidates would make openssl or sha256sum -c print and the need lines:
# a payload of up to some hundreds of files writes no work file. Once
# either reaches 64 KiB they go to .list and .sums (fds 6 and 7), and
# openssl's output to .hashes (fd 9), 64 KiB of names at a time. Lines go
# into small chunks first (k_...), which join the lists every 4 KiB: dash
# copies a variable whole, a byte at a time, each time it grows, so a list
# grown a line at a time costs its length times its lines.
list='' sums='' names='' needs='' want='' oks='' cands=0 spilled=
k_list='' k_sums='' k_names='' k_needs='' k_want='' k_oks=''
join_chunks() {
    list=$list$k_list sums=$sums$k_sums names=$names$k_names
    needs=$needs$k_needs want=$want$k_want oks=$oks$k_oks
    k_list='' k_sums='' k_names='' k_needs='' k_want='' k_oks=''
}
# (tried with true first: a failed redirection of exec, or of a special
# built-in such as :, ends the shell; of true it does not)
spill() {
    { true 2>/dev/null >"$work.list" && true 2>/dev/null >"$work.sums" &&
        { [ -z "$direct" ] || true 2>/dev/null >"$work.hashes"; }; } ||
        fail 3 "cannot write under $rundir"
    exec 6>"$work.list" 7>"$work.sums"
    [ -z "$direct" ] || exec 9>"$work.hashes"
    join_chunks
    printf '%s' "$list" >&6
    printf '%s' "$sums" >&7
    list='' sums='' needs='' want='' oks=''
    spilled=1
}
hash_names() {
    [ -z "$names" ] || (openssl_names "$target" "$names") >&9
    names=
}
for entry in $entries; do
    sum=${entry%% *} rest=${entry#* }
    fmode=${rest%% *} path=${rest#* }
    f=$target/$path
    state=N
    if [ "$mode" = cache ] && [ -f "$f" ] && [ ! -L "$f" ]; then
        if [ "$fmode" = 755 ]; then
            [ -x "$f" ] && state=C
        else
            [ -x "$f" ] || state=C
        fi
    fi
    if [ "$state" = C ]; then
        cands=$((cands + 1))
        [ -z "$direct" ] || k_names=$k_names./$path$nl
    fi
    if [ -n "$spilled" ]; then
        printf '%s %s\n' "$state" "$path" >&6
        [ "$state" != C ] || printf '%s  %s\n' "$sum" "$path" >&7
        if [ "${#k_names}" -ge 4096 ]; then
            names=$names$k_names k_names=''
            [ "${#names}" -lt 65536 ] || hash_names
        fi
        continue
    fi
    k_list="$k_list$state $path$nl"
    if [ "$state" != C ]; then
        k_needs="${k_needs}need $path$nl"
    elif [ -n "$direct" ]; then
        k_sums="$k_sums$sum  $path$nl"
        k_want="$k_want$sum *./$path$nl"
    else
        k_sums="$k_sums$sum  $path$nl"
        k_oks="$k_oks$path: OK$nl"
    fi
    if [ "${#k_list}" -ge 4096 ] || [ "${#k_sums}" -ge 4096 ]; then
        join_chunks
        if [ "${#list}" -ge 65536 ] || [ "${#sums}" -ge 65536 ]; then
            spill
        fi
    fi
done
join_chunks
# Short lists: where every candidate is intact (the hashing's whole output
# is what intact files give), the answer is the need lines and their count
# (no awk, no work file). Otherwise the lists go to their files for the awk
# below, with what openssl said.
answer=
if [ -z "$spilled" ]; then
    got=
    if [ "$cands" = 0 ]; then
        answer="${needs}checked 0"
    elif [ -n "$direct" ]; then
        got=$(openssl_names "$target" "$names")
        [ "$got" != "${want%"$nl"}" ] || answer="${needs}checked $cands"
    else
        got=$(printf '%s' "$sums" | sums_check "$target" "$bytes" 2>/dev/null)
        [ "$got" != "${oks%"$nl"}" ] || answer="${needs}checked $cands"
    fi
    if [ -z "$answer" ]; then
        spill
        [ -z "$direct" ] || [ -z "$got" ] || printf '%s\n' "$got" >&9
    fi
elif [ -n "$direct" ]; then
    hash_names
fi
if [ -n "$spilled" ]; then
    [ -z "$direct" ] || exec 9>&-
    exec 6>&- 7>&-
fi
set +f
IFS=$saved_ifs

# one awk reads .list and, in step, each candidate's check line and its
# hash (or sums_check's verdict: "path: OK" per intact file, one line per
# check line, in order); anything not plainly intact is needed. A short
# .list (disk full) must not pass for "nothing needed". "redo": openssl
# said nothing it knows; then sums_check decides.
openssl_awk
# shellcheck disable=SC2016,SC2154 # an awk program; took_awk: openssl_awk (lib.sh)
answer_awk=$took_awk'
BEGIN { ok = 0 }
# the hashes (lib.sh: took), read at the first line (the operands n=,
# hashes=... are set by then, not in BEGIN)
NR == 1 && hashes != "" {
    while ((getline line < hashes) > 0) took(line)
    close(hashes)
}
{
    state = substr($0, 1, 1); path = substr($0, 3)
    if (state == "C") {
        cands++
        res = ""
        if (hashes != "") {
            if ((getline res < sums) <= 0) res = ""
            if (substr(res, 67) == path && (path in got) && got[path] == substr(res, 1, 64)) { ok++; next }
        } else {
            if ((getline res < result) <= 0) res = ""
            if (res == path ": OK") { ok++; next }
        }
    }
    print "need " path
}
END {
    if (hashes != "" && (odd || (cands > 0 && hashed == 0))) print "redo"
    else print (NR == n ? "checked " ok : "incomplete")
}'
if [ -z "$answer" ]; then
    answer=redo
    if [ -n "$direct" ]; then
        answer=$(awk "$answer_awk" n="$n" hashes="$work.hashes" sums="$work.sums" "$work.list")
    fi
fi
if [ "${answer##*"$nl"}" = redo ]; then
    true 2>/dev/null >"$work.result" || fail 3 "cannot write under $rundir"
    if [ -s "$work.sums" ]; then
        sums_check "$target" "$bytes" <"$work.sums" >"$work.result" 2>/dev/null
    fi
    answer=$(awk "$answer_awk" n="$n" hashes= result="$work.result" "$work.list")
fi
case ${answer##*"$nl"} in
    'checked '*) ;;
    *) fail 3 "cannot write under $rundir: its check list is incomplete" ;;
esac
printf 'base %s\n' "$BASE"
for tool in $lacks; do
    printf 'lacks %s\n' "$tool"
done
# a check that stays may run the payload itself where it leads its process
# group (sshd's setsid; not under dropbear), which the run's watcher ends
if [ -n "${pushrun_linger:-}" ] && kill -0 -$$ 2>/dev/null; then
    echo runs
fi
printf '%s\n' "$answer"
[ -n "${pushrun_linger:-}" ] || exit 0

# ---------------------------------------------------------------- then
# what the EXIT trap would do at the end of a check that went well, but
# for the work files (tidy)
tidy lingering
trap - EXIT

# leaves the run dir to whoever holds it (run.sh, a collect of its own,
# the guard)
leave() {
    exit 0
}

# what this check sends from here is the next script's: the frame marker
frame() {
    echo pushrun-frame-start-5e1f
    echo pushrun-frame-start-5e1f >&2
}

# "run NONCE COUNT" and COUNT lines of shell text ("set --" with run.sh's
# arguments, and pushrun_env: the exports of the payload's environment):
# runs the payload here, as run.sh would (runlib.sh), its output this
# channel's, then says how it ended and collects. The initiator keeps
# stdin open meanwhile, for the watcher ("stop", or its end).
run_here() {
    set -f
    # shellcheck disable=SC2086 # three words, no globbing
    set -- $next
    set +f
    nonce=${2:-} count=${3:-}
    case $nonce in '' | *[!0-9a-f]*) leave ;; esac
    case $count in '' | *[!0-9]*) leave ;; esac
    text=
    while [ "$count" -gt 0 ] && IFS= read -r line; do
        text=$text$line$nl
        count=$((count - 1))
    done
    [ "$count" = 0 ] || leave
    frame
    # from here every way out removes the run dir; the watcher's TERM
    # (a timeout, or the initiator gone) is caught: it ends the payload
    trap_cleanup collect_cleanup
    termed=
    trap 'termed=1' TERM
    pushrun_env=
    eval "$text"
    if run_enter "$@"; then
        shift 5
        # shellcheck disable=SC2034 # read by the watcher (runlib.sh)
        pg=$$
        run_watch
        # the payload's environment in its own process only: the collect
        # after it runs in this shell's
        # shellcheck disable=SC2154 # payload, entry, watcher: runlib.sh
        (eval "$pushrun_env" && run_env && exec "$payload/$entry" "$@" </dev/null)
        rc=$?
        # the watcher's TERM (a timeout, or the initiator gone): it ends
        # what is left of the run, then goes (and on the end of stdin takes
        # the run dir); otherwise it is not needed any more
        if [ -n "$termed" ]; then
            # shellcheck disable=SC2154 # watcher: runlib.sh
            wait "$watcher"
        else
            kill -KILL "$watcher" 2>/dev/null
        fi
    else
        rc=125
    fi
    # ended for the end of stdin: the initiator is gone, and so is the
    # run dir (the watcher's)
    [ -z "$termed" ] || [ -d "$rundir" ] || exit 0
    trap 'exit 143' TERM
    printf 'pushrun-end-%s %s\n' "$nonce" "$rc"
    printf 'pushrun-end-%s\n' "$nonce" >&2
    # shellcheck disable=SC2034 # read by collect_cleanup (collectlib.sh)
    collect_done=pushrun-done-$nonce
    collect_main "$BASE" "$run_id"
}

# "receive SIZE FORMAT" (see the top): the upload's files, received by
# receive.sh's work (receivelib.sh) in a subshell (its exits and traps its
# own) whose stdin is exactly SIZE bytes of this one's. They follow the
# line at once: this shell's read takes a byte at a time, and nothing comes
# after them before "received" (busybox's head reads a pipe ahead).
receive_here() {
    set -f
    # shellcheck disable=SC2086 # three words, no globbing
    set -- $next
    set +f
    size=${2:-} format=${3:-}
    case $size in '' | *[!0-9]*) leave ;; esac
    case $format in gz | tar) ;; *) leave ;; esac
    head -c "$size" | {
        (receive_main "$BASE" "$digest" "$run_id" "$mode" "$format")
        rc=$?
        # what the receive left of the upload (an end it did not need to
        # read, at most a block, or after a failure the rest), so that the
        # next word is read where it starts
        if [ "$rc" = 0 ]; then
            while IFS= read -r rest; do :; done
        else
            cat >/dev/null
        fi
        printf 'received %s\n' "$rc"
    }
}

while :; do
    next=
    IFS= read -r next || leave
    case $next in
        'receive '*) receive_here ;;
        collect)
            frame
            collect_main "$BASE" "$run_id"
            leave
            ;;
        'run '*)
            run_here
            leave
            ;;
        *) leave ;;
    esac
done
