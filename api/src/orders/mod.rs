//! Orders as the API shows them: the Order view, plaintext keys for their buyer, and
//! `Idempotency-Key` handling. Reads and writes are the core's (`store::orders`,
//! `transitions`); handlers own the transactions.

pub mod idempotency;
pub mod intake;
pub mod lookup;
pub mod view;

use autokey_shared::{store::orders::ShownKey, vault::Vault};

use crate::error::ApiError;
use view::DeliveredKey;

/// Decrypts an order's delivered keys (each bound to its row by the vault).
pub fn open_keys(vault: &Vault, shown: Vec<ShownKey>) -> Result<Vec<DeliveredKey>, ApiError> {
    shown
        .into_iter()
        .map(|s| {
            let k = &s.sealed;
            let key = vault.open(k.id, k.pool_id, &k.sealed).map_err(|e| {
                ApiError::Internal(format!("key {} cannot be decrypted: {e}", k.id).into())
            })?;
            Ok(DeliveredKey {
                id: k.id,
                key,
                revealed_at: s.revealed_at,
                replaced_by: s.replaced_by,
                replaces: s.replaces,
            })
        })
        .collect()
}
