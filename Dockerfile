# Build: docker build -t kmirror .
# Run:   docker run --rm -v "$PWD/config:/config:ro" -v kmirror-state:/var/lib/kmirror \
#          -e EU_BOOTSTRAP=... -e US_BOOTSTRAP=... kmirror run -c /config/dr-mirror.toml
# Checkpoints and the job lock go to the kmirror-state volume (KMIRROR_CHECKPOINT_DIR below),
# never beside the read-only routing file, unless the file sets [checkpoints] dir itself.
# CI lints this file with hadolint (scripts/test.sh).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (make, gcc, python3); ssl links libssl.
# Not pinned (DL3008): the bookworm base pins the release, and Debian drops superseded
# package versions from its mirrors, so an exact pin would break the build, not fix it.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev python3 make g++ \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, against placeholder sources: this layer (librdkafka and every crate,
# most of the build time) is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && cargo build --release --locked --bin kmirror \
    && rm -rf src benches

COPY src ./src
COPY config ./config
COPY benches ./benches
# COPY keeps the files' own modification times, which can be older than the placeholders'
# build: drop kmirror's own artifacts so cargo cannot take the placeholder build as fresh.
RUN rm -rf target/release/.fingerprint/kmirror-* target/release/deps/kmirror-* \
        target/release/deps/libkmirror-* target/release/kmirror \
    && cargo build --release --locked --bin kmirror

FROM debian:bookworm-slim
# Not pinned (DL3008), as above.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kmirror \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/kmirror kmirror \
    && mkdir -p /var/lib/kmirror && chown 10001:10001 /var/lib/kmirror
COPY --from=build /src/target/release/kmirror /usr/local/bin/kmirror
COPY config /etc/kmirror/examples
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/kmirror
ENV KMIRROR_CHECKPOINT_DIR=/var/lib/kmirror
VOLUME /var/lib/kmirror
# The HTTP endpoint when run with --http 0.0.0.0:9644 (or [http] listen): /metrics, /healthz,
# /readyz, /status.
EXPOSE 9644
# tini forwards SIGTERM, so kmirror drains in-flight records and writes its final checkpoint.
ENTRYPOINT ["/usr/bin/tini", "--", "kmirror"]
CMD ["--help"]
