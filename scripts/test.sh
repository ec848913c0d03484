#!/usr/bin/env bash
# test.sh: the whole test suite (the README's test command; CI runs it through .ci/run).
# Installs what the tests need (scripts/setup.sh), then runs every test with
# cargo-nextest when it is installed, else cargo test. Extra arguments go to the runner.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

if cargo nextest --version > /dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "$@" < /dev/null
else
  exec cargo test --no-fail-fast "$@" < /dev/null
fi
