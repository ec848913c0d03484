#!/bin/sh
# pushrun check: prepare this host's pushrun directory for one run and say
# which payload files must be uploaded.
#
# Invoked as: exec sh -c "$(cat check.sh)" pushrun-check REMOTE_TMP DIGEST RUN_ID MODE
#   REMOTE_TMP  absolute directory that holds BASE = REMOTE_TMP/.pushrun-<login user>
#   DIGEST      the payload's digest (lowercase hex)
#   RUN_ID      this run's id ([A-Za-z0-9][A-Za-z0-9._-]*)
#   MODE        cache: the payload lives in BASE/cache/DIGEST and is reused
#               nocache: the payload goes to BASE/runs/RUN_ID/payload, all of it
# stdin: the manifest:
#   pushrun-manifest 1
#   <sha256 hex> <755|644> <size> <path>        (one line per payload file)
#
# What it does: creates BASE (mode 0700) or refuses one that is a symlink, not
# a directory, not ours or not 0700 (in a shared /tmp any of those may be an
# attack); creates BASE/runs/RUN_ID/out and writes BASE/runs/RUN_ID/digest;
# in cache mode verifies every manifest file already in BASE/cache/DIGEST
# (regular file, not a symlink, exec bit as the mode says, sha256 matches:
# one sha256sum process for all of them, and no marker file is trusted);
# under BASE/lock does the housekeeping: drops uploads abandoned for over an
# hour, run directories older than 24 hours, and all but the 3 most recently
# used cached payloads (never one that a run directory names).
#
# stdout, one item a line:
#   base <absolute BASE>
#   need <path>               (a file to upload, in manifest order)
#   checked <n>               (last line: how many files were found intact)
# or, on failure, the single line
#   error <message>
# Exit codes: 0 done; 3 error (refused BASE, bad arguments or manifest, lock
# timeout, cannot write); 4 a tool pushrun needs is missing on this host.

umask 077
LC_ALL=C
export LC_ALL

[ $# -eq 4 ] || fail 3 "usage: check.sh REMOTE_TMP DIGEST RUN_ID MODE (got $# arguments)"
tmp=$1 digest=$2 run_id=$3 mode=$4

for tool in sha256sum tar gzip awk; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail 4 "this host has no $tool (pushrun needs coreutils or busybox)"
done

case $tmp in
    /*) ;;
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
IFS= read -r header
[ "$header" = 'pushrun-manifest 1' ] || fail 3 "unexpected manifest header '$header'"

# ---------------------------------------------------------------- BASE
base_of "$tmp"

if [ ! -e "$BASE" ] && [ ! -L "$BASE" ]; then
    # another check may create it at the same moment: then validate theirs
    if ! err=$(mkdir "$BASE" 2>&1); then
        if [ ! -e "$BASE" ] && [ ! -L "$BASE" ]; then
            fail 3 "cannot create $BASE: $(reason "$err")"
        fi
    else
        chmod 700 "$BASE" || fail 3 "cannot set the mode of $BASE"
    fi
fi
base_check

# ---------------------------------------------------------------- lock
# BASE/lock (see lib.sh) is held only for the housekeeping below
lock_held=

rundir=$BASE/runs/$run_id
work=$rundir/.check
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    rm -f "$work.list" "$work.sums" "$work.result"
    lock_release
}
trap_cleanup

# ------------------------------------------------- run dir, housekeeping
if [ "$mode" = cache ]; then
    target=$BASE/cache/$digest
else
    target=$rundir/payload
fi

lock_take || fail 3 "cannot create $BASE/lock: $(reason "$err")"
err=$(mkdir -p "$BASE/cache" "$BASE/runs" "$rundir/out" 2>&1) ||
    fail 3 "cannot write under $BASE: $(reason "$err")"
# the digest file is written under the lock, so that no eviction running
# now can take the payload this run is about to use
printf '%s\n' "$digest" >"$rundir/digest" ||
    fail 3 "cannot write under $BASE: cannot write $rundir/digest"
if [ "$mode" = cache ]; then
    if [ -L "$target" ] || { [ -e "$target" ] && [ ! -d "$target" ]; }; then
        rm -f "$target"
    fi
    # the directory's mtime records its last use (for eviction)
    err=$({ mkdir -p "$target" && touch "$target"; } 2>&1) ||
        fail 3 "cannot write under $BASE: $(reason "$err")"
fi

# uploads abandoned for over an hour, runs that crashed over a day ago
find "$BASE/cache" -mindepth 1 -maxdepth 1 -name '.stage-*' -mmin +60 \
    -exec rm -rf {} \; 2>/dev/null
find "$BASE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} \; 2>/dev/null
# keep the 3 most recently used payloads, and every one a run still names
in_use=' '
for f in "$BASE"/runs/*/digest; do
    [ -f "$f" ] || continue
    d=
    read -r d 2>/dev/null <"$f"
    in_use="$in_use$d "
done
# payload directories are named by hex digests: ls -t is safe, and is the
# one portable way to sort by mtime
# shellcheck disable=SC2012
ls -t "$BASE/cache" 2>/dev/null | {
    kept=0
    while IFS= read -r d; do
        case $d in
            '' | *[!0-9a-f]*) continue ;; # not a payload directory
        esac
        if [ "$kept" -lt 3 ]; then
            kept=$((kept + 1))
            continue
        fi
        case $in_use in
            *" $d "*) continue ;;
        esac
        rm -rf "$BASE/cache/$d"
    done
}
lock_release

