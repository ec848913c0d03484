#!/bin/sh
# pushrun clean: remove this host's whole pushrun directory (cache and runs).
#
# Invoked as: exec sh -c "$(cat clean.sh)" pushrun-clean REMOTE_TMP
#   REMOTE_TMP  absolute directory that holds BASE = REMOTE_TMP/.pushrun-<login user>
# stdin: not read.
#
# BASE is checked as check.sh checks it: a symlink, something that is not a
# directory, a directory of another user or one not of mode 0700 is refused
# and left alone (never followed: removing through a link planted in a
# shared /tmp would remove someone else's files). Before removing, it waits
# (up to 30 s) for BASE/lock, so that no upload is being installed meanwhile.
#
# stdout, one line:
#   removed <BASE>
#   absent <BASE>             (there was nothing to remove)
#   error <message>
# Exit codes: 0 removed or absent; 3 error.

LC_ALL=C
export LC_ALL

fail() { # MESSAGE
    printf 'error %s\n' "$1"
    exit 3
}

# the last line of a command's error output, without the "prog: " noise
reason() { # TEXT
    r=$(printf '%s\n' "$1" | tail -n 1)
    case $r in
        *': '*) r=${r##*: } ;;
    esac
    printf '%s' "${r:-unknown error}"
}

[ $# -eq 1 ] || fail "usage: clean.sh REMOTE_TMP (got $# arguments)"
tmp=$1
case $tmp in
    /*) ;;
    *) fail "remote_tmp must be an absolute path, not '$tmp'" ;;
esac
uid=$(id -u) || fail "cannot tell the login user's uid"
user=$(id -un 2>/dev/null) || user=$uid
while :; do
    case $tmp in
        ?*/) tmp=${tmp%/} ;;
        *) break ;;
    esac
done
BASE=${tmp%/}/.pushrun-$user

if [ ! -e "$BASE" ] && [ ! -L "$BASE" ]; then
    printf 'absent %s\n' "$BASE"
    exit 0
fi
[ -L "$BASE" ] && fail "$BASE is a symlink: refusing to use it"
[ -d "$BASE" ] || fail "$BASE is not a directory: refusing to use it"
st=$(stat -c '%u %a' "$BASE" 2>/dev/null) || fail "cannot stat $BASE"
owner=${st%% *} perm=${st#* }
[ "$owner" = "$uid" ] || fail "$BASE is owned by uid $owner, not $uid: refusing to use it"
[ "$perm" = 700 ] || fail "$BASE has mode $perm, not 700"

# wait for BASE/lock as check.sh and receive.sh take it (a lock older than
# 10 minutes is stale); holding it, remove BASE, the lock with it
tenths=0 tick=
while ! mkdir "$BASE/lock" 2>/dev/null; do
    if [ ! -d "$BASE/lock" ]; then
        err=$(mkdir "$BASE/lock" 2>&1) && break
        [ -d "$BASE/lock" ] && continue
        fail "cannot create $BASE/lock: $(reason "$err")"
    fi
    if [ -n "$(find "$BASE/lock" -maxdepth 0 -mmin +10 2>/dev/null)" ]; then
        rm -rf "$BASE/lock"
        continue
    fi
    if [ "$tenths" -ge 300 ]; then
        holder=
        read -r holder 2>/dev/null <"$BASE/lock/pid"
        fail "timed out after 30 s waiting for $BASE/lock (held by pid ${holder:-unknown})"
    fi
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
printf '%s\n' "$$" 2>/dev/null >"$BASE/lock/pid"

err=$(rm -rf "$BASE" 2>&1) || fail "cannot remove $BASE: $(reason "$err")"
printf 'removed %s\n' "$BASE"
exit 0
