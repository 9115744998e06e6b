-- After the sale: MANUAL deliveries, refunds, reveal tracking.

-- A MANUAL offer's units held by open (PENDING or PAID) orders, summed at each order
-- placed on the offer (under the offer's row lock): one index range per offer.
CREATE INDEX orders_open_by_offer_idx ON orders (offer_id)
    WHERE status IN ('PENDING', 'PAID');
-- A seller's orders, newest first: one index range per offer of the seller, merged.
CREATE INDEX orders_offer_created_idx ON orders (offer_id, created_at DESC, id DESC);

-- Keys a seller delivers by hand to a MANUAL order. Sealed like pool keys, bound to the
-- key's id and its order's id (a MANUAL key has no pool); deduplicated among themselves by
-- the same HMAC fingerprint. Never deleted.
CREATE TABLE manual_keys (
    id          uuid PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders (id),
    ciphertext  bytea NOT NULL,
    nonce       bytea NOT NULL CONSTRAINT manual_keys_nonce_length CHECK (octet_length(nonce) = 12),
    enc_key_id  text NOT NULL,
    fingerprint bytea NOT NULL CONSTRAINT manual_keys_fingerprint_unique UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The first time the plaintext left autokey (an order read, a fulfill answer).
    revealed_at timestamptz
);
CREATE INDEX manual_keys_order_idx ON manual_keys (order_id, created_at, id);
CREATE TRIGGER manual_keys_no_delete BEFORE DELETE ON manual_keys
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_delete();

-- The first time a delivered pool key's plaintext left autokey.
ALTER TABLE order_deliveries ADD COLUMN revealed_at timestamptz;
-- A delivery a refund took back (the key went back to the pool or became INVALID): the
-- order keeps its history, the key may be sold again.
ALTER TABLE order_deliveries ADD COLUMN returned_at timestamptz;

-- A FULFILLED order refunded by the payment provider stays FULFILLED with this time.
ALTER TABLE orders ADD COLUMN refunded_at timestamptz;
-- Why a key is INVALID (`refunded` when a refund took back a key that had been revealed;
-- null for a seller's withdrawal).
ALTER TABLE keys ADD COLUMN invalid_reason text;

-- A refund takes its deliveries back (`returned_at`) and a never-revealed key returns to
-- AVAILABLE, to be sold again: a key is delivered to at most one order *at a time*, and
-- to one order ever unless a refund gave it back.
ALTER TABLE order_deliveries DROP CONSTRAINT order_deliveries_key_unique;
CREATE UNIQUE INDEX order_deliveries_key_unique ON order_deliveries (key_id)
    WHERE returned_at IS NULL;

-- Key reports: a buyer or storefront says a delivered key does not work; the seller
-- approves (the key becomes INVALID and a replacement from the same pool is delivered to
-- the same order by the worker, once) or rejects. At most one live report per key.
CREATE TABLE key_reports (
    id                 uuid PRIMARY KEY,
    order_id           uuid NOT NULL REFERENCES orders (id),
    key_id             uuid NOT NULL REFERENCES keys (id),
    pool_id            uuid NOT NULL REFERENCES key_pools (id),
    reason             text NOT NULL CONSTRAINT key_reports_reason_check
                       CHECK (length(reason) BETWEEN 1 AND 1000),
    status             text NOT NULL DEFAULT 'open' CONSTRAINT key_reports_status_check
                       CHECK (status IN ('open', 'approved', 'rejected')),
    note               text,
    replacement_key_id uuid REFERENCES keys (id),
    created_at         timestamptz NOT NULL DEFAULT now(),
    decided_at         timestamptz,
    CONSTRAINT key_reports_replacement_needs_approval
        CHECK (replacement_key_id IS NULL OR status = 'approved')
);
CREATE UNIQUE INDEX key_reports_one_live_per_key ON key_reports (key_id)
    WHERE status <> 'rejected';
CREATE INDEX key_reports_pool_idx ON key_reports (pool_id, created_at, id);
-- Approved reports still waiting for a key, oldest approved first (served like backorders).
CREATE INDEX key_reports_waiting_idx ON key_reports (pool_id, decided_at, id)
    WHERE status = 'approved' AND replacement_key_id IS NULL;
CREATE INDEX key_reports_order_idx ON key_reports (order_id);

-- A delivery that replaces another key of the same order.
ALTER TABLE order_deliveries ADD COLUMN replaces uuid REFERENCES keys (id);

-- Reports on this pool's keys approved automatically, up to this many per order.
ALTER TABLE key_pools ADD COLUMN auto_replace_limit integer NOT NULL DEFAULT 0
    CONSTRAINT key_pools_auto_replace_check CHECK (auto_replace_limit BETWEEN 0 AND 100);
