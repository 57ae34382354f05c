# One image with the three binaries: ingest-coordinator (the default command), ingest-worker and
# the CLI ingest. Build: docker build -t ingest:latest .
#
# The build stage compiles in two layers, from the least to the most often changed:
#   1. the manifests (the workspace's Cargo.toml and Cargo.lock, every crate's Cargo.toml) with
#      stub sources: every dependency compiles here, and this layer stays cached until a manifest
#      or the lock file changes;
#   2. the real sources: only the workspace's own crates compile again.
# When a crate joins the workspace, add its Cargo.toml (and stub) below: scripts/lint-deploy.sh
# fails until every member is covered.
FROM rust:1-bookworm AS build
WORKDIR /src

COPY Cargo.toml Cargo.lock ./
COPY ingest-wire/Cargo.toml ingest-wire/
COPY ingest-core/Cargo.toml ingest-core/
COPY ingest-coordinator/Cargo.toml ingest-coordinator/
COPY ingest-worker/Cargo.toml ingest-worker/
COPY ingest-cli/Cargo.toml ingest-cli/
COPY ingest-testkit/Cargo.toml ingest-testkit/
# Stubs of the same shape as the real crates: a library where the crate has src/lib.rs, a binary
# where it has src/main.rs. ingest-testkit is only a dev-dependency, but as a workspace member its
# manifest must have a target for cargo to load the workspace at all.
RUN for crate in ingest-wire ingest-core ingest-coordinator ingest-worker ingest-testkit; do \
        mkdir -p "$crate/src" && : > "$crate/src/lib.rs"; \
    done \
    && for crate in ingest-coordinator ingest-worker ingest-cli; do \
        mkdir -p "$crate/src" && echo 'fn main() {}' > "$crate/src/main.rs"; \
    done \
    && cargo build --release --locked --bins

# The real sources. ingest-core embeds migrations/ (refinery) and the coordinator its status page
# (src/http/page.html, include_str!), both found under the folders copied here. ingest-testkit
# keeps its stub: --bins never builds it.
COPY migrations migrations
COPY ingest-wire/src ingest-wire/src
COPY ingest-core/src ingest-core/src
COPY ingest-coordinator/src ingest-coordinator/src
COPY ingest-worker/src ingest-worker/src
COPY ingest-cli/src ingest-cli/src
# COPY keeps the files' modification times from the build context, which may be older than the
# stubs built above: cargo would then take the stubs for up to date and ship an empty main. Touch
# the crate roots so the workspace's crates are rebuilt, and refuse a binary that says nothing.
RUN find ingest-wire/src ingest-core/src ingest-coordinator/src ingest-worker/src ingest-cli/src \
        -maxdepth 1 \( -name lib.rs -o -name main.rs \) -exec touch {} + \
    && cargo build --release --locked --bins \
    && for bin in ingest-coordinator ingest-worker ingest; do \
        test -n "$(target/release/$bin --version)" || { echo "$bin is a stub" >&2; exit 1; }; \
    done

FROM debian:bookworm-slim
# curl stays in the image: it is what the health checks run (here and in docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed, numeric non-root user (Kubernetes' runAsNonRoot can only verify a numeric one; the
# manifests in deploy/k8s run as 10001 too). It writes nothing to disk: the coordinator keeps its
# chunk copies in PostgreSQL, so the image has no data folder and no volume.
RUN groupadd --system --gid 10001 ingest \
    && useradd --system --uid 10001 --gid ingest --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin ingest
COPY --from=build /src/target/release/ingest-coordinator /src/target/release/ingest-worker \
     /src/target/release/ingest /usr/local/bin/
# Reference data for `ingest-coordinator seed --data-dir /app/data/ratestask`.
COPY data /app/data
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9091
# The coordinator's liveness on its default port; the worker's compose service overrides it with
# its own listener (9091). Kubernetes ignores HEALTHCHECK and uses the manifests' probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz >/dev/null || exit 1
ENTRYPOINT []
CMD ["ingest-coordinator"]
