# Build: docker build -t kmirror .
# Run:   docker run --rm -v $PWD/config:/config:ro -v kmirror-state:/var/lib/kmirror \
#          -e SOURCE_BOOTSTRAP=... kmirror run -c /config/routes.toml
# Checkpoints and the job lock go to the kmirror-state volume (KMIRROR_CHECKPOINT_DIR below),
# never beside the read-only routing file, unless the file sets [checkpoints] dir itself.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (make, gcc, python3); ssl links libssl.
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev python3 make g++ \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin kmirror

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/kmirror kmirror \
    && mkdir -p /var/lib/kmirror && chown kmirror /var/lib/kmirror
COPY --from=build /src/target/release/kmirror /usr/local/bin/kmirror
COPY config /etc/kmirror/examples
USER kmirror
WORKDIR /var/lib/kmirror
ENV KMIRROR_CHECKPOINT_DIR=/var/lib/kmirror
VOLUME /var/lib/kmirror
# The HTTP endpoint when run with --http 0.0.0.0:9644 (or [http] listen): /metrics, /healthz,
# /readyz, /status.
EXPOSE 9644
# tini forwards SIGTERM, so kmirror drains in-flight records and writes its final checkpoint.
ENTRYPOINT ["/usr/bin/tini", "--", "kmirror"]
CMD ["--help"]
