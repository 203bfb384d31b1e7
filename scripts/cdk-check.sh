#!/usr/bin/env bash
# scripts/cdk-check.sh [RESEQ_BINARY]: the CDK app in infra/cdk, offline (no AWS account,
# no Docker).
#
#   1. npm ci (pinned by infra/cdk/package-lock.json; skipped when node_modules matches it);
#   2. tsc, then the assertion tests (node --test: the Resequencer construct in both
#      flavours, the example stacks);
#   3. cdk synth of the example app's two stacks (ReseqLambda with a placeholder bootstrap,
#      ReseqEcs with the repository's Dockerfile as an image asset: synth needs no Docker)
#      into .emulators/cdk-check/cdk.out;
#   4. cfn-lint on both synthesized templates;
#   5. scripts/cdk-template-check.py on both: the content checks template.yaml gets, tied to
#      template.yaml and the Rust code, the alarms and the dashboard against the metrics
#      reseq emits (`reseq metrics --json`: from RESEQ_BINARY when given, else the file in
#      RESEQ_METRICS_CATALOGUE, else `cargo run -q --locked -p reseq-cli -- metrics --json`,
#      a debug build when reseq is not built yet).
# Prints one line per step. About 30 s (the first run adds ~10 s of npm ci and ~20 s of
# pip install). Needs Python >= 3.9, and Node.js >= 20 with npm: without Node.js it says
# SKIPPED and succeeds, unless RESEQ_REQUIRE_NODE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CDK="${ROOT}/infra/cdk"
readonly WORK="${ROOT}/.emulators/cdk-check"
# shellcheck source=scripts/lib/deploy-tools.sh
source "${ROOT}/scripts/lib/deploy-tools.sh"

die() {
  printf 'cdk-check.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf 'cdk-check.sh: %s\n' "$*"; }

# Offline: no notices, no telemetry, no version check; a region only names the partition.
export CDK_DISABLE_CLI_TELEMETRY=true CDK_DISABLE_VERSION_CHECK=true
# No account: the stacks stay environment-agnostic, so synth needs no lookup (the VPC's
# availability zones would need credentials otherwise).
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
unset CDK_DEFAULT_ACCOUNT AWS_PROFILE

# Node.js is the one tool this script cannot install: without it the check is skipped (one
# line), unless RESEQ_REQUIRE_NODE=1 (.ci/run sets it) makes that a failure.
if ! command -v node >/dev/null || ! command -v npm >/dev/null ||
  ! node -e 'process.exit(parseInt(process.versions.node, 10) >= 20 ? 0 : 1)'; then
  [[ "${RESEQ_REQUIRE_NODE:-0}" == 1 ]] && die "needs Node.js >= 20 and npm on PATH (RESEQ_REQUIRE_NODE=1)"
  say "SKIPPED: needs Node.js >= 20 and npm on PATH (aws-cdk-lib's minimum), found $(node --version 2>/dev/null || echo none)"
  exit 0
fi

# The binary's path as given, before the cd below.
binary="${1:+$(realpath -m -- "$1")}"
start=$SECONDS
cd "$CDK"
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f node_modules/.reseq-lock && "$(cat node_modules/.reseq-lock)" == "$lock_hash" ]]; then
  say "1/5 npm ci: node_modules matches package-lock.json"
else
  t=$SECONDS
  npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed in infra/cdk"
  echo "$lock_hash" >node_modules/.reseq-lock
  say "1/5 npm ci: $(node -p 'require("aws-cdk-lib/package.json").version') aws-cdk-lib, $(npx --no-install cdk --version 2>/dev/null | cut -d' ' -f1) CLI ($((SECONDS - t)) s)"
fi

t=$SECONDS
rm -rf dist
npx --no-install tsc || die "tsc failed"
if ! out="$(node --test dist/test/ 2>&1)"; then
  printf '%s\n' "$out" | grep -v '^ *\(duration_ms\|location\|\.\.\.\|---\)' >&2
  die "the CDK assertion tests failed"
fi
summary="$(printf '%s\n' "$out" | grep -E '^# (tests|pass|fail) ' | tr -d '#' | tr '\n' ' ')"
say "2/5 tsc and assertion tests:${summary}($((SECONDS - t)) s)"

t=$SECONDS
rm -rf "$WORK"
mkdir -p "${WORK}/bootstrap"
printf '#!/bin/sh\n# placeholder for synth: the real one is target/lambda/bootstrap/bootstrap\n' >"${WORK}/bootstrap/bootstrap"
if ! out="$(npx --no-install cdk synth --app "node dist/bin/app.js" --quiet --no-notices --no-version-reporting \
  -c "bootstrapDir=${WORK}/bootstrap" -o "${WORK}/cdk.out" 2>&1)"; then
  printf '%s\n' "$out" >&2
  die "cdk synth failed"
fi
templates=("${WORK}/cdk.out/ReseqLambda.template.json" "${WORK}/cdk.out/ReseqEcs.template.json")
for f in "${templates[@]}"; do [[ -f "$f" ]] || die "cdk synth wrote no ${f#"${ROOT}"/}"; done
say "3/5 cdk synth: ReseqLambda, ReseqEcs -> ${WORK#"${ROOT}"/}/cdk.out ($((SECONDS - t)) s)"

deploy_tools_install || die "could not install the pinned tools"
t=$SECONDS
# W3005: the CDK writes a DependsOn beside a GetAtt of the same resource (the function on
# its role): redundant, harmless, and not ours to change.
"${DEPLOY_TOOLS_VENV}/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" --ignore-checks W3005 -- "${templates[@]}" >&2 ||
  die "cfn-lint found the problems above in the synthesized templates"
say "4/5 cfn-lint $("${DEPLOY_TOOLS_VENV}/bin/cfn-lint" --version | cut -d' ' -f2): both templates clean ($((SECONDS - t)) s)"

t=$SECONDS
catalogue="${WORK}/metrics.json"
if [[ -n "$binary" ]]; then
  "$binary" metrics --json >"$catalogue" || die "\`${1} metrics --json\` failed"
elif [[ -n "${RESEQ_METRICS_CATALOGUE:-}" ]]; then
  cp -- "$RESEQ_METRICS_CATALOGUE" "$catalogue" || die "cannot read RESEQ_METRICS_CATALOGUE=${RESEQ_METRICS_CATALOGUE}"
else
  (cd "$ROOT" && cargo run -q --locked -p reseq-cli -- metrics --json) >"$catalogue" ||
    die "\`cargo run -q --locked -p reseq-cli -- metrics --json\` failed: the alarms cannot be checked against the metrics reseq emits"
fi
count="$("${DEPLOY_TOOLS_VENV}/bin/python" "${ROOT}/scripts/cdk-template-check.py" --metrics "$catalogue" "${templates[@]}")" ||
  die "the synthesized templates failed the content checks above"
say "5/5 ${count} ($((SECONDS - t)) s)"
say "ok in $((SECONDS - start)) s${DEPLOY_TOOLS_NOTE}"
