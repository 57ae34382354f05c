-- The ratestask reference data, the published prices, and the ingest ledger.
--
-- `prices` stays what readers query (a view with the four published columns). Its rows live in
-- `prices_by_batch`, partitioned by batch: each batch is loaded into its own table in the
-- `price_batches` schema and becomes visible in one catalog change (ATTACH PARTITION), which
-- also validates both foreign keys in bulk. A failed batch is a DROP TABLE.

CREATE TABLE regions (
    slug        text PRIMARY KEY,
    name        text NOT NULL,
    parent_slug text REFERENCES regions (slug)
);

CREATE TABLE ports (
    code        text PRIMARY KEY,
    name        text NOT NULL,
    parent_slug text NOT NULL REFERENCES regions (slug)
);

CREATE TABLE prices_by_batch (
    batch_id  bigint  NOT NULL,
    orig_code text    NOT NULL REFERENCES ports (code),
    dest_code text    NOT NULL REFERENCES ports (code),
    day       date    NOT NULL,
    price     integer NOT NULL
) PARTITION BY LIST (batch_id);

-- The ratestask reads ask for one route over a range of days.
CREATE INDEX prices_by_batch_route_day ON prices_by_batch (orig_code, dest_code, day);

CREATE VIEW prices AS
    SELECT orig_code, dest_code, day, price FROM prices_by_batch;

-- Staging tables, one per batch, become partitions of prices_by_batch when their batch commits.
CREATE SCHEMA price_batches;

CREATE TABLE batches (
    id              bigserial PRIMARY KEY,
    state           text NOT NULL CHECK (state IN
                        ('receiving', 'loading', 'committing', 'committed', 'failed', 'cancelled')),
    idempotency_key text UNIQUE,
    content_sha256  text,
    bytes_received  bigint NOT NULL DEFAULT 0,
    rows_total      bigint,
    chunks_total    integer,
    error           text,
    error_count     integer NOT NULL DEFAULT 0,
    errors          jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    received_at     timestamptz,
    finished_at     timestamptz,
    commit_seconds  double precision
);

CREATE INDEX batches_unfinished ON batches (state) WHERE state IN ('receiving', 'loading', 'committing');
CREATE INDEX batches_content ON batches (content_sha256);

CREATE TABLE chunks (
    batch_id    bigint  NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    first_line  bigint  NOT NULL,
    last_line   bigint  NOT NULL,
    rows        integer NOT NULL,
    state       text    NOT NULL CHECK (state IN ('pending', 'queued', 'loading', 'loaded', 'failed', 'dead')),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    worker      text,
    lease_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, seq)
);

CREATE INDEX chunks_to_redrive ON chunks (state) WHERE state IN ('pending', 'loading', 'failed');
