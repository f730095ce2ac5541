# syntax=docker/dockerfile:1
# riskfeat images: one multi-stage build, one target per binary.
#
#   docker build --target agent   -t riskfeat/riskfeat-agent:0.1.0   .
#   docker build --target worker  -t riskfeat/riskfeat-worker:0.1.0  .
#   docker build --target configd -t riskfeat/riskfeat-configd:0.1.0 .
#
# The runtime images are distroless (glibc + CA certificates, no shell, no
# package manager) and run as the non-root user 65532; the Kubernetes
# manifests set their own non-zero uids (10001-10003) and a read-only root
# filesystem. Probes exec the binaries themselves (`probe live|ready`), so no
# shell or curl is needed. Versions: docs/operations.md, "Requirements".

# The toolchain the workspace is built and tested with here.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
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
USER 65532:65532

FROM runtime-base AS agent
COPY --from=builder /out/riskfeat-agent /usr/local/bin/riskfeat-agent
# 9102: /metrics. Health is a unix socket in the shared dir.
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/riskfeat-agent"]
CMD ["run"]

FROM runtime-base AS worker
COPY --from=builder /out/riskfeat-worker /usr/local/bin/riskfeat-worker
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/riskfeat-worker"]
CMD ["run"]

FROM runtime-base AS configd
COPY --from=builder /out/riskfeat-configd /usr/local/bin/riskfeat-configd
EXPOSE 8070
ENTRYPOINT ["/usr/local/bin/riskfeat-configd"]
