# The push gateway in a container: built in a Rust image, run from a small Debian image as a
# non-root user, with the built-in pushkins (plugin libraries) beside the binary, where the
# gateway looks for them first. See README, "Deployment".
#
#   docker build -t sygnal-rs .
#   docker run -p 5000:5000 -v $PWD/sygnal.yaml:/etc/sygnal/sygnal.yaml:ro sygnal-rs

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The whole workspace: cargo reads every member's manifest, tests and fixtures included.
COPY Cargo.toml Cargo.lock ./
COPY host host
COPY plugin-api plugin-api
COPY plugins plugins
COPY tests tests
COPY bench bench
# The gateway and every pushkin under plugins/ (each is package sygnal-pushkin-<dir name>).
RUN set -- -p sygnal \
    && for dir in plugins/*/; do set -- "$@" -p "sygnal-pushkin-$(basename "$dir")"; done \
    && cargo build --release --locked "$@" \
    && mkdir /out \
    && cp target/release/sygnal target/release/libsygnal_pushkin_*.so /out/

FROM ${RUNTIME_IMAGE} AS runtime
# No CA bundle needed: outbound TLS trusts the compiled-in web PKI roots (plus SSL_CERT_FILE).
RUN groupadd --system --gid 10001 sygnal \
    && useradd --system --uid 10001 --gid sygnal --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sygnal
COPY --from=builder /out/ /usr/local/lib/sygnal/
RUN ln -s /usr/local/lib/sygnal/sygnal /usr/local/bin/sygnal
COPY deploy/docker/sygnal.yaml /etc/sygnal/sygnal.yaml
ENV SYGNAL_CONF=/etc/sygnal/sygnal.yaml
USER 10001:10001
EXPOSE 5000 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/usr/local/lib/sygnal/sygnal", "health"]
ENTRYPOINT ["/usr/local/lib/sygnal/sygnal"]
CMD ["serve"]
