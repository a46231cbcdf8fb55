# syntax=docker/dockerfile:1
# Multi-stage build of vllm-sentinel: a Rust builder stage, then a small Debian runtime.
#   docker build -t vllm-sentinel:local .
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container runtime injects it when the
# container has a GPU reservation with the `utility` capability (compose: deploy.resources;
# Kubernetes: the NVIDIA device plugin / runtime class). Without it, run `serve --no-gpu`.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vllm-sentinel \
    && cp target/release/vllm-sentinel /usr/local/bin/vllm-sentinel

# debian-slim rather than distroless: it has ldconfig, which the NVIDIA runtime uses to register
# the injected driver libraries in the container.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin sentinel
COPY --from=builder /usr/local/bin/vllm-sentinel /usr/local/bin/vllm-sentinel
ENV NVIDIA_DRIVER_CAPABILITIES=utility \
    VLLM_SENTINEL_LISTEN=0.0.0.0:9471
USER 65532
EXPOSE 9471
ENTRYPOINT ["/usr/local/bin/vllm-sentinel"]
CMD ["serve"]
