#!/usr/bin/env bash
# Runs every test of reseq, on a fresh machine as on a developer's: formatting, lints,
# unit, property, conformance and integration tests, then the public acceptance
# scenarios against the built binary. This is the README's test command; .ci/run calls it.
#
# It starts the local AWS stand-ins (scripts/emulators.sh: LocalStack for SQS, DynamoDB
# Local; installed on first use) and stops them again on exit, so a fresh machine needs
# nothing installed by hand.
#
# Environment:
#   RESEQ_SCENARIOS   folder of the public scenarios (default: ../shared/scenarios). They run
#                     when it holds run.sh and are reported as skipped otherwise (a clone of
#                     the repository alone has no such folder; the project's own tests cover
#                     the same behaviours)
#   RESEQ_REQUIRE_SCENARIOS=1  fail instead of skipping when there are none (.ci/run sets it)
#   RESEQ_REQUIRE_NODE=1  fail instead of skipping the CDK checks on a machine without
#                     Node.js >= 20 (.ci/run sets it)
#   PROPTEST_CASES    property cases per property (each property asks for at least 256;
#                     the fuzz targets under cargo test ask for 1,500 to 8,000 at least)
#   RESEQ_FUZZ_SECONDS  also run the coverage-guided fuzz targets (scripts/fuzz.sh) this many
#                     seconds each; off by default: installing cargo-fuzz and building the
#                     instrumented targets adds about 2.5 min on a fresh machine
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Docker-based tests cannot run here (no Docker engine) but must keep compiling.
cargo clippy -p reseq-dynamodb --features docker-tests --tests --locked -- -D warnings
# The SAM template: cfn-lint (pinned, installed once under .emulators/) and content checks.
scripts/lint-template.sh

step "local AWS stand-ins"
if scripts/emulators.sh status >/dev/null 2>&1; then
  echo "already running: leaving them running afterwards"
else
  trap 'scripts/emulators.sh stop >/dev/null 2>&1 || true' EXIT
  scripts/emulators.sh start
fi
eval "$(scripts/emulators.sh env)"
# The Lambda tests drive the bootstrap through cargo-lambda's runtime emulator (pip, pinned).
RESEQ_CARGO_LAMBDA="$(scripts/cargo-lambda.sh path)"
export RESEQ_CARGO_LAMBDA
# Tests that need the stand-ins fail (rather than skip) when they are missing.
export RESEQ_REQUIRE_EMULATORS=1

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --doc --locked

step "deploy definitions: CDK app, Dockerfile"
# infra/cdk: npm ci, tsc, the assertion tests, cdk synth of both stacks, cfn-lint and the
# content checks on the synthesized templates (~30 s; npm ci and pip the first time, ~30 s
# more), the alarms and dashboard against `reseq metrics --json` of the binary the tests
# just built. Then the Dockerfile (hadolint, its promises) and that binary against the
# runtime image's glibc (~1 s). No Docker engine here: the image itself is not built.
scripts/cdk-check.sh target/debug/reseq
scripts/docker-check.sh target/debug/reseq

step "coverage-guided fuzzing"
if [ -n "${RESEQ_FUZZ_SECONDS:-}" ]; then
  scripts/fuzz.sh "$RESEQ_FUZZ_SECONDS"
else
  echo "skipped: set RESEQ_FUZZ_SECONDS=10 to run scripts/fuzz.sh (the targets ran under cargo test above)"
fi

step "public scenarios"
scenarios=${RESEQ_SCENARIOS:-../shared/scenarios}
if [ -x "$scenarios/run.sh" ]; then
  "$scenarios/run.sh" target/debug/reseq
elif [ "${RESEQ_REQUIRE_SCENARIOS:-0}" = 1 ]; then
  echo "no public scenarios at $scenarios (RESEQ_REQUIRE_SCENARIOS=1): set RESEQ_SCENARIOS to the folder that holds run.sh" >&2
  exit 1
else
  echo "SKIPPED: no public scenarios at $scenarios (set RESEQ_SCENARIOS to the folder that holds run.sh; the project's own tests above cover the same behaviours)"
fi

step "write cost of the end-to-end worker test (a)"
cat target/e2e-write-cost.txt 2>/dev/null || echo "(not measured: the end-to-end test did not run)"

step "all tests passed"
