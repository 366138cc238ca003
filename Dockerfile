# syntax=docker/dockerfile:1
#
# payvault container image.
#
#   docker build -t payvault .            (BuildKit, the default builder since Docker 23)
#   docker run --rm payvault --help
#
# The image runs `payvault serve` by default; every other subcommand works too, e.g.
#   docker run --rm payvault keys generate
#
# Give it at least PAYVAULT_SHUTDOWN_GRACE_SECS (default 30) plus a margin to drain on stop:
#   docker stop -t 40 <container>        (Compose: stop_grace_period: 40s)

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# sqlx checks its queries at compile time against the committed .sqlx/ metadata, so no database
# is needed here (.cargo/config.toml sets the same; this is belt and braces).
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# Only what the build reads: the manifest, lock file and build script, the cargo config, the sqlx
# query metadata, the migrations (embedded into the binary by `sqlx::migrate!`), the sources and the
# vendored crates that Cargo.toml patches in (vendor/README.md).
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo/ .cargo/
COPY .sqlx/ .sqlx/
COPY migrations/ migrations/
COPY src/ src/
COPY vendor/ vendor/

# The cargo registry, git checkouts and target directory live in BuildKit cache mounts, so a
# source change recompiles payvault only, not its 300-odd dependencies. A cache mount is not
# part of the image, hence the copy of the binary out of it.
RUN --mount=type=cache,id=payvault-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=payvault-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=payvault-target,target=/build/target,sharing=locked \
    cargo build --release --locked --bin payvault \
 && install -D -m 0755 target/release/payvault /out/payvault

# ---- runtime ----------------------------------------------------------------------------
# distroless/cc: glibc and libgcc only (TLS is rustls, no OpenSSL), no shell, no package
# manager; same Debian 12 glibc as the builder. `nonroot` is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

# Set by CI, e.g. --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)".
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="payvault" \
      org.opencontainers.image.description="Self-hosted PCI-scoped card and bank-account tokenization vault speaking Twilio's Generic Pay Connector protocol" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/payvault /usr/local/bin/payvault

USER nonroot
ENV PAYVAULT_LISTEN=0.0.0.0:8080
EXPOSE 8080

# No curl in the image: payvault checks itself (GET /readyz on 127.0.0.1 at PAYVAULT_LISTEN's
# port, HTTPS when PAYVAULT_TLS_CERT is set; exit 0 when ready, 1 otherwise). The start period
# covers migrations on first start.
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/payvault", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/payvault"]
CMD ["serve"]
