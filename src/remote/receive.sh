#!/bin/sh
# pushrun receive: take an upload of payload files, verify it, and install
# it into the cache (or into the run's own payload directory).
#
# Invoked as: pushrun-receive BASE DIGEST RUN_ID MODE [FORMAT]
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   BASE    the absolute BASE that check.sh printed
#   DIGEST  the payload's digest (lowercase hex)
#   RUN_ID  the run's id, as given to check.sh
#   MODE    cache: install into BASE/cache/DIGEST
#           nocache: install into BASE/runs/RUN_ID/payload
#   FORMAT  gz (the default): stdin is a tar.gz stream; tar: a plain tar
#           (files that do not compress: no gzip process on either end)
# stdin: a tar.gz (or tar) stream. Its first member is .pushrun-expect: manifest lines
#   without the header ("<sha256> <755|644> <size> <path>"), exactly one for
#   each file sent; then those files.
#
# What it does: extracts the stream into a fresh BASE/cache/.stage-RUN_ID,
# checks that it holds exactly the expected regular files (no symlinks),
# sets each file's mode as .pushrun-expect says (two chmod processes at
# most) and verifies every file's sha256 (one sha256sum process). Then it
# installs: when the target directory holds no file yet, the stage directory
# is renamed into place (one rename, under BASE/lock); otherwise each file is
# renamed into place, replacing what is there. Either way every file that
# appears in the target is complete and verified. The stage directory is
# removed on every outcome. No symlink under BASE is followed: one where
# BASE/cache, the target or anything inside the target belongs is removed
# (damage), a run dir (nocache) that is one is refused.
#
# stdout, one line:
#   installed <n>             (n files installed)
#   error <message>           on failure
# Exit codes: 0 installed; 3 error (bad arguments, refused BASE, lock
# timeout); 5 the upload arrived corrupt ("upload of <path> arrived
# corrupt", or a broken stream); 6 cannot write ("no space left on device
# under <dir>", or "cannot write under <dir>: <message>"); nothing is
# half-installed then.

umask 077
LC_ALL=C
export LC_ALL
nl='
'

# a failed write under DIR, with the failing command's error output TEXT
write_fail() { # DIR TEXT
    case $2 in
        *'No space left'*) fail 6 "no space left on device under $1" ;;
    esac
    fail 6 "cannot write under $1: $(reason "$2")"
}

