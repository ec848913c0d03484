# shellcheck shell=sh # prepended to collect.sh and to the lingering check, never run as a file
# pushrun collectlib: collect.sh's work as a function, for collect.sh and
# for a check that becomes the collect on its own channel, in its own shell
# (check.sh, "Then"): collect_main BASE RUN_ID sends what the run left in
# its out directory (see collect.sh) and ends the shell, having removed the
# run's directory, on every outcome.

collect_die() { # CODE MESSAGE
    printf 'pushrun-collect: %s\n' "$2" >&2
    exit "$1"
}

# shellcheck disable=SC2317 # run by the EXIT trap
collect_cleanup() {
    # a check that ran the payload marks the end of the archive and of the
    # message (what follows is the output of processes the payload left
    # running: check.sh, "Then"); a broken stream is not a signal here
    if [ -n "${collect_done:-}" ]; then
        trap '' PIPE
        printf '%s\n' "$collect_done" 2>/dev/null
        printf '%s\n' "$collect_done" >&2 2>/dev/null
    fi
    # the archive (or the error message) is complete: end our streams
    # first, so that the initiator can tell the time spent sending from the
    # time spent removing (sshd reports the end of output only once stdin,
    # stdout and stderr are all closed)
    exec 0<&- 1>&- 2>&-
    # the run dir and the file saying who held it (check.sh)
    rm -rf "$rundir" "$base/owners/$run_id"
}

collect_main() { # BASE RUN_ID
    [ $# -eq 2 ] || collect_die 3 "usage: collect.sh BASE RUN_ID (got $# arguments)"
    base=$1 run_id=$2
    valid_base "$base" || collect_die 3 "bad BASE '$base'"
    # the run id becomes part of a path given to rm -rf: nothing but a name
    valid_run_id "$run_id" || collect_die 3 "bad run id '$run_id'"
    rundir=$base/runs/$run_id
    out=$rundir/out
    # BASE again: check.sh's checks held then, they must still hold now
    # shellcheck disable=SC2034 # read by base_recheck (lib.sh)
    BASE=$base
    why=$(base_recheck) || collect_die 3 "${why#error }"
    for d in "$base/runs" "$rundir" "$out"; do
        if [ -L "$d" ]; then
            rm -f "$d"
            collect_die 3 "$d was a symlink: refusing to follow it"
        fi
    done

    trap_cleanup collect_cleanup

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
        plain_out "$out" || collect_die 7 "cannot send $out"
        exit 0
    fi

    if [ ! -d "$out" ] || [ -L "$out" ]; then
        # an empty archive: two zero blocks
        head -c 1024 /dev/zero | gzip -1 -c || collect_die 7 "gzip failed"
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
    [ "${tar_rc:-1}" = 0 ] || collect_die 7 "tar failed (status ${tar_rc:-unknown}) on $out"
    [ "$gzip_rc" = 0 ] || collect_die 7 "gzip failed (status $gzip_rc) while sending $out"
    exit 0
}
