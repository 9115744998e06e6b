//! Text that clients send: what is accepted in a name or a title, which currency codes
//! exist, the price cap, and the one spelling of a key that deduplication compares.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The highest price of one unit, in cents (10,000,000.00 in the offer's currency): with
/// at most 100 units an order's amount stays far inside an i64.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

/// Invisible characters that change how text looks or reads (zero-width spaces, bidi
/// overrides such as U+202E, a BOM in the middle of a line): Unicode's Format category.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Why a text field is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} must be at most {1} characters")]
    TooLong(&'static str, usize),
    #[error("{0} must not contain control or invisible formatting characters")]
    Control(&'static str),
}

/// A name or title as stored: trimmed, at most `max_chars` characters, no control
/// character (NUL included) and no invisible formatting character.
pub fn field(
    name: &'static str,
    value: &str,
    max_chars: usize,
    may_be_empty: bool,
) -> Result<String, TextError> {
    let value = value.trim();
    if value.is_empty() && !may_be_empty {
        return Err(TextError::Empty(name));
    }
    if value.chars().take(max_chars + 1).count() > max_chars {
        return Err(TextError::TooLong(name, max_chars));
    }
    if value.chars().any(|c| c.is_control() || is_format(c)) {
        return Err(TextError::Control(name));
    }
    Ok(value.to_owned())
}

/// Whether `code` is an ISO 4217 currency code (upper case, as API.md spells it).
pub fn is_currency(code: &str) -> bool {
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && iso_currency::Currency::from_code(code).is_some()
}

/// The spelling of a key that deduplication compares: Unicode NFC, so that one visible
/// key typed two ways ("é" as one character or as e + accent) is one key. The stored
/// plaintext stays what the seller sent.
pub fn key_identity(key: &str) -> String {
    key.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_refuse_nul_control_and_invisible_characters() {
        assert_eq!(
            field("title", "  Space Game ", 200, false).unwrap(),
            "Space Game"
        );
        assert_eq!(
            field("title", " ", 200, false),
            Err(TextError::Empty("title"))
        );
        assert_eq!(field("name", "", 200, true).unwrap(), "");
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\u{7f}",
            "a\u{200b}b",
            "evil\u{202e}gpj.exe",
            "\u{feff}x",
        ] {
            assert_eq!(
                field("title", bad, 200, false),
                Err(TextError::Control("title")),
                "{bad:?}"
            );
        }
        assert_eq!(
            field("title", &"é".repeat(200), 200, false)
                .unwrap()
                .chars()
                .count(),
            200
        );
        assert!(matches!(
            field("title", &"é".repeat(201), 200, false),
            Err(TextError::TooLong(..))
        ));
    }

    #[test]
    fn currencies_are_iso_4217_codes() {
        for ok in ["EUR", "USD", "JPY", "CHF"] {
            assert!(is_currency(ok), "{ok}");
        }
        for bad in ["XYZ", "eur", "EU", "EURO", "ABC"] {
            assert!(!is_currency(bad), "{bad}");
        }
    }

    #[test]
    fn one_visible_key_has_one_identity() {
        let composed = "KEY-\u{e9}-0001";
        let decomposed = "KEY-e\u{301}-0001";
        assert_ne!(composed, decomposed);
        assert_eq!(key_identity(composed), key_identity(decomposed));
    }
}
