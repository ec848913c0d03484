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
fail() {
    echo "error $*"
    exit 1
}
# Why a tool failed, from what it said: the usual causes by name, else the
# end of its first line (tar's last line only says that it failed).
why() {
    case $1 in
    *"No space left"* | *"Wrote only"*) echo "no space left on device" ;;
    *"Permission denied"*) echo "permission denied" ;;
    *"Read-only file system"*) echo "read-only file system" ;;
    *)
        first=$(printf '%s\n' "$1" | sed -n '1p')
        printf '%s\n' "${first##*: }"
        ;;
    esac
}
# a host without tar: pushrun copies in steps instead (copy-plain.sh)
command -v tar >/dev/null 2>&1 || {
    echo 'lacks tar'
    exit 1
}
dest=$1
shift
if [ -d "$dest" ]; then
    into=$dest
elif [ "$#" -gt 1 ]; then
    if [ -e "$dest" ]; then fail "$dest: not a directory"; fi
    fail "$dest: no such directory"
else
    into=$(dirname -- "$dest")
    [ -d "$into" ] || fail "$into: no such directory"
fi
tmp=$into/.pushrun-copy.$$
trap 'rm -rf "$tmp"' EXIT
err=$(mkdir -m 700 "$tmp" 2>&1) || fail "cannot write in $into: $(why "$err")"
err=$(tar -x -o -p -f - -C "$tmp" 2>&1 >/dev/null) || fail "$dest: $(why "$err")"
# Whether $1 is a directory, not a symlink to one.
isdir() { [ -d "$1" ] && [ ! -L "$1" ]; }
# Whether $1 is there at all (a dangling symlink is).
there() { [ -e "$1" ] || [ -L "$1" ]; }
# Moves what directory $1 holds into directory $2: directories that are
# there on both sides are merged, everything else goes by one rename each,
# all in one `mv` per directory.
merge() (
    src=$1 dst=$2
    set --
    for c in "$src"/* "$src"/.[!.]* "$src"/..?*; do
        there "$c" || continue
        t=$dst/${c##*/}
        if isdir "$c" && isdir "$t"; then
            merge "$c" "$t" || exit 1
            continue
        fi
        if isdir "$c" && there "$t"; then fail "$t: not a directory"; fi
        if isdir "$t"; then fail "$t: is a directory"; fi
        set -- "$@" "$c"
    done
    [ "$#" -eq 0 ] && exit 0
    err=$(mv -f -- "$@" "$dst/" 2>&1) || fail "$dst: $(why "$err")"
)
if [ "$into" = "$dest" ]; then
    merge "$tmp" "$dest" || exit 1
elif isdir "$tmp/$1" && there "$dest"; then
    fail "$dest: not a directory"
else
    err=$(mv -f -- "$tmp/$1" "$dest" 2>&1) || fail "$dest: $(why "$err")"
fi
