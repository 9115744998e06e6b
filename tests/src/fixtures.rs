//! Data set up directly in the database, for tests about orders and the worker that
//! should not depend on the inventory routes.

use autokey_shared::jobs::{self, ReplenishPool};
use uuid::Uuid;

use crate::TestApp;

pub struct Shop {
    pub seller_id: Uuid,
    pub pool_id: Uuid,
    pub offer_id: Uuid,
}

/// A seller with a pool of `keys` keys and an active AUTO_KEY offer on it at 999 EUR cents.
pub async fn shop(app: &TestApp, keys: usize) -> Shop {
    let seller_id = Uuid::now_v7();
    let pool_id = Uuid::now_v7();
    let offer_id = Uuid::now_v7();
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO sellers (id) VALUES ($1)")
        .bind(seller_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO key_pools (id, seller_id, name) VALUES ($1, $2, 'fixture')")
        .bind(pool_id)
        .bind(seller_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO offers (id, seller_id, title, price_cents, currency, delivery_type, key_pool_id, status)
         VALUES ($1, $2, 'Fixture game', 999, 'EUR', 'AUTO_KEY', $3, 'active')",
    )
    .bind(offer_id)
    .bind(seller_id)
    .bind(pool_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let shop = Shop {
        seller_id,
        pool_id,
        offer_id,
    };
    add_keys(app, pool_id, keys).await;
    shop
}

/// Stores `n` fresh encrypted keys in the pool and enqueues the replenishment, as an upload does.
pub async fn add_keys(app: &TestApp, pool_id: Uuid, n: usize) -> Vec<String> {
    let plain: Vec<String> = (0..n)
        .map(|_| format!("KEY-{}", Uuid::new_v4().simple()))
        .collect();
    let mut tx = app.pool.begin().await.unwrap();
    for chunk in plain.chunks(1000) {
        let mut ids = Vec::new();
        let mut cts = Vec::new();
        let mut nonces = Vec::new();
        let mut fps = Vec::new();
        for k in chunk {
            let id = Uuid::now_v7();
            let sealed = app.vault.seal(id, pool_id, k);
            ids.push(id);
            cts.push(sealed.ciphertext);
            nonces.push(sealed.nonce.to_vec());
            fps.push(app.vault.fingerprint(k).to_vec());
        }
        sqlx::query(
            "INSERT INTO keys (id, pool_id, ciphertext, nonce, enc_key_id, fingerprint)
             SELECT id, $2, ct, nonce, 'k1', fp FROM unnest($1::uuid[], $3::bytea[], $4::bytea[], $5::bytea[]) AS t(id, ct, nonce, fp)",
        )
        .bind(&ids)
        .bind(pool_id)
        .bind(&cts)
        .bind(&nonces)
        .bind(&fps)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    jobs::enqueue(&mut tx, &ReplenishPool { pool_id })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    plain
}

/// The pool's (available, reserved, delivered) counters.
pub async fn pool_counts(app: &TestApp, pool_id: Uuid) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT available_keys, reserved_keys, delivered_keys FROM key_pools WHERE id = $1",
    )
    .bind(pool_id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}
