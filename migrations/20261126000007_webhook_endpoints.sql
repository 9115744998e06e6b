-- Outgoing webhooks: endpoints registered by sellers and storefronts, and one delivery
-- row per (endpoint, event), created with the event (same transaction) by a trigger.
CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    owner_role           text NOT NULL CONSTRAINT webhook_endpoints_owner_role_check
                         CHECK (owner_role IN ('seller', 'storefront')),
    owner_id             uuid NOT NULL,
    url                  text NOT NULL,
    event_types          text[] NOT NULL,
    -- The signing secret, sealed like a key (AES-256-GCM under an encryption key id).
    secret_ciphertext    bytea NOT NULL,
    secret_nonce         bytea NOT NULL CHECK (octet_length(secret_nonce) = 12),
    secret_key_id        text NOT NULL,
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- Not before: the head delivery failed and waits for its retry.
    retry_at             timestamptz,
    -- A worker delivering to this endpoint holds it until then (one sender at a time keeps
    -- deliveries in order; a dead worker's lease runs out).
    lease_until          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    deleted_at           timestamptz
);
CREATE INDEX webhook_endpoints_owner_idx ON webhook_endpoints (owner_id, created_at, id)
    WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id   uuid NOT NULL REFERENCES webhook_endpoints (id),
    event_id      uuid NOT NULL REFERENCES events (id),
    -- The event's position: deliveries go out in this order, per endpoint.
    event_xid     xid8 NOT NULL,
    event_seq     bigint NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CONSTRAINT webhook_deliveries_status_check
                  CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    last_status   integer,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at  timestamptz,
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, event_xid, event_seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- Fan-out, in the event's own transaction: each enabled endpoint of the event's seller
-- or storefront that asked for its type gets a delivery; the worker is woken.
CREATE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    added bigint;
BEGIN
    WITH ins AS (
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_xid, event_seq)
        SELECT w.id, e.id, e.xid, e.seq
        FROM new_rows e
        JOIN webhook_endpoints w
          ON w.enabled AND w.deleted_at IS NULL AND e.type = ANY (w.event_types)
         AND ((w.owner_role = 'seller' AND w.owner_id = e.seller_id)
              OR (w.owner_role = 'storefront' AND w.owner_id = e.storefront_id))
        ON CONFLICT DO NOTHING
        RETURNING 1)
    SELECT count(*) FROM ins INTO added;
    IF added > 0 THEN
        PERFORM pg_notify('autokey_webhooks_due', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_fan_out();
