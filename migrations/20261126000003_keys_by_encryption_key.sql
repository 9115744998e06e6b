-- Which encryption keys seal stored keys: start-up refuses a configuration that lacks one
-- of them, and re-encryption walks the keys of a retired id. Few distinct values, so the
-- index is small (deduplicated), and a loose index scan lists them without reading keys.
CREATE INDEX keys_enc_key_id_idx ON keys (enc_key_id);
