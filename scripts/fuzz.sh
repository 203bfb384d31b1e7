#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, on stable Rust with `-s none`: no
# sanitizer) of the reseq-core targets in fuzz/ (`extract`, `duration`), each for SECONDS
# (default 10), starting from the checked-in corpus fuzz/corpus/<target>/. New inputs go
# to target/fuzz-corpus/<target>/ (not into the repository); a crash stops with the input
# saved under fuzz/artifacts/<target>/ and exit code 1. See docs/RELIABILITY.md, "Fuzzing".
#
# cargo-fuzz is installed once, pinned, under .emulators/cargo-fuzz/ (git-ignored; about
# 40 s); the first build of the targets takes about 2 min (release, instrumented, its own
# target folder fuzz/target/). scripts/test.sh runs this only when RESEQ_FUZZ_SECONDS is
# set: every target also runs under plain `cargo test` (property-style, see the doc).
#
# To grow the checked-in corpus after a long run (keeps only inputs that add coverage):
#   cd fuzz && cargo fuzz run TARGET -s none corpus/TARGET ../target/fuzz-corpus/TARGET -- -set_cover_merge=1
set -euo pipefail

readonly CARGO_FUZZ_VERSION="0.13.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly DIR="${ROOT}/.emulators/cargo-fuzz"

seconds=${1:-10}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(extract duration)

if [[ "$("${DIR}/bin/cargo-fuzz" --version 2>/dev/null || true)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]]; then
  mkdir -p "$DIR"
  echo "fuzz.sh: installing cargo-fuzz ${CARGO_FUZZ_VERSION} under .emulators/cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$DIR" >"${DIR}/install.log" 2>&1 ||
    { cat "${DIR}/install.log" >&2; exit 1; }
fi
export PATH="${DIR}/bin:${PATH}"

cd "${ROOT}/fuzz"
for target in "${targets[@]}"; do
  work="${ROOT}/target/fuzz-corpus/${target}"
  mkdir -p "$work"
  echo "fuzz.sh: ${target} for ${seconds}s" >&2
  log="$(mktemp)"
  if ! cargo fuzz run "$target" -s none "$work" "corpus/${target}" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz.sh: ${target}: ${executions} executions in ${seconds}s, ${coverage}, no crash" >&2
  rm -f "$log"
done
