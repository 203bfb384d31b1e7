#!/usr/bin/env bash
# scripts/sam-build.sh [--validate-only] [SAM BUILD ARGS...]
#
# Validates template.yaml with `sam validate --lint` and builds the Lambda function with
# `sam build` (BuildMethod rust-cargolambda: cargo-lambda cross-compiles `bootstrap` with
# zig, no Docker), then prints the artifact's size and how long the build took. What it
# leaves in .aws-sam/build/ is what `sam deploy` uploads:
#
#   scripts/sam-build.sh && sam deploy --guided
#   scripts/sam-build.sh --parameter-overrides Architecture=x86_64    # args go to `sam build`
#   scripts/sam-build.sh --validate-only                              # seconds: no build
#
# The release build is the `lambda` profile of the root Cargo.toml (no debug info,
# stripped, thin LTO, one codegen unit, abort on panic). SAM always runs `cargo lambda
# build --release`, with no way to pass `--profile` from the template, so this script
# applies that profile to the release build it asks for: each key of [profile.lambda] is
# exported as CARGO_PROFILE_RELEASE_<KEY> (cargo's own override), for this build only.
# The first build compiles every dependency for the Lambda target: about ten minutes on
# two cores (infra/README.md has the measured time); later ones only what changed.
#
# Installed once, pinned, under the git-ignored .emulators/: cargo-lambda through
# scripts/cargo-lambda.sh, and aws-sam-cli from PyPI into .emulators/sam/venv (about a
# minute); the install is redone when the pin changes. Needs cargo (rustup) on PATH;
# cargo-lambda adds the aarch64 target to the toolchain with rustup if it is missing.
#
# Environment: RESEQ_PYTHON (interpreter for the venv); CARGO_TARGET_DIR (where cargo
# builds; default target/, e.g. another one so as not to wait on the lock of a build in
# progress); AWS_DEFAULT_REGION (only names the partition for the linter; default
# us-east-1). No AWS credentials are read. SAM's telemetry is turned off.
set -euo pipefail

readonly SAM_VERSION="1.170.0" # PyPI `aws-sam-cli`
readonly MIN_PYTHON_MINOR=11   # tomllib, to read [profile.lambda]

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib/python.sh
source "${ROOT}/scripts/lib/python.sh"
readonly DIR="${ROOT}/.emulators/sam"
readonly VENV="${DIR}/venv"
readonly MARKER="${DIR}/installed"
readonly SAM="${VENV}/bin/sam"
readonly TEMPLATE="${ROOT}/template.yaml"
readonly BUILD_DIR="${ROOT}/.aws-sam/build"

log() { printf 'sam-build.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

installed() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SAM_VERSION" && -x "$SAM" ]]
}

install() {
  installed && return 0
  mkdir -p "${ROOT}/.emulators"
  exec 8>"${ROOT}/.emulators/.sam.lock"
  flock 8
  if ! installed; then
    local python start=$SECONDS
    python="$(find_python "${MIN_PYTHON_MINOR}" "installing aws-sam-cli" python3.11)"
    log "installing aws-sam-cli ${SAM_VERSION} into ${VENV#"${ROOT}"/} (python: ${python})"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    "$python" -m venv "$VENV"
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      "aws-sam-cli==${SAM_VERSION}" >"${DIR}/install.log" 2>&1 || {
      tail -n 30 "${DIR}/install.log" >&2
      die "pip install aws-sam-cli==${SAM_VERSION} failed (full log: ${DIR}/install.log)"
    }
    "$SAM" --version >/dev/null 2>&1 || die "${SAM} does not run"
    printf '%s\n' "$SAM_VERSION" >"$MARKER"
    log "installed $("$SAM" --version) in $((SECONDS - start)) s"
  fi
  exec 8>&-
}

# Each key of [profile.lambda] but `inherits`, as `export CARGO_PROFILE_RELEASE_<KEY>=<value>`.
lambda_profile_env() {
  "${VENV}/bin/python" - "${ROOT}/Cargo.toml" <<'EOF'
import shlex, sys, tomllib
profile = tomllib.load(open(sys.argv[1], "rb")).get("profile", {}).get("lambda")
if not profile:
    sys.exit("no [profile.lambda] in Cargo.toml")
if profile.get("inherits") != "release":
    sys.exit("[profile.lambda] must inherit release (SAM builds with --release)")
for key, value in profile.items():
    if key == "inherits":
        continue
    if isinstance(value, dict):
        sys.exit(f"[profile.lambda] {key}: nested tables are not applied by sam-build.sh")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    print(f"export CARGO_PROFILE_RELEASE_{key.upper().replace('-', '_')}={shlex.quote(text)}")
EOF
}

human_duration() {
  local s=$1
  if ((s >= 60)); then printf '%dm %02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

main() {
  local validate_only=0
  if [[ "${1:-}" == "--validate-only" ]]; then
    validate_only=1
    shift
  elif [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is not on PATH (install Rust with rustup)"
  install
  local cargo_lambda
  cargo_lambda="$(scripts/cargo-lambda.sh path)"
  # `cargo lambda` is cargo-lambda found on PATH; zig comes with it, beside it.
  PATH="$(dirname "$cargo_lambda"):${PATH}"
  export PATH
  export SAM_CLI_TELEMETRY=0
  export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

  local start=$SECONDS
  "$SAM" validate --lint --template-file "$TEMPLATE" >&2 || die "sam validate --lint found the problems above"
  log "sam validate --lint: ok ($(human_duration $((SECONDS - start))))"
  ((validate_only)) && return 0

  local env
  env="$(lambda_profile_env)" || die "cannot read [profile.lambda] from Cargo.toml"
  eval "$env"
  log "release build with the lambda profile: $(printf '%s' "$env" | sed 's/^export //' | tr '\n' ' ')"

  mkdir -p "${ROOT}/.aws-sam"
  # SAM's build and cache folders stay out of git without touching .gitignore.
  [[ -f "${ROOT}/.aws-sam/.gitignore" ]] || printf '*\n' >"${ROOT}/.aws-sam/.gitignore"
  start=$SECONDS
  "$SAM" build --template-file "$TEMPLATE" --build-dir "$BUILD_DIR" "$@" >&2 || die "sam build failed"
  local took=$((SECONDS - start))

  local artifact="${BUILD_DIR}/Function/bootstrap"
  [[ -f "$artifact" ]] || die "sam build succeeded but left no ${artifact#"${ROOT}"/}"
  local bytes kind
  bytes="$(stat -c %s "$artifact")"
  kind="$(file -b "$artifact" 2>/dev/null | awk -F', ' '{ print $1 ", " $2 ", " $NF }' || true)"
  if file -b "$artifact" 2>/dev/null | grep -q 'not stripped'; then
    log "warning: ${artifact#"${ROOT}"/} is not stripped"
  fi
  printf 'sam-build.sh: %s: %s bytes (%s MiB), %s; sam build took %s\n' \
    "${artifact#"${ROOT}"/}" "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')" \
    "$kind" "$(human_duration "$took")"
}

cd "$ROOT"
main "$@"
