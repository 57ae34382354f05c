-- Rows written straight into `prices` — the ratestask API's own price upload, an operator's fix —
-- have no batch. They belong to batch 0, which has a partition of its own, so existing writers
-- keep working (before, such an INSERT failed with "no partition of relation prices_by_batch
-- found for row"). The view `prices` is simple, so PostgreSQL routes an INSERT on it to
-- `prices_by_batch`, where `batch_id` now defaults to 0. Batch ids from `batches` start at 1.
-- The partition inherits both foreign keys and the read index; a merge of partitions may fold
-- it in later, like any committed batch.

ALTER TABLE prices_by_batch ALTER COLUMN batch_id SET DEFAULT 0;

CREATE TABLE price_batches.direct PARTITION OF prices_by_batch FOR VALUES IN (0);
