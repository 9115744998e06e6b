-- keys.pool_id was checked by a foreign key, row by row: one key_pools lookup and share
-- lock per key, ~20% of an upload's database time (measured on 100k-key inserts). The
-- same guarantee, set-based: the insert counter trigger already updates every pool row
-- a statement touches, and now refuses the statement unless it found them all. Pools
-- are never deleted and a key never changes pool, so what was checked stays true.
ALTER TABLE keys DROP CONSTRAINT keys_pool_id_fkey;

CREATE OR REPLACE FUNCTION keys_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named   bigint;
    counted bigint;
BEGIN
    WITH d AS (
        SELECT pool_id,
               count(*) AS total,
               count(*) FILTER (WHERE status = 'AVAILABLE') AS available,
               count(*) FILTER (WHERE status = 'RESERVED') AS reserved,
               count(*) FILTER (WHERE status = 'DELIVERED') AS delivered,
               count(*) FILTER (WHERE status = 'INVALID') AS invalid
        FROM new_rows GROUP BY pool_id
    ), u AS (
        UPDATE key_pools p SET
            total_keys     = p.total_keys + d.total,
            available_keys = p.available_keys + d.available,
            reserved_keys  = p.reserved_keys + d.reserved,
            delivered_keys = p.delivered_keys + d.delivered,
            invalid_keys   = p.invalid_keys + d.invalid
        FROM d
        WHERE p.id = d.pool_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM u) INTO named, counted;
    IF counted <> named THEN
        RAISE EXCEPTION 'insert on table "keys" names a key pool that does not exist'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'keys_pool_id_fkey',
                  TABLE = 'keys', COLUMN = 'pool_id';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER key_pools_no_delete BEFORE DELETE ON key_pools
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_delete();

CREATE FUNCTION keys_pool_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a key never moves to another pool'
        USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'keys_pool_id_fkey';
END $$;
CREATE TRIGGER keys_pool_is_fixed BEFORE UPDATE OF pool_id ON keys
    FOR EACH ROW WHEN (OLD.pool_id IS DISTINCT FROM NEW.pool_id)
    EXECUTE FUNCTION keys_pool_is_fixed();
