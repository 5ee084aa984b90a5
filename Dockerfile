# Keel's container image: `docker build -t keel .` from the repository root.
# The Helm chart (deploy/helm/keel) runs it as user 10001 with a read-only root file
# system and the data directory on a persistent volume at /var/lib/keel.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keel \
    && strip target/release/keel

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 keel \
    && useradd --uid 10001 --gid keel --home-dir /var/lib/keel --create-home --shell /usr/sbin/nologin keel
COPY --from=build /src/target/release/keel /usr/local/bin/keel
USER 10001:10001
VOLUME /var/lib/keel
EXPOSE 9092 9093 9644
ENV KEEL_DATA_DIR=/var/lib/keel \
    KEEL_KAFKA_LISTEN=0.0.0.0:9092 \
    KEEL_HTTP_LISTEN=0.0.0.0:9644
ENTRYPOINT ["keel"]
CMD ["serve"]
