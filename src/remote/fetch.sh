# shellcheck shell=sh # sent to the host's sh -c, never run as a file
# pushrun fetch: send files and directories back as tar archives, one
# after the other on stdout, each holding one PATH under its own name; on a
# host without tar, as one stream of plain entries (plain-out.sh).
#
# Invoked as: sh -c "$(cat fetch.sh)" pushrun-fetch PATH...
#
# Nothing is sent unless every PATH is there. Problems go to stderr (the
# last line says why) with a non-zero exit.
for p in "$@"; do
    if [ ! -e "$p" ] && [ ! -L "$p" ]; then
        echo "$p: no such file or directory" >&2
        exit 1
    fi
done
if ! command -v tar >/dev/null 2>&1; then
    # no tar here: one stream of plain entries (plain-out.sh, prepended)
    printf 'pushrun-plain 1\n'
    for p in "$@"; do
        plain_path "$p" "$(basename -- "$p")" || exit 1
    done
    printf 'end\n'
    exit 0
fi
for p in "$@"; do
    (cd -- "$(dirname -- "$p")" && exec tar -c -f - -- "$(basename -- "$p")") || exit 1
done
