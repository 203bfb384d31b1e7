#!/usr/bin/env bash
# scripts/cargo-lambda.sh [path|install|run ARGS...]
#
# cargo-lambda (https://www.cargo-lambda.info), pinned, installed once from PyPI into a
# venv under .emulators/cargo-lambda/ (the git-ignored folder the local AWS stand-ins use).
# PyPI ships it as a binary wheel that bundles zig: seconds to install, where
# `cargo install cargo-lambda` compiles for over ten minutes.
#
#   path      (default) install if needed, then print the path of the `cargo-lambda`
#             binary, e.g.  export RESEQ_CARGO_LAMBDA="$(scripts/cargo-lambda.sh path)"
#   install   install if needed, print nothing on success
#   run ARGS  install if needed, then run `cargo-lambda lambda ARGS` (what `cargo lambda ARGS`
#             runs), e.g.  scripts/cargo-lambda.sh run build --release -p reseq-lambda
#
# Quiet when already installed; the install logs to .emulators/cargo-lambda/install.log.
# The install is redone only when the pinned version changes.
#
# Environment: RESEQ_PYTHON (interpreter used to create the venv; default: python3.11,
# then the newest pyenv 3.13/3.12/3.11, then python3).
set -euo pipefail

readonly CARGO_LAMBDA_VERSION="1.9.2" # PyPI `cargo-lambda`
readonly MIN_PYTHON_MINOR=9

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib/python.sh
source "${ROOT}/scripts/lib/python.sh"
readonly DIR="${ROOT}/.emulators/cargo-lambda"
readonly VENV="${DIR}/venv"
readonly MARKER="${DIR}/installed"
readonly BIN="${VENV}/bin/cargo-lambda"

log() { printf 'cargo-lambda.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}


installed() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$CARGO_LAMBDA_VERSION" && -x "$BIN" ]]
}

install() {
  installed && return 0
  mkdir -p "${ROOT}/.emulators"
  # Two callers at once (tests run in parallel): one installs, the other waits.
  exec 8>"${ROOT}/.emulators/.cargo-lambda.lock"
  flock 8
  if installed; then
    exec 8>&-
    return 0
  fi
  local python
  python="$(find_python "${MIN_PYTHON_MINOR}" "installing cargo-lambda" python3.11)"
  log "installing cargo-lambda ${CARGO_LAMBDA_VERSION} into ${VENV#"${ROOT}"/} (python: ${python})"
  rm -rf "$DIR"
  mkdir -p "$DIR"
  "$python" -m venv "$VENV"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "cargo-lambda==${CARGO_LAMBDA_VERSION}" >"${DIR}/install.log" 2>&1 || {
    tail -n 30 "${DIR}/install.log" >&2
    die "pip install failed (full log: ${DIR}/install.log)"
  }
  [[ -x "$BIN" ]] || die "cargo-lambda ${CARGO_LAMBDA_VERSION} installed, but ${BIN} is missing"
  "$BIN" lambda --version >/dev/null 2>&1 || die "${BIN} does not run"
  printf '%s\n' "$CARGO_LAMBDA_VERSION" >"$MARKER"
  exec 8>&-
  log "installed $("$BIN" lambda --version 2>/dev/null || echo "cargo-lambda ${CARGO_LAMBDA_VERSION}")"
}

main() {
  case "${1:-path}" in
    path)
      install
      printf '%s\n' "$BIN"
      ;;
    install) install ;;
    run)
      shift
      install
      # The bundled zig (used by `build` to cross-compile) sits beside the binary.
      PATH="${VENV}/bin:${PATH}" exec "$BIN" lambda "$@"
      ;;
    -h | --help | help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *)
      sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
