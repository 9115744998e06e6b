//! Plans that cannot collapse. The hot statements of order -> pay -> fulfill -> replenish ->
//! upload -> read, with bound parameters and the planner settings of the application's
//! connections (`db::PLANNER`: generic plans), on a database holding 50k orders, 47k jobs and 43k keys whose
//! statistics still describe empty tables (analyzed while empty, autovacuum off, as during
//! a launch before autoanalyze catches up): no sequential scan of a growing table, no join
//! filter walking rows, and each runs in a few milliseconds.

use autokey_shared::{
    jobs::{FulfillOrder, queue},
    model::{DeliveryType, OfferStatus, Role},
    store::{self, keys::NewKey, offers::DraftFields, orders::NewOrder, tokens},
    transitions::{
        self,
        delivery::{self, Take},
    },
};
use autokey_tests::{TestApp, spawn_app};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Tables that grow with the business; a sequential scan of any of them is a collapse.
const GROWING: &[&str] = &[
    "orders",
    "keys",
    "order_deliveries",
    "jobs",
    "audit_log",
    "api_tokens",
    "idempotency_records",
    "payment_events",
    "key_pools",
    "offers",
    "key_reports",
];

const ORDERS: usize = 50_000;
const PAID: usize = 47_000;
const KEYS: usize = 42_000;
/// Orders the deliveries reach: 42k fulfilled, then 2k backordered; 3k paid stay fresh.
const SERVED: usize = 44_000;

#[tokio::test]
async fn hot_statements_keep_their_index_paths_on_tables_analyzed_while_empty() {
    hot_statements_keep_their_index_paths(true).await;
}

#[tokio::test]
async fn hot_statements_keep_their_index_paths_on_never_analyzed_tables() {
    hot_statements_keep_their_index_paths(false).await;
}

/// A connection keeps the generic plan it made at a statement's first execution
/// (`db::PLANNER`) until something invalidates it (DDL, a VACUUM or ANALYZE of a table it
/// reads). The plans a service made in its first seconds, on a new database's empty
/// tables, are the plans it runs a launch with: each hot statement is planned on empty
/// tables here, then the database grows to the launch's size, and the plans made while it
/// was empty must still hold.
#[tokio::test]
async fn hot_statements_planned_on_empty_tables_keep_their_index_paths_as_they_grow() {
    let app = spawn_app().await;
    freeze_statistics(&app, false).await;
    let mut conn = planner_connection(&app).await;
    let empty = World::unknown();
    let mut names = Vec::new();
    for (i, case) in cases(&empty).iter().enumerate() {
        let name = format!("early_{i}");
        conn.execute(sqlx::AssertSqlSafe(format!(
            "PREPARE {name} ({}) AS {}",
            case.types, case.sql
        )))
        .await
        .unwrap_or_else(|e| panic!("{}: cannot prepare: {e}", case.name));
        // EXPLAIN without ANALYZE makes and keeps the generic plan without running it.
        conn.execute(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE {name} ({})",
            case.args
        )))
        .await
        .unwrap_or_else(|e| panic!("{}: cannot plan: {e}", case.name));
        names.push(name);
    }
    let world = build(&app).await;
    let mut failures = Vec::new();
    for (case, name) in cases(&world).iter().zip(&names) {
        if let Err(e) = judge(&mut conn, name, case).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A connection with the planner settings of the application's own connections.
async fn planner_connection(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect_with(&app.pool.connect_options())
        .await
        .unwrap();
    for (name, value) in autokey_shared::db::PLANNER {
        conn.execute(sqlx::AssertSqlSafe(format!("SET {name} = {value}")))
            .await
            .unwrap();
    }
    conn
}

async fn hot_statements_keep_their_index_paths(analyze_while_empty: bool) {
    let app = spawn_app().await;
    freeze_statistics(&app, analyze_while_empty).await;
    let world = build(&app).await;
    let mut conn = planner_connection(&app).await;
    let mut failures = Vec::new();
    for case in cases(&world) {
        if let Err(e) = check(&mut conn, &case).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// No autovacuum (so no autoanalyze), and optionally an ANALYZE while every table is
/// empty: the planner's statistics keep describing empty tables however much they grow.
async fn freeze_statistics(app: &TestApp, analyze_while_empty: bool) {
    let mut conn = app.pool.acquire().await.unwrap();
    for t in [
        "orders",
        "keys",
        "order_deliveries",
        "apalis.jobs",
        "apalis.workers",
        "audit_log",
        "api_tokens",
        "idempotency_records",
        "payment_events",
        "key_pools",
        "offers",
        "sellers",
        "buyers",
    ] {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {t} SET (autovacuum_enabled = false)"
        )))
        .await
        .unwrap();
        if analyze_while_empty {
            conn.execute(sqlx::AssertSqlSafe(format!("ANALYZE {t}")))
                .await
                .unwrap();
        }
    }
}

