-- Units owed to PAID orders, per pool, in 16 stripes instead of one column of the pool
-- row: with one row, every payment of a pool waited for the one before it to commit (a
-- launch's payments queued on one row lock). An order always counts in the same stripe
-- (by its id), so each stripe is the sum of its own orders' units and never negative.
CREATE TABLE pool_owed (
    pool_id uuid NOT NULL,
    stripe  smallint NOT NULL,
    -- Never below 0: checked by the trigger below on the value it leaves (a CHECK would
    -- also test the proposed row of an upsert, which carries the negative delta).
    units   bigint NOT NULL,
    PRIMARY KEY (pool_id, stripe)
);

CREATE FUNCTION owed_stripe(order_id uuid) RETURNS smallint LANGUAGE sql IMMUTABLE AS $$
    SELECT (get_byte(uuid_send(order_id), 15) & 15)::smallint
$$;

INSERT INTO pool_owed (pool_id, stripe, units)
SELECT pool_id, owed_stripe(id), sum(quantity) FROM orders
WHERE status = 'PAID' AND pool_id IS NOT NULL GROUP BY 1, 2;

-- Stripes are updated in (pool, stripe) order, so two statements touching several
-- stripes lock them in the same order.
CREATE OR REPLACE FUNCTION orders_owed_units() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lowest bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH up AS (
            INSERT INTO pool_owed AS w (pool_id, stripe, units)
            SELECT pool_id, owed_stripe(id), sum(quantity) FROM new_rows
            WHERE status = 'PAID' AND pool_id IS NOT NULL
            GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (pool_id, stripe) DO UPDATE SET units = w.units + EXCLUDED.units
            RETURNING w.units)
        SELECT min(units) FROM up INTO lowest;
    ELSE
        WITH up AS (
            INSERT INTO pool_owed AS w (pool_id, stripe, units)
            SELECT pool_id, stripe, sum(units) FROM (
                SELECT o.pool_id, owed_stripe(o.id) AS stripe, -o.quantity AS units
                FROM old_rows o WHERE o.status = 'PAID' AND o.pool_id IS NOT NULL
                UNION ALL
                SELECT n.pool_id, owed_stripe(n.id), n.quantity
                FROM new_rows n WHERE n.status = 'PAID' AND n.pool_id IS NOT NULL
            ) changes
            GROUP BY 1, 2 HAVING sum(units) <> 0 ORDER BY 1, 2
            ON CONFLICT (pool_id, stripe) DO UPDATE SET units = w.units + EXCLUDED.units
            RETURNING w.units)
        SELECT min(units) FROM up INTO lowest;
    END IF;
    IF lowest < 0 THEN
        RAISE EXCEPTION 'units owed to paid orders would fall below zero'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'pool_owed_units_check',
                  TABLE = 'pool_owed';
    END IF;
    RETURN NULL;
END $$;

ALTER TABLE key_pools DROP COLUMN owed_units;
