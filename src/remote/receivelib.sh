#!/bin/sh
# shellcheck shell=sh
# receive.sh's work (receive_main), shared by receive.sh and by a check
# that takes the upload on its own channel (check.sh, "Then"): each has
# lib.sh before it. It holds function definitions only.
# shellcheck disable=SC2317 # a script need not call every function here
# shellcheck disable=SC2154 # nl: set by the script this is a part of

# a failed write under DIR, with the failing command's error output TEXT
write_fail() { # DIR TEXT
    case $2 in
        *'No space left'*) fail 6 "no space left on device under $1" ;;
    esac
    fail 6 "cannot write under $1: $(reason "$2")"
}

# split one .pushrun-expect line into sum, fmode, size and path;
# 1 when it is malformed
parse() { # LINE
    sum=${1%% *} rest=${1#* }
    fmode=${rest%% *} rest=${rest#* }
    size=${rest%% *} path=${rest#* }
    case $sum in
        *[!0-9a-f]*) return 1 ;;
    esac
    [ ${#sum} -eq 64 ] || return 1
    case $fmode in
        755 | 644) ;;
        *) return 1 ;;
    esac
    case $size in
        '' | *[!0-9]*) return 1 ;;
    esac
    case $path in
        '' | /* | *\\* | .pushrun-expect) return 1 ;;
    esac
    case /$path/ in
        */../*) return 1 ;;
    esac
    return 0
}

# Runs COMMAND [ARGS...] on every line of LIST (paths: they hold no
# newline): one process for all when the argument list fits, else one per
# line. 0, or 1 with the failing command's error output in err.
on_lines() { # LIST COMMAND [ARGS...]
    items=$1
    shift
    saved_ifs=$IFS
    IFS=$nl
    set -f
    # shellcheck disable=SC2086 # split on newlines only, with no globbing
    if ! err=$("$@" $items 2>&1); then
        # too long for one command line, or a real failure: one by one
        for item in $items; do
            if ! err=$("$@" "$item" 2>&1); then
                IFS=$saved_ifs
                set +f
                return 1
            fi
        done
    fi
    IFS=$saved_ifs
    set +f
    return 0
}

# the receive's EXIT trap: the stage goes on every outcome
receive_cleanup() {
    rc=$?
    if [ -e "$stage" ] || [ -L "$stage" ]; then
        rm -rf "$stage"
    fi
    # an upload cut short by a full disk, a signal or a lost connection
    # (SIGPIPE on the answer) leaves no run dir behind to pin the cache
    # (after any other failure the initiator, still there, collects it)
    if [ "$rc" = 6 ] || [ "$rc" -gt 128 ]; then
        rm -rf "$BASE/runs/$run_id"
    fi
    lock_release
}

# receive.sh's work (see its top): BASE DIGEST RUN_ID MODE [FORMAT], the
# upload on stdin; it ends the shell (exit), so a check runs it in a
# subshell
receive_main() { # BASE DIGEST RUN_ID MODE [FORMAT]
    [ $# -eq 4 ] || [ $# -eq 5 ] ||
        fail 3 "usage: receive.sh BASE DIGEST RUN_ID MODE [FORMAT] (got $# arguments)"
    format=${5:-gz}
    case $format in
        gz | tar) ;;
        *) fail 3 "bad format '$format' (gz or tar)" ;;
    esac
    BASE=$1 digest=$2 run_id=$3 mode=$4 target=
    payload_target "$BASE" "$digest" "$run_id" "$mode"

    # the same checks as check.sh, which created BASE
    login_uid
    base_check

    # BASE/lock (see lib.sh) is held for the install
    # shellcheck disable=SC2034 # read by lock_release (lib.sh, prepended to this)
    lock_held=

    stage=$BASE/cache/.stage-$run_id
    trap_cleanup receive_cleanup

    # ------------------------------------------------------------- extract
    # Nothing under BASE is followed (a symlink there was planted by a run, or
    # is damage): a symlink where the cache dir belongs goes, as check.sh does
    # it; a run dir that is a symlink is refused, as collect.sh refuses it
    [ ! -L "$BASE/cache" ] || rm -f "$BASE/cache"
    if [ "$mode" = nocache ]; then
        for d in "$BASE/runs" "$BASE/runs/$run_id"; do
            if [ -L "$d" ]; then
                rm -f "$d"
                fail 3 "$d was a symlink: refusing to follow it"
            fi
        done
    fi
    if [ -e "$stage" ] || [ -L "$stage" ]; then
        rm -rf "$stage"
    fi
    err=$({ [ -d "$BASE/cache" ] || mkdir -p "$BASE/cache"; } 2>&1 &&
        mkdir "$stage" 2>&1) || write_fail "$BASE" "$err"

    # gzip -dc | tar -xf - (or tar alone), keeping both exit statuses (sh has
    # no pipefail) and their messages (in a pipe: on a full disk no file
    # takes them; at most a line or two for each file, and only when it
    # fails). Under umask 022 the files get the modes of the headers pushrun
    # wrote (755 or 644: no chmod after), as root too.
    out=$(
        umask 022
        if [ "$format" = tar ]; then
            tar -C "$stage" -xof -
            echo "pushrun-rc tar $?"
        else
            { gzip -dc; echo "pushrun-rc gzip $?" >&2; } | tar -C "$stage" -xof -
            echo "pushrun-rc tar $?"
        fi 2>&1
    )
    gzip_rc='' tar_rc='' msg=''
    saved_ifs=$IFS
    IFS=$nl
    set -f
    for l in $out; do
        case $l in
            'pushrun-rc gzip '*) gzip_rc=${l##* } ;;
            'pushrun-rc tar '*) tar_rc=${l##* } ;;
            *'Exiting with failure status'*) ;;
            *) [ -n "$msg" ] || msg=$l ;;
        esac
    done
    set +f
    IFS=$saved_ifs
    if [ "$tar_rc" != 0 ]; then
        # ENOSPC, or the short write GNU tar reports without an errno
        case $out in
            *'No space left'* | *'Wrote only'*) fail 6 "no space left on device under $BASE" ;;
        esac
        # a tar stream cut short or garbled (GNU tar's words, busybox's)
        case $out in
            *'Unexpected EOF'* | *'does not look like a tar'* | *'Skipping to next header'* | \
                *'short read'* | *'invalid tar'*)
                fail 5 "upload arrived corrupt: ${msg:-tar failed}"
                ;;
        esac
        # gzip failing by itself (not killed by a signal) means a broken stream
        case $gzip_rc in
            '' | 0) ;;
            *) [ "$gzip_rc" -gt 128 ] || fail 5 "upload arrived corrupt: ${msg:-gzip failed}" ;;
        esac
        fail 6 "cannot write under $BASE: ${msg:-tar failed}"
    fi

    # -------------------------------------------------------------- verify
    if [ ! -f "$stage/.pushrun-expect" ] || [ -L "$stage/.pushrun-expect" ]; then
        fail 5 "upload arrived corrupt: it has no .pushrun-expect"
    fi
    # read where it is: it goes with the stage, or out of the target with
    # the lock
    list=$stage/.pushrun-expect

    # One awk pass reads find's list of the stage (phase 1: "STAGE/path" for
    # each regular file but .pushrun-expect, twice where its mode is
    # neither 755 nor 644 (find prints it again: no process for it),
    # "pushrun-odd" for anything that is neither a file nor a directory)
    # and then .pushrun-expect (phase 2).
    # It checks every line as parse() does (with lib.sh's malformed()) and
    # prints shell assignments (every value single-quoted):
    #   n           lines
    #   modes       1 when every file's mode is 755 or 644 (then its exec
    #               bit tells which)
    #   bad         0, or the number of the first malformed line (no lists then)
    #   fast        1 when every listed path is a regular file found in the
    #               stage, there is nothing else (no symlink anywhere, no odd
    #               file) and the stage holds exactly n files
    #   l755, l644  "STAGE/path" per line, by mode (for chmod)
    #   sums        "<sha256>  <path>" per line (for sha256sum -c)
    #   want        "<sha256> *./<path>" per line (what openssl dgst -r prints
    #               for intact files named ./<path>)
    #   dpaths      "./<path>" per line (openssl's operands)
    #   oks         "<path>: OK" per line (what sha256sum -c prints when intact)
    #   ldirs       the target and the parent of every listed file in it, as
    #               target_dirs did (for mkdir -p)
    #   lpaths      the paths, in order
    #   bytes       the files' sizes added up
    #   derived=1   last: the output is complete
    # shellcheck disable=SC2016 # an awk program
    derive=$(manifest_awk)'
    function norm(p, parts, m, i, o) {
        if (p ~ /\/$/ || p ~ /(^|\/)\.$/) return ""
        m = split(p, parts, "/")
        o = ""
        for (i = 1; i <= m; i++)
            if (parts[i] != "" && parts[i] != ".") o = o "/" parts[i]
        return o
    }
    function emit(name, arr, k, i) {
        printf "%s=%s", name, sq
        for (i = 1; i <= k; i++) printf "%s%s", (i > 1 ? "\n" : ""), esc(arr[i])
        printf "%s\n", sq
    }
    BEGIN {
        stage = ENVIRON["PUSHRUN_STAGE"]; target = ENVIRON["PUSHRUN_TARGET"]
        pfx = stage "/"; plen = length(pfx)
        odd = 0; modes = 1; files = 0; n = 0; n755 = 0; n644 = 0; bad = 0; fast = 1
        nd = 1; dirs[1] = target; last = ""
    }
    phase == 1 {
        if ($0 == pfx ".pushrun-expect") next
        if ($0 in listed) { modes = 0; next }
        listed[$0] = 1
        files++
        if (substr($0, 1, plen) == pfx) found[substr($0, plen)] = 1
        else odd = 1
        next
    }
    phase == 2 {
        n++
        if (bad) next
        if (malformed($0)) {
            bad = n
            next
        }
        if (!(norm(path) in found)) fast = 0
        if (fmode == "755") l755[++n755] = stage "/" path
        else l644[++n644] = stage "/" path
        sums[n] = sum "  " path
        want[n] = sum " *./" path
        dpaths[n] = "./" path
        oks[n] = path ": OK"
        paths[n] = path
        bytes += size
        d = path
        sub(/\/[^\/]*$/, "", d)
        if (index(path, "/") && d != last) dirs[++nd] = target "/" d
        last = d
    }
    END {
        if (bad || odd || files != n) fast = 0
        printf "n=%d bad=%d fast=%d modes=%d bytes=%.0f\n", n, bad, fast, modes, bytes
        if (!bad) {
            emit("l755", l755, n755); emit("l644", l644, n644)
            emit("sums", sums, n); emit("oks", oks, n)
            emit("want", want, n); emit("dpaths", dpaths, n)
            emit("ldirs", dirs, nd); emit("lpaths", paths, n)
        }
        print "derived=1"
    }'
    n=0 bad=0 fast=0 modes=0 bytes=0 l755='' l644='' sums='' oks='' want='' dpaths='' ldirs='' lpaths=''
    derived=
    vars=$(find "$stage" -type f -print \( -perm 755 -o -perm 644 -o -print \) \
        -o ! -type d -exec echo pushrun-odd \; 2>/dev/null |
        PUSHRUN_STAGE=$stage PUSHRUN_TARGET=$target awk -v "sq='" "$derive" phase=1 - phase=2 "$list")
    eval "$vars"
    [ "$derived" = 1 ] || write_fail "$BASE" "awk failed"

    if [ "$fast" != 1 ]; then
        # something is wrong (or unusual): the checks one by one, in order, to
        # name the first problem
        # every listed file is there, a regular file
        n=0
        while IFS= read -r line || [ -n "$line" ]; do
            n=$((n + 1))
            parse "$line" || fail 5 "upload arrived corrupt: bad line $n in .pushrun-expect: '$line'"
            if [ ! -f "$stage/$path" ] || [ -L "$stage/$path" ]; then
                fail 5 "upload of $path arrived corrupt"
            fi
        done <"$list"
        # nothing else: no symlink anywhere (a symlinked directory could point a
        # listed path outside the stage), and no file that was not listed
        odd=$(find "$stage" ! -type d ! -type f 2>/dev/null | head -n 1)
        [ -z "$odd" ] || fail 5 "upload arrived corrupt: ${odd#"$stage"/} is not a regular file"
        count=$(find "$stage" -type f 2>/dev/null | wc -l)
        count=${count##* } # busybox pads it
        count=$((count - 1)) # .pushrun-expect
        [ "$count" -eq "$n" ] || fail 5 "upload arrived corrupt: it holds $count files, .pushrun-expect lists $n"
        [ "$bad" = 0 ] || fail 5 "upload arrived corrupt: bad line $bad in .pushrun-expect"
    fi

    # the modes .pushrun-expect gives, where the tar headers did not: with
    # every mode 755 or 644, a chmod only for the files whose exec bit is
    # not as listed (none, from pushrun's own archive); else one chmod for
    # the executables, one for the rest
    fix755=$l755 fix644=$l644
    if [ "$modes" = 1 ]; then
        fix755='' fix644=''
        saved_ifs=$IFS
        IFS=$nl
        set -f
        for f in $l755; do
            [ -x "$f" ] || fix755="$fix755$f$nl"
        done
        for f in $l644; do
            [ ! -x "$f" ] || fix644="$fix644$f$nl"
        done
        set +f
        IFS=$saved_ifs
    fi
    if [ -n "$fix755" ]; then
        on_lines "${fix755%"$nl"}" chmod 755 -- || write_fail "$BASE" "$err"
    fi
    if [ -n "$fix644" ]; then
        on_lines "${fix644%"$nl"}" chmod 644 -- || write_fail "$BASE" "$err"
    fi

    # Big payloads (lib.sh: openssl_pays) whose names fit one command line
    # are hashed by one openssl run here, its output compared whole with
    # what intact files give (no awk, no shell between). Anything else goes
    # through one sha256sum (lib.sh: sums_check) for all files: intact when
    # it prints "path: OK" for each line, in order; else the results are
    # read in step with .pushrun-expect and the first file that is not
    # plainly OK is named.
    res=
    if [ "$n" -gt 0 ] && [ "${#dpaths}" -lt 65536 ] && openssl_pays "$bytes"; then
        saved_ifs=$IFS
        IFS=$nl
        set -f
        res=$(openssl_names "$stage" "$dpaths")
        set +f
        IFS=$saved_ifs
    fi
    if [ "$n" -gt 0 ] && [ "$res" != "$want" ]; then
        res=$(printf '%s\n' "$sums" | sums_check "$stage" "$bytes")
        if [ "$res" != "$oks" ]; then
            bad=$(
                printf '%s\n' "$sums" | sums_check "$stage" "$bytes" | {
                    while IFS= read -r line <&5 || [ -n "$line" ]; do
                        parse "$line"
                        res=
                        IFS= read -r res
                        if [ "$res" != "$path: OK" ]; then
                            printf '%s' "$path"
                            exit 0
                        fi
                        line=
                    done 5<"$list"
                }
            )
            [ -z "$bad" ] || fail 5 "upload of $bad arrived corrupt"
            # sha256sum said something else than it does for intact files
            fail 5 "upload arrived corrupt: sha256sum -c did not pass it"
        fi
    fi

    # ------------------------------------------------------------- install
    lock_take || write_fail "$BASE" "$err"
    parent=${target%/*}
    if [ ! -d "$parent" ] || [ -L "$parent" ]; then
        err=$(mkdir -p "$parent" 2>&1) || write_fail "$parent" "$err"
    fi
    # a target that is a symlink is damage (its files would land where it
    # points), and so is a symlink inside it (a file renamed into place below
    # it would): removed, never written through. One with no entry at all (the
    # check made it) needs no look inside.
    [ ! -L "$target" ] || rm -f "$target"
    empty=1
    for f in "$target"/* "$target"/.[!.]* "$target"/..?*; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            empty=
            break
        fi
    done
    if [ -z "$empty" ]; then
        find "$target" -mindepth 1 ! -type d ! -type f -exec rm -f {} \; 2>/dev/null
        [ -n "$(find "$target" ! -type d 2>/dev/null | head -n 1)" ] || empty=1
    fi
    if [ -n "$empty" ]; then
        # no file there yet: the whole stage goes into place by one rename
        if [ -e "$target" ] || [ -L "$target" ]; then
            err=$(rm -rf "$target" 2>&1) || write_fail "$parent" "$err"
        fi
        err=$(mv -f "$stage" "$target" 2>&1) || write_fail "$parent" "$err"
    else
        # some files are there (in use by runs): rename each new file over its
        # old copy; every rename is atomic. That needs no lock (the lock keeps
        # two receives from both taking the one-rename way, and this target has
        # files; a run directory naming DIGEST keeps eviction off it), so others
        # need not wait for what may be many renames.
        lock_release
        on_lines "$ldirs" mkdir -p -- || write_fail "$target" "$err"
        saved_ifs=$IFS
        IFS=$nl
        set -f
        for path in $lpaths; do
            t=$target/$path
            if [ -d "$t" ] || [ -L "$t" ]; then
                rm -rf "$t"
            fi
            err=$(mv -f "$stage/$path" "$t" 2>&1) || write_fail "$target" "$err"
        done
        set +f
        IFS=$saved_ifs
    fi
    # the lock and the list go by one process (the stage is in place, the
    # list in it)
    if [ -n "$lock_held" ]; then
        lock_release "$target/.pushrun-expect"
    fi
    printf 'installed %s\n' "$n"
    exit 0
}
