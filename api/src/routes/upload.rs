//! `POST /key-pools/:poolId/keys/upload`: a JSON list of keys, or a text/plain stream of
//! one key per line of any length, written in batches as it arrives.

use axum::{
    extract::{FromRequest, Request, State},
    http::header,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::pools::{Pool, find_pool};
use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path},
    ingest::{Ingest, LineIssue, Report},
    key_input::{Invalid, Line, LineSplitter},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload_keys))
}

/// The most keys a JSON upload may carry; larger uploads stream as text/plain.
pub const JSON_MAX_KEYS: usize = 1000;

/// Text is fed to the splitter in slices of at most this size, so a batch never grows
/// much past its size whatever the size of the chunks the body arrives in.
const FEED_SLICE: usize = 16 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"keys": ["KEY-AAAAA-00001", "KEY-AAAAA-00002"]}))]
pub struct UploadKeys {
    /// At most 1000 keys.
    #[schema(max_items = 1000)]
    keys: Vec<String>,
}

/// What happened to each line of an upload. Problem lists hold at most the first 1000
/// entries each (by line); `duplicatesCount` and `invalidCount` are always complete, and
/// `truncated` says whether a list was cut.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadReport {
    /// Keys stored by this upload.
    added: u64,
    duplicates: Vec<LineIssue>,
    invalid: Vec<LineIssue>,
    /// All duplicate lines, including those beyond the first 1000 listed.
    duplicates_count: u64,
    /// All invalid lines, including those beyond the first 1000 listed.
    invalid_count: u64,
    /// True when `duplicates` or `invalid` lists fewer entries than its count.
    truncated: bool,
    /// The pool after the upload.
    pool: Pool,
}

/// Uploads keys into a pool. Keys are trimmed; valid new keys are stored even when
/// other lines are rejected. Duplicates are global (across every pool and seller).
/// `text/plain` bodies stream: one key per line (LF or CRLF, UTF-8, leading BOM
/// ignored, blank lines skipped), no limit on the number of lines; keys are committed
/// in batches of a few thousand, so if an upload fails midway the batches already
/// committed stay (sending it again reports them as `already_exists`).
#[utoipa::path(post, path = "/key-pools/{poolId}/keys/upload", tag = "key pools",
    security(("bearer" = [])),
    params(("poolId" = Uuid, Path)),
    request_body(content(
        (UploadKeys = "application/json"),
        (String = "text/plain", example = json!("KEY-AAAAA-00001\nKEY-AAAAA-00002\n")),
    )),
    responses(
        (status = 200, body = UploadReport, description = "What happened to each line; the pool after the upload."),
        (status = 400, description = "malformed body or id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such pool of this seller", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: more than 1000 keys, or more than 2 MiB, in a JSON upload.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests, or this seller already streams as many uploads as it may at once; retry after `Retry-After` seconds.", body = ErrorBody),
        (status = 503, description = "`unavailable`: as many uploads as this process takes at once are running, the service sheds load, or the database is unreachable; retry later.", body = ErrorBody),
        (status = 415, description = "neither application/json nor text/plain", body = ErrorBody),
    ))]
async fn upload_keys(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
    request: Request,
) -> Result<Json<UploadReport>, ApiError> {
    let seller_id = auth.seller()?;
    let _slot = state.uploads.take(seller_id)?;
    find_pool(&mut *state.pool.acquire().await?, seller_id, pool_id).await?;
    let mut ingest = Ingest::start(
        state.pool.clone(),
        state.vault.clone(),
        pool_id,
        auth.actor(),
    );
    match media_type(&request).as_deref() {
        Some("application/json") => {
            let Json(body) = Json::<UploadKeys>::from_request(request, &state).await?;
            if body.keys.len() > JSON_MAX_KEYS {
                return Err(ApiError::PayloadTooLarge(format!(
                    "a JSON upload holds at most {JSON_MAX_KEYS} keys; stream larger ones as text/plain"
                )));
            }
            for (i, key) in body.keys.iter().enumerate() {
                ingest.offer(i as u64 + 1, key);
            }
        }
        Some("text/plain") => {
            let idle = state.settings.limits.request_timeout();
            ingest_text(request, &mut ingest, idle).await?
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json or text/plain".into(),
            ));
        }
    }
    let report = ingest.finish().await?;
    let pool = find_pool(&mut *state.pool.acquire().await?, seller_id, pool_id).await?;
    Ok(Json(into_response(report, pool)))
}

/// The Content-Type without parameters, lowercased.
fn media_type(request: &Request) -> Option<String> {
    let value = request.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// Consumes the body as it arrives, writing a batch whenever one is full. A body that
/// sends nothing for `idle` fails the upload (batches already written stay).
async fn ingest_text(
    request: Request,
    ingest: &mut Ingest,
    idle: std::time::Duration,
) -> Result<(), ApiError> {
    let mut splitter = LineSplitter::new();
    let mut body = request.into_body().into_data_stream();
    loop {
        let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            ApiError::validation(format!(
                "the upload sent no data for {} seconds",
                idle.as_secs()
            ))
        })?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|_| ApiError::validation("the request body could not be read"))?;
        for slice in chunk.chunks(FEED_SLICE) {
            splitter.feed(slice, &mut |n, line| take_line(ingest, n, line));
            if ingest.batch_full() {
                ingest.flush().await?;
            }
        }
    }
    splitter.finish(&mut |n, line| take_line(ingest, n, line));
    Ok(())
}

fn take_line(ingest: &mut Ingest, n: u64, line: Line<'_>) {
    match line {
        Line::Text(text) if text.trim().is_empty() => {}
        Line::Text(text) => ingest.offer(n, text),
        Line::InvalidUtf8 => ingest.reject(n, Invalid::InvalidUtf8),
        Line::TooLong => ingest.reject(n, Invalid::TooLong),
    }
}

fn into_response(report: Report, pool: Pool) -> UploadReport {
    UploadReport {
        added: report.added,
        truncated: report.duplicates.truncated() || report.invalid.truncated(),
        duplicates_count: report.duplicates.count,
        invalid_count: report.invalid.count,
        duplicates: report.duplicates.listed,
        invalid: report.invalid.listed,
        pool,
    }
}
