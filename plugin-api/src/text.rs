//! Truncation that never splits a character.

/// The longest prefix of `s` at most `max_bytes` bytes long that ends on a character boundary.
pub fn truncate_to_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The first `max_chars` characters of `s`.
pub fn truncate_to_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// `s` cut to at most `max_bytes` bytes, ending with `…` when it was cut.
pub fn truncate_with_ellipsis(s: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    const ELLIPSIS: &str = "…";
    if s.len() <= max_bytes {
        return s.into();
    }
    let kept = truncate_to_bytes(s, max_bytes.saturating_sub(ELLIPSIS.len()));
    format!("{kept}{ELLIPSIS}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_truncation_respects_char_boundaries() {
        assert_eq!(truncate_to_bytes("héllo", 2), "h");
        assert_eq!(truncate_to_bytes("héllo", 3), "hé");
        assert_eq!(truncate_to_bytes("abc", 10), "abc");
    }

    #[test]
    fn char_truncation_counts_characters() {
        assert_eq!(truncate_to_chars("日本語テキスト", 3), "日本語");
        assert_eq!(truncate_to_chars("ab", 3), "ab");
    }

    #[test]
    fn ellipsis_fits_in_the_limit() {
        let cut = truncate_with_ellipsis("ééééé", 7);
        assert_eq!(cut, "éé…");
        assert!(cut.len() <= 7);
        assert_eq!(truncate_with_ellipsis("short", 10), "short");
    }
}
