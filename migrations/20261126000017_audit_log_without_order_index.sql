-- Nothing reads the audit trail by its order_id column: the trail is searched by object
-- (`object_ids @> ARRAY[id]`, GIN), and the derive trigger puts a row's order there. The
-- index cost one more write on each audit row, two of which every sold order writes.
DROP INDEX IF EXISTS audit_log_order_idx;
