#!/usr/bin/env bash
# test.sh: every check the project keeps (the README's test command; CI runs it through
# .ci/run, as root, with CI=true and no stdin, on a fresh clone). In this order, stopping
# at the first step that fails, so the cheap checks speak before the slow suite runs:
#   setup      scripts/setup.sh installs what the checks and the tests need
#   fmt        cargo fmt --check
#   clippy     cargo clippy --all-targets -- -D warnings
#   doc        cargo doc --no-deps, warnings denied
#   lint       shellcheck on every shell file the project ships, remote scripts too
#   suite      cargo nextest run when it is installed, else cargo test; extra
#              arguments go to it (e.g. scripts/test.sh --test it access::)
set -euo pipefail
cd "$(dirname "$0")/.."
exec < /dev/null

step() { printf '== %s\n' "$*"; }

# The shell files: *.sh under src/, scripts/ and tests/, and the files of scripts/,
# payload/ and .ci/ that start with a sh or bash shebang. Each says its shell (shebang
# or `# shellcheck shell=sh`), so none needs -s here.
shell_files() {
  find src scripts tests -type f -name '*.sh'
  local f first shebang='^#!.*[/ ](ba|da)?sh( .*)?$'
  for f in scripts/* payload/* .ci/*; do
    if [ ! -f "$f" ] || [[ $f == *.sh ]]; then continue; fi
    IFS= read -r first < "$f" || continue
    if [[ $first =~ $shebang ]]; then echo "$f"; fi
  done
}

step "setup: scripts/setup.sh"
scripts/setup.sh

step "fmt: cargo fmt --check"
cargo fmt --check

step "clippy: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "doc: cargo doc --no-deps (warnings denied)"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps

listed=$(shell_files | sort)
mapfile -t shell <<< "$listed"
step "lint: shellcheck on ${#shell[@]} shell files"
shellcheck "${shell[@]}"

if cargo nextest --version > /dev/null 2>&1; then
  step "suite: cargo nextest run"
  exec cargo nextest run --no-fail-fast "$@"
else
  step "suite: cargo test (cargo-nextest is not installed)"
  exec cargo test --no-fail-fast "$@"
fi
