//! Schemas of the text fields, computed from the very rules the server applies
//! (`autokey_shared::text`), so that the document says exactly what is accepted.

use autokey_shared::text;
use utoipa::openapi::{
    ObjectBuilder, Type,
    schema::{Object, SchemaType},
};

/// What `text::field` refuses anywhere in a name or a title.
fn forbidden(c: char) -> bool {
    c.is_control() || text::is_format(c)
}

/// White space that `text::field` trims, among the characters it allows.
fn blank(c: char) -> bool {
    c.is_whitespace() && !forbidden(c)
}

/// A regex character class body (without brackets) of every character for which `pick`
/// holds: `\uXXXX` escapes in the Basic Multilingual Plane and the characters themselves
/// beyond it (escape syntaxes differ there between regex dialects, literal characters do
/// not; the committed JSON spells them as escapes).
fn class(pick: impl Fn(char) -> bool) -> String {
    let mut ranges: Vec<(char, char)> = Vec::new();
    for c in (0..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter(|&c| pick(c))
    {
        match ranges.last_mut() {
            Some((_, end)) if *end as u32 + 1 == c as u32 => *end = c,
            _ => ranges.push((c, c)),
        }
    }
    let one = |c: char| {
        if (c as u32) < 0x10000 {
            format!("\\u{:04x}", c as u32)
        } else {
            c.to_string()
        }
    };
    ranges
        .into_iter()
        .map(|(a, b)| match b as u32 - a as u32 {
            0 => one(a),
            1 => one(a) + &one(b),
            _ => format!("{}-{}", one(a), one(b)),
        })
        .collect()
}

/// A name or title pattern: no control or invisible formatting character; with
/// `non_blank`, at least one character that trimming keeps.
pub fn pattern(non_blank: bool) -> String {
    let bad = class(forbidden);
    if non_blank {
        let bad_or_blank = class(|c| forbidden(c) || blank(c));
        format!("^[^{bad}]*[^{bad_or_blank}][^{bad}]*$")
    } else {
        format!("^[^{bad}]*$")
    }
}

fn string(max_chars: usize, non_blank: bool, description: &str) -> Object {
    // An optional field (may be blank) may also be null.
    let kind = if non_blank {
        SchemaType::Type(Type::String)
    } else {
        SchemaType::Array(vec![Type::String, Type::Null])
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .max_length(Some(max_chars))
        .min_length(non_blank.then_some(1))
        .pattern(Some(pattern(non_blank)))
        .description(Some(description))
        .build()
}

/// `name` of a key pool: optional, may be empty or null.
pub fn pool_name() -> Object {
    string(
        200,
        false,
        "Trimmed of surrounding white space; no control or invisible formatting character.",
    )
}

/// `title` of an offer: required, not blank.
pub fn offer_title() -> Object {
    let mut schema = string(
        200,
        true,
        "Trimmed of surrounding white space, then not empty; no control or invisible \
         formatting character.",
    );
    schema.examples = vec!["Space Game (Steam key)".into()];
    schema
}

/// Every currency the server accepts: ISO 4217 codes, upper case.
pub fn currencies() -> Vec<String> {
    let letters = b'A'..=b'Z';
    let mut codes = Vec::new();
    for a in letters.clone() {
        for b in letters.clone() {
            for c in letters.clone() {
                let code = String::from_utf8(vec![a, b, c]).expect("ASCII");
                if text::is_currency(&code) {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

pub fn currency() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(currencies()))
        .description(Some("An ISO 4217 currency code, upper case."))
        .examples(["EUR"])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_name_the_refused_characters() {
        let p = pattern(false);
        assert!(
            p.starts_with("^[^\\u0000-\\u001f\\u007f-\\u009f\\u00ad"),
            "{p}"
        );
        assert!(p.contains("\\u202a-\\u202e"), "{p}");
        assert!(p.contains('\u{E0001}'), "{p}");
        assert!(pattern(true).contains("\\u0020"));
    }

    #[test]
    fn currencies_are_the_iso_codes() {
        let codes = currencies();
        assert!(codes.contains(&"EUR".to_owned()) && codes.contains(&"USD".to_owned()));
        assert!(!codes.contains(&"ABC".to_owned()));
    }
}
