-- The audit trail: which objects each row is about, which seller may read it, and a table
-- that can only grow.
--
-- Writers keep naming an order (order_id) and listing key ids in details->'keyIds' or a
-- pool in details->'poolId'; a trigger derives object_ids and the owning seller from
-- them, so a new writer cannot forget to make its row findable.

ALTER TABLE audit_log
    ADD COLUMN object_ids uuid[] NOT NULL DEFAULT '{}',
    ADD COLUMN seller_id  uuid;

CREATE FUNCTION audit_log_derive() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    extra uuid[];
BEGIN
    extra := ARRAY(
        SELECT DISTINCT x FROM (
            SELECT NEW.order_id AS x WHERE NEW.order_id IS NOT NULL
            UNION ALL
            SELECT (NEW.details->>'poolId')::uuid WHERE NEW.details ? 'poolId'
            UNION ALL
            SELECT (NEW.details->>'offerId')::uuid WHERE NEW.details ? 'offerId'
            UNION ALL
            SELECT (NEW.details->>'tokenId')::uuid WHERE NEW.details ? 'tokenId'
            UNION ALL
            SELECT v::uuid FROM jsonb_array_elements_text(
                CASE WHEN jsonb_typeof(NEW.details->'keyIds') = 'array'
                     THEN NEW.details->'keyIds' ELSE '[]'::jsonb END) v
        ) s WHERE x <> ALL (NEW.object_ids));
    NEW.object_ids := NEW.object_ids || extra;
    IF NEW.seller_id IS NULL AND NEW.order_id IS NOT NULL THEN
        SELECT f.seller_id INTO NEW.seller_id
        FROM orders o JOIN offers f ON f.id = o.offer_id WHERE o.id = NEW.order_id;
    END IF;
    IF NEW.seller_id IS NULL AND NEW.details ? 'poolId' THEN
        SELECT p.seller_id INTO NEW.seller_id
        FROM key_pools p WHERE p.id = (NEW.details->>'poolId')::uuid;
    END IF;
    RETURN NEW;
END $$;

-- Rows written before this migration: derive them once, before the table is sealed.
UPDATE audit_log a SET object_ids = ARRAY[a.order_id],
       seller_id = (SELECT f.seller_id FROM orders o JOIN offers f ON f.id = o.offer_id
                    WHERE o.id = a.order_id)
WHERE a.order_id IS NOT NULL;

CREATE TRIGGER audit_log_derive BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_derive();

-- Append-only: the application role (and anyone without the privilege to drop triggers)
-- can neither rewrite nor erase history.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Filters of GET /admin/audit and GET /audit, newest first by id.
CREATE INDEX audit_log_objects_idx ON audit_log USING gin (object_ids);
CREATE INDEX audit_log_seller_idx ON audit_log (seller_id, id) WHERE seller_id IS NOT NULL;
CREATE INDEX audit_log_subject_idx ON audit_log (actor_subject, id);
CREATE INDEX audit_log_token_idx ON audit_log (actor_token_id, id);
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);
