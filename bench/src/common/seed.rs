//! SQL-seeded state (labelled as such in the results): shops, keys and orders written
//! straight into the tables, for the scenarios that compare with the API-built ones.

use autokey_shared::{jobs::FulfillOrder, vault::Vault};
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

/// Sells the `n` oldest keys of a pool to as many old FULFILLED orders (with deliveries).
async fn sell_oldest(pool: &PgPool, pool_id: Uuid, offer_id: Uuid, n: usize) -> Res<()> {
    let mut tx = pool.begin().await?;
    let keys: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM keys WHERE pool_id = $1 AND status = 'AVAILABLE' ORDER BY created_at, id LIMIT $2",
    )
    .bind(pool_id)
    .bind(n as i64)
    .fetch_all(&mut *tx)
    .await?;
    let orders: Vec<Uuid> = keys.iter().map(|_| Uuid::now_v7()).collect();
    let buyers: Vec<Uuid> = keys.iter().map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency,
                             status, created_at, paid_at, fulfilled_at)
         SELECT o, b, $3, $4, 1, $5, 'EUR', 'FULFILLED',
                now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(o, b)",
    )
    .bind(&orders)
    .bind(&buyers)
    .bind(offer_id)
    .bind(pool_id)
    .bind(PRICE_CENTS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE keys k SET status = 'DELIVERED', order_id = t.o, delivered_at = now() - interval '1 day'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(k, o) WHERE k.id = t.k",
    )
    .bind(&keys)
    .bind(&orders)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_deliveries (order_id, key_id, delivered_at)
         SELECT o, k, now() - interval '1 day' FROM unnest($1::uuid[], $2::uuid[]) AS t(o, k)",
    )
    .bind(&orders)
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `n` orders of quantity 1, round-robin over the shop's pools. PAID orders get
/// their FulfillOrder job in the same transaction (when `with_jobs`), by the api's own
/// `jobs::queue::enqueue_many`.
pub async fn seed_orders(
    pool: &PgPool,
    shop: &Shop,
    n: usize,
    paid: bool,
    with_jobs: bool,
) -> Res<Vec<(Uuid, Uuid)>> {
    let mut out = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(5000) {
        let m = (n - chunk_start).min(5000);
        let mut ids = Vec::with_capacity(m);
        let mut buyers = Vec::with_capacity(m);
        let mut offers = Vec::with_capacity(m);
        let mut pools = Vec::with_capacity(m);
        let mut ages = Vec::with_capacity(m);
        for j in 0..m {
            let i = chunk_start + j;
            let p = i % shop.pools.len();
            ids.push(Uuid::now_v7());
            buyers.push(Uuid::new_v4());
            offers.push(shop.offers[p]);
            pools.push(shop.pools[p]);
            // Paid in order, oldest first, all in the past.
            ages.push((n - i) as i64);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency, status, paid_at)
             SELECT id, b, o, p, 1, $5, 'EUR', $6,
                    CASE WHEN $6 = 'PAID' THEN now() - age * interval '1 millisecond' END
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $7::bigint[]) AS t(id, b, o, p, age)",
        )
        .bind(&ids)
        .bind(&buyers)
        .bind(&offers)
        .bind(&pools)
        .bind(PRICE_CENTS)
        .bind(if paid { "PAID" } else { "PENDING" })
        .bind(&ages)
        .execute(&mut *tx)
        .await?;
        if paid && with_jobs {
            // The api's own enqueue (natural job ids, the fast lane's grace and NOTIFY),
            // so the worker finds these jobs exactly as it finds paid orders' jobs.
            let jobs: Vec<FulfillOrder> = ids
                .iter()
                .map(|&order_id| FulfillOrder::new(order_id))
                .collect();
            autokey_shared::jobs::queue::enqueue_many(&mut tx, &jobs).await?;
        }
        tx.commit().await?;
        out.extend(ids.into_iter().zip(pools));
    }
    pool.execute("ANALYZE").await?;
    Ok(out)
}
