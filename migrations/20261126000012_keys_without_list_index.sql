-- A pool's keys in (created_at, id) order are now read as the merge of each status's range
-- of keys_pool_status_idx (store::keys::PAGE), so this index only cost every delivery,
-- upload and re-encryption one more index entry per key (their updates are not HOT).
DROP INDEX IF EXISTS keys_pool_list_idx;
