# shellcheck shell=sh # sent to the host's sh -c, never run as a file
# pushrun copy without tar: what copy.sh does with one tar, in steps, for a
# host that has no tar (copy.sh answers "lacks tar" there). Each step runs
# on a channel of its own over the same connection; files go up one per
# channel, a few at once.
#
# Invoked as: pushrun-copy-plain STEP DEST NTOP TOKEN ARGS...
#   DEST   as for copy.sh: a directory to put the top-level entries in, or,
#          when NTOP is 1, the new name (as cp does)
#   NTOP   how many top-level entries the copy has
#   TOKEN  names the stage directory INTO/.pushrun-copy.TOKEN ([A-Za-z0-9-]),
#          INTO being DEST or, for a new name, its parent
# STEP and its ARGS:
#   begin [d MODE NAME | l TARGET NAME]...
#          makes the stage directory (0700) and in it each directory (0700
#          until the end) and each symlink
#   file MODE SHA256 NAME
#          stdin: the file's bytes, to their end; written beside the others,
#          its sha256 checked, MODE set, renamed to NAME in the stage
#   finish [d MODE NAME]... -- TOP...
#          sets the directories' modes and moves the top-level entries into
#          place as copy.sh does: into DEST, directories there on both sides
#          merged, everything else by one rename each (or, for a new name,
#          the one entry renamed to DEST); the stage directory is removed
#   abort  removes the stage directory
# NAME is a path in the stage directory (relative, no .. component).
# Answers nothing on success; `error REASON` and exit 1 otherwise.
# (fail, why, merge and place come first: copylib.sh)
# Fails unless NAME is a relative path with no .. component.
safe_name() { # NAME
    case $1 in
    '' | /*) fail "bad name '$1'" ;;
    esac
    case /$1/ in
    */../*) fail "bad name '$1'" ;;
    esac
}
[ "$#" -ge 4 ] || fail "usage: copy-plain.sh STEP DEST NTOP TOKEN ARGS... (got $# arguments)"
step=$1 dest=$2 ntop=$3 token=$4
shift 4
case $token in
'' | *[!A-Za-z0-9-]*) fail "bad token '$token'" ;;
esac
into=
find_into "$ntop"
tmp=$into/.pushrun-copy.$token

case $step in
begin)
    err=$(mkdir -m 700 "$tmp" 2>&1) || fail "cannot write in $into: $(why "$err")"
    while [ "$#" -ge 3 ]; do
        safe_name "$3"
        case $1 in
        d) err=$(mkdir -p -- "$tmp/$3" 2>&1 && chmod 700 -- "$tmp/$3" 2>&1) || fail "$dest: $(why "$err")" ;;
        l) err=$(ln -s -- "$2" "$tmp/$3" 2>&1) || fail "$dest: $(why "$err")" ;;
        *) fail "bad entry kind '$1'" ;;
        esac
        shift 3
    done
    ;;
file)
    [ "$#" -eq 3 ] || fail "usage: copy-plain.sh file DEST NTOP TOKEN MODE SHA256 NAME"
    mode=$1 sum=$2 name=$3
    safe_name "$name"
    if [ ! -d "$tmp" ] || [ -L "$tmp" ]; then fail "$tmp: no stage directory"; fi
    part=$tmp/.pushrun-part.$$
    trap 'rm -f "$part"' EXIT
    err=$(cat 2>&1 >"$part") || fail "$dest: $(why "$err")"
    got=$(sha256sum <"$part") || fail "$dest: cannot read back what was sent"
    [ "${got%% *}" = "$sum" ] || fail "$name arrived corrupt"
    err=$(chmod "$mode" "$part" 2>&1) || fail "$dest: $(why "$err")"
    err=$(mv -f -- "$part" "$tmp/$name" 2>&1) || fail "$dest: $(why "$err")"
    ;;
finish)
    trap 'rm -rf "$tmp"' EXIT
    if [ ! -d "$tmp" ] || [ -L "$tmp" ]; then fail "$tmp: no stage directory"; fi
    while [ "$#" -ge 3 ] && [ "$1" = d ]; do
        safe_name "$3"
        err=$(chmod "$2" -- "$tmp/$3" 2>&1) || fail "$dest: $(why "$err")"
        shift 3
    done
    [ "${1:-}" = -- ] || fail "finish: no top-level names"
    shift
    place "$1"
    ;;
abort) rm -rf "$tmp" ;;
*) fail "bad step '$step'" ;;
esac