# split one .pushrun-expect line into sum, fmode, size and path;
# 1 when it is malformed
parse() { # LINE
    sum=${1%% *} rest=${1#* }
    fmode=${rest%% *} rest=${rest#* }
    size=${rest%% *} path=${rest#* }
    case $sum in
        *[!0-9a-f]*) return 1 ;;
    esac
    [ ${#sum} -eq 64 ] || return 1
    case $fmode in
        755 | 644) ;;
        *) return 1 ;;
    esac
    case $size in
        '' | *[!0-9]*) return 1 ;;
    esac
    case $path in
        '' | /* | *\\* | .pushrun-expect) return 1 ;;
    esac
    case /$path/ in
        */../*) return 1 ;;
    esac
    return 0
}

# Runs COMMAND [ARGS...] on every line of LIST (paths: they hold no
# newline): one process for all when the argument list fits, else one per
# line. 0, or 1 with the failing command's error output in err.
on_lines() { # LIST COMMAND [ARGS...]
    items=$1
    shift
    saved_ifs=$IFS
    IFS=$nl
    set -f
    # shellcheck disable=SC2086 # split on newlines only, with no globbing
    if ! err=$("$@" $items 2>&1); then
        # too long for one command line, or a real failure: one by one
        for item in $items; do
            if ! err=$("$@" "$item" 2>&1); then
                IFS=$saved_ifs
                set +f
                return 1
            fi
        done
    fi
    IFS=$saved_ifs
    set +f
    return 0
}

[ $# -eq 4 ] || [ $# -eq 5 ] ||
    fail 3 "usage: receive.sh BASE DIGEST RUN_ID MODE [FORMAT] (got $# arguments)"
format=${5:-gz}
case $format in
    gz | tar) ;;
    *) fail 3 "bad format '$format' (gz or tar)" ;;
esac
BASE=$1 digest=$2 run_id=$3 mode=$4 target=
payload_target "$BASE" "$digest" "$run_id" "$mode"

# the same checks as check.sh, which created BASE
login_uid
base_check

# BASE/lock (see lib.sh) is held for the install
# shellcheck disable=SC2034 # read by lock_release (lib.sh, prepended to this)
lock_held=

stage=$BASE/cache/.stage-$run_id
expect=$stage.expect # beside the stage, so that it can be renamed whole
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    rc=$?
    if [ -e "$stage" ] || [ -L "$stage" ] || [ -e "$expect" ] || [ -L "$expect" ]; then
        rm -rf "$stage" "$expect"
    fi
    # an upload cut short by a full disk, a signal or a lost connection
    # (SIGPIPE on the answer) leaves no run dir behind to pin the cache
    # (after any other failure the initiator, still there, collects it)
    if [ "$rc" = 6 ] || [ "$rc" -gt 128 ]; then
        rm -rf "$BASE/runs/$run_id"
    fi
    lock_release
}
trap_cleanup

# ------------------------------------------------------------- extract
# Nothing under BASE is followed (a symlink there was planted by a run, or
# is damage): a symlink where the cache dir belongs goes, as check.sh does
# it; a run dir that is a symlink is refused, as collect.sh refuses it
[ ! -L "$BASE/cache" ] || rm -f "$BASE/cache"
if [ "$mode" = nocache ]; then
    for d in "$BASE/runs" "$BASE/runs/$run_id"; do
        if [ -L "$d" ]; then
            rm -f "$d"
            fail 3 "$d was a symlink: refusing to follow it"
        fi
    done
fi
# EXPECT is a directory: .pushrun-expect goes there as EXPECT/list
if [ -e "$stage" ] || [ -L "$stage" ] || [ -e "$expect" ] || [ -L "$expect" ]; then
    rm -rf "$stage" "$expect"
fi
err=$({ [ -d "$BASE/cache" ] || mkdir -p "$BASE/cache"; } 2>&1 &&
    mkdir "$stage" "$expect" 2>&1) || write_fail "$BASE" "$err"

# gzip -dc | tar -xf - (or tar alone), keeping both exit statuses (sh has
# no pipefail) and the tail of their messages (in a pipe: on a full disk
# no file takes them)
out=$(
    if [ "$format" = tar ]; then
        tar -C "$stage" -xof -
        echo "pushrun-rc tar $?"
    else
        { gzip -dc; echo "pushrun-rc gzip $?" >&2; } | tar -C "$stage" -xof -
        echo "pushrun-rc tar $?"
    fi 2>&1 | tail -n 20
)
gzip_rc='' tar_rc='' msg=''
saved_ifs=$IFS
IFS=$nl
set -f
for l in $out; do
    case $l in
        'pushrun-rc gzip '*) gzip_rc=${l##* } ;;
        'pushrun-rc tar '*) tar_rc=${l##* } ;;
        *'Exiting with failure status'*) ;;
        *) [ -n "$msg" ] || msg=$l ;;
    esac
done
set +f
IFS=$saved_ifs
if [ "$tar_rc" != 0 ]; then
    # ENOSPC, or the short write GNU tar reports without an errno
    case $out in
        *'No space left'* | *'Wrote only'*) fail 6 "no space left on device under $BASE" ;;
    esac
    # a tar stream cut short or garbled (GNU tar's words, busybox's)
    case $out in
        *'Unexpected EOF'* | *'does not look like a tar'* | *'Skipping to next header'* | \
            *'short read'* | *'invalid tar'*)
            fail 5 "upload arrived corrupt: ${msg:-tar failed}"
            ;;
    esac
    # gzip failing by itself (not killed by a signal) means a broken stream
    case $gzip_rc in
        '' | 0) ;;
        *) [ "$gzip_rc" -gt 128 ] || fail 5 "upload arrived corrupt: ${msg:-gzip failed}" ;;
    esac
    fail 6 "cannot write under $BASE: ${msg:-tar failed}"
fi

# -------------------------------------------------------------- verify
if [ ! -f "$stage/.pushrun-expect" ] || [ -L "$stage/.pushrun-expect" ]; then
    fail 5 "upload arrived corrupt: it has no .pushrun-expect"
fi
list=$expect/list
err=$(mv -f "$stage/.pushrun-expect" "$list" 2>&1) || write_fail "$BASE" "$err"

# One awk pass reads find's list of the stage (phase 1: "STAGE/path" for
# each regular file, "pushrun-odd" for anything that is neither a file nor
# a directory) and then .pushrun-expect (phase 2). It checks every line as
# parse() does (with lib.sh's malformed()) and prints shell assignments
# (every value single-quoted):
#   n, n755     lines, lines with mode 755
#   bad         0, or the number of the first malformed line (no lists then)
#   fast        1 when every listed path is a regular file found in the
#               stage, there is nothing else (no symlink anywhere, no odd
#               file) and the stage holds exactly n files
#   l755, l644  "STAGE/path" per line, by mode (for chmod)
#   sums        "<sha256>  <path>" per line (for sha256sum -c)
#   oks         "<path>: OK" per line (what sha256sum -c prints when intact)
#   ldirs       the target and the parent of every listed file in it, as
#               target_dirs did (for mkdir -p)
#   lpaths      the paths, in order
#   bytes       the files' sizes added up
#   derived=1   last: the output is complete
# shellcheck disable=SC2016 # an awk program
derive=$(manifest_awk)'
function norm(p, parts, m, i, o) {
    if (p ~ /\/$/ || p ~ /(^|\/)\.$/) return ""
    m = split(p, parts, "/")
    o = ""
    for (i = 1; i <= m; i++)
        if (parts[i] != "" && parts[i] != ".") o = o "/" parts[i]
    return o
}
function emit(name, arr, k, i) {
    printf "%s=%s", name, sq
    for (i = 1; i <= k; i++) printf "%s%s", (i > 1 ? "\n" : ""), esc(arr[i])
    printf "%s\n", sq
}
BEGIN {
    stage = ENVIRON["PUSHRUN_STAGE"]; target = ENVIRON["PUSHRUN_TARGET"]
    pfx = stage "/"; plen = length(pfx)
    odd = 0; files = 0; n = 0; n755 = 0; n644 = 0; bad = 0; fast = 1
    nd = 1; dirs[1] = target; last = ""
}
phase == 1 {
    files++
    if (substr($0, 1, plen) == pfx) found[substr($0, plen)] = 1
    else odd = 1
    next
}
phase == 2 {
    n++
    if (bad) next
    if (malformed($0)) {
        bad = n
        next
    }
    if (!(norm(path) in found)) fast = 0
    if (fmode == "755") l755[++n755] = stage "/" path
    else l644[++n644] = stage "/" path
    sums[n] = sum "  " path
    oks[n] = path ": OK"
    paths[n] = path
    bytes += size
    d = path
    sub(/\/[^\/]*$/, "", d)
    if (index(path, "/") && d != last) dirs[++nd] = target "/" d
    last = d
}
END {
    if (bad || odd || files != n) fast = 0
    printf "n=%d n755=%d bad=%d fast=%d bytes=%.0f\n", n, n755, bad, fast, bytes
    if (!bad) {
        emit("l755", l755, n755); emit("l644", l644, n644)
        emit("sums", sums, n); emit("oks", oks, n)
        emit("ldirs", dirs, nd); emit("lpaths", paths, n)
    }
    print "derived=1"
}'
n=0 n755=0 bad=0 fast=0 bytes=0 l755='' l644='' sums='' oks='' ldirs='' lpaths='' derived=
vars=$(find "$stage" -type f -print -o ! -type d -exec echo pushrun-odd \; 2>/dev/null |
    PUSHRUN_STAGE=$stage PUSHRUN_TARGET=$target awk -v "sq='" "$derive" phase=1 - phase=2 "$list")
eval "$vars"
[ "$derived" = 1 ] || write_fail "$BASE" "awk failed"

if [ "$fast" != 1 ]; then
    # something is wrong (or unusual): the checks one by one, in order, to
    # name the first problem
    # every listed file is there, a regular file
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        parse "$line" || fail 5 "upload arrived corrupt: bad line $n in .pushrun-expect: '$line'"
        if [ ! -f "$stage/$path" ] || [ -L "$stage/$path" ]; then
            fail 5 "upload of $path arrived corrupt"
        fi
    done <"$list"
    # nothing else: no symlink anywhere (a symlinked directory could point a
    # listed path outside the stage), and no file that was not listed
    odd=$(find "$stage" ! -type d ! -type f 2>/dev/null | head -n 1)
    [ -z "$odd" ] || fail 5 "upload arrived corrupt: ${odd#"$stage"/} is not a regular file"
    count=$(find "$stage" -type f 2>/dev/null | wc -l)
    count=${count##* } # busybox pads it
    [ "$count" -eq "$n" ] || fail 5 "upload arrived corrupt: it holds $count files, .pushrun-expect lists $n"
    [ "$bad" = 0 ] || fail 5 "upload arrived corrupt: bad line $bad in .pushrun-expect"
fi

# the modes .pushrun-expect gives (whatever the tar headers said): one
# chmod for the executables, one for the rest
if [ "$n755" -gt 0 ]; then
    on_lines "$l755" chmod 755 -- || write_fail "$BASE" "$err"
fi
if [ "$n755" -lt "$n" ]; then
    on_lines "$l644" chmod 644 -- || write_fail "$BASE" "$err"
fi

# one sha256sum (lib.sh: sums_check) for all files: intact when it prints
# "path: OK" for each
# line, in order; else the results are read in step with .pushrun-expect
# and the first file that is not plainly OK is named
if [ "$n" -gt 0 ]; then
    res=$(printf '%s\n' "$sums" | sums_check "$stage" "$bytes")
    if [ "$res" != "$oks" ]; then
        bad=$(
            printf '%s\n' "$sums" | sums_check "$stage" "$bytes" | {
                while IFS= read -r line <&5 || [ -n "$line" ]; do
                    parse "$line"
                    res=
                    IFS= read -r res
                    if [ "$res" != "$path: OK" ]; then
                        printf '%s' "$path"
                        exit 0
                    fi
                    line=
                done 5<"$list"
            }
        )
        [ -z "$bad" ] || fail 5 "upload of $bad arrived corrupt"
        # sha256sum said something else than it does for intact files
        fail 5 "upload arrived corrupt: sha256sum -c did not pass it"
    fi
fi

# ------------------------------------------------------------- install
lock_take || write_fail "$BASE" "$err"
parent=${target%/*}
if [ ! -d "$parent" ] || [ -L "$parent" ]; then
    err=$(mkdir -p "$parent" 2>&1) || write_fail "$parent" "$err"
fi
# a target that is a symlink is damage (its files would land where it
# points), and so is a symlink inside it (a file renamed into place below
# it would): removed, never written through. One with no entry at all (the
# check made it) needs no look inside.
[ ! -L "$target" ] || rm -f "$target"
empty=1
for f in "$target"/* "$target"/.[!.]* "$target"/..?*; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        empty=
        break
    fi
done
if [ -z "$empty" ]; then
    find "$target" -mindepth 1 ! -type d ! -type f -exec rm -f {} \; 2>/dev/null
    [ -n "$(find "$target" ! -type d 2>/dev/null | head -n 1)" ] || empty=1
fi
if [ -n "$empty" ]; then
    # no file there yet: the whole stage goes into place by one rename
    if [ -e "$target" ] || [ -L "$target" ]; then
        err=$(rm -rf "$target" 2>&1) || write_fail "$parent" "$err"
    fi
    err=$(mv -f "$stage" "$target" 2>&1) || write_fail "$parent" "$err"
else
    # some files are there (in use by runs): rename each new file over its
    # old copy; every rename is atomic. That needs no lock (the lock keeps
    # two receives from both taking the one-rename way, and this target has
    # files; a run directory naming DIGEST keeps eviction off it), so others
    # need not wait for what may be many renames.
    lock_release
    on_lines "$ldirs" mkdir -p -- || write_fail "$target" "$err"
    saved_ifs=$IFS
    IFS=$nl
    set -f
    for path in $lpaths; do
        t=$target/$path
        if [ -d "$t" ] || [ -L "$t" ]; then
            rm -rf "$t"
        fi
        err=$(mv -f "$stage/$path" "$t" 2>&1) || write_fail "$target" "$err"
    done
    set +f
    IFS=$saved_ifs
fi
# the lock and the expect dir go by one process (the stage is in place)
if [ -n "$lock_held" ]; then
    lock_release "$expect"
fi
printf 'installed %s\n' "$n"
exit 0
