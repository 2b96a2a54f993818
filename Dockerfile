# syntax=docker/dockerfile:1
# The leasehold image: a release build (with the etcd backend) on a minimal,
# non-root runtime.
#   docker build -t ghcr.io/leasehold/leasehold:0.1.0 .
# The default runtime (distroless, no shell) cannot run --on-elected,
# --on-demoted or --health-check-exec, which run through "sh -c". For those,
# build on an image with a shell and your database's client tools:
#   docker build --build-arg RUNTIME=debian:bookworm-slim -t my/leasehold .
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM rust:1.95-slim-bookworm AS build
# protoc builds the etcd client.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
ARG FEATURES=etcd
ENV CARGO_BUILD_JOBS=2
RUN cargo build --release --locked --features "$FEATURES" --bin leasehold \
 && strip target/release/leasehold \
 && target/release/leasehold --version

FROM ${RUNTIME}
COPY --from=build /src/target/release/leasehold /usr/local/bin/leasehold
# The numeric user the chart's securityContext names (runAsNonRoot needs a
# numeric one to verify).
USER 65532:65532
# Peers and metrics (/metrics, /healthz, /readyz). The API listens on the
# pod's localhost only.
EXPOSE 4041 4042
ENTRYPOINT ["/usr/local/bin/leasehold"]
CMD ["run"]
