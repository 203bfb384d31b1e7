# syntax=docker/dockerfile:1
#
# reseq worker: `reseq worker`, configured by RESEQ_* env vars (README, "The worker's flags").
#
#   docker buildx build --platform linux/arm64,linux/amd64 -t reseq .     # both architectures
#   docker build -t reseq .                                               # the build machine's
#   docker run --rm -e RESEQ_QUEUE_URL=... -e RESEQ_TABLE=... reseq
#
# The build stage runs on the build machine's own platform and cross-compiles for
# TARGETARCH (no emulation): gcc and libc for the target come from Debian's cross packages.
# Both stages are Debian 12 (bookworm): the binary links against the glibc it runs with
# (scripts/docker-check.sh checks the release binary's glibc symbol versions against it).
ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The C parts (bundled SQLite, aws-lc) are compiled by the target's gcc; the linker too.
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
# Versions come from the pinned base image's Debian release; pinning each cross package
# would break the build at every Debian point release.
# hadolint ignore=DL3008
RUN case "${TARGETARCH}" in \
      arm64) triple=aarch64-unknown-linux-gnu; gcc=gcc-aarch64-linux-gnu libc=libc6-dev-arm64-cross ;; \
      amd64) triple=x86_64-unknown-linux-gnu; gcc=gcc-x86-64-linux-gnu libc=libc6-dev-amd64-cross ;; \
      *) echo "TARGETARCH=${TARGETARCH}: reseq's image is built for arm64 or amd64" >&2; exit 1 ;; \
    esac \
    && echo "${triple}" > /rust-target \
    && if [ "${TARGETARCH}" != "${BUILDARCH}" ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "${gcc}" "${libc}" \
         && rm -rf /var/lib/apt/lists/*; \
       fi \
    && rustup target add "${triple}"
WORKDIR /src
# The workspace (.dockerignore leaves out target/, docs, infra, scripts, fuzz/...).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=reseq-target-${TARGETARCH},sharing=locked \
    triple="$(cat /rust-target)" \
    && cargo build --release --locked -p reseq-cli --bin reseq --target "${triple}" \
    && install -D -m 0755 "target/${triple}/release/reseq" /out/reseq

# glibc, libgcc_s, CA certificates (rustls reads the system roots), a `nonroot` user
# (65532), no shell and no package manager: about 25 MB plus the binary.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="reseq" \
      org.opencontainers.image.description="reseq worker: per-key resequencing of SQS messages, staged in DynamoDB" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/reseq /usr/local/bin/reseq
USER 65532:65532
# SIGTERM (ECS's stop): the worker stops receiving, finishes the batches in flight within
# the lease, and exits; give it a stop timeout longer than --lease-duration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["reseq", "worker"]
