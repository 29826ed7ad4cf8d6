# dynakv: a small runtime image with the one `dynakv` binary (node, CLI, dev cluster).
#   docker build -t dynakv .
#   docker compose -f deploy/docker-compose.yml up     # a 3-node cluster across containers
# Stage 1 builds the release binary; stage 2 is Debian slim with the binary and a user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dynakv-node --bin dynakv \
 && strip target/release/dynakv

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/dynakv dynakv \
 && mkdir -p /var/lib/dynakv /etc/dynakv \
 && chown dynakv:dynakv /var/lib/dynakv
COPY --from=build /src/target/release/dynakv /usr/local/bin/dynakv
USER dynakv
WORKDIR /var/lib/dynakv
# QUIC (clients and peers), HTTPS API, plain-HTTP metrics.
EXPOSE 7101/udp 8101/tcp 9101/tcp
ENTRYPOINT ["/usr/local/bin/dynakv"]
CMD ["node", "--config", "/etc/dynakv/dynakv.toml"]
