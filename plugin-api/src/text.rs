//! Text helpers: truncation that never splits a character, shaving payloads to fit, and glob
//! matching.

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

/// The bytes `c` takes inside a JSON string as serde_json writes it.
pub fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{08}' | '\u{0c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Shortens the longest of `texts` (in UTF-8 bytes, the first on ties), one whole character
/// at a time, until their JSON encoding is `excess` bytes shorter. Returns the excess left
/// (0 when it was all shaved; more when the texts ran out).
///
/// Linear in the text removed: each removed character's escaped length is subtracted rather
/// than the payload re-serialized.
pub fn shave_longest(texts: &mut [&mut String], mut excess: usize) -> usize {
    while excess > 0 {
        let mut longest: Option<usize> = None;
        for (i, text) in texts.iter().enumerate() {
            if !text.is_empty() && longest.is_none_or(|l| text.len() > texts[l].len()) {
                longest = Some(i);
            }
        }
        let Some(i) = longest else {
            return excess;
        };
        let removed = texts[i].pop().map_or(0, json_escaped_len);
        excess = excess.saturating_sub(removed);
    }
    0
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
    fn shaving_takes_from_the_longest_until_the_excess_is_gone() {
        let (mut a, mut b) = ("aaaaaa".to_owned(), "bb\n".to_owned());
        assert_eq!(shave_longest(&mut [&mut a, &mut b], 4), 0);
        assert_eq!((a.as_str(), b.as_str()), ("aa", "bb\n"));
        // "\n" counts as the two bytes it takes in JSON.
        assert_eq!(shave_longest(&mut [&mut a, &mut b], 2), 0);
        assert_eq!((a.as_str(), b.as_str()), ("aa", "bb"));
        assert_eq!(shave_longest(&mut [&mut a, &mut b], 10), 6);
        assert_eq!((a.as_str(), b.as_str()), ("", ""));
        let mut wide = "日本".to_owned();
        assert_eq!(shave_longest(&mut [&mut wide], 1), 0);
        assert_eq!(wide, "日");
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
