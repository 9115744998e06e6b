-- Orders are inserted PENDING (store::orders::INSERT is the only insert), and units are owed
-- only to PAID orders: an insert never changes pool_owed. The statement trigger that summed
-- the PAID rows of every insert (always none) cost each POST /orders a PL/pgSQL call and a
-- transition table: measured, POST /orders went from 2,314-2,672 to 2,612-3,006 req/s
-- without it (autokey-bench http, alternating runs). A row trigger that fires only for a
-- row inserted in another status keeps pool_owed exact whatever inserts the row.
DROP TRIGGER orders_owed_units_insert ON orders;

CREATE FUNCTION orders_insert_not_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an order is inserted PENDING, not %', NEW.status
        USING ERRCODE = 'check_violation', CONSTRAINT = 'orders_inserted_pending',
              TABLE = 'orders';
END $$;

CREATE TRIGGER orders_inserted_pending BEFORE INSERT ON orders
    FOR EACH ROW WHEN (NEW.status <> 'PENDING') EXECUTE FUNCTION orders_insert_not_pending();
