//! Keyset pagination for every list: an opaque cursor over (created_at, id), and the page
//! cut (fetch one row more than the page to know whether another page exists).

use autokey_shared::store::After;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;

/// `?limit=&cursor=` of a list ordered oldest first.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page size and position asked for, checked.
    pub fn checked(&self) -> Result<(i64, Option<After>), ApiError> {
        Ok((
            limit(self.limit, 100, 500)?,
            decode(self.cursor.as_deref())?,
        ))
    }
}

pub fn encode(after: After) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        after.created_at.timestamp_micros(),
        after.id
    ))
}

/// The position a cursor names; absent or empty means the first page.
pub fn decode(cursor: Option<&str>) -> Result<Option<After>, ApiError> {
    let cursor = match cursor {
        None | Some("") => return Ok(None),
        Some(c) => c,
    };
    let bad = || ApiError::validation("cursor is not one this API returned");
    if cursor.len() > 200 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let created_at: DateTime<Utc> =
        DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    let id: Uuid = id.parse().map_err(|_| bad())?;
    Ok(Some(After { created_at, id }))
}

/// Checks a requested page size against `1..=max` (default `default`).
pub fn limit(requested: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = requested.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {max}"
        )));
    }
    Ok(limit)
}

/// Cuts `rows` (fetched with `limit + 1`) to the page and returns the cursor of the next
/// page, if there is one.
pub fn cut<T>(rows: &mut Vec<T>, limit: i64, position: impl Fn(&T) -> After) -> Option<String> {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode(position(r)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let after = After {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode(Some(&encode(after))).unwrap(), Some(after));
        assert_eq!(decode(None).unwrap(), None);
        assert_eq!(decode(Some("")).unwrap(), None);
        assert!(decode(Some("nope!")).is_err());
        assert!(decode(Some(&URL_SAFE_NO_PAD.encode("12|not-a-uuid"))).is_err());
    }

    #[test]
    fn a_page_is_cut_with_the_next_cursor() {
        let at = DateTime::from_timestamp_micros(1).unwrap();
        let pos = |id: &Uuid| After {
            created_at: at,
            id: *id,
        };
        let mut rows: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let next = cut(&mut rows, 2, pos);
        assert_eq!(rows.len(), 2);
        assert_eq!(decode(next.as_deref()).unwrap(), Some(pos(&rows[1])));
        assert_eq!(cut(&mut rows, 2, pos), None);
    }
}
