-- The outbox: every event is written in the transaction of the change it records, so an
-- event exists exactly when its change committed.
--
-- Readers page by (xid, seq) and see only events of transactions older than every
-- transaction still running (xid < the snapshot's xmin): an event that commits late can
-- never appear behind a cursor a reader has already passed.
CREATE TABLE events (
    id            uuid PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    type          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Who may read it: the seller of the pool or offer, the storefront of the order.
    seller_id     uuid,
    storefront_id uuid,
    pool_id       uuid,
    order_id      uuid,
    data          jsonb NOT NULL
);
CREATE INDEX events_seller_idx ON events (seller_id, xid, seq) WHERE seller_id IS NOT NULL;
CREATE INDEX events_storefront_idx ON events (storefront_id, xid, seq)
    WHERE storefront_id IS NOT NULL;
CREATE INDEX events_all_idx ON events (xid, seq);

-- The Order as API.md shows it (without keys), for order events.
CREATE FUNCTION order_json(o orders) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', o.id, 'buyerId', o.buyer_id, 'offerId', o.offer_id, 'quantity', o.quantity,
        'amountCents', o.amount_cents, 'currency', o.currency, 'status', o.status,
        'createdAt', o.created_at, 'paidAt', o.paid_at, 'fulfilledAt', o.fulfilled_at,
        'canceledAt', o.canceled_at)) || jsonb_build_object('storefrontId', o.storefront_id)
$$;

-- Stock alerts, once per crossing: a pool is `ok`, `low` (available <= its threshold) or
-- `out` (none available). It becomes `ok` again (pool.restocked) only above the threshold
-- plus a margin, so a pool hovering at its threshold does not flap. The state changes in
-- the counter trigger, under the pool row's lock: concurrent deliveries see one crossing.
ALTER TABLE key_pools ADD COLUMN stock_state text NOT NULL DEFAULT 'out'
    CONSTRAINT key_pools_stock_state_check CHECK (stock_state IN ('ok', 'low', 'out'));
UPDATE key_pools SET stock_state = CASE
    WHEN available_keys = 0 THEN 'out'
    WHEN available_keys <= low_stock_threshold THEN 'low' ELSE 'ok' END;

CREATE FUNCTION pool_stock_state(available bigint, threshold integer, previous text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN available = 0 THEN 'out'
        WHEN available <= threshold THEN 'low'
        -- Back above the threshold: restocked only past the margin (20%, at least 1).
        WHEN previous <> 'ok'
             AND available < threshold + greatest(1, ceil(threshold * 0.2)::bigint) THEN previous
        ELSE 'ok' END
$$;

CREATE FUNCTION pool_json(p key_pools) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'poolId', p.id, 'name', p.name, 'lowStockThreshold', p.low_stock_threshold,
        'totalKeys', p.total_keys, 'availableKeys', p.available_keys,
        'reservedKeys', p.reserved_keys, 'deliveredKeys', p.delivered_keys,
        'invalidKeys', p.invalid_keys)
$$;

-- Records the stock crossings of the pools whose counters a statement just changed.
CREATE FUNCTION pools_stock_events(pool_ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH changed AS (
        UPDATE key_pools p
        SET stock_state = pool_stock_state(p.available_keys, p.low_stock_threshold, p.stock_state)
        FROM (SELECT id, stock_state AS before FROM key_pools
              WHERE id = ANY(pool_ids) FOR NO KEY UPDATE) b
        WHERE p.id = b.id
          AND p.stock_state <> pool_stock_state(p.available_keys, p.low_stock_threshold, p.stock_state)
        RETURNING p.id, p.seller_id, p.stock_state, pool_json(p) AS data, b.before
    )
    INSERT INTO events (id, type, seller_id, pool_id, data)
    SELECT gen_random_uuid(),
           CASE c.stock_state WHEN 'out' THEN 'pool.out_of_stock'
                              WHEN 'low' THEN 'pool.low_stock'
                              ELSE 'pool.restocked' END,
           c.seller_id, c.id, c.data
    FROM changed c
    -- A drop straight from ok to out is one crossing (out of stock), and low -> out too;
    -- out -> low (a few keys arrived, not enough) is no news.
    WHERE NOT (c.before = 'out' AND c.stock_state = 'low');
END $$;

CREATE OR REPLACE FUNCTION keys_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named   bigint;
    counted bigint;
    touched uuid[];
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
        RETURNING p.id
    )
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM u), (SELECT array_agg(id) FROM u)
    INTO named, counted, touched;
    IF counted <> named THEN
        RAISE EXCEPTION 'insert on table "keys" names a key pool that does not exist'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'keys_pool_id_fkey',
                  TABLE = 'keys', COLUMN = 'pool_id';
    END IF;
    PERFORM pools_stock_events(touched);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION keys_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    touched uuid[];
BEGIN
    WITH u AS (
        UPDATE key_pools p SET
            available_keys = p.available_keys + d.available,
            reserved_keys  = p.reserved_keys + d.reserved,
            delivered_keys = p.delivered_keys + d.delivered,
            invalid_keys   = p.invalid_keys + d.invalid
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
        WHERE p.id = d.pool_id
          AND (d.available, d.reserved, d.delivered, d.invalid) <> (0, 0, 0, 0)
        RETURNING p.id
    )
    SELECT array_agg(id) FROM u INTO touched;
    IF touched IS NOT NULL THEN
        PERFORM pools_stock_events(touched);
    END IF;
    RETURN NULL;
END $$;

-- A threshold change is a crossing too.
CREATE FUNCTION key_pools_threshold_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pools_stock_events(ARRAY[NEW.id]);
    RETURN NULL;
END $$;
CREATE TRIGGER key_pools_threshold_changed AFTER UPDATE OF low_stock_threshold ON key_pools
    FOR EACH ROW WHEN (OLD.low_stock_threshold IS DISTINCT FROM NEW.low_stock_threshold)
    EXECUTE FUNCTION key_pools_threshold_changed();
