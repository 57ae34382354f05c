# One image with the three binaries: ingest-coordinator, ingest-worker and the CLI ingest.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ingest-coordinator /src/target/release/ingest-worker \
     /src/target/release/ingest /usr/local/bin/
COPY data /app/data
WORKDIR /app
ENTRYPOINT []
