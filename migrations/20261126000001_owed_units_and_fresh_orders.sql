-- Units of PAID orders not yet delivered, per pool, kept like the key counters: by a
-- statement-level trigger over transition tables. "How many keys can still be sold" is
-- then O(1) per order placed, instead of a sum over the pool's paid backlog (a launch's
-- 20k paid orders made every new order read 20k rows).
ALTER TABLE key_pools ADD COLUMN owed_units bigint NOT NULL DEFAULT 0
    CONSTRAINT key_pools_owed_check CHECK (owed_units >= 0);

UPDATE key_pools p SET owed_units = coalesce(
    (SELECT sum(o.quantity) FROM orders o WHERE o.pool_id = p.id AND o.status = 'PAID'), 0);

CREATE FUNCTION orders_owed_units() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE key_pools p SET owed_units = p.owed_units + d.delta
        FROM (SELECT pool_id, sum(quantity) AS delta FROM new_rows
              WHERE status = 'PAID' AND pool_id IS NOT NULL GROUP BY pool_id) d
        WHERE p.id = d.pool_id;
    ELSE
        UPDATE key_pools p SET owed_units = p.owed_units + d.delta
        FROM (
            SELECT pool_id, sum(units) AS delta FROM (
                SELECT o.pool_id, -o.quantity AS units FROM old_rows o WHERE o.status = 'PAID'
                UNION ALL
                SELECT n.pool_id, n.quantity FROM new_rows n WHERE n.status = 'PAID'
            ) changes
            WHERE pool_id IS NOT NULL
            GROUP BY pool_id
        ) d
        WHERE p.id = d.pool_id AND d.delta <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER orders_owed_units_insert AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders_owed_units();
CREATE TRIGGER orders_owed_units_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders_owed_units();

-- Paid orders whose own job has not run yet, oldest paid first: what a fulfillment batch
-- takes. Kept apart from backordered ones, so a sold-out launch's waiting orders are never
-- walked past by every batch.
CREATE INDEX orders_fresh_idx ON orders (pool_id, paid_at, id)
    WHERE status = 'PAID' AND backordered_at IS NULL;

-- Who read: the token as well as its subject.
ALTER TABLE audit_log ADD COLUMN actor_token_id uuid;