# ------------------------------------------------------------ manifest
# One awk reads the rest of the manifest, to its end, and checks every line
# with malformed() (lib.sh's manifest_awk): a sha256, a mode (755 or 644), a
# size and a safe relative path. It prints shell assignments (values
# single-quoted):
#   n         the number of lines
#   bad       0, or the number of the first malformed line; then badline is
#             that line and entries is empty
#   entries   "<sha256> <755|644> <path>" per line, in order
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
}
END {
    if (bad) {
        printf "n=%d bad=%d badline=%s%s%s\n", n, bad, sq, esc(badline), sq
    } else {
        printf "n=%d bad=0 entries=%s", n, sq
        for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "\n" : ""), esc(ent[i])
        printf "%s\n", sq
    }
    print "derived=1"
}'
# .list gets "N path" (needed) or "C path" (present, to be hashed) for each
# file; .sums gets a check line for sha256sum -c for each candidate
# (tried in a subshell first: a failed redirection of exec ends the shell)
(: >"$work.list" && : >"$work.sums") 2>/dev/null || fail 3 "cannot write under $rundir"
n=0 bad=0 badline='' entries='' derived=
vars=$(awk -v "sq='" "$validate")
eval "$vars"
[ "$derived" = 1 ] || fail 3 "cannot read the manifest"
[ "$bad" = 0 ] || fail 3 "bad manifest line $bad: '$badline'"
exec 6>"$work.list" 7>"$work.sums"
saved_ifs=$IFS
IFS='
'
set -f
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
    printf '%s %s\n' "$state" "$path" >&6
    if [ "$state" = C ]; then
        printf '%s  %s\n' "$sum" "$path" >&7
    fi
done
set +f
IFS=$saved_ifs
exec 6>&- 7>&-

# one sha256sum for every candidate; it prints "path: OK" per intact file,
# one result line per check line, in order
(: >"$work.result") 2>/dev/null || fail 3 "cannot write under $rundir"
if [ -s "$work.sums" ]; then
    (cd "$target" && sha256sum -c "$work.sums") >"$work.result" 2>/dev/null
fi

# a short .list (disk full) must not pass for "nothing needed"
listed=$(wc -l <"$work.list")
[ "${listed##* }" -eq "$n" ] || fail 3 "cannot write under $rundir: its check list is incomplete"

# one awk reads .list and the results in step; anything not plainly OK is
# needed
printf 'base %s\n' "$BASE"
# shellcheck disable=SC2016 # an awk program
awk '
BEGIN { ok = 0 }
{
    state = substr($0, 1, 1); path = substr($0, 3)
    if (state == "C") {
        res = ""
        if ((getline res < result) <= 0) res = ""
        if (res == path ": OK") { ok++; next }
    }
    print "need " path
}
END { print "checked " ok }' result="$work.result" "$work.list"
exit 0