/// Ids the statements are executed with.
struct World {
    seller: Uuid,
    pool: Uuid,
    offer: Uuid,
    buyer: Uuid,
    token_hash: Vec<u8>,
    fulfilled: Uuid,
    fresh: Uuid,
    backordered: Uuid,
    pending: Uuid,
    key: Uuid,
    /// An open report on a key of a fulfilled order: (report, key, order).
    report: (Uuid, Uuid, Uuid),
}

impl World {
    /// Ids that name nothing: arguments for statements planned before any row exists.
    fn unknown() -> Self {
        let id = Uuid::now_v7;
        World {
            seller: id(),
            pool: id(),
            offer: id(),
            buyer: id(),
            token_hash: vec![0; 32],
            fulfilled: id(),
            fresh: id(),
            backordered: id(),
            pending: id(),
            key: id(),
            report: (id(), id(), id()),
        }
    }
}

/// The state a launch leaves, built through the core's own functions.
async fn build(app: &TestApp) -> World {
    let mut conn = app.pool.acquire().await.unwrap();
    let seller = tokens::create_token(&mut conn, Role::Seller, None)
        .await
        .unwrap();
    let seller_id = seller.subject.unwrap();
    let buyer = tokens::create_token(&mut conn, Role::Buyer, None)
        .await
        .unwrap();
    for _ in 0..500 {
        tokens::create_token(&mut conn, Role::Storefront, None)
            .await
            .unwrap();
    }
    let pool = store::pools::create(&mut conn, seller_id, "launch", 10)
        .await
        .unwrap();
    let draft = DraftFields {
        title: "Launch",
        price_cents: 999,
        currency: "EUR",
        delivery_type: DeliveryType::AutoKey,
        key_pool_id: Some(pool.id),
        stock_count: None,
    };
    let offer = store::offers::insert_draft(&mut conn, seller_id, &draft)
        .await
        .unwrap();
    store::offers::set_status(&mut conn, offer.id, OfferStatus::Active)
        .await
        .unwrap();
    add_keys(app, &mut conn, pool.id, KEYS).await;
    // Other sellers' pools and offers: catalogues grow too.
    let mut tx = conn.begin().await.unwrap();
    for i in 0..2_000 {
        let other = store::pools::create(&mut tx, seller_id, "other", 0)
            .await
            .unwrap();
        let draft = DraftFields {
            key_pool_id: Some(other.id),
            title: if i % 2 == 0 { "Other" } else { "Another" },
            ..draft.clone()
        };
        store::offers::insert_draft(&mut tx, seller_id, &draft)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let buyer_id = buyer.subject.unwrap();
    let mut ids = Vec::with_capacity(ORDERS);
    for chunk in 0..ORDERS / 5000 {
        let new: Vec<NewOrder> = (0..5000)
            .map(|i| NewOrder {
                // A few buyers with many orders, most with one.
                buyer_id: if i % 50 == 0 {
                    buyer_id
                } else {
                    Uuid::now_v7()
                },
                storefront_id: None,
                offer_id: offer.id,
                pool_id: Some(pool.id),
                quantity: 1,
                amount_cents: 999,
                currency: "EUR".into(),
            })
            .collect();
        let mut tx = conn.begin().await.unwrap();
        let rows = store::orders::insert_many(&mut tx, &new).await.unwrap();
        ids.extend(rows.iter().map(|r| r.id));
        // Storefronts' carts: an Idempotency-Key per order.
        for r in rows.iter().step_by(5) {
            let key = r.id.to_string();
            store::idempotency::record(&mut tx, "storefront:x", &key, b"h", r.id)
                .await
                .unwrap();
        }
        if chunk * 5000 < PAID {
            let pay: Vec<(Uuid, Option<&str>)> = rows
                .iter()
                .take(PAID - chunk * 5000)
                .map(|r| (r.id, None))
                .collect();
            transitions::pay_many(&mut tx, &pay, transitions::Announce::InTransaction)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    // The worker's batches: fulfill until the keys run out, then backorder.
    let mut served = 0;
    while served < SERVED {
        let mut tx = conn.begin().await.unwrap();
        let take = Take::Fresh {
            pool_id: pool.id,
            except: Uuid::nil(),
            limit: 256.min((SERVED - served) as i64),
        };
        let orders = delivery::lock(&mut tx, take).await.unwrap();
        let order_ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let taken = queue::take_pending_fulfillments(&mut tx, &order_ids)
            .await
            .unwrap();
        assert_eq!(
            taken.len(),
            orders.len(),
            "every fresh order's job was Pending"
        );
        delivery::deliver(&mut tx, &orders).await.unwrap();
        tx.commit().await.unwrap();
        served += orders.len();
    }
    // Keys arrive while backorders wait (before the replenishment runs).
    let fresh_keys = add_keys(app, &mut conn, pool.id, 1_000).await;
    for (i, id) in ids.iter().take(200).enumerate() {
        let viewer = store::orders::Viewer::Buyer(buyer_id);
        let actor = store::audit::Actor {
            role: Role::Buyer,
            subject: Some(buyer_id),
            token_id: Some(buyer.id),
        };
        if i % 50 == 0 {
            store::orders::read(&mut conn, *id, viewer, &actor, "plans")
                .await
                .unwrap();
        }
    }
    // Buyers report keys of 3k fulfilled orders; the seller approves 500 of them, which
    // wait for replacements.
    let delivered: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT order_id, key_id FROM order_deliveries WHERE order_id = ANY($1) ORDER BY order_id",
    )
    .bind(&ids[..3_000])
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut tx = conn.begin().await.unwrap();
    let mut reports = Vec::with_capacity(delivered.len());
    for (i, (order_id, key_id)) in delivered.iter().enumerate() {
        let reported = store::key_reports::Reported::PoolKey {
            key_id: *key_id,
            pool_id: pool.id,
        };
        let r = store::key_reports::insert(&mut tx, *order_id, reported, "does not work")
            .await
            .unwrap();
        if i % 6 == 0 {
            transitions::replacement::approve(&mut tx, &r)
                .await
                .unwrap()
                .unwrap();
        }
        reports.push(r);
    }
    tx.commit().await.unwrap();
    let open = reports.last().unwrap();
    World {
        report: (open.id, open.key_id, open.order_id),
        seller: seller_id,
        pool: pool.id,
        offer: offer.id,
        buyer: buyer_id,
        token_hash: tokens::hash_token(&buyer.token).to_vec(),
        fulfilled: ids[0],
        fresh: ids[PAID - 1],
        backordered: ids[SERVED - 1],
        pending: ids[ORDERS - 1],
        key: fresh_keys[0],
    }
}

/// Stores `n` keys through the core, in upload-sized batches; returns their ids.
async fn add_keys(app: &TestApp, conn: &mut PgConnection, pool: Uuid, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    let mut rows: Vec<NewKey> = (0..n)
        .map(|_| {
            let id = Uuid::now_v7();
            let plain = format!("PLAN-{}", Uuid::new_v4().simple());
            ids.push(id);
            NewKey {
                id,
                fingerprint: app.vault.fingerprint(&plain),
                sealed: app.vault.seal(id, pool, &plain),
            }
        })
        .collect();
    rows.sort_by_key(|r| r.fingerprint);
    for chunk in rows.chunks(4000) {
        store::keys::insert(conn, pool, Some(Uuid::now_v7()), chunk)
            .await
            .unwrap();
    }
    ids
}

/// A statement, its parameter types and the arguments it is executed with.
struct Case {
    name: &'static str,
    sql: &'static str,
    types: &'static str,
    args: String,
}

fn case(name: &'static str, sql: &'static str, types: &'static str, args: String) -> Case {
    Case {
        name,
        sql,
        types,
        args,
    }
}

fn uuid(u: Uuid) -> String {
    format!("'{u}'::uuid")
}

fn uuids(u: &[Uuid]) -> String {
    let list: Vec<String> = u.iter().map(|u| format!("{u}")).collect();
    format!("'{{{}}}'::uuid[]", list.join(","))
}

fn cases(w: &World) -> Vec<Case> {
    use store::{idempotency, key_reports, keys, offers, orders, pools};
    let job = FulfillOrder::job_id_of(w.fresh);
    let seller = uuid(w.seller);
    let pool = uuid(w.pool);
    let fresh = uuid(w.fresh);
    let now = "now()";
    vec![
        case(
            "authenticate",
            tokens::AUTHENTICATE,
            "bytea",
            format!("'\\x{}'::bytea", hex(&w.token_hash)),
        ),
        case("offer for order", offers::FOR_ORDER, "uuid", uuid(w.offer)),
        case(
            "place order",
            orders::INSERT,
            "uuid[], uuid[], uuid[], uuid[], int4[], int8[], text[], uuid[]",
            format!(
                "{}, {}, {}, {}, '{{1}}', '{{999}}', '{{EUR}}', '{{NULL}}'",
                uuids(&[Uuid::now_v7()]),
                uuids(&[w.buyer]),
                uuids(&[w.offer]),
                uuids(&[w.pool])
            ),
        ),
        case(
            "place a group of orders",
            orders::PLACE_AUTO_KEY_MANY,
            "uuid[], uuid[], uuid[], int4[], uuid[]",
            format!(
                "{}, {}, {}, '{{1,2}}', '{{NULL,NULL}}'",
                uuids(&[Uuid::now_v7(), Uuid::now_v7()]),
                uuids(&[w.buyer, w.buyer]),
                uuids(&[w.offer, w.offer])
            ),
        ),
        case(
            "idempotency lookup",
            idempotency::FIND,
            "text, text",
            "'buyer:x', 'cart-1'".into(),
        ),
        case(
            "look a group of orders up",
            orders::FIND_MANY,
            "uuid[]",
            uuids(&[w.pending, w.fresh]),
        ),
        case(
            "lock a visible order",
            orders::LOCK_VISIBLE,
            "uuid, uuid, uuid",
            format!("{}, {}, NULL", uuid(w.pending), uuid(w.buyer)),
        ),
        case(
            "lock a group's visible orders",
            orders::LOCK_VISIBLE_MANY,
            "uuid[], uuid[], uuid[]",
            format!(
                "{}, {}, '{{NULL,NULL}}'",
                uuids(&[w.pending, w.fresh]),
                uuids(&[w.buyer, w.buyer])
            ),
        ),
        case(
            "pay",
            transitions::PAY,
            "uuid[], text[]",
            format!("{}, '{{NULL}}'", uuids(&[w.pending])),
        ),
        case(
            "pay a group (jobs, events, audit rows)",
            transitions::PAY_SIMULATED,
            "text[], text, bytea[], int4, text[], float8, uuid[], text[], uuid[], uuid[]",
            format!(
                "'{{{}}}', 'autokey::fulfill_order', '{{\"\\\\x7b7d\"}}', 12, '{{{}}}', 250, {}, '{{storefront}}', '{{NULL}}', '{{NULL}}'",
                FulfillOrder::job_id_of(w.pending),
                w.pending,
                uuids(&[w.pending])
            ),
        ),
        case(
            "enqueue",
            queue::ENQUEUE,
            "text[], text, bytea[], int4, text[], float8, text",
            format!(
                "'{{{}}}', 'autokey::fulfill_order', '{{\"\\\\x7b7d\"}}', 12, '{{{}}}', 250, 'autokey_job_lane'",
                FulfillOrder::job_id_of(w.pending),
                w.pending
            ),
        ),
        case(
            "lane claims its job (marked Done)",
            queue::CLAIM_AS_SERVED_BY_LANE,
            "text, text",
            format!("'{job}', 'autokey::fulfill_order'"),
        ),
        case(
            "lane claims a group of jobs",
            queue::CLAIM_PENDING_MANY,
            "text[], text",
            format!("'{{{job}}}', 'autokey::fulfill_order'"),
        ),
        case(
            "lock a group's orders",
            delivery::LOCK_MANY,
            "uuid[]",
            uuids(&[w.fresh, w.pending]),
        ),
        case(
            "lock the job's order",
            delivery::LOCK_ONE,
            "uuid",
            fresh.clone(),
        ),
        case(
            "lock fresh orders of the pool",
            delivery::LOCK_FRESH,
            "uuid, uuid, int8",
            format!("{pool}, {fresh}, 255"),
        ),
        case(
            "take their jobs (locked and Done)",
            queue::TAKE_PENDING_FULFILLMENTS,
            "text[]",
            format!("'{{{job}}}'"),
        ),
        case(
            "keys held for the batch, first waiting order",
            delivery::HELD_AND_FIRST_WAITING,
            "uuid, uuid[]",
            format!("{pool}, {}", uuids(&[w.fresh, w.backordered])),
        ),
        case(
            "claim keys",
            delivery::CLAIM_KEYS,
            "uuid, int8",
            format!("{pool}, 256"),
        ),
        case(
            "write a delivery",
            delivery::WRITE,
            "uuid[], uuid[], uuid[], uuid[], uuid[], uuid[], text",
            format!(
                "{}, {}, '{{}}', '{{}}', {}, '{{}}', 'autokey_order_fulfilled'",
                uuids(&[w.key]),
                uuids(&[w.fresh]),
                uuids(&[w.fresh])
            ),
        ),
        case(
            "mark the fast lane's job done",
            queue::MARK_SERVED_BY_LANE,
            "text[]",
            format!("'{{{job}}}'"),
        ),
        case(
            "prune finished jobs",
            queue::PRUNE_DONE,
            "float8, int8",
            "3600, 5000".to_owned(),
        ),
        case(
            "lock backordered orders (replenish)",
            delivery::LOCK_WAITING,
            "uuid, int8",
            format!("{pool}, 64"),
        ),
        case(
            "upload a batch of keys",
            keys::INSERT,
            "uuid[], bytea[], bytea[], text[], bytea[], uuid, uuid",
            format!(
                "{}, '{{\"\\\\x00\"}}', '{{\"\\\\x000000000000000000000000\"}}', '{{k1}}', '{{\"\\\\x{}\"}}', {pool}, NULL",
                uuids(&[Uuid::now_v7()]),
                hex(&[7u8; 32])
            ),
        ),
        case(
            "fingerprints this upload stored",
            keys::STORED_BY_UPLOAD,
            "bytea[], uuid",
            format!(
                "'{{\"\\\\x{}\"}}', {}",
                hex(&[7u8; 32]),
                uuid(Uuid::now_v7())
            ),
        ),
        case(
            "read an order with its keys",
            orders::READ,
            "uuid, uuid, uuid, text, uuid, uuid, text",
            format!(
                "{}, {}, NULL, 'buyer', {}, NULL, 'plans'",
                uuid(w.fulfilled),
                uuid(w.buyer),
                uuid(w.buyer)
            ),
        ),
        case(
            "a buyer's orders, first page",
            orders::PAGE_FOR_BUYER,
            "uuid, text, timestamptz, uuid, int8, uuid",
            format!(
                "{}, NULL, 'infinity', {}, 51, NULL",
                uuid(w.buyer),
                uuid(Uuid::max())
            ),
        ),
        case(
            "a buyer's orders, next page",
            orders::PAGE_FOR_BUYER,
            "uuid, text, timestamptz, uuid, int8, uuid",
            format!(
                "{}, 'FULFILLED', {now}, {}, 51, NULL",
                uuid(w.buyer),
                uuid(Uuid::max())
            ),
        ),
        case(
            "a pool's keys",
            keys::PAGE,
            "uuid, timestamptz, uuid, int8",
            format!("{pool}, '-infinity', {}, 51", uuid(Uuid::nil())),
        ),
        case(
            "a pool's AVAILABLE keys",
            keys::PAGE_IN_STATUS,
            "uuid, text, timestamptz, uuid, int8",
            format!(
                "{pool}, 'AVAILABLE', '-infinity', {}, 51",
                uuid(Uuid::nil())
            ),
        ),
        case(
            "a pool's DELIVERED keys, a later page",
            keys::PAGE_IN_STATUS,
            "uuid, text, timestamptz, uuid, int8",
            format!(
                "{pool}, 'DELIVERED', {now} - interval '1 hour', {}, 51",
                uuid(Uuid::nil())
            ),
        ),
        case(
            "a seller's pool",
            pools::FIND_FOR_SELLER,
            "uuid, uuid",
            format!("{pool}, {seller}"),
        ),
        case(
            "sellable keys of a pool",
            pools::SELLABLE,
            "uuid",
            pool.clone(),
        ),
        case(
            "a seller's orders, newest first",
            orders::PAGE_FOR_SELLER,
            "uuid, text, timestamptz, uuid, int8",
            format!("{seller}, NULL, 'infinity', {}, 101", uuid(Uuid::max())),
        ),
        case(
            "a seller's PAID orders, newest first",
            orders::PAGE_FOR_SELLER,
            "uuid, text, timestamptz, uuid, int8",
            format!("{seller}, 'PAID', 'infinity', {}, 101", uuid(Uuid::max())),
        ),
        case(
            "lock a seller's order",
            orders::LOCK_FOR_SELLER,
            "uuid, uuid",
            format!("{fresh}, {seller}"),
        ),
        case(
            "a seller's key reports, newest first",
            key_reports::PAGE_FOR_SELLER,
            "uuid, text, timestamptz, uuid, int8",
            format!("{seller}, NULL, 'infinity', {}, 101", uuid(Uuid::max())),
        ),
        case(
            "a seller's open key reports",
            key_reports::PAGE_FOR_SELLER,
            "uuid, text, timestamptz, uuid, int8",
            format!("{seller}, 'open', 'infinity', {}, 101", uuid(Uuid::max())),
        ),
        case(
            "approve a key report",
            transitions::replacement::APPROVE,
            "uuid, uuid, uuid",
            format!(
                "{}, {}, {}",
                uuid(w.report.0),
                uuid(w.report.1),
                uuid(w.report.2)
            ),
        ),
        case(
            "replacements waiting in a pool",
            transitions::replacement::LOCK_WAITING,
            "uuid, int8",
            format!("{pool}, 256"),
        ),
        case(
            "refund a fulfilled order",
            transitions::refund::REFUND_FULFILLED,
            "uuid",
            uuid(w.fulfilled),
        ),
        case(
            "release a canceled order's keys",
            transitions::RELEASE_RESERVED,
            "uuid",
            uuid(w.backordered),
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prepares the statement and judges it (see [`judge`]).
async fn check(conn: &mut PgConnection, case: &Case) -> Result<(), String> {
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE hot ({}) AS {}",
        case.types, case.sql
    )))
    .await
    .map_err(|e| format!("{}: cannot prepare: {e}", case.name))?;
    let judged = judge(conn, "hot", case).await;
    conn.execute("DEALLOCATE hot").await.unwrap();
    judged
}

/// Executes the prepared statement `name` under EXPLAIN ANALYZE (in a transaction rolled
/// back), three times; checks the plan and the best execution time.
async fn judge(conn: &mut PgConnection, name: &str, case: &Case) -> Result<(), String> {
    let mut best = f64::MAX;
    let mut plan = Value::Null;
    for _ in 0..3 {
        let mut tx = conn.begin().await.unwrap();
        let explained: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name} ({})",
            case.args
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| format!("{}: cannot execute: {e}", case.name))?;
        tx.rollback().await.unwrap();
        let ms = explained[0]["Execution Time"].as_f64().unwrap_or(f64::MAX)
            + explained[0]["Planning Time"].as_f64().unwrap_or(0.0);
        if ms < best {
            best = ms;
            plan = explained[0]["Plan"].clone();
        }
    }
    let mut problems = Vec::new();
    walk(&plan, &mut problems);
    // A few milliseconds on an idle machine; generous for a loaded 2-core CI box.
    if best > 25.0 {
        problems.push(format!("took {best:.2} ms"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n{}",
            case.name,
            problems.join("; "),
            serde_json::to_string_pretty(&plan).unwrap()
        ))
    }
}

