#!/usr/bin/env bash
# scripts/lint-template.sh [TEMPLATE]
#
# Checks the SAM template (default: template.yaml at the repo root) offline, with no AWS
# account or credentials:
#   1. cfn-lint on the template as written;
#   2. scripts/template-check.py: what cfn-lint misses (SQS event property names and
#      values, FIFO rules, visibility vs timeout, redrive, lease vs timeout, reseq's table
#      layout, the env vars reseq reads and how the parameters set them, the sweep
#      schedule, the role's permissions, the alarms and the dashboard against the metrics
#      reseq emits), in every parameter scenario (standard queue, your own queues and
#      table, HTTP output, SNS topic...), then the SAM transform (aws-sam-translator),
#      written to .emulators/cfn-lint/transformed.json;
#   3. cfn-lint on that transformed template (the generated event source mapping, rule,
#      function: limits the SAM schema does not carry, e.g. MaximumConcurrency >= 2).
# Silent on success but for one summary line; each failure is reported, exit status 1.
#
# The tools are pinned below and installed once from PyPI into a venv under the
# git-ignored .emulators/cfn-lint/ (about 30 s); the install is redone when a pin changes.
# `sam validate --lint` is not run: it is the same cfn-lint engine (cfnlint.api.lint) and
# `sam validate` the same aws-sam-translator transform as steps 1-3, for a 40 s larger install.
#
# The metric catalogue the alarms and the dashboard are checked against is what the code
# prints: `reseq metrics --json`, run here as `cargo run -q --locked -p reseq-cli -- metrics --json`
# (a debug build; after clippy and the tests in scripts/test.sh it is up to date).
#
# Environment: RESEQ_PYTHON (interpreter for the venv; default python3.11, then
# python3.12, python3.13, python3); RESEQ_METRICS_CATALOGUE (a file holding the output of
# `reseq metrics --json`, used instead of building and running reseq).
set -euo pipefail

readonly PINS=("cfn-lint==1.58.0" "aws-sam-translator==1.115.0" "pyyaml==6.0.3")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib/python.sh
source "${ROOT}/scripts/lib/python.sh"
readonly DIR="${ROOT}/.emulators/cfn-lint"
readonly VENV="${DIR}/venv"
readonly MARKER="${DIR}/installed"
readonly TRANSFORMED="${DIR}/transformed.json"
readonly CATALOGUE="${DIR}/metrics.json"
TEMPLATE="$(realpath -m -- "${1:-${ROOT}/template.yaml}")"
readonly TEMPLATE

die() {
  printf 'lint-template.sh: %s\n' "$*" >&2
  exit 1
}

installed() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "${PINS[*]}" && -x "${VENV}/bin/cfn-lint" ]]
}


INSTALL_NOTE=""
install() {
  installed && return 0
  mkdir -p "${ROOT}/.emulators"
  # Two callers at once: one installs, the other waits for it.
  exec 8>"${ROOT}/.emulators/.cfn-lint.lock"
  flock 8
  if ! installed; then
    local python start=$SECONDS
    python="$(find_python 9 cfn-lint python3.11)"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    "$python" -m venv "$VENV"
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" \
      >"${DIR}/install.log" 2>&1 || {
      tail -n 30 "${DIR}/install.log" >&2
      die "pip install ${PINS[*]} failed (full log: ${DIR}/install.log)"
    }
    printf '%s\n' "${PINS[*]}" >"$MARKER"
    INSTALL_NOTE=" (installed in $((SECONDS - start)) s)"
  fi
  exec 8>&-
}

# The metrics reseq emits, as the code itself lists them, into $CATALOGUE.
catalogue() {
  if [[ -n "${RESEQ_METRICS_CATALOGUE:-}" ]]; then
    cp -- "$RESEQ_METRICS_CATALOGUE" "$CATALOGUE" || die "cannot read RESEQ_METRICS_CATALOGUE=${RESEQ_METRICS_CATALOGUE}"
    return 0
  fi
  (cd "$ROOT" && cargo run -q --locked -p reseq-cli -- metrics --json) >"${CATALOGUE}.tmp" 2>"${DIR}/metrics.log" || {
    cat "${DIR}/metrics.log" >&2
    die "\`cargo run -q --locked -p reseq-cli -- metrics --json\` failed: the alarms cannot be checked against the metrics reseq emits"
  }
  mv -- "${CATALOGUE}.tmp" "$CATALOGUE"
}

main() {
  [[ -f "$TEMPLATE" ]] || die "no template at ${TEMPLATE}"
  install
  catalogue
  local failed=0 count
  # No AWS access: cfn-lint and the transform work offline. A region only names the
  # partition; credentials are never read.
  export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

  "${VENV}/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$TEMPLATE" >&2 || {
    printf 'lint-template.sh: cfn-lint found the problems above in %s\n' "${TEMPLATE#"${ROOT}"/}" >&2
    failed=1
  }
  rm -f "$TRANSFORMED"
  if count="$("${VENV}/bin/python" "${ROOT}/scripts/template-check.py" --summary \
    --metrics "$CATALOGUE" --transformed-out "$TRANSFORMED" "$TEMPLATE")"; then
    :
  else
    failed=1
  fi
  if [[ -f "$TRANSFORMED" ]]; then
    "${VENV}/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$TRANSFORMED" >&2 || {
      printf 'lint-template.sh: cfn-lint found the problems above in the SAM-transformed template %s\n' \
        "${TRANSFORMED#"${ROOT}"/}" >&2
      failed=1
    }
  fi
  if ((failed)); then
    die "${TEMPLATE#"${ROOT}"/} failed its checks"
  fi
  printf 'lint-template.sh: %s ok: cfn-lint (as written and SAM-transformed) and %s%s\n' \
    "${TEMPLATE#"${ROOT}"/}" "${count:-the content checks}" "$INSTALL_NOTE"
}

main "$@"
