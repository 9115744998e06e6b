//! SQL-seeded state (labelled as such in the results): shops, keys and orders written
//! without the HTTP API, for the scenarios that compare with the API-built ones. Keys go
//! in by bulk SQL (ages set for realism); every order and key transition is the core's.

use autokey_shared::{
    jobs::queue,
    store::{self, orders::NewOrder},
    transitions::{
        self,
        delivery::{self, Take},
    },
    vault::Vault,
};
use sqlx::{Executor, PgPool};
use uuid::Uuid;

use super::Res;

/// One seller, `pools` pools each with an active AUTO_KEY offer.
pub struct Shop {
    pub pools: Vec<Uuid>,
    pub offers: Vec<Uuid>,
}

pub const PRICE_CENTS: i64 = 999;

/// Seeds a seller, pools and offers, `available` AVAILABLE keys per pool and, older than
/// them, `delivered` keys per pool that were sold to earlier (FULFILLED) orders. The
/// delivered keys go through AVAILABLE -> DELIVERED like real ones, then the database is
/// vacuumed: the claim query must walk past them through the partial index.
pub async fn seed_shop(
    pool: &PgPool,
    vault: &Vault,
    pools: usize,
    available: usize,
    delivered: usize,
) -> Res<Shop> {
    let seller_id = Uuid::now_v7();
    let pool_ids: Vec<Uuid> = (0..pools).map(|_| Uuid::now_v7()).collect();
    let offer_ids: Vec<Uuid> = (0..pools).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO sellers (id) VALUES ($1)")
        .bind(seller_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO key_pools (id, seller_id, name)
         SELECT id, $2, 'bench pool ' || n FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&pool_ids)
    .bind(seller_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO offers (id, seller_id, title, price_cents, currency, delivery_type, key_pool_id, status)
         SELECT o, $3, 'Bench game', $4, 'EUR', 'AUTO_KEY', p, 'active'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
    )
    .bind(&offer_ids)
    .bind(&pool_ids)
    .bind(seller_id)
    .bind(PRICE_CENTS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let run = Uuid::new_v4().simple().to_string();
    for (pi, &pool_id) in pool_ids.iter().enumerate() {
        let total = delivered + available;
        // Oldest first: the delivered keys are a day old, the available ones an hour.
        let mut rows = Vec::with_capacity(total);
        for i in 0..total {
            let age_ms: i64 = if i < delivered {
                86_400_000 - i as i64
            } else {
                3_600_000 - (i - delivered) as i64
            };
            rows.push((format!("BENCH-{}-{pi:02}-{i:07}", &run[..10]), age_ms));
        }
        insert_keys(pool, vault, pool_id, &rows).await?;
        if delivered > 0 {
            sell_oldest(pool, pool_id, offer_ids[pi], delivered).await?;
        }
    }
    pool.execute("VACUUM ANALYZE").await?;
    Ok(Shop {
        pools: pool_ids,
        offers: offer_ids,
    })
}

/// Inserts sealed keys (plaintext, age in ms) into a pool by UNNEST batches.
pub async fn insert_keys(
    pool: &PgPool,
    vault: &Vault,
    pool_id: Uuid,
    rows: &[(String, i64)],
) -> Res<()> {
    for chunk in rows.chunks(5000) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut cts = Vec::with_capacity(chunk.len());
        let mut nonces = Vec::with_capacity(chunk.len());
        let mut fps = Vec::with_capacity(chunk.len());
        let mut ages = Vec::with_capacity(chunk.len());
        for (plain, age) in chunk {
            let id = Uuid::now_v7();
            let sealed = vault.seal(id, pool_id, plain);
            ids.push(id);
            cts.push(sealed.ciphertext);
            nonces.push(sealed.nonce.to_vec());
            fps.push(vault.fingerprint(plain).to_vec());
            ages.push(*age);
        }
        sqlx::query(
            "INSERT INTO keys (id, pool_id, ciphertext, nonce, enc_key_id, fingerprint, created_at)
             SELECT id, $2, ct, nonce, 'k1', fp, now() - age * interval '1 millisecond'
             FROM unnest($1::uuid[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bigint[])
                  AS t(id, ct, nonce, fp, age)",
        )
        .bind(&ids)
        .bind(pool_id)
        .bind(&cts)
        .bind(&nonces)
        .bind(&fps)
        .bind(&ages)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Sells the `n` oldest keys of a pool to as many FULFILLED orders, through the core's
/// own transitions (placed, paid with their jobs, delivered in batches as the worker does).
async fn sell_oldest(pool: &PgPool, pool_id: Uuid, offer_id: Uuid, n: usize) -> Res<()> {
    let mut placed = 0;
    while placed < n {
        let m = (n - placed).min(5000);
        let orders: Vec<NewOrder> = (0..m).map(|_| new_order(offer_id, pool_id)).collect();
        let mut tx = pool.begin().await?;
        let rows = store::orders::insert_many(&mut tx, &orders).await?;
        let paid: Vec<(Uuid, Option<&str>)> = rows.iter().map(|r| (r.id, None)).collect();
        transitions::pay_many(&mut tx, &paid, transitions::Announce::InTransaction).await?;
        tx.commit().await?;
        placed += m;
    }
    loop {
        let mut tx = pool.begin().await?;
        let take = Take::Fresh {
            pool_id,
            except: Uuid::nil(),
            limit: 256,
        };
        let orders = delivery::lock(&mut tx, take).await?;
        if orders.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let taken = queue::take_pending_fulfillments(&mut tx, &ids).await?;
        let orders: Vec<_> = orders
            .into_iter()
            .filter(|o| taken.contains(&o.id))
            .collect();
        delivery::deliver(&mut tx, &orders).await?;
        tx.commit().await?;
    }
    Ok(())
}

fn new_order(offer_id: Uuid, pool_id: Uuid) -> NewOrder {
    NewOrder {
        buyer_id: Uuid::new_v4(),
        storefront_id: None,
        offer_id,
        pool_id: Some(pool_id),
        quantity: 1,
        amount_cents: PRICE_CENTS,
        currency: "EUR".into(),
    }
}

/// Places `n` orders of quantity 1, round-robin over the shop's pools, through the core's
/// own insert; `paid` ones are paid by the core's payment transition, which enqueues each
/// order's FulfillOrder job in the same transaction (natural job ids, the fast lane's grace
/// and NOTIFY), so the worker finds them exactly as it finds paid orders' jobs.
pub async fn seed_orders(
    pool: &PgPool,
    shop: &Shop,
    n: usize,
    paid: bool,
) -> Res<Vec<(Uuid, Uuid)>> {
    let mut out = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(5000) {
        let m = (n - chunk_start).min(5000);
        let orders: Vec<NewOrder> = (chunk_start..chunk_start + m)
            .map(|i| {
                let p = i % shop.pools.len();
                new_order(shop.offers[p], shop.pools[p])
            })
            .collect();
        let mut tx = pool.begin().await?;
        let rows = store::orders::insert_many(&mut tx, &orders).await?;
        if paid {
            let pay: Vec<(Uuid, Option<&str>)> = rows.iter().map(|r| (r.id, None)).collect();
            transitions::pay_many(&mut tx, &pay, transitions::Announce::InTransaction).await?;
        }
        tx.commit().await?;
        out.extend(rows.iter().map(|r| (r.id, r.pool_id.unwrap_or_default())));
    }
    pool.execute("ANALYZE").await?;
    Ok(out)
}
