-- autokey schema. The database guards the invariants the code relies on: every
-- rule that would cost money if broken (one key, one order) is a constraint here.

CREATE TABLE sellers (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE buyers (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id         uuid PRIMARY KEY,
    token_hash bytea NOT NULL CONSTRAINT api_tokens_hash_unique UNIQUE,
    role       text NOT NULL CONSTRAINT api_tokens_role_check
               CHECK (role IN ('seller', 'buyer', 'storefront', 'admin')),
    subject_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_tokens_subject_check
        CHECK ((role IN ('seller', 'buyer')) = (subject_id IS NOT NULL))
);

CREATE TABLE key_pools (
    id                  uuid PRIMARY KEY,
    seller_id           uuid NOT NULL REFERENCES sellers (id),
    name                text NOT NULL DEFAULT '',
    low_stock_threshold integer NOT NULL DEFAULT 0
                        CONSTRAINT key_pools_threshold_check CHECK (low_stock_threshold >= 0),
    -- Counters kept by the keys_count_* triggers, so a pool's counts never need a scan.
    total_keys          bigint NOT NULL DEFAULT 0,
    available_keys      bigint NOT NULL DEFAULT 0 CHECK (available_keys >= 0),
    reserved_keys       bigint NOT NULL DEFAULT 0 CHECK (reserved_keys >= 0),
    delivered_keys      bigint NOT NULL DEFAULT 0 CHECK (delivered_keys >= 0),
    invalid_keys        bigint NOT NULL DEFAULT 0 CHECK (invalid_keys >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT key_pools_counts_add_up
        CHECK (total_keys = available_keys + reserved_keys + delivered_keys + invalid_keys)
);
CREATE INDEX key_pools_seller_idx ON key_pools (seller_id, created_at, id);

CREATE TABLE offers (
    id            uuid PRIMARY KEY,
    seller_id     uuid NOT NULL REFERENCES sellers (id),
    title         text NOT NULL,
    price_cents   bigint NOT NULL CONSTRAINT offers_price_check CHECK (price_cents >= 0),
    currency      text NOT NULL CONSTRAINT offers_currency_check CHECK (currency ~ '^[A-Z]{3}$'),
    delivery_type text NOT NULL CONSTRAINT offers_delivery_type_check
                  CHECK (delivery_type IN ('AUTO_KEY', 'MANUAL')),
    key_pool_id   uuid REFERENCES key_pools (id),
    stock_count   integer CONSTRAINT offers_stock_check CHECK (stock_count >= 0),
    status        text NOT NULL DEFAULT 'draft' CONSTRAINT offers_status_check
                  CHECK (status IN ('draft', 'active', 'inactive')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT offers_auto_key_needs_pool
        CHECK (status = 'draft' OR delivery_type <> 'AUTO_KEY' OR key_pool_id IS NOT NULL)
);
CREATE INDEX offers_seller_idx ON offers (seller_id, created_at, id);
CREATE INDEX offers_pool_idx ON offers (key_pool_id);

CREATE TABLE orders (
    id           uuid PRIMARY KEY,
    buyer_id     uuid NOT NULL,
    offer_id     uuid NOT NULL REFERENCES offers (id),
    -- Copied from the offer at creation: the pool this order draws keys from.
    pool_id      uuid REFERENCES key_pools (id),
    quantity     integer NOT NULL CONSTRAINT orders_quantity_check CHECK (quantity BETWEEN 1 AND 100),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    currency     text NOT NULL,
    status       text NOT NULL DEFAULT 'PENDING' CONSTRAINT orders_status_check
                 CHECK (status IN ('PENDING', 'PAID', 'FULFILLED', 'CANCELED')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    paid_at      timestamptz,
    fulfilled_at timestamptz,
    canceled_at  timestamptz,
    payment_id   text,
    CONSTRAINT orders_paid_has_time CHECK (status NOT IN ('PAID', 'FULFILLED') OR paid_at IS NOT NULL),
    CONSTRAINT orders_fulfilled_has_time CHECK ((status = 'FULFILLED') = (fulfilled_at IS NOT NULL)),
    CONSTRAINT orders_canceled_has_time CHECK ((status = 'CANCELED') = (canceled_at IS NOT NULL))
);
CREATE INDEX orders_buyer_idx ON orders (buyer_id, created_at DESC, id DESC);
-- Paid orders still waiting for keys, oldest paid first (backorders, demand counts).
CREATE INDEX orders_waiting_idx ON orders (pool_id, paid_at, id) WHERE status = 'PAID';

CREATE TABLE keys (
    id              uuid PRIMARY KEY,
    pool_id         uuid NOT NULL REFERENCES key_pools (id),
    ciphertext      bytea NOT NULL,
    nonce           bytea NOT NULL CONSTRAINT keys_nonce_length CHECK (octet_length(nonce) = 12),
    enc_key_id      text NOT NULL,
    -- HMAC-SHA256(FINGERPRINT_KEY, key): global deduplication without storing the key.
    fingerprint     bytea NOT NULL CONSTRAINT keys_fingerprint_unique UNIQUE,
    status          text NOT NULL DEFAULT 'AVAILABLE' CONSTRAINT keys_status_check
                    CHECK (status IN ('AVAILABLE', 'RESERVED', 'DELIVERED', 'INVALID')),
    order_id        uuid REFERENCES orders (id),
    upload_batch_id uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    reserved_at     timestamptz,
    delivered_at    timestamptz,
    invalidated_at  timestamptz,
    CONSTRAINT keys_order_matches_status
        CHECK ((status IN ('RESERVED', 'DELIVERED')) = (order_id IS NOT NULL)),
    CONSTRAINT keys_delivered_has_time CHECK ((status = 'DELIVERED') = (delivered_at IS NOT NULL))
);
-- The claim query walks only available keys, oldest first.
CREATE INDEX keys_claim_idx ON keys (pool_id, created_at, id) WHERE status = 'AVAILABLE';
CREATE INDEX keys_pool_list_idx ON keys (pool_id, created_at, id);
CREATE INDEX keys_order_idx ON keys (order_id) WHERE order_id IS NOT NULL;

-- A key belongs to one order, ever: the UNIQUE on key_id makes a double delivery impossible.
CREATE TABLE order_deliveries (
    order_id     uuid NOT NULL REFERENCES orders (id),
    key_id       uuid NOT NULL REFERENCES keys (id) CONSTRAINT order_deliveries_key_unique UNIQUE,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, key_id)
);

CREATE TABLE idempotency_records (
    scope        text NOT NULL,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    order_id     uuid NOT NULL REFERENCES orders (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE TABLE payment_events (
    event_id     text PRIMARY KEY,
    order_id     uuid,
    payment_id   text,
    amount_cents bigint,
    currency     text,
    outcome      text NOT NULL,
    body         jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_order_idx ON payment_events (order_id);

CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor_role    text NOT NULL,
    actor_subject uuid,
    action        text NOT NULL,
    order_id      uuid,
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_order_idx ON audit_log (order_id);

-- Pool counters, maintained per statement from transition tables: one UPDATE of the
-- pool row per statement, however many keys it touched.
CREATE FUNCTION keys_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE key_pools p SET
        total_keys     = p.total_keys + d.total,
        available_keys = p.available_keys + d.available,
        reserved_keys  = p.reserved_keys + d.reserved,
        delivered_keys = p.delivered_keys + d.delivered,
        invalid_keys   = p.invalid_keys + d.invalid
    FROM (
        SELECT pool_id,
               count(*) AS total,
               count(*) FILTER (WHERE status = 'AVAILABLE') AS available,
               count(*) FILTER (WHERE status = 'RESERVED') AS reserved,
               count(*) FILTER (WHERE status = 'DELIVERED') AS delivered,
               count(*) FILTER (WHERE status = 'INVALID') AS invalid
        FROM new_rows GROUP BY pool_id
    ) d
    WHERE p.id = d.pool_id;
    RETURN NULL;
END $$;

CREATE FUNCTION keys_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
      AND (d.available, d.reserved, d.delivered, d.invalid) <> (0, 0, 0, 0);
    RETURN NULL;
END $$;

CREATE TRIGGER keys_count_insert AFTER INSERT ON keys
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keys_count_insert();

CREATE TRIGGER keys_count_update AFTER UPDATE ON keys
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keys_count_update();

-- Keys are never deleted (they are evidence of what was sold); pools neither.
CREATE FUNCTION forbid_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rows of % are never deleted', TG_TABLE_NAME;
END $$;
CREATE TRIGGER keys_no_delete BEFORE DELETE ON keys FOR EACH STATEMENT EXECUTE FUNCTION forbid_delete();
CREATE TRIGGER order_deliveries_no_delete BEFORE DELETE ON order_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_delete();
