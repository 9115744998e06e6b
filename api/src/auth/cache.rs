//! Authenticated tokens kept in memory for a short while, so an authenticated request
//! costs no database round trip of its own. Bounded (capacity and time to live), and
//! invalidated at once when a token is revoked: `token revoke` announces the token id on
//! [`tokens::REVOKED_CHANNEL`] in its own commit, and every api process listens. While
//! that listener is not connected (start-up, a lost connection) the cache is bypassed
//! and emptied, so a revocation it could have missed never outlives the gap.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use autokey_shared::store::tokens::{self, Principal};
use moka::sync::Cache;
use sqlx::{PgPool, postgres::PgListener};
use uuid::Uuid;

/// How long an authentication is trusted without asking the database again; revocation
/// does not wait for it (it is announced), expiry of a deleted row would.
pub const TTL: Duration = Duration::from_secs(60);
/// Tokens remembered at most (least recently used go first).
pub const CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<[u8; 32], Principal>,
    /// The revocation listener is connected: cached entries can be trusted.
    live: Arc<AtomicBool>,
    /// Bumped by every invalidation, so a lookup that raced a revocation is not cached.
    generation: Arc<AtomicU64>,
}

impl TokenCache {
    /// A cache fed by a listener task on `pool`'s database (it reconnects by itself).
    pub fn start(pool: PgPool) -> Self {
        let cache = Self::disconnected();
        let this = cache.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = this.listen(&pool).await {
                    tracing::warn!(error = %err, "token revocation listener lost its connection; reconnecting");
                }
                this.live.store(false, Ordering::SeqCst);
                this.forget_all();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        cache
    }

    /// A cache that never serves an entry (until a listener makes it live).
    pub fn disconnected() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .support_invalidation_closures()
                .build(),
            live: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn listen(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(tokens::REVOKED_CHANNEL).await?;
        // Anything cached before this point may have missed a revocation.
        self.forget_all();
        self.live.store(true, Ordering::SeqCst);
        loop {
            let note = listener.try_recv().await?;
            let Some(note) = note else {
                // The connection was lost (and re-established by the listener): notes sent
                // meanwhile are gone, so forget everything.
                self.forget_all();
                continue;
            };
            match note.payload().parse::<Uuid>() {
                Ok(id) => self.forget(id),
                Err(_) => self.forget_all(),
            }
        }
    }

    fn forget(&self, token_id: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .entries
            .invalidate_entries_if(move |_, p| p.token_id == token_id);
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Invalidations so far (revocations heard, reconnections): lets a caller wait until a
    /// revocation it made has reached this process.
    pub fn invalidations(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether entries are served (the revocation listener is connected).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The principal of `token`, from memory when possible.
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        token: &str,
    ) -> Result<Option<Principal>, sqlx::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let live = self.live.load(Ordering::SeqCst);
        let hash = tokens::hash_token(token);
        if live && let Some(p) = self.entries.get(&hash) {
            return Ok(Some(p));
        }
        let mut conn = pool.acquire().await?;
        let found = tokens::authenticate_until(&mut conn, token).await?;
        // Not when a revocation arrived meanwhile: the row read may predate it; nor a token
        // that expires before the entry would (a console session near its end).
        if let (Some((p, expires_at)), true) = (found, live)
            && self.generation.load(Ordering::SeqCst) == generation
            && expires_at.is_none_or(|at| at > chrono::Utc::now() + TTL)
        {
            self.entries.insert(hash, p);
        }
        Ok(found.map(|(p, _)| p))
    }
}
