#!/usr/bin/env bash
# Runs every test of reseq, on a fresh machine as on a developer's: formatting, lints,
# unit, property, conformance and integration tests, then the public acceptance
# scenarios against the built binary. This is the README's test command; .ci/run calls it.
#
# Environment:
#   RESEQ_SCENARIOS   folder of the public scenarios (default: ../shared/scenarios)
#   PROPTEST_CASES    property cases per property (each property asks for at least 256)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --doc --locked

step "public scenarios"
scenarios=${RESEQ_SCENARIOS:-../shared/scenarios}
if [ ! -x "$scenarios/run.sh" ]; then
  echo "no public scenarios at $scenarios: set RESEQ_SCENARIOS to the folder that holds run.sh" >&2
  exit 1
fi
"$scenarios/run.sh" target/debug/reseq

step "all tests passed"
