//! Memory sizes as users write them (`--memory 2G`, `memory_max = "1536M"`).

/// Parses a size: bytes, or a number with K, M or G (powers of 1024); `None` if it is not
/// one or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1536m"), Some(1536 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12k"), Some(12 << 10));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("two"), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }
}
