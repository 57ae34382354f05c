-- Replacing a committed batch by a corrected file (`POST /batches` with `Replaces: <id>`): the
-- new batch's commit retracts the old one in the transaction of its own attach, so readers see
-- the old batch or the new one, never both and never neither.
--
-- `replaces`: the batch this one was submitted to replace (checked at submit: committed and not
-- replaced yet; checked again, under the old batch's row lock, at the commit).
-- `replaced_by`: set on the old batch, with `retracted`, by the commit of the batch that
-- replaced it. Only a retracted batch was replaced, and by one batch only.
ALTER TABLE batches ADD COLUMN replaces bigint REFERENCES batches (id);
ALTER TABLE batches ADD COLUMN replaced_by bigint REFERENCES batches (id);
ALTER TABLE batches ADD CONSTRAINT batches_replaced_only_retracted
    CHECK (replaced_by IS NULL OR state = 'retracted');
CREATE UNIQUE INDEX batches_replaced_by ON batches (replaced_by) WHERE replaced_by IS NOT NULL;
CREATE INDEX batches_replaces ON batches (replaces) WHERE replaces IS NOT NULL;
