#!/usr/bin/env bash
# setup.sh: installs what the tests and the demo need on a Debian machine, when missing:
# OpenSSH's server and client (the test hosts are real sshd processes on loopback),
# util-linux (unshare, mount: each test host gets its own hostname and /tmp), procps,
# busybox (the remote scripts are also tested with nothing but busybox's tools), ClusterShell
# (the reference for NodeSet expressions) and sudo
# (as root, every test host has its own /etc/sudoers and a test user whose sudo rights
# vary by host, so that privilege escalation is tested against the real sudo), and
# ShellCheck, with which scripts/test.sh lints every shell file the project ships; and
# the toolchain's rustfmt and clippy (rustup components), for its fmt and clippy steps.
# Quiet and quick when everything is there; needs no stdin. Installing needs root.
set -euo pipefail

have() { command -v "$1" > /dev/null 2>&1 && [ -x "$(command -v "$1")" ]; }

missing=()
if ! [ -x /usr/sbin/sshd ] && ! have sshd; then missing+=(openssh-server); fi
if ! have ssh || ! have ssh-keygen || ! have sftp; then missing+=(openssh-client); fi
if ! have unshare; then missing+=(util-linux); fi
if ! have mount; then missing+=(mount); fi
if ! have ps; then missing+=(procps); fi
# the remote scripts are tested under busybox sh with only busybox's tools too
if ! [ -x /usr/bin/busybox ]; then missing+=(busybox); fi
# the test hosts' sudo (loopback-hosts --sudo-nopasswd, --sudo-password, ...)
if ! have sudo; then missing+=(sudo); fi
# the real-host variants (loopback-hosts --login-shell, --dropbear): other login shells
# and another SSH server
for sh in dash zsh csh tcsh fish; do
  if ! have "$sh"; then missing+=("$sh"); fi
done
if ! have dropbear || ! have dropbearconvert; then missing+=(dropbear-bin); fi
# scripts/test.sh's lint step
if ! have shellcheck; then missing+=(shellcheck); fi
# ClusterShell, whose NodeSet expansion the inventory tests compare pushrun's with
if ! /usr/bin/python3 -c 'import ClusterShell.NodeSet' > /dev/null 2>&1; then missing+=(clustershell); fi
# the remote scripts hash big payloads with openssl where a host has it (tested)
if ! have openssl; then missing+=(openssl); fi
# `pushrun man | man -l -` is rendered by a test
if ! have man; then missing+=(man-db); fi

components=()
if ! cargo fmt --version > /dev/null 2>&1; then components+=(rustfmt); fi
if ! cargo clippy --version > /dev/null 2>&1; then components+=(clippy); fi
if [ ${#components[@]} -gt 0 ]; then
  if ! have rustup; then
    echo "setup.sh: cargo has no ${components[*]}: add them to the Rust toolchain" >&2
    exit 1
  fi
  echo "setup.sh: adding ${components[*]} to the Rust toolchain" >&2
  rustup component add "${components[@]}" < /dev/null
fi

[ ${#missing[@]} -eq 0 ] && exit 0

install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}"
if ! command -v apt-get > /dev/null 2>&1; then
  echo "setup.sh: missing ${missing[*]}, and this is not a Debian machine: install them by hand" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: missing ${missing[*]}; as root, run:" >&2
  echo "  $install_cmd" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}" >&2
apt-get update -qq < /dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" < /dev/null > /dev/null

if ! [ -x /usr/sbin/sshd ] && ! have sshd; then
  echo "setup.sh: sshd is still missing after installing openssh-server" >&2
  exit 1
fi
