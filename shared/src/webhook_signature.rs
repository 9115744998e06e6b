//! Standard Webhooks verification: `webhook-signature: v1,<base64 HMAC-SHA256(secret,
//! "{id}.{timestamp}.{body}")>` (several, space-separated, for secret rotation), with a
//! timestamp tolerance of five minutes either way.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing webhook-id, webhook-timestamp or webhook-signature header")]
    MissingHeader,
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than five minutes away from now")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks the headers' values against the raw body. `now` is unix seconds.
pub fn verify(
    secret: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(id), Some(ts), Some(sigs)) = (id, timestamp, signatures) else {
        return Err(SignatureError::MissingHeader);
    };
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // abs_diff: any i64 the header may carry, without overflow.
    if now.abs_diff(ts) > TOLERANCE_SECS as u64 {
        return Err(SignatureError::StaleTimestamp);
    }
    for candidate in sigs.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(expected) = STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        // verify_slice compares in constant time.
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_a_valid_signature_among_others() {
        let body = br#"{"type":"payment.succeeded"}"#;
        let good = sign(SECRET, "msg_1", 1000, body);
        let other = sign(b"another-secret-another-secret!!", "msg_1", 1000, body);
        let header = format!("{other} {good}");
        assert_eq!(
            verify(
                SECRET,
                Some("msg_1"),
                Some("1000"),
                Some(&header),
                body,
                1000
            ),
            Ok(())
        );
    }

    #[test]
    fn rejects_altered_body_id_timestamp_or_secret() {
        let body = b"{}";
        let sig = sign(SECRET, "msg_1", 1000, body);
        assert_eq!(
            verify(
                SECRET,
                Some("msg_1"),
                Some("1000"),
                Some(&sig),
                b"{ }",
                1000
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, Some("msg_2"), Some("1000"), Some(&sig), body, 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, Some("msg_1"), Some("1001"), Some(&sig), body, 1000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(
                b"wrong-secret-wrong-secret-wrong!",
                Some("msg_1"),
                Some("1000"),
                Some(&sig),
                body,
                1000
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(
                SECRET,
                Some("msg_1"),
                Some("1000"),
                Some("v1,!!!"),
                body,
                1000
            ),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn enforces_five_minutes_both_ways() {
        let body = b"{}";
        for (ts, ok) in [(700, true), (699, false), (1300, true), (1301, false)] {
            let sig = sign(SECRET, "m", ts, body);
            let r = verify(
                SECRET,
                Some("m"),
                Some(&ts.to_string()),
                Some(&sig),
                body,
                1000,
            );
            assert_eq!(r.is_ok(), ok, "ts {ts}: {r:?}");
        }
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        for ts in [i64::MIN, i64::MAX, -1] {
            let sig = sign(SECRET, "m", ts, b"{}");
            let r = verify(
                SECRET,
                Some("m"),
                Some(&ts.to_string()),
                Some(&sig),
                b"{}",
                1000,
            );
            assert_eq!(r, Err(SignatureError::StaleTimestamp), "{ts}");
        }
    }

    #[test]
    fn missing_headers_fail() {
        assert_eq!(
            verify(SECRET, None, Some("1"), Some("v1,x"), b"", 1),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            verify(SECRET, Some("m"), Some("soon"), Some("v1,x"), b"", 1),
            Err(SignatureError::BadTimestamp)
        );
    }
}
