-- A pool's keys in one status, oldest first: what a fulfillment claims (AVAILABLE) and what
-- a seller lists with a status filter. Replaces the partial claim index: listing DELIVERED
-- or INVALID keys of a pool that sold most of them no longer walks every key of the pool.
CREATE INDEX keys_pool_status_idx ON keys (pool_id, status, created_at, id);
DROP INDEX keys_claim_idx;
