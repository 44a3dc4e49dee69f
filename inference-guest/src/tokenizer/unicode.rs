//! Codepoint classes as llama.cpp's `unicode.cpp` sees them, and the GPT-2 byte-to-unicode map.
//!
//! llama.cpp classifies codepoints with its own generated table (`unicode-data.cpp`); we use
//! `unicode-properties`' general categories, which agree except for codepoints assigned in
//! Unicode versions newer than llama.cpp's table. Whitespace is llama.cpp's explicit set, which
//! (unlike `char::is_whitespace`) leaves out U+001C..U+001F.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// `\p{L}`.
pub(crate) fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    c.general_category_group() == GeneralCategoryGroup::Letter
}

/// `\p{N}`.
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    c.general_category_group() == GeneralCategoryGroup::Number
}

/// `\p{P}` (the category only; llama.cpp's collapsed regexes treat ASCII separately).
pub(crate) fn is_punctuation(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// llama.cpp's `\s`: its `unicode_set_whitespace`.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{09}'..='\u{0D}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// The character GPT-2's byte-level encoding uses for `byte`: printable Latin-1 bytes stand for
/// themselves, the other 68 are shifted to U+0100.. in byte order.
pub(crate) const fn byte_to_char(byte: u8) -> char {
    let b = byte as u32;
    let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    if printable {
        return byte as char;
    }
    // Count the non-printable bytes below `b`: 0x00..=0x20 (33), 0x7F..=0xA0 (34), 0xAD (1).
    let rank = if b <= 0x20 {
        b
    } else if b <= 0xA0 {
        33 + (b - 0x7F)
    } else {
        67
    };
    match char::from_u32(256 + rank) {
        Some(c) => c,
        None => '\u{FFFD}',
    }
}

/// The inverse of [`byte_to_char`], `None` for characters outside the byte alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return (byte_to_char(b) == c).then_some(b);
    }
    let rank = cp.checked_sub(256)?;
    let b = match rank {
        0..=32 => rank,
        33..=66 => rank - 33 + 0x7F,
        67 => 0xAD,
        _ => return None,
    };
    u8::try_from(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = alloc::collections::BTreeSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(char_to_byte('x'), Some(b'x'));
        assert_eq!(char_to_byte('\u{0144}'), None);
    }
}
