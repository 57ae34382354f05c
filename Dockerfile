# One image with the three binaries: ingest-coordinator (the default command), ingest-worker and
# the CLI ingest. Build: docker build -t ingest:latest .
#
# The dependencies are cached by cargo-chef, in stages from the least to the most often changed:
#   planner  `cargo chef prepare` reduces the workspace to a recipe (the manifests and the lock
#            file): it changes only when a dependency does;
#   cacher   `cargo chef cook` compiles every dependency from the recipe: this layer stays cached
#            as long as the recipe is the same;
#   builder  the real sources, on top of the cacher's target/: only the workspace's own crates
#            compile again.
# A crate joining the workspace needs no change here beyond a COPY of its folder (cargo needs every
# member to load the workspace; scripts/lint-deploy.sh fails until each is copied).
FROM rust:1-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
# What the build reads (no tests' data, docs or deploy files: a change to them is no new recipe).
# ingest-core embeds migrations/ (refinery) and the coordinator its status page
# (src/http/page.html, include_str!), both found under the folders copied here.
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY ingest-wire ingest-wire
COPY ingest-core ingest-core
COPY ingest-coordinator ingest-coordinator
COPY ingest-worker ingest-worker
COPY ingest-cli ingest-cli
COPY ingest-testkit ingest-testkit
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS cacher
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json

FROM chef AS builder
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY ingest-wire ingest-wire
COPY ingest-core ingest-core
COPY ingest-coordinator ingest-coordinator
COPY ingest-worker ingest-worker
COPY ingest-cli ingest-cli
COPY ingest-testkit ingest-testkit
COPY --from=cacher /src/target target
COPY --from=cacher /usr/local/cargo /usr/local/cargo
# Refuse a binary that says nothing (a stub of cargo-chef's skeleton taken for up to date).
RUN cargo build --release --locked --bin ingest-coordinator --bin ingest-worker --bin ingest \
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
COPY --from=builder /src/target/release/ingest-coordinator /src/target/release/ingest-worker \
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
