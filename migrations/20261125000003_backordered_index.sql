-- "Does an older order of this pool already wait for keys?" is asked for every
-- fulfillment; without this index it reads the pool's whole paid backlog.
CREATE INDEX orders_backordered_idx ON orders (pool_id, paid_at, id)
    WHERE status = 'PAID' AND backordered_at IS NOT NULL;
