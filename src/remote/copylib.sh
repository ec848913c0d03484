# shellcheck shell=sh # prepended to copy.sh and copy-plain.sh, never run as a file
# The pieces copy.sh and copy-plain.sh share: how they fail, why a tool
# failed, and how the staged entries are moved into place. Definitions
# only: nothing here runs until called.
# shellcheck disable=SC2317 # a script need not call every function here

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
# Sets into, the directory the entries are staged beside: DEST itself when
# it is a directory, else (for one entry, renamed to DEST) its parent.
# shellcheck disable=SC2154,SC2034 # dest is the calling script's, into for it
find_into() { # ENTRIES
    if [ -d "$dest" ]; then
        into=$dest
    elif [ "$1" -gt 1 ]; then
        if [ -e "$dest" ]; then fail "$dest: not a directory"; fi
        fail "$dest: no such directory"
    else
        into=$(dirname -- "$dest")
        [ -d "$into" ] || fail "$into: no such directory"
    fi
}
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
# Puts the staged entries of $tmp at $dest: into it (merging directories)
# when it is the directory $into, else the one entry FIRST renamed to it.
# shellcheck disable=SC2154 # into, dest and tmp are the calling script's
place() { # FIRST
    if [ "$into" = "$dest" ]; then
        merge "$tmp" "$dest" || exit 1
    elif isdir "$tmp/$1" && there "$dest"; then
        fail "$dest: not a directory"
    else
        err=$(mv -f -- "$tmp/$1" "$dest" 2>&1) || fail "$dest: $(why "$err")"
    fi
}
