-- A delivery now writes every pool of its batch in one statement (a fast lane group spans
-- many pools), so one UPDATE of `keys` can change the counters of several pools. The join
-- of the counter update locks their rows in whatever order its plan yields; two such
-- statements could then lock two pools in opposite orders and deadlock. The pools' rows
-- are therefore locked in id order first when a statement changed more than one pool (a
-- single pool's row is simply locked by its update).
--
-- And the stock crossings are looked for only where the change moved a pool's stock state.
CREATE OR REPLACE FUNCTION keys_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    crossed uuid[];
    available bigint[];
    reserved bigint[];
    delivered bigint[];
    invalid bigint[];
BEGIN
    SELECT array_agg(d.pool_id ORDER BY d.pool_id), array_agg(d.available ORDER BY d.pool_id),
           array_agg(d.reserved ORDER BY d.pool_id), array_agg(d.delivered ORDER BY d.pool_id),
           array_agg(d.invalid ORDER BY d.pool_id)
    INTO ids, available, reserved, delivered, invalid
    FROM (
        SELECT pool_id,
               sum(CASE status WHEN 'AVAILABLE' THEN sign ELSE 0 END) AS available,
               sum(CASE status WHEN 'RESERVED' THEN sign ELSE 0 END) AS reserved,
               sum(CASE status WHEN 'DELIVERED' THEN sign ELSE 0 END) AS delivered,
               sum(CASE status WHEN 'INVALID' THEN sign ELSE 0 END) AS invalid
        FROM (
            SELECT o.pool_id, o.status, -1 AS sign FROM old_rows o
            UNION ALL
            SELECT n.pool_id, n.status, 1 AS sign FROM new_rows n
        ) changes
        GROUP BY pool_id
    ) d
    WHERE (d.available, d.reserved, d.delivered, d.invalid) <> (0, 0, 0, 0);
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(ids) > 1 THEN
        -- LockRows sits above the sort: the rows are locked in id order.
        PERFORM 1 FROM key_pools WHERE id = ANY(ids) ORDER BY id FOR NO KEY UPDATE;
    END IF;
    -- Only a pool whose stock state the change moves (a crossing: what pools_stock_events
    -- records) is handed to pools_stock_events: most deliveries cross nothing, and the
    -- call (a second update of the pool's row) was half of this trigger's time.
    WITH u AS (
        UPDATE key_pools p SET
            available_keys = p.available_keys + d.available,
            reserved_keys  = p.reserved_keys + d.reserved,
            delivered_keys = p.delivered_keys + d.delivered,
            invalid_keys   = p.invalid_keys + d.invalid
        FROM unnest(ids, available, reserved, delivered, invalid)
            AS d(pool_id, available, reserved, delivered, invalid)
        WHERE p.id = d.pool_id
        RETURNING p.id,
                  pool_stock_state(p.available_keys, p.low_stock_threshold, p.stock_state)
                      <> p.stock_state AS crosses
    )
    SELECT array_agg(id) FILTER (WHERE crosses) FROM u INTO crossed;
    IF crossed IS NOT NULL THEN
        PERFORM pools_stock_events(crossed);
    END IF;
    RETURN NULL;
END $$;
