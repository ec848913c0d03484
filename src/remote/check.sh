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

fail() { # CODE MESSAGE
    printf 'error %s\n' "$2"
    exit "$1"
}

# the last line of a command's error output, without the "prog: " noise
reason() { # TEXT
    r=$(printf '%s\n' "$1" | tail -n 1)
    case $r in
        *': '*) r=${r##*: } ;;
    esac
    printf '%s' "${r:-unknown error}"
}

# split one manifest line into sum, fmode, size and path; 1 when malformed
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

[ $# -eq 4 ] || fail 3 "usage: check.sh REMOTE_TMP DIGEST RUN_ID MODE (got $# arguments)"
tmp=$1 digest=$2 run_id=$3 mode=$4

for tool in sha256sum tar gzip; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail 4 "this host has no $tool (pushrun needs coreutils or busybox)"
done

case $tmp in
    /*) ;;
    *) fail 3 "remote_tmp must be an absolute path, not '$tmp'" ;;
esac
case $digest in
    '' | *[!0-9a-f]*) fail 3 "bad payload digest '$digest'" ;;
esac
case $run_id in
    [A-Za-z0-9]*) ;;
    *) fail 3 "bad run id '$run_id'" ;;
esac
case $run_id in
    *[!A-Za-z0-9._-]*) fail 3 "bad run id '$run_id'" ;;
esac
case $mode in
    cache | nocache) ;;
    *) fail 3 "bad mode '$mode' (cache or nocache)" ;;
esac

# the manifest's header first: a wrong one changes nothing on the host
header=
IFS= read -r header
[ "$header" = 'pushrun-manifest 1' ] || fail 3 "unexpected manifest header '$header'"

# ---------------------------------------------------------------- BASE
uid=$(id -u) || fail 3 "cannot tell the login user's uid"
user=$(id -un 2>/dev/null) || user=$uid
while :; do
    case $tmp in
        ?*/) tmp=${tmp%/} ;;
        *) break ;;
    esac
done
BASE=${tmp%/}/.pushrun-$user

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
[ -L "$BASE" ] && fail 3 "$BASE is a symlink: refusing to use it"
[ -d "$BASE" ] || fail 3 "$BASE is not a directory: refusing to use it"
st=$(stat -c '%u %a' "$BASE" 2>/dev/null) || fail 3 "cannot stat $BASE"
owner=${st%% *} perm=${st#* }
[ "$owner" = "$uid" ] || fail 3 "$BASE is owned by uid $owner, not $uid: refusing to use it"
[ "$perm" = 700 ] || fail 3 "$BASE has mode $perm, not 700"

# ---------------------------------------------------------------- lock
# BASE/lock is a mkdir lock holding the owner's pid. A lock older than 10
# minutes is stale and broken. Waits up to 30 s; 1 on timeout.
lock_held=
lock_take() {
    tenths=0 tick=
    while ! mkdir "$BASE/lock" 2>/dev/null; do
        if [ ! -d "$BASE/lock" ]; then
            # not held by anyone: a real failure (or it was just released)
            err=$(mkdir "$BASE/lock" 2>&1) && break
            [ -d "$BASE/lock" ] && continue
            fail 3 "cannot create $BASE/lock: $(reason "$err")"
        fi
        if [ -n "$(find "$BASE/lock" -maxdepth 0 -mmin +10 2>/dev/null)" ]; then
            rm -rf "$BASE/lock"
            continue
        fi
        [ "$tenths" -ge 300 ] && return 1
        if [ -z "$tick" ]; then
            # learn once whether sleep takes fractions (GNU and busybox do)
            if sleep 0.1 2>/dev/null; then tick=1; else tick=10 && sleep 1; fi
        elif [ "$tick" = 1 ]; then
            sleep 0.1
        else
            sleep 1
        fi
        tenths=$((tenths + tick))
    done
    lock_held=1
    printf '%s\n' "$$" 2>/dev/null >"$BASE/lock/pid"
    return 0
}
lock_release() {
    [ -n "$lock_held" ] || return 0
    lock_held=
    owner=
    read -r owner 2>/dev/null <"$BASE/lock/pid"
    # not ours any more if it was broken as stale and taken by another
    case $owner in
        '' | "$$") rm -rf "$BASE/lock" ;;
    esac
}
lock_holder() {
    holder=
    read -r holder 2>/dev/null <"$BASE/lock/pid"
    printf '%s' "${holder:-unknown}"
}

rundir=$BASE/runs/$run_id
work=$rundir/.check
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    rm -f "$work.list" "$work.sums" "$work.result"
    lock_release
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# ------------------------------------------------- run dir, housekeeping
if [ "$mode" = cache ]; then
    target=$BASE/cache/$digest
else
    target=$rundir/payload
fi

lock_take || fail 3 "timed out after 30 s waiting for $BASE/lock (held by pid $(lock_holder))"
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
# Pass 1 reads the rest of the manifest with builtins only. Each file goes
# to .list as "N path" (needed) or "C path" (present, to be hashed); each
# candidate goes to .sums as a check line for sha256sum -c.
# (tried in a subshell first: a failed redirection of exec ends the shell)
(: >"$work.list" && : >"$work.sums") 2>/dev/null || fail 3 "cannot write under $rundir"
exec 6>"$work.list" 7>"$work.sums"
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    parse "$line" || fail 3 "bad manifest line $n: '$line'"
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

# Pass 2: read .list and the results in step; anything not plainly OK is
# needed.
printf 'base %s\n' "$BASE"
ok=0
exec 5<"$work.result"
while IFS= read -r entry; do
    state=${entry%% *} path=${entry#* }
    if [ "$state" = C ]; then
        res=
        IFS= read -r res <&5
        if [ "$res" = "$path: OK" ]; then
            ok=$((ok + 1))
            continue
        fi
    fi
    printf 'need %s\n' "$path"
done <"$work.list"
exec 5<&-
printf 'checked %s\n' "$ok"
exit 0
