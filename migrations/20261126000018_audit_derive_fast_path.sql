-- audit_log_derive, with a fast path: a row that already names its seller and its order
-- among its objects, with nothing in its details to derive objects from (a grouped
-- simulated pay's: transitions::PAY_SIMULATED), is stored as given. The derivation below
-- would find nothing to add to it, but its ARRAY(...) sub-select is a query of its own
-- (executor start-up and all) on every row; the test here is a plain expression.
CREATE OR REPLACE FUNCTION audit_log_derive() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    extra uuid[];
BEGIN
    IF NEW.details = '{}'::jsonb AND NEW.seller_id IS NOT NULL
       AND (NEW.order_id IS NULL OR NEW.order_id = ANY (NEW.object_ids)) THEN
        RETURN NEW;
    END IF;
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
