//! Uploaded license keys before they touch the database: validation of one key, and the
//! incremental splitting of a streamed text body into numbered lines. Pure code.

/// Why an uploaded line is not a valid key (the `reason` of an `invalid` report entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Empty,
    TooShort,
    TooLong,
    ControlCharacter,
    FormatCharacter,
    InvalidUtf8,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Empty => "empty",
            Invalid::TooShort => "too_short",
            Invalid::TooLong => "too_long",
            Invalid::ControlCharacter => "control_character",
            Invalid::FormatCharacter => "format_character",
            Invalid::InvalidUtf8 => "invalid_utf8",
        }
    }
}

pub const MIN_CHARS: usize = 5;
pub const MAX_CHARS: usize = 255;

/// The key as stored: `raw` trimmed of surrounding white space, 5..=255 characters,
/// no control character and no invisible formatting character (a zero-width space, a
/// bidi override, a BOM inside the text): one visible key must not be storable twice.
pub fn validate(raw: &str) -> Result<&str, Invalid> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(Invalid::Empty);
    }
    // Counting stops early so a hostile long line costs no more than a valid one.
    let chars = key.chars().take(MAX_CHARS + 1).count();
    if chars < MIN_CHARS {
        return Err(Invalid::TooShort);
    }
    if chars > MAX_CHARS {
        return Err(Invalid::TooLong);
    }
    if key.chars().any(char::is_control) {
        return Err(Invalid::ControlCharacter);
    }
    if key.chars().any(autokey_shared::text::is_format) {
        return Err(Invalid::FormatCharacter);
    }
    Ok(key)
}

/// A line of a text upload, without its line terminator.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a str),
    InvalidUtf8,
    /// Longer than [`MAX_LINE_BYTES`]; its bytes were dropped as they arrived.
    TooLong,
}

/// Far above the longest valid key (255 characters of at most 4 bytes, plus some
/// surrounding blanks); a longer line is invalid and is not buffered.
pub const MAX_LINE_BYTES: usize = 4096;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Splits a byte stream into lines (LF or CRLF) as chunks arrive, numbering them from 1
/// (blank lines count). Memory is bounded by one partial line of [`MAX_LINE_BYTES`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The current line outgrew `MAX_LINE_BYTES`; the rest of it is skipped.
    overflowed: bool,
    /// Lines emitted so far.
    lines: u64,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Emits every line `chunk` completes, with its 1-based number.
    pub fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(u64, Line<'_>)) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let head = &chunk[..end];
            if self.partial.is_empty() && !self.overflowed {
                self.emit(head, emit);
            } else {
                self.append(head);
                let buffered = std::mem::take(&mut self.partial);
                self.emit(&buffered, emit);
                self.partial = buffered;
                self.partial.clear();
            }
            chunk = &chunk[end + 1..];
        }
        self.append(chunk);
    }

    /// Emits the last line when the body does not end with a line break.
    pub fn finish(&mut self, emit: &mut impl FnMut(u64, Line<'_>)) {
        if !self.partial.is_empty() || self.overflowed {
            let buffered = std::mem::take(&mut self.partial);
            self.emit(&buffered, emit);
        }
    }

    /// The number of lines emitted so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
            self.overflowed = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn emit(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(u64, Line<'_>)) {
        self.lines += 1;
        if std::mem::take(&mut self.overflowed) || bytes.len() > MAX_LINE_BYTES {
            return emit(self.lines, Line::TooLong);
        }
        if self.lines == 1 {
            bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        match std::str::from_utf8(bytes) {
            Ok(text) => emit(self.lines, Line::Text(text)),
            Err(_) => emit(self.lines, Line::InvalidUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut emit = |n: u64, line: Line<'_>| {
            out.push((
                n,
                match line {
                    Line::Text(t) => t.to_owned(),
                    Line::InvalidUtf8 => "<utf8>".into(),
                    Line::TooLong => "<long>".into(),
                },
            ))
        };
        let mut s = LineSplitter::new();
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    fn owned(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(n, s)| (*n, s.to_string())).collect()
    }

    #[test]
    fn lf_crlf_blank_lines_and_missing_final_newline() {
        assert_eq!(
            split(&[b"AAAAA\r\nBBBBB\n\n  \r\nCCCCC"]),
            owned(&[(1, "AAAAA"), (2, "BBBBB"), (3, ""), (4, "  "), (5, "CCCCC")])
        );
        assert_eq!(split(&[b"AAAAA\n"]), owned(&[(1, "AAAAA")]));
        assert_eq!(split(&[b""]), owned(&[]));
    }

    #[test]
    fn lines_and_crlf_split_across_chunks() {
        let whole: &[u8] = b"\xEF\xBB\xBFKEY-1\r\nKEY-22\r\n\r\nK\xC3\xA9Y-3";
        let expected = split(&[whole]);
        assert_eq!(
            expected,
            owned(&[(1, "KEY-1"), (2, "KEY-22"), (3, ""), (4, "KéY-3")])
        );
        // Every split point, including inside the BOM, CRLF and a UTF-8 sequence.
        for cut in 0..whole.len() {
            assert_eq!(
                split(&[&whole[..cut], &whole[cut..]]),
                expected,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(split(&bytes), expected);
    }

    #[test]
    fn bom_only_at_the_start() {
        assert_eq!(
            split(&[b"AAAAA\n\xEF\xBB\xBFBBBBB"]),
            owned(&[(1, "AAAAA"), (2, "\u{feff}BBBBB")])
        );
    }

    #[test]
    fn invalid_utf8_is_one_bad_line() {
        assert_eq!(
            split(&[b"GOOD1\nBA\xFFD2\nGOOD3"]),
            owned(&[(1, "GOOD1"), (2, "<utf8>"), (3, "GOOD3")])
        );
    }

    #[test]
    fn over_long_lines_are_not_buffered() {
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        let mut s = LineSplitter::new();
        let mut seen = Vec::new();
        let mut emit = |n: u64, l: Line<'_>| seen.push((n, l == Line::TooLong));
        for _ in 0..100 {
            s.feed(&long, &mut emit);
            assert!(s.partial.capacity() <= MAX_LINE_BYTES * 2);
        }
        s.feed(b"\nAAAAA\n", &mut emit);
        s.feed(&long, &mut emit);
        s.finish(&mut emit);
        assert_eq!(seen, vec![(1, true), (2, false), (3, true)]);
    }

    #[test]
    fn validation_rules() {
        assert_eq!(validate("  ABCDE \t"), Ok("ABCDE"));
        assert_eq!(validate("   "), Err(Invalid::Empty));
        assert_eq!(validate("ABCD"), Err(Invalid::TooShort));
        assert_eq!(validate("ééééé"), Ok("ééééé"));
        assert_eq!(validate(&"x".repeat(255)), Ok(&*"x".repeat(255)));
        assert_eq!(validate(&"x".repeat(256)), Err(Invalid::TooLong));
        assert_eq!(validate("ABC\u{0}DEF"), Err(Invalid::ControlCharacter));
        assert_eq!(validate("ABC\tDEF"), Err(Invalid::ControlCharacter));
        assert_eq!(validate("ABC\u{7f}DEF"), Err(Invalid::ControlCharacter));
        for invisible in [
            "ABC\u{200b}DEF",
            "ABC\u{202e}DEF",
            "ABC\u{feff}DEF",
            "\u{2060}ABCDE",
        ] {
            assert_eq!(
                validate(invisible),
                Err(Invalid::FormatCharacter),
                "{invisible:?}"
            );
        }
    }
}
