# syntax=docker/dockerfile:1
# riskfeat images: one multi-stage build, one target per binary.
#
#   docker build --target agent   -t riskfeat/riskfeat-agent:0.1.0   .
#   docker build --target worker  -t riskfeat/riskfeat-worker:0.1.0  .
#   docker build --target configd -t riskfeat/riskfeat-configd:0.1.0 .
#
# .git is not in the build context (.dockerignore): pass the commit for the
# `*_build_info` metrics and the OCI revision label, e.g.
#   --build-arg RISKFEAT_COMMIT=$(git rev-parse HEAD) --build-arg VERSION=0.1.0
#
# The binaries are dynamically linked against glibc (the bookworm builder's
# default target, x86_64-unknown-linux-gnu), so the runtime images are
# distroless/cc (glibc, libgcc + CA certificates, no shell, no package
# manager) and run as the non-root user 65532; the Kubernetes
# manifests set their own non-zero uids (10001-10003) and a read-only root
# filesystem. Probes exec the binaries themselves (`probe live|ready`), so no
# shell or curl is needed. Versions: docs/operations.md, "Requirements".

# The toolchain the workspace is built and tested with here.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
# Baked into the binaries by shared/build.rs ("unknown" when empty).
ARG RISKFEAT_COMMIT=""
ENV RISKFEAT_COMMIT=${RISKFEAT_COMMIT}
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries
# are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p riskfeat-agent -p riskfeat-worker -p riskfeat-configd \
 && mkdir -p /out \
 && cp target/release/riskfeat-agent target/release/riskfeat-worker \
       target/release/riskfeat-configd /out/

# bookworm builder -> debian12 runtime: same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime-base
ARG VERSION=0.1.0
ARG RISKFEAT_COMMIT=""
# OCI image annotations (https://github.com/opencontainers/image-spec,
# annotations.md); each target adds its title and description.
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${RISKFEAT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="riskfeat" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot" \
      org.opencontainers.image.documentation="docs/operations.md"
USER 65532:65532

FROM runtime-base AS agent
LABEL org.opencontainers.image.title="riskfeat-agent" \
      org.opencontainers.image.description="Vault credential agent sidecar: dynamic PostgreSQL credentials and feature config for the worker"
COPY --from=builder /out/riskfeat-agent /usr/local/bin/riskfeat-agent
# 9102: /metrics. Health is a unix socket in the shared dir.
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/riskfeat-agent"]
CMD ["run"]

FROM runtime-base AS worker
LABEL org.opencontainers.image.title="riskfeat-worker" \
      org.opencontainers.image.description="Feature server: risk features over HTTP from the PostgreSQL replica"
COPY --from=builder /out/riskfeat-worker /usr/local/bin/riskfeat-worker
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/riskfeat-worker"]
CMD ["run"]

FROM runtime-base AS configd
LABEL org.opencontainers.image.title="riskfeat-configd" \
      org.opencontainers.image.description="Configuration center: versioned feature configs in PostgreSQL, long-polled by agents"
COPY --from=builder /out/riskfeat-configd /usr/local/bin/riskfeat-configd
EXPOSE 8070
ENTRYPOINT ["/usr/local/bin/riskfeat-configd"]
