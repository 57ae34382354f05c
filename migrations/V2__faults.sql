-- What riding through faults needs in the ledger.
--
-- `chunks.failures` counts the attempts whose rows PostgreSQL refused; only those bring a chunk
-- closer to `dead`. Attempts lost to an outage or a killed worker are counted in `attempts` and
-- shown as retries, but never fail a batch.
--
-- `batches.outage_*` is the last outage a step of the batch rode through (the commit: which
-- attempt, why, when), shown in the batch status.
--
-- `queued` joins the chunks the redrive looks at: a chunk whose message was dead-lettered or lost
-- stays `queued` with no claim, and is handed out again from the spool.

ALTER TABLE chunks ADD COLUMN failures integer NOT NULL DEFAULT 0;

ALTER TABLE batches
    ADD COLUMN outage_step    text,
    ADD COLUMN outage_attempt integer,
    ADD COLUMN outage_reason  text,
    ADD COLUMN outage_at      timestamptz;

DROP INDEX chunks_to_redrive;
CREATE INDEX chunks_to_redrive ON chunks (state) WHERE state IN ('pending', 'queued', 'loading', 'failed');
