#!/bin/sh
# pushrun put: take one payload file, verify it and install it into the
# cache (or into the run's own payload directory). It is the upload for a
# host without tar or gzip (check.sh says "lacks"), where receive.sh cannot
# unpack an archive: one put per file, each on a channel of its own, a few
# at once.
#
# Invoked as: pushrun-put BASE DIGEST RUN_ID MODE SHA256 FMODE PATH
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   BASE     the absolute BASE that check.sh printed
#   DIGEST   the payload's digest (lowercase hex)
#   RUN_ID   the run's id, as given to check.sh
#   MODE     cache: install into BASE/cache/DIGEST
#            nocache: install into BASE/runs/RUN_ID/payload
#   SHA256   the file's sha256 (64 lowercase hex), from the manifest
#   FMODE    755 or 644, from the manifest
#   PATH     the file's manifest path (relative, no .. component, no
#            backslash)
# stdin: the file's bytes, to their end (cat reads to EOF: exact, where a
#   count read from a pipe may come short).
#
# What it does: writes stdin to a fresh file beside the uploads' stage
# directories (BASE/cache/.stage-RUN_ID.put.PID: the target's file system,
# and swept with them by check.sh when abandoned), checks its sha256, sets
# FMODE, and renames it into place, replacing what is there. Nothing under
# the target is followed: a symlink or file where one of PATH's directories
# belongs, and a directory or symlink where the file belongs, are removed
# first. So every file that appears in the target is complete and verified.
# The temp file is removed on every outcome.
#
# stdout, one line:
#   installed 1
#   error <message>           on failure
# Exit codes: 0 installed; 3 error (bad arguments, refused BASE); 5 the file
# arrived corrupt ("upload of <path> arrived corrupt"); 6 cannot write ("no
# space left on device under <dir>", or "cannot write under <dir>: <message>").

umask 077
LC_ALL=C
export LC_ALL

# a failed write under DIR, with the failing command's error output TEXT
write_fail() { # DIR TEXT
    case $2 in
        *'No space left'*) fail 6 "no space left on device under $1" ;;
    esac
    fail 6 "cannot write under $1: $(reason "$2")"
}

[ $# -eq 7 ] || fail 3 "usage: put.sh BASE DIGEST RUN_ID MODE SHA256 FMODE PATH (got $# arguments)"
BASE=$1 digest=$2 run_id=$3 mode=$4 sum=$5 fmode=$6 path=$7 target=
payload_target "$BASE" "$digest" "$run_id" "$mode"
if ! valid_digest "$sum" || [ ${#sum} -ne 64 ]; then
    fail 3 "bad sha256 '$sum'"
fi
case $fmode in
    755 | 644) ;;
    *) fail 3 "bad file mode '$fmode' (755 or 644)" ;;
esac
case $path in
    '' | /* | */ | *\\* | .pushrun-expect) fail 3 "bad path '$path'" ;;
esac
case /$path/ in
    */../* | */./* | *//*) fail 3 "bad path '$path'" ;;
esac

# the same checks as check.sh, which created BASE
login_uid
base_check

tmp=$BASE/cache/.stage-$run_id.put.$$
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    rc=$?
    rm -f "$tmp"
    # cut short by a signal or a lost connection: no run dir is left to pin
    # the cache (after any other failure the initiator collects it)
    if [ "$rc" -gt 128 ]; then
        rm -rf "$BASE/runs/$run_id"
    fi
}
trap_cleanup

for d in "$BASE/cache" "$BASE/runs" "$BASE/runs/$run_id"; do
    [ ! -L "$d" ] || fail 3 "$d is a symlink: refusing to follow it"
done
err=$(cat 2>&1 >"$tmp") || write_fail "$BASE" "$err"
got=$(sha256sum <"$tmp") || fail 6 "cannot read back $tmp"
[ "${got%% *}" = "$sum" ] || fail 5 "upload of $path arrived corrupt"
err=$(chmod "$fmode" "$tmp" 2>&1) || write_fail "$BASE" "$err"

# the file's directories, one by one from the target down, following none
dir=$target
rest=$path
while :; do
    if [ -L "$dir" ] || { [ -e "$dir" ] && [ ! -d "$dir" ]; }; then
        rm -f "$dir"
    fi
    if [ ! -d "$dir" ]; then
        # another put may make it at the same time
        err=$(mkdir "$dir" 2>&1) || [ -d "$dir" ] || write_fail "$target" "$err"
    fi
    case $rest in
        */*) ;;
        *) break ;;
    esac
    dir=$dir/${rest%%/*}
    rest=${rest#*/}
done
t=$target/$path
# mv would move into a directory there, or into one a symlink names
if [ -d "$t" ] || [ -L "$t" ]; then
    rm -rf "$t"
fi
err=$(mv -f "$tmp" "$t" 2>&1) || write_fail "$target" "$err"
printf 'installed 1\n'
exit 0
