//! Text that came from a bundle, a registry or an input file is data, not terminal output.
//!
//! Before such text reaches a person it goes through [`escape`] (or [`Shown`] in a format
//! string): control characters (C0, DEL, C1) and the Unicode controls that reorder or hide
//! text (bidi overrides and isolates, zero-width marks) are written as `\x1b` or `\u{202e}`,
//! so a crafted reference cannot clear the screen, move the cursor or paint a fake line.
//! `--json` output is not escaped here: serde_json already escapes control characters, and
//! scripts need the exact value.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal as it is (what [`escape`] rewrites; `--json` output
/// writes these as `\uXXXX` escapes).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}' // byte order mark / zero-width no-break space
        )
}

/// `s` with every character a terminal would act on written as an escape (`\n`, `\x1b`,
/// `\u{202e}`); borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `s`, escaped, with how much was left out: for error messages
/// that quote input which may be huge (a 200 MB line) or hostile.
pub fn excerpt(s: &str, max: usize) -> String {
    let mut chars = s.char_indices();
    let cut = chars.nth(max).map(|(i, _)| i);
    match cut {
        None => escape(s).into_owned(),
        Some(i) => format!("{}… ({} more bytes)", escape(&s[..i]), s.len() - i),
    }
}

/// Displays its text escaped with [`escape`]: `format!("{}", Shown(&img.reference))`.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape("quay.io/a/b@sha256:00 → ünïcode"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape("\x07\x7f\u{9b}"), "\\x07\\x7f\\x9b");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("\u{2066}\u{feff}"), "\\u{2066}\\u{feff}");
        assert_eq!(Shown("a\x1bb").to_string(), "a\\x1bb");
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        let long = "\x1b".repeat(10) + &"a".repeat(1000);
        let e = excerpt(&long, 12);
        assert_eq!(e, format!("{}aa… (998 more bytes)", "\\x1b".repeat(10)));
        assert_eq!(excerpt("short", 12), "short");
        assert_eq!(excerpt("ééé", 2), "éé… (2 more bytes)");
    }
}
