//! Orders as the API shows them: the Order view, plaintext keys for their buyer, and
//! `Idempotency-Key` handling. Reads and writes are the core's (`store::orders`,
//! `transitions`); handlers own the transactions.

pub mod idempotency;
pub mod view;

use autokey_shared::{store::keys::SealedKey, vault::Vault};
use chrono::{DateTime, Utc};

use crate::error::ApiError;
use view::DeliveredKey;

/// Decrypts an order's delivered keys (each bound to its row by the vault).
pub fn open_keys(
    vault: &Vault,
    sealed: Vec<(SealedKey, DateTime<Utc>)>,
) -> Result<Vec<DeliveredKey>, ApiError> {
    sealed
        .into_iter()
        .map(|(k, revealed_at)| {
            let key = vault.open(k.id, k.pool_id, &k.sealed).map_err(|e| {
                ApiError::Internal(format!("key {} cannot be decrypted: {e}", k.id).into())
            })?;
            Ok(DeliveredKey {
                id: k.id,
                key,
                revealed_at,
            })
        })
        .collect()
}
