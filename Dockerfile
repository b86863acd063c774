# syntax=docker/dockerfile:1
#
# Container image of Broadside.
#   docker build -t broadside:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 broadside:0.1.0
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# ---- build ---------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds on the same machine;
# the binary is copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin broadside \
 && install -D -m 0755 target/release/broadside /out/broadside

# ---- runtime -------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim

# ca-certificates: TLS to Twilio, Postgres and the OTLP collector. Left unpinned
# so that rebuilds pick up Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed numeric id (Kubernetes runAsNonRoot checks numbers).
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" broadside \
 && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --no-create-home \
      --home-dir /var/lib/broadside --shell /usr/sbin/nologin broadside \
 && install -d -o "${APP_UID}" -g "${APP_UID}" -m 0750 /var/lib/broadside

COPY --from=builder /out/broadside /usr/local/bin/broadside

# The default SQLite URL (sqlite://broadside.db?mode=rwc) is relative, so the
# file lands in this writable directory.
WORKDIR /var/lib/broadside
USER ${APP_UID}:${APP_UID}

ENV BROADSIDE_LISTEN=0.0.0.0:50051 \
    BROADSIDE_METRICS_LISTEN=0.0.0.0:9090
# 50051: gRPC (broadside.v1, grpc.health.v1, reflection); 9090: Prometheus /metrics.
EXPOSE 50051 9090

LABEL org.opencontainers.image.title="broadside" \
      org.opencontainers.image.description="gRPC service that sends bulk SMS campaigns through SMS providers" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["broadside"]
CMD ["serve"]
