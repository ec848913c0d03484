#!/bin/sh
# pushrun collect: send back what a run left in its out directory, then
# remove the run's directory.
#
# Invoked as: pushrun-collect BASE RUN_ID
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs; or,
#   on a warm host, exec'd by the run's check on the check's own channel,
#   its text given to the check with the manifest: check.sh, "Then")
#   BASE    the absolute BASE that check.sh printed
#   RUN_ID  the run's id
# stdin: not read.
# stdout: a gzip'ed tar of BASE/runs/RUN_ID/out ("tar -cf - ." inside it,
#   through "gzip -1 -c"): names as they are (spaces, unicode), contents as
#   they are, empty directories, symlinks as symlinks. When there is no out
#   directory, an empty but valid tar.gz. On a host without tar or gzip,
#   the plain stream of plain-out.sh instead.
# stderr: a message when something failed.
# Exit codes: 0 sent; 3 bad arguments; 7 tar or gzip failed (what was sent
# is then incomplete). BASE/runs/RUN_ID is removed on every outcome.

die() { # CODE MESSAGE
    printf 'pushrun-collect: %s\n' "$2" >&2
    exit "$1"
}

[ $# -eq 2 ] || die 3 "usage: collect.sh BASE RUN_ID (got $# arguments)"
base=$1 run_id=$2
valid_base "$base" || die 3 "bad BASE '$base'"
# the run id becomes part of a path given to rm -rf: nothing but a name
valid_run_id "$run_id" || die 3 "bad run id '$run_id'"
rundir=$base/runs/$run_id
out=$rundir/out
# BASE again: check.sh's checks held then, they must still hold now
# shellcheck disable=SC2034 # read by base_recheck (lib.sh)
BASE=$base
why=$(base_recheck) || die 3 "${why#error }"
for d in "$base/runs" "$rundir" "$out"; do
    if [ -L "$d" ]; then
        rm -f "$d"
        die 3 "$d was a symlink: refusing to follow it"
    fi
done

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    # the archive (or the error message) is complete: end our streams
    # first, so that the initiator can tell the time spent sending from the
    # time spent removing (sshd reports the end of output only once stdin,
    # stdout and stderr are all closed)
    exec 0<&- 1>&- 2>&-
    # the run dir and the file saying who held it (check.sh)
    rm -rf "$rundir" "$base/owners/$run_id"
}
trap_cleanup

# a run stopped on timeout: wait (at most 10 s) until run.sh has ended its
# processes, so that what comes back is what they left
waited=0
while [ -e "$rundir/.stopping" ] && [ "$waited" -lt 100 ]; do
    nap
    # shellcheck disable=SC2154 # nap (lib.sh, prepended to this) sets nap_tenths
    waited=$((waited + nap_tenths))
done

if ! command -v tar >/dev/null 2>&1 || ! command -v gzip >/dev/null 2>&1; then
    # no tar or gzip here: plain entries (plain-out.sh, prepended to this)
    plain_out "$out" || die 7 "cannot send $out"
    exit 0
fi

if [ ! -d "$out" ] || [ -L "$out" ]; then
    # an empty archive: two zero blocks
    head -c 1024 /dev/zero | gzip -1 -c || die 7 "gzip failed"
    exit 0
fi

# tar | gzip, keeping both exit statuses (sh has no pipefail): the data goes
# to our stdout through fd 4, the statuses to the command substitution
exec 4>&1
rcs=$(
    {
        { (cd "$out" && tar -cf - .); echo "tar $?" >&3; } | gzip -1 -c >&4
        echo "gzip $?" >&3
    } 3>&1
)
exec 4>&-
# rcs is "tar N", a newline, "gzip M"
tar_rc=${rcs#tar }
tar_rc=${tar_rc%%[!0-9]*}
gzip_rc=${rcs##*gzip }
[ "${tar_rc:-1}" = 0 ] || die 7 "tar failed (status ${tar_rc:-unknown}) on $out"
[ "$gzip_rc" = 0 ] || die 7 "gzip failed (status $gzip_rc) while sending $out"
exit 0
