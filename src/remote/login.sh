# shellcheck shell=sh # sent before pty.sh to the host's sh -c, and the start of exec.sh's line (build.rs), never run as a file
# Sets norc to the flag that keeps the login shell from reading its
# start-up files when it runs the user's command (pty.sh; and exec.sh,
# whose one line build.rs makes of this file and exec.sh, so every command
# here ends in `;` or a word that continues), and
# exports SHLVL for bash. sshd already ran the login shell once (its
# `$SHELL -c LINE` started the bootstrap) and that shell read its files
# then; the command's shell reading them again would run them twice per
# command (twice the banner, twice a slow login file's cost). What they
# exported is in the environment and stays; aliases and functions they
# define are not (README: login shells).
#   zsh -f         no .zshenv/.zshrc (/etc/zshenv is read whatever the flag)
#   csh, tcsh -f   no .cshrc/.tcshrc
#   fish --no-config  no config.fish (fish 3.3 and later: older fish, which
#                  refuses the flag, reads it again)
#   bash           reads ~/.bashrc only at SHLVL 0 or 1 when started by sshd:
#                  level 1 here makes the command's bash level 2. (bash's
#                  exec, which started this script, took SHLVL back to 0.)
#   sh, dash, ksh, ash read nothing for -c.
# shellcheck disable=SC2034 # used by the script that follows
norc=;
case ${SHELL##*/} in
zsh | csh | tcsh | bsd-csh) norc=-f ;;
fish)
    if "$SHELL" --no-config -c true </dev/null >/dev/null 2>&1; then
        norc=--no-config;
    fi
    ;;
esac;
if [ "${SHLVL:-0}" = 0 ]; then
    SHLVL=1;
    export SHLVL;
fi;
