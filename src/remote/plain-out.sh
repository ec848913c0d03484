#!/bin/sh
# pushrun's results without tar or gzip: collect.sh sends a run's out
# directory this way where the host lacks either, and fetch.sh its paths
# where the host has no tar. It is prepended to collect.sh (after lib.sh)
# and to fetch.sh, and holds function definitions only. The initiator reads exact counts, checks every digest and rebuilds
# the tar.gz that tar and gzip would have sent (src/fleet/plain.rs).
#
# The stream: the line "pushrun-plain 1", then one entry per file, dir or
# other thing under the out directory, or fetched (a dir before what it holds), each a
# header line then the entry's name, NAMELEN bytes (any byte but / and NUL,
# newlines included), and a newline:
#   d MODE NAMELEN            a directory
#   f MODE SIZE NAMELEN       a regular file; after its name, exactly SIZE
#                             bytes of content, then the line "sum <sha256>"
#                             of the file as read again after sending it
#   l NAMELEN                 a symlink (not followed; the initiator leaves
#                             it out, as it does one sent by tar)
#   o NAMELEN                 anything else (a fifo, a socket, a device)
# and last the line "end". MODE is octal (stat's %a), NAME the path below
# the out directory (for fetch.sh: below the fetched path's parent). A file that changes while it is sent gives a SIZE its
# content or "sum" line does not match: the initiator fails the host.

# sends entry NAME (KIND d, f, l or o) of the out directory, file FILE
plain_entry() { # KIND FILE NAME
    len=$(printf '%s' "$3" | wc -c) || return 1
    len=${len##* } # busybox pads it
    case $1 in
        d)
            st=$(stat -c '%a' "$2") || return 1
            printf 'd %s %s\n%s\n' "$st" "$len" "$3"
            ;;
        f)
            st=$(stat -c '%a %s' "$2") || return 1
            printf 'f %s %s\n%s\n' "$st" "$len" "$3"
            head -c "${st#* }" "$2" || return 1
            sum=$(sha256sum <"$2") || return 1
            printf 'sum %s\n' "${sum%% *}"
            ;;
        *) printf '%s %s\n%s\n' "$1" "$len" "$3" ;;
    esac
}

# sends FILE as entry NAME and, for a directory, all it holds (in a
# subshell: the walk's variables are its own)
plain_path() { # FILE NAME
    if [ -L "$1" ]; then
        plain_entry l "$1" "$2"
    elif [ -d "$1" ]; then
        plain_entry d "$1" "$2" && (plain_walk "$1" "$2/")
    elif [ -f "$1" ]; then
        plain_entry f "$1" "$2"
    else
        plain_entry o "$1" "$2"
    fi
}

# sends every entry of directory DIR, whose names start with PREFIX (empty,
# or ending in /)
plain_walk() { # DIR PREFIX
    for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        [ -e "$f" ] || [ -L "$f" ] || continue # a pattern that matched nothing
        plain_path "$f" "$2${f##*/}" || return 1
    done
}

# sends directory OUT (none: no entries) as the stream above
plain_out() { # OUT
    printf 'pushrun-plain 1\n'
    if [ -d "$1" ] && [ ! -L "$1" ]; then
        plain_walk "$1" '' || return 1
    fi
    printf 'end\n'
}
