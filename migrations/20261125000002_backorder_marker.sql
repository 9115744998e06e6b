-- When an order's fulfillment first came up short. Younger orders of the same pool queue
-- behind such an order instead of taking newly arrived keys (oldest paid first).
ALTER TABLE orders ADD COLUMN backordered_at timestamptz;
