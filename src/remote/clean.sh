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

[ $# -eq 1 ] || fail 3 "usage: clean.sh REMOTE_TMP (got $# arguments)"
tmp=$1
case $tmp in
    /*) ;;
    *) fail 3 "remote_tmp must be an absolute path, not '$tmp'" ;;
esac
base_of "$tmp"

if [ ! -e "$BASE" ] && [ ! -L "$BASE" ]; then
    printf 'absent %s\n' "$BASE"
    exit 0
fi
base_check

# wait for BASE/lock as check.sh and receive.sh take it (a lock older than
# 10 minutes is stale); holding it, remove BASE, the lock with it
lock_take || fail 3 "cannot create $BASE/lock: $(reason "$err")"

err=$(rm -rf "$BASE" 2>&1) || fail 3 "cannot remove $BASE: $(reason "$err")"
printf 'removed %s\n' "$BASE"
exit 0
