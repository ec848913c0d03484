# shellcheck shell=sh # sent whole to the host's sh -c, never run as a file
# pushrun become check: can the login user run commands as USER with sudo,
# and how? Run once per host before a run that goes through sudo.
#
# Invoked as: pushrun-become USER MODE
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   MODE  "password" when the initiator has a sudo password for this host;
#         then the first line of stdin is that password.
# stdout: one line "result nopasswd|password|failed|missing".
# stderr: sudo's own words when it refused.
# sudo -n first: when no password is needed, a password given on stdin
# would otherwise be read by the command as its input.
user=$1 mode=$2
if ! command -v sudo >/dev/null 2>&1; then
    echo "result missing"
    exit 0
fi
if msg=$(sudo -n -u "$user" -- true 2>&1 </dev/null); then
    echo "result nopasswd"
    exit 0
fi
if [ "$mode" = password ]; then
    case $msg in
        *"a password is required"*)
            if msg=$(sudo -S -p '' -u "$user" -- true 2>&1); then
                # a sudo that now remembers it (timestamp_type=global) would
                # not read the password again: then go on without one
                # (from another process: sudo keys its memory by parent process)
                if sh -c 'sudo -n -u "$1" -- true; exit $?' sh "$user" >/dev/null 2>&1 </dev/null; then
                    echo "result nopasswd"
                else
                    echo "result password"
                fi
                exit 0
            fi
            ;;
    esac
fi
printf '%s\n' "$msg" >&2
echo "result failed"
