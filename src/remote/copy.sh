# shellcheck shell=sh # sent to the host's sh -c, never run as a file
# pushrun copy: receive files and directories as a tar on stdin and put
# them at DEST, each file atomically (unpacked beside its place, then
# renamed over it), modes kept, owners not (the writing user owns them).
#
# Invoked as: sh -c "$(cat copy.sh)" pushrun-copy DEST NAME...
#
# NAME... are the archive's top-level entries. DEST is a directory to put
# them in, or, for a single NAME, the new name (as cp does). Answers
# nothing on success; `error REASON` and exit 1 otherwise; `lacks tar` and
# exit 1, before reading anything, on a host without tar.
# (fail, why, merge and place come first: copylib.sh)
# a host without tar: pushrun copies in steps instead (copy-plain.sh)
command -v tar >/dev/null 2>&1 || {
    echo 'lacks tar'
    exit 1
}
dest=$1
shift
into=
find_into "$#"
tmp=$into/.pushrun-copy.$$
trap 'rm -rf "$tmp"' EXIT
err=$(mkdir -m 700 "$tmp" 2>&1) || fail "cannot write in $into: $(why "$err")"
err=$(tar -x -o -p -f - -C "$tmp" 2>&1 >/dev/null) || fail "$dest: $(why "$err")"
place "$1"
