#!/bin/sh
# pushrun's results without tar or gzip: collect.sh sends a run's out
# directory this way where the host has neither (or lacks one of them). It
# is prepended to collect.sh (after lib.sh) and holds function definitions
# only. The initiator reads exact counts, checks every digest and rebuilds
# the tar.gz that tar and gzip would have sent (src/fleet/plain.rs).
#
# The stream: the line "pushrun-plain 1", then one entry per file, dir or
# other thing under the out directory (a dir before what it holds), each a
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
# the out directory. A file that changes while it is sent gives a SIZE its
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

# sends every entry of directory DIR, whose names below the out directory
# start with PREFIX (empty, or ending in /); subdirectories in subshells
plain_walk() { # DIR PREFIX
    for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        [ -e "$f" ] || [ -L "$f" ] || continue # a pattern that matched nothing
        name=$2${f##*/}
        if [ -L "$f" ]; then
            plain_entry l "$f" "$name" || return 1
        elif [ -d "$f" ]; then
            plain_entry d "$f" "$name" || return 1
            (plain_walk "$f" "$name/") || return 1
        elif [ -f "$f" ]; then
            plain_entry f "$f" "$name" || return 1
        else
            plain_entry o "$f" "$name" || return 1
        fi
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
