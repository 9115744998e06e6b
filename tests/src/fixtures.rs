//! Shops set up through the core's own functions (the same ones the routes call), for
//! tests about orders and the worker that should not depend on the inventory routes.

use autokey_shared::{
    jobs::{ReplenishPool, queue},
    model::{DeliveryType, OfferStatus, Role},
    store::{self, keys::NewKey, offers::DraftFields, tokens},
};
use uuid::Uuid;

use crate::TestApp;

pub struct Shop {
    pub seller_id: Uuid,
    pub pool_id: Uuid,
    pub offer_id: Uuid,
}

/// A seller with a pool of `keys` keys and an active AUTO_KEY offer on it at 999 EUR cents.
pub async fn shop(app: &TestApp, keys: usize) -> Shop {
    let mut tx = app.pool.begin().await.unwrap();
    let seller = tokens::create_token(&mut tx, Role::Seller, None)
        .await
        .unwrap();
    let seller_id = seller.subject.unwrap();
    let pool = store::pools::create(&mut tx, seller_id, "fixture", 0)
        .await
        .unwrap();
    let draft = DraftFields {
        title: "Fixture game",
        price_cents: 999,
        currency: "EUR",
        delivery_type: DeliveryType::AutoKey,
        key_pool_id: Some(pool.id),
        stock_count: None,
    };
    let offer = store::offers::insert_draft(&mut tx, seller_id, &draft)
        .await
        .unwrap();
    store::offers::set_status(&mut tx, offer.id, OfferStatus::Active)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let shop = Shop {
        seller_id,
        pool_id: pool.id,
        offer_id: offer.id,
    };
    add_keys(app, pool.id, keys).await;
    shop
}

/// Stores `n` fresh encrypted keys in the pool and enqueues the replenishment, as an upload does.
pub async fn add_keys(app: &TestApp, pool_id: Uuid, n: usize) -> Vec<String> {
    let plain: Vec<String> = (0..n)
        .map(|_| format!("KEY-{}", Uuid::new_v4().simple()))
        .collect();
    let mut rows: Vec<NewKey> = plain
        .iter()
        .map(|k| {
            let id = Uuid::now_v7();
            NewKey {
                id,
                fingerprint: app.vault.fingerprint(k),
                sealed: app.vault.seal(id, pool_id, k),
            }
        })
        .collect();
    rows.sort_by_key(|r| r.fingerprint);
    let mut tx = app.pool.begin().await.unwrap();
    for chunk in rows.chunks(1000) {
        store::keys::insert(&mut tx, pool_id, None, chunk)
            .await
            .unwrap();
    }
    queue::enqueue(&mut tx, &ReplenishPool { pool_id })
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

/// Withdraws up to `n` AVAILABLE keys of the pool (INVALID), through the core's
/// transition, as a seller's invalidation does.
pub async fn invalidate_keys(app: &TestApp, pool_id: Uuid, n: usize) {
    let mut tx = app.pool.begin().await.unwrap();
    let keys = store::keys::page(
        &mut tx,
        pool_id,
        Some(autokey_shared::model::KeyStatus::Available),
        None,
        n as i64,
    )
    .await
    .unwrap();
    for k in keys {
        autokey_shared::transitions::invalidate(&mut tx, k.id)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}
