//! Text helpers: truncation that never splits a character, and glob matching.

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

/// Whole-string, case-sensitive glob match: `*` any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it matched up to).
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((after_star, matched)) => {
                    p = after_star;
                    t = matched + 1;
                    backtrack = Some((after_star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
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

    #[test]
    fn glob_semantics() {
        assert!(glob_match("com.example.*", "com.example.ios"));
        assert!(glob_match("com.example.*", "com.example."));
        assert!(!glob_match("com.example.*", "com.example"));
        assert!(glob_match("com.?xample.ios", "com.example.ios"));
        assert!(!glob_match("com.?xample.ios", "com.xample.ios"));
        assert!(glob_match("*.ios", "a.b.ios"));
        assert!(!glob_match("*.ios", "a.b.iOS"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
        assert!(glob_match("ü?", "üß"));
    }
}
