# mqgate container image: multi-stage build, small non-root runtime image.
#
#   docker build -t mqgate .
#   docker run -v $PWD/mqgate.toml:/etc/mqgate/mqgate.toml:ro -p 1883:1883 -p 9100:9100 mqgate
#
# Config:  /etc/mqgate/mqgate.toml (the image ships docker/mqgate.toml there: one
#          cluster of brokers reachable as mosquitto-1..3:1883; mount your own).
# State:   /var/lib/mqgate (sticky snapshot, `[peers] snapshot`); mount a volume.
# Reload:  `docker kill -s HUP <container>` or edit the mounted file (watched).
# Ports:   1883 MQTT, 8883 MQTT over TLS, 9100 admin API (/metrics, /status),
#          7400 peer replication (whatever your config binds; EXPOSE documents them).
# User:    65532 (distroless "nonroot"); no shell in the runtime image.
#
# This file is not built by CI (no container engine there):
# integration/test.d/dockerfile-steps.sh runs the build stage's RUN line below and the
# runtime checks on the host so that these steps cannot rot silently.

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# One RUN line, kept in this shape: dockerfile-steps.sh extracts and runs it.
RUN cargo build --release --locked --bin mqgate \
 && mkdir -p /out/usr/local/bin /out/etc/mqgate /out/var/lib/mqgate \
 && cp target/release/mqgate /out/usr/local/bin/mqgate \
 && cp docker/mqgate.toml /out/etc/mqgate/mqgate.toml \
 && /out/usr/local/bin/mqgate version \
 && /out/usr/local/bin/mqgate check -c /out/etc/mqgate/mqgate.toml

# glibc + libgcc, CA certificates, no shell, no package manager (~25 MB).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build --chown=65532:65532 /out/ /
USER 65532:65532
EXPOSE 1883 8883 9100 7400
VOLUME ["/var/lib/mqgate"]
HEALTHCHECK --interval=10s --timeout=3s \
  CMD ["/usr/local/bin/mqgate", "status", "--admin", "http://127.0.0.1:9100"]
ENTRYPOINT ["/usr/local/bin/mqgate"]
CMD ["run", "-c", "/etc/mqgate/mqgate.toml"]
