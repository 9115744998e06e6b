-- After the sale, the gaps the first version left, and a faster re-encryption:
--  * an approved replacement still waiting for stock owes its pool a key, so it counts in
--    the pool's owed units (the sellable count) like a paid order's units;
--  * a refund closes the order's open and waiting reports (`canceled`): a refunded order
--    gets no replacement;
--  * keys a seller delivered by hand to a MANUAL order can be reported too; the seller
--    answers with a replacement key typed by hand;
--  * an unpaid MANUAL order holds its units for a while (maintenance cancels it later).

-- `canceled`: closed without a decision on the key, because its order was refunded.
ALTER TABLE key_reports DROP CONSTRAINT key_reports_status_check;
ALTER TABLE key_reports ADD CONSTRAINT key_reports_status_check
    CHECK (status IN ('open', 'approved', 'rejected', 'canceled'));
DROP INDEX key_reports_one_live_per_key;
CREATE UNIQUE INDEX key_reports_one_live_per_key ON key_reports (key_id)
    WHERE status IN ('open', 'approved');

-- A report is about a pool key (key_id, pool_id) or a MANUAL key (manual_key_id).
ALTER TABLE manual_keys ADD COLUMN replaces uuid REFERENCES manual_keys (id);
ALTER TABLE manual_keys ADD COLUMN invalidated_at timestamptz;
CREATE UNIQUE INDEX manual_keys_replaced_once ON manual_keys (replaces) WHERE replaces IS NOT NULL;

ALTER TABLE key_reports ALTER COLUMN key_id DROP NOT NULL;
ALTER TABLE key_reports ALTER COLUMN pool_id DROP NOT NULL;
ALTER TABLE key_reports ADD COLUMN manual_key_id uuid REFERENCES manual_keys (id);
ALTER TABLE key_reports ADD COLUMN replacement_manual_key_id uuid REFERENCES manual_keys (id);
ALTER TABLE key_reports ADD CONSTRAINT key_reports_one_subject
    CHECK ((key_id IS NOT NULL AND pool_id IS NOT NULL AND manual_key_id IS NULL
            AND replacement_manual_key_id IS NULL)
        OR (key_id IS NULL AND pool_id IS NULL AND manual_key_id IS NOT NULL
            AND replacement_key_id IS NULL));
ALTER TABLE key_reports ADD CONSTRAINT key_reports_manual_replacement_needs_approval
    CHECK (replacement_manual_key_id IS NULL OR status = 'approved');
CREATE UNIQUE INDEX key_reports_one_live_per_manual_key ON key_reports (manual_key_id)
    WHERE status IN ('open', 'approved');
-- A seller's reports, newest first, a page at a time: MANUAL reports have no pool, so
-- the listing goes by the order's offer.
ALTER TABLE key_reports ADD COLUMN seller_id uuid;
UPDATE key_reports r SET seller_id = p.seller_id FROM key_pools p WHERE p.id = r.pool_id;
ALTER TABLE key_reports ALTER COLUMN seller_id SET NOT NULL;
CREATE INDEX key_reports_seller_idx ON key_reports (seller_id, created_at DESC, id DESC);

-- Waiting replacements in the pool's owed units: +1 when a report becomes approved
-- without a replacement, -1 when the replacement is delivered or the report is closed.
-- Each report counts in one stripe (by its id), so a stripe never goes below 0. Like the
-- orders' trigger, one statement's changes are applied in (pool, stripe) order, so a
-- batch serving several replacements locks stripes in the same order as a batch of
-- orders (no deadlock between them).
CREATE FUNCTION key_reports_owed_units() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lowest bigint;
BEGIN
    WITH up AS (
        INSERT INTO pool_owed AS w (pool_id, stripe, units)
        SELECT pool_id, stripe, sum(units) FROM (
            SELECT o.pool_id, owed_stripe(o.id) AS stripe, -1 AS units
            FROM old_rows o
            WHERE o.pool_id IS NOT NULL AND o.status = 'approved' AND o.replacement_key_id IS NULL
            UNION ALL
            SELECT n.pool_id, owed_stripe(n.id), 1
            FROM new_rows n
            WHERE n.pool_id IS NOT NULL AND n.status = 'approved' AND n.replacement_key_id IS NULL
        ) changes
        GROUP BY 1, 2 HAVING sum(units) <> 0 ORDER BY 1, 2
        ON CONFLICT (pool_id, stripe) DO UPDATE SET units = w.units + EXCLUDED.units
        RETURNING w.units)
    SELECT min(units) FROM up INTO lowest;
    IF lowest < 0 THEN
        RAISE EXCEPTION 'units owed to waiting replacements would fall below zero'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'pool_owed_units_check',
                  TABLE = 'pool_owed';
    END IF;
    RETURN NULL;
END $$;

-- Reports are inserted `open`; an insert that is already waiting would be counted here.
CREATE FUNCTION key_reports_owed_units_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows
               WHERE pool_id IS NOT NULL AND status = 'approved' AND replacement_key_id IS NULL) THEN
        RAISE EXCEPTION 'a key report is inserted open'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'key_reports_inserted_open',
                  TABLE = 'key_reports';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER key_reports_owed_units_insert AFTER INSERT ON key_reports
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION key_reports_owed_units_insert();
CREATE TRIGGER key_reports_owed_units_update AFTER UPDATE ON key_reports
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION key_reports_owed_units();

INSERT INTO pool_owed AS w (pool_id, stripe, units)
SELECT pool_id, owed_stripe(id), count(*) FROM key_reports
WHERE status = 'approved' AND replacement_key_id IS NULL AND pool_id IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (pool_id, stripe) DO UPDATE SET units = w.units + EXCLUDED.units;

-- MANUAL offers, for maintenance's expiry of abandoned unpaid orders (their holds).
CREATE INDEX offers_manual_idx ON offers (id) WHERE delivery_type = 'MANUAL';

-- Re-encryption reads the keys of a retired id in id order, each batch after the last:
-- one range of this index, instead of walking the dead entries of keys already moved
-- from the start of the id's range every batch.
DROP INDEX keys_enc_key_id_idx;
CREATE INDEX keys_enc_key_id_idx ON keys (enc_key_id, id);

-- A seller's orders, newest first: per offer of the seller, its newest orders before the
-- cursor (one bounded range of `orders_offer_created_idx` each), then the newest of those.
-- The planner must walk that index in order and stop at the page; with statistics that lag
-- behind a launch it would rather read every order of the offer by bitmap and sort them
-- (30 ms at 50k orders), so the function forbids bitmap scans for its own query.
CREATE FUNCTION seller_orders_page(seller uuid, only_status text, before_at timestamptz,
                                   before_id uuid, n bigint)
RETURNS SETOF orders LANGUAGE sql STABLE
SET enable_bitmapscan = off
AS $$
    SELECT o.* FROM offers f
    CROSS JOIN LATERAL (
        SELECT * FROM orders x
        WHERE x.offer_id = f.id AND (only_status IS NULL OR x.status = only_status)
          AND (x.created_at, x.id) < (before_at, before_id)
        ORDER BY x.created_at DESC, x.id DESC LIMIT n) o
    WHERE f.seller_id = seller
    ORDER BY o.created_at DESC, o.id DESC LIMIT n
$$;
