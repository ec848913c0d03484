#!/bin/sh
# pushrun clean: remove this host's whole pushrun directory (cache and runs).
#
# Invoked as: pushrun-clean REMOTE_TMP
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   REMOTE_TMP  absolute directory that holds BASE = REMOTE_TMP/.pushrun-<login user>,
#               or "auto": every BASE of check.sh's list (/tmp, /var/tmp,
#               /dev/shm, ~/.cache) that exists
# stdin: not read.
#
# BASE is checked as check.sh checks it: a symlink, something that is not a
# directory, a directory of another user or one not of mode 0700 is refused
# and left alone (never followed: removing through a link planted in a
# shared /tmp would remove someone else's files). Before removing, it waits
# (up to 30 s) for BASE/lock, so that no upload is being installed meanwhile.
#
# stdout, a line per BASE removed, or one line when there was none:
#   removed <BASE>
#   absent <BASE>             (there was nothing to remove)
#   error <message>
# Exit codes: 0 removed or absent; 3 error.

LC_ALL=C
export LC_ALL

[ $# -eq 1 ] || fail 3 "usage: clean.sh REMOTE_TMP (got $# arguments)"
tmp=$1
case $tmp in
    /*) set -- "$tmp" ;;
    auto) set -- /tmp /var/tmp /dev/shm "${HOME:-/nonexistent}/.cache" ;;
    *) fail 3 "remote_tmp must be an absolute path, not '$tmp'" ;;
esac

removed=
for dir in "$@"; do
    base_of "$dir"
    [ -e "$BASE" ] || [ -L "$BASE" ] || continue
    base_check
    lock_take || fail 3 "cannot create $BASE/lock: $(reason "$err")"
    err=$(rm -rf "$BASE" 2>&1) || fail 3 "cannot remove $BASE: $(reason "$err")"
    printf 'removed %s\n' "$BASE"
    removed=1
done
if [ -z "$removed" ]; then
    base_of "$1"
    printf 'absent %s\n' "$BASE"
fi
exit 0
