//! `GET /events`: the events the caller may see, in a stable order with no gaps (see
//! `autokey_shared::store::events`), a page at a time.

use autokey_shared::{
    model::Role,
    store::events::{self, Position, Reader},
};
use axum::extract::State;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Query},
    pagination,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// Something that happened: `type` says what, `data` carries the pool (counts) or the
/// order (without keys) or the key it is about.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: Uuid,
    /// pool.low_stock | pool.out_of_stock | pool.restocked | order.paid | order.fulfilled |
    /// order.backordered | order.canceled | key.invalidated | webhook.test
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl From<events::EventRow> for Event {
    fn from(r: events::EventRow) -> Self {
        Event {
            id: r.id,
            kind: r.kind,
            created_at: r.created_at,
            data: r.data,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub items: Vec<Event>,
    /// Where to continue (pass as `after`): the position after the last event returned, or
    /// the `after` given when nothing new arrived; null only when there is nothing yet.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// `nextCursor` of the previous page.
    after: Option<String>,
    /// Only events of this type (`webhook.test` too: what a test delivery sends).
    #[serde(rename = "type")]
    #[param(value_type = Option<super::webhook_endpoints::EventType>)]
    kind: Option<String>,
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

fn encode(p: Position) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", p.xid, p.seq))
}

fn decode(cursor: &str) -> Result<Position, ApiError> {
    let bad = || ApiError::validation("after is not a cursor this API returned");
    if cursor.len() > 100 {
        return Err(bad());
    }
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?).map_err(|_| bad())?;
    let (xid, seq) = text.split_once('|').ok_or_else(bad)?;
    Ok(Position {
        xid: xid.parse().map_err(|_| bad())?,
        seq: seq.parse().map_err(|_| bad())?,
    })
}

/// The events the caller may see (a seller: its pools, keys and the orders of its offers;
/// a storefront: the orders it placed; an admin: all), oldest first. An event appears once
/// every transaction that started before it has ended, so following `nextCursor` never
/// skips one.
#[utoipa::path(get, path = "/events", operation_id = "listEvents", tag = "events", security(("bearer" = [])),
    params(EventParams),
    responses(
        (status = 200, body = EventPage),
        (status = 400, description = "bad cursor, type or limit", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "a buyer token", body = ErrorBody),
    ))]
async fn list_events(
    auth: Auth,
    State(state): State<AppState>,
    Query(q): Query<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    let reader = match (auth.role(), auth.subject()) {
        (Role::Seller, Some(id)) => Reader::Seller(id),
        (Role::Storefront, Some(id)) => Reader::Storefront(id),
        (Role::Admin, _) => Reader::Admin,
        _ => {
            return Err(ApiError::Forbidden(
                "events are for seller, storefront and admin tokens".into(),
            ));
        }
    };
    // An empty `type` filters nothing, as an absent one.
    let kind = q.kind.as_deref().filter(|k| !k.is_empty());
    if let Some(k) = kind
        && !events::TYPES.contains(&k)
        && k != events::TEST_TYPE
    {
        return Err(ApiError::validation(format!(
            "type must be one of {}",
            events::TYPES.join(", ")
        )));
    }
    let limit = pagination::limit(q.limit, 100, 500)?;
    // An empty `after` is the start, as an absent one.
    let after = q
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(decode)
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    let rows = events::page(&mut conn, reader, kind, after, limit).await?;
    let next_cursor = rows
        .last()
        .map(|r| Position {
            xid: r.xid,
            seq: r.seq,
        })
        .or(after)
        .map(encode);
    Ok(Json(EventPage {
        items: rows.into_iter().map(Event::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let p = Position {
            xid: 12_345,
            seq: 678,
        };
        assert_eq!(decode(&encode(p)).unwrap(), p);
        assert!(decode("garbage!").is_err());
    }
}
