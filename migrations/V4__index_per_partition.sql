-- The read index `(orig_code, dest_code, day)` belongs to each partition, not to the parent.
--
-- With a partitioned index on `prices_by_batch`, ATTACH PARTITION must find a matching index on
-- the table it attaches, or build one while holding the attach's locks. Without it, a batch may
-- be attached first and indexed afterwards (`INGEST_VISIBLE_BEFORE_INDEX`), with CREATE INDEX
-- CONCURRENTLY, which no partitioned index allows. Reads plan with each partition's own index
-- exactly as before. By default the coordinator still builds the index before the attach, and
-- merged partitions are built with theirs.
--
-- Dropping the parent's index drops the partitions' indexes attached to it, so every existing
-- partition gets its own again here (one build per partition, in this migration's transaction).

DROP INDEX prices_by_batch_route_day;

DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name, c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'prices_by_batch'::regclass
    LOOP
        EXECUTE format('CREATE INDEX %I ON %s (orig_code, dest_code, day)',
                       part.relname || '_route_day', part.name);
    END LOOP;
END
$$;
