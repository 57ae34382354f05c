-- Retracting a committed batch (`POST /batches/{id}/retract`): its rows leave `prices` in one
-- transaction and the batch ends in the new final state `retracted`, at `retracted_at`
-- (`finished_at` stays the time it was committed).
ALTER TABLE batches DROP CONSTRAINT batches_state_check;
ALTER TABLE batches ADD CONSTRAINT batches_state_check CHECK (state IN
    ('receiving', 'loading', 'committing', 'committed', 'failed', 'cancelled', 'retracted'));
ALTER TABLE batches ADD COLUMN retracted_at timestamptz;
