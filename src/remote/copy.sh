# shellcheck shell=sh # sent to the host's sh -c, never run as a file
# pushrun copy: receive files and directories as a tar on stdin and put
# them at DEST, each file atomically (unpacked beside its place, then
# renamed over it), modes kept, owners not (the writing user owns them).
#
# Invoked as: sh -c "$(cat copy.sh)" pushrun-copy DEST NAME...
#
# NAME... are the archive's top-level entries. DEST is a directory to put
# them in, or, for a single NAME, the new name (as cp does). Answers
# nothing on success; `error REASON` and exit 1 otherwise.
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
# Moves $1 to $2: a file (or a directory not yet there) by one rename, a
# directory that is there by moving what it holds, one by one.
place() (
    if [ -d "$1" ] && [ ! -L "$1" ]; then
        if [ -d "$2" ] && [ ! -L "$2" ]; then
            for c in "$1"/* "$1"/.[!.]* "$1"/..?*; do
                [ -e "$c" ] || [ -L "$c" ] || continue
                place "$c" "$2/${c##*/}" || exit 1
            done
            exit 0
        fi
        if [ -e "$2" ] || [ -L "$2" ]; then fail "$2: not a directory"; fi
    elif [ -d "$2" ] && [ ! -L "$2" ]; then
        fail "$2: is a directory"
    fi
    err=$(mv -f -- "$1" "$2" 2>&1) || fail "$2: $(why "$err")"
)
if [ "$into" = "$dest" ]; then
    for name in "$@"; do
        place "$tmp/$name" "$dest/$name" || exit 1
    done
else
    place "$tmp/$1" "$dest" || exit 1
fi
