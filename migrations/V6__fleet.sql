-- A fleet of coordinators, and no state on any host that a batch needs.
--
-- `coordinators`: every running coordinator, seen by its peers through a heartbeat. A
-- coordinator not seen for its lease (`seen_at + lease_seconds` in the past) is gone: its peers
-- end the uploads it was feeding (`batches.receiver`). A stopping coordinator leaves the table.
--
-- `batches.receiver`: the coordinator feeding a batch's upload, while it is `receiving`.
--
-- `batches.commit_*`: the commit lease. One coordinator at a time commits a batch; it holds the
-- lease until `commit_lease_until` and renews it while it works. A holder that stops renewing
-- (killed, frozen, cut off) loses the lease to the next coordinator, which ends the holder's
-- sessions (`commit_pids`, each named `ingest commit <id>`) before it goes on. Every write of
-- the holder is guarded by `commit_fence`, bumped at every take: a holder that wakes up after
-- losing the lease changes nothing. `commit_step` is where the holder is (index, foreign_keys,
-- attach), shown in the status.
--
-- `chunks.backend_pid`, `claimed_at`: the PostgreSQL backend of the worker that claimed the chunk,
-- so that an expired lease really frees the chunk (the coordinator ends that backend, whose open
-- transaction holds the chunk's row lock). `published_at`: when its message was last published,
-- so that a chunk still unclaimed long after later ones were claimed is found stranded, one by
-- one, however busy the queue. `damaged`: reads of its copy that did not match its checksum.
--
-- `chunk_copies`: the durable copy of every chunk of a batch not final yet, one table per batch
-- (dropped with the batch), written in the transaction that records the chunk. Workers load from
-- it; RabbitMQ carries only which chunk to load. Before, each coordinator kept the copies in a
-- folder of its own (the spool), which no other coordinator could read.

CREATE TABLE coordinators (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    listen        text NOT NULL,
    lease_seconds double precision NOT NULL CHECK (lease_seconds > 0),
    started_at    timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE batches
    ADD COLUMN receiver           text,
    ADD COLUMN commit_holder      text,
    ADD COLUMN commit_lease_until timestamptz,
    ADD COLUMN commit_fence       bigint NOT NULL DEFAULT 0,
    ADD COLUMN commit_step        text CHECK (commit_step IN ('index', 'foreign_keys', 'attach')),
    ADD COLUMN commit_pids        integer[];

ALTER TABLE chunks
    ADD COLUMN backend_pid  integer,
    ADD COLUMN claimed_at   timestamptz,
    ADD COLUMN published_at timestamptz,
    ADD COLUMN damaged      integer NOT NULL DEFAULT 0;

-- `damaged`: the last read of the chunk's copy did not match its checksum; it is handed out
-- again (read again), not counted as a refusal.
ALTER TABLE chunks DROP CONSTRAINT chunks_state_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_state_check CHECK (state IN
    ('pending', 'queued', 'loading', 'loaded', 'failed', 'damaged', 'dead'));
DROP INDEX chunks_to_redrive;
CREATE INDEX chunks_to_redrive ON chunks (state)
    WHERE state IN ('pending', 'queued', 'loading', 'failed', 'damaged');

CREATE SCHEMA chunk_copies;
