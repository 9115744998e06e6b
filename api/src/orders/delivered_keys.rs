//! Reading an order's delivered keys in plaintext (decrypted with the vault).

use autokey_shared::vault::{Sealed, Vault};
use sqlx::PgConnection;
use uuid::Uuid;

use super::view::DeliveredKey;
use crate::error::ApiError;

pub async fn load(
    conn: &mut PgConnection,
    vault: &Vault,
    order_id: Uuid,
) -> Result<Vec<DeliveredKey>, ApiError> {
    let rows: Vec<(Uuid, Uuid, Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT k.id, k.pool_id, k.ciphertext, k.nonce, k.enc_key_id
         FROM order_deliveries d JOIN keys k ON k.id = d.key_id
         WHERE d.order_id = $1 ORDER BY k.created_at, k.id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, pool_id, ciphertext, nonce, enc_key_id)| {
            let nonce: [u8; 12] = nonce.try_into().map_err(|_| {
                ApiError::Internal(format!("key {id} has a malformed nonce").into())
            })?;
            let sealed = Sealed {
                ciphertext,
                nonce,
                enc_key_id,
            };
            let key = vault.open(id, pool_id, &sealed).map_err(|e| {
                ApiError::Internal(format!("key {id} cannot be decrypted: {e}").into())
            })?;
            Ok(DeliveredKey { id, key })
        })
        .collect()
}
