# shellcheck shell=bash
# Finding a Python interpreter for the pinned virtualenvs under .emulators/ (LocalStack,
# cargo-lambda, cfn-lint). Sourced by the scripts that install them.

# find_python MIN_MINOR WHAT [PREFERRED...]
# Prints the path of a Python >= 3.MIN_MINOR that has `venv`. RESEQ_PYTHON, when set, is
# the only candidate; otherwise PREFERRED come first, then pyenv's 3.x versions, newest
# first, then python3.13, python3.12, python3.11 and python3 on PATH. When none fits it
# says what WHAT needs and what it tried, on stderr, and fails.
find_python() {
  local min_minor=$1 what=$2 candidates=() c v
  shift 2
  if [[ -n "${RESEQ_PYTHON:-}" ]]; then
    candidates+=("${RESEQ_PYTHON}")
  else
    candidates+=("$@")
    local pyenv_root="${PYENV_ROOT:-${HOME}/.pyenv}"
    while IFS= read -r v; do
      [[ -n "$v" ]] && candidates+=("${v}/bin/python3")
    done < <(compgen -G "${pyenv_root}/versions/3.*" | sort -V -r || true)
    candidates+=(python3.13 python3.12 python3.11 python3)
  fi
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c "import sys, venv; sys.exit(0 if sys.version_info >= (3, ${min_minor}) else 1)" 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  printf '%s needs Python >= 3.%s with venv; none found (tried: %s). Set RESEQ_PYTHON.\n' \
    "$what" "$min_minor" "${candidates[*]}" >&2
  return 1
}
