//! The re-encryption job (an admin's `POST /admin/keys/reencrypt`): moves stored keys and
//! secrets to this worker's current encryption key, in the core's batches
//! (`autokey_shared::rotation`).

use apalis::prelude::*;
use autokey_shared::jobs::{JobError, ReencryptKeys, queue};

use crate::runner::{Ctx, guarded, on_failure};

/// Rotation runs for a bounded time per attempt, then hands over to a fresh run of the
/// same job (re-enqueued), so a long rotation never looks like a stuck job and a kill
/// loses at most one batch.
const REENCRYPT_SLICE: std::time::Duration = std::time::Duration::from_secs(20);

pub(crate) async fn handle_reencrypt(
    job: ReencryptKeys,
    attempt: Attempt,
    task_id: TaskId,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    let run = async {
        let vault = ctx.config.vault.clone().ok_or_else(|| {
            JobError::fatal("this worker has no ENCRYPTION_KEY; it cannot re-encrypt keys")
        })?;
        if vault.current_key_id() != job.target_key_id {
            return Err(JobError::fatal(format!(
                "asked to rotate to key id {:?} but this worker seals with {:?}",
                job.target_key_id,
                vault.current_key_id()
            )));
        }
        let deadline = std::time::Instant::now() + REENCRYPT_SLICE;
        let (moved, done) = autokey_shared::rotation::reencrypt_all(
            &ctx.pool,
            &vault,
            autokey_shared::rotation::BATCH,
            Some(deadline),
            |_| {},
        )
        .await?;
        Ok::<_, JobError>((moved, !done))
    };
    match guarded(run).await {
        Ok((moved, more)) => {
            tracing::info!(
                moved,
                more,
                "keys re-encrypted with the current encryption key"
            );
            if more {
                let mut conn = ctx.pool.acquire().await?;
                queue::enqueue(&mut conn, &job).await?;
            }
            Ok(())
        }
        Err(err) => Err(on_failure::<ReencryptKeys>(&ctx, &task_id, attempt.current(), err).await),
    }
}