fn walk(node: &Value, problems: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or("");
    let relation = node["Relation Name"].as_str().unwrap_or("");
    if kind == "Seq Scan" && GROWING.contains(&relation) {
        problems.push(format!("sequential scan of {relation}"));
    }
    // A bitmap scan without a condition reads a whole (partial) index, and a BitmapAnd
    // pays for both of its inputs: with statistics that call a table small, the planner
    // ANDs an order's primary-key range with all of a partial index (measured: the order
    // read walked every live delivery's entry on each call).
    if kind == "BitmapAnd" {
        problems.push("a BitmapAnd of two indexes".into());
    }
    if kind == "Bitmap Index Scan" && node["Index Cond"].is_null() {
        let index = node["Index Name"].as_str().unwrap_or("");
        problems.push(format!("a bitmap scan of all of {index}"));
    }
    let removed = |field: &str| node[field].as_f64().unwrap_or(0.0);
    if removed("Rows Removed by Join Filter") > 10.0 {
        problems.push(format!(
            "a join filter removed {} rows",
            removed("Rows Removed by Join Filter")
        ));
    }
    if removed("Rows Removed by Filter") > 1_000.0 {
        problems.push(format!(
            "a filter on {relation} removed {} rows",
            removed("Rows Removed by Filter")
        ));
    }
    if let Some(children) = node["Plans"].as_array() {
        for c in children {
            walk(c, problems);
        }
    }
}
