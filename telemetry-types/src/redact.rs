//! Redaction of secrets and personal paths from free text (error messages, user agents).
//!
//! Spec section 3: before anything leaves the process, remove `Bearer ...` / `Basic ...`
//! credentials, URL user-info, Databricks tokens (`dapi…`, `dkea…`, `dose…`, ...), JWTs
//! (`eyJ…`), secret-looking `key=value` pairs and JSON members, and home-directory paths.
//! Redaction errs on the side of removing too much: this text is diagnostic, not data.

/// What a redacted span is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The longest `stack_trace` sent, in characters.
pub(crate) const MAX_STACK_TRACE_CHARS: usize = 2048;

const SECRET_KEY_SUFFIXES: &[&str] = &[
    "password", "passwd", "pwd", "token", "secret", "api_key", "apikey", "api-key",
];
const TOKEN_PREFIXES: &[&str] = &["dapi", "dkea", "dose", "dsapi", "dkcl", "dcsa"];
const MIN_TOKEN_BODY: usize = 16;
const MIN_CREDENTIAL_LEN: usize = 8;

/// Redacts every secret the spec names from `text`.
///
/// ```
/// use telemetry_types::redact::redact;
/// let out = redact("401 for Bearer abc.def.ghi at /home/alice/app with password=hunter2");
/// assert_eq!(out, "401 for Bearer [REDACTED] at /home/[REDACTED]/app with password=[REDACTED]");
/// ```
pub fn redact(text: &str) -> String {
    let text = redact_url_userinfo(text);
    let text = redact_auth_schemes(&text);
    let text = redact_key_values(&text);
    let text = redact_token_words(&text);
    redact_home_paths(&text)
}

/// Redacts, then truncates to at most `max_chars` characters (on a character boundary).
pub fn redact_truncated(text: &str, max_chars: usize) -> String {
    let mut out = redact(text);
    truncate_chars(&mut out, max_chars);
    out
}

/// Longest user agent sent, in characters.
const MAX_USER_AGENT_CHARS: usize = 256;

/// A user agent fit for a header: redacted, every control character (a newline would make
/// the header invalid and every request fail) replaced by a space, trimmed and capped.
///
/// ```
/// use telemetry_types::redact::redact_user_agent;
/// assert_eq!(redact_user_agent("MyDriver/1.0\r\n(token=abc)"), "MyDriver/1.0  (token=[REDACTED])");
/// ```
pub fn redact_user_agent(text: &str) -> String {
    let mut out: String = redact(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate_chars(&mut out, MAX_USER_AGENT_CHARS);
    out.trim().to_owned()
}

/// Truncates `s` to at most `max_chars` characters.
pub fn truncate_chars(s: &mut String, max_chars: usize) {
    if let Some((idx, _)) = s.char_indices().nth(max_chars) {
        s.truncate(idx);
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'/' | b'=' | b'~')
}

/// Rebuilds `text` with each (sorted, disjoint) byte span replaced by [`REDACTED`].
fn replace_spans(text: &str, spans: &[(usize, usize)]) -> String {
    if spans.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for &(start, end) in spans {
        out.push_str(&text[last..start]);
        out.push_str(REDACTED);
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

fn starts_with_ignore_case(hay: &[u8], at: usize, needle: &str) -> bool {
    hay.len() >= at + needle.len()
        && hay[at..at + needle.len()].eq_ignore_ascii_case(needle.as_bytes())
}

/// `scheme://user:pass@host` -> `scheme://[REDACTED]@host`.
fn redact_url_userinfo(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("://") {
        let start = i + pos + 3;
        let mut j = start;
        while j < b.len()
            && !matches!(b[j], b'/' | b'@' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
            && !b[j].is_ascii_whitespace()
        {
            j += 1;
        }
        if j < b.len() && b[j] == b'@' && j > start {
            spans.push((start, j));
        }
        i = j.max(start);
    }
    replace_spans(text, &spans)
}

/// `Bearer <token>` and `Basic <token>` -> the scheme followed by [`REDACTED`].
fn redact_auth_schemes(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let scheme_len = if boundary && starts_with_ignore_case(b, i, "bearer") {
            6
        } else if boundary && starts_with_ignore_case(b, i, "basic") {
            5
        } else {
            0
        };
        if scheme_len == 0 {
            i += 1;
            continue;
        }
        let mut j = i + scheme_len;
        let spaces = j;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        let token_start = j;
        while j < b.len() && is_token_byte(b[j]) {
            j += 1;
        }
        if j > spaces && token_start > spaces && j - token_start >= MIN_CREDENTIAL_LEN {
            spans.push((token_start, j));
        }
        i = j.max(i + scheme_len);
    }
    replace_spans(text, &spans)
}

/// `password=...`, `"client_secret": "..."`, `api_key: ...` -> the key with a redacted value.
fn redact_key_values(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_word_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word_byte(b[i]) {
            i += 1;
        }
        let word = text[start..i].to_ascii_lowercase();
        if !SECRET_KEY_SUFFIXES.iter().any(|k| word.ends_with(k)) {
            continue;
        }
        let mut j = i;
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            j += 1;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j >= b.len() || (b[j] != b'=' && b[j] != b':') {
            continue;
        }
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            let quote = b[j];
            let value_start = j + 1;
            let mut k = value_start;
            while k < b.len() && b[k] != quote {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            let value_end = k.min(b.len());
            if value_end > value_start {
                spans.push((value_start, value_end));
            }
            i = value_end;
        } else {
            let value_start = j;
            let mut k = j;
            while k < b.len()
                && !b[k].is_ascii_whitespace()
                && !matches!(b[k], b',' | b';' | b'&' | b')' | b'}' | b']' | b'"' | b'\'')
            {
                k += 1;
            }
            if k > value_start {
                spans.push((value_start, k));
            }
            i = k;
        }
    }
    replace_spans(text, &spans)
}

/// Whole words that are Databricks tokens or JWTs.
fn redact_token_words(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_token_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_token_byte(b[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let jwt = word.starts_with("eyJ") && word.contains('.');
        let token = TOKEN_PREFIXES.iter().any(|p| {
            word.len() >= p.len() + MIN_TOKEN_BODY
                && word[..p.len()].eq_ignore_ascii_case(p)
                && word[p.len()..]
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                && word[p.len()..].bytes().any(|c| c.is_ascii_digit())
        });
        if jwt || token {
            spans.push((start, i));
        }
    }
    replace_spans(text, &spans)
}

/// `/home/<user>/`, `/Users/<user>/`, `C:\Users\<user>\` -> the user replaced.
fn redact_home_paths(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let prefix_len = if b[i..].starts_with(b"/home/") {
            6
        } else if b[i..].starts_with(b"/Users/") {
            7
        } else if i + 9 <= b.len()
            && b[i].is_ascii_alphabetic()
            && b[i + 1] == b':'
            && (starts_with_ignore_case(b, i + 2, "\\users\\"))
        {
            9
        } else if i + 11 <= b.len()
            && b[i].is_ascii_alphabetic()
            && b[i + 1] == b':'
            && starts_with_ignore_case(b, i + 2, "\\\\users\\\\")
        {
            11
        } else {
            0
        };
        if prefix_len == 0 {
            i += 1;
            continue;
        }
        let start = i + prefix_len;
        let mut j = start;
        while j < b.len()
            && !matches!(b[j], b'/' | b'\\' | b'"' | b'\'' | b':' | b',' | b';')
            && !b[j].is_ascii_whitespace()
        {
            j += 1;
        }
        if j > start && &text[start..j] != REDACTED {
            spans.push((start, j));
        }
        i = j.max(start);
    }
    replace_spans(text, &spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "Authorization: Bearer dapi0123456789abcdef0123456789abcdef",
        "Authorization: Bearer [REDACTED]"
    )]
    #[case("header basic dXNlcjpwYXNzd29yZA==", "header basic [REDACTED]")]
    #[case("bearer short", "bearer short")]
    #[case(
        "token dapi0123456789abcdef0123456789abcdef leaked",
        "token [REDACTED] leaked"
    )]
    #[case(
        "DKEA1234567890abcdef1234 and dose1234567890abcdefXYZ",
        "[REDACTED] and [REDACTED]"
    )]
    #[case("a dose of 5 mg", "a dose of 5 mg")]
    #[case(
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nat_ure here",
        "jwt [REDACTED] here"
    )]
    #[case("eyJonly has no dot", "eyJonly has no dot")]
    #[case("password=hunter2&user=x", "password=[REDACTED]&user=x")]
    #[case("PASSWORD = hunter2, next", "PASSWORD = [REDACTED], next")]
    #[case(
        "{\"client_secret\": \"s3cr3t\", \"a\": 1}",
        "{\"client_secret\": \"[REDACTED]\", \"a\": 1}"
    )]
    #[case(
        "access_token:abc refresh_token='x y'",
        "access_token:[REDACTED] refresh_token='[REDACTED]'"
    )]
    #[case("x-api-key: k123", "x-api-key: [REDACTED]")]
    #[case("api_key=k1;secret=k2", "api_key=[REDACTED];secret=[REDACTED]")]
    #[case("token is missing", "token is missing")]
    #[case(
        "https://user:pass@host.example/path",
        "https://[REDACTED]@host.example/path"
    )]
    #[case(
        "jdbc:databricks://token:dapi123@host:443/default",
        "jdbc:databricks://[REDACTED]@host:443/default"
    )]
    #[case("https://host.example/a@b", "https://host.example/a@b")]
    #[case(
        "open /home/alice/.databrickscfg failed",
        "open /home/[REDACTED]/.databrickscfg failed"
    )]
    #[case("at /Users/Bob/src/x.rs:10", "at /Users/[REDACTED]/src/x.rs:10")]
    #[case("C:\\Users\\carol\\AppData", "C:\\Users\\[REDACTED]\\AppData")]
    #[case("\"c:\\\\users\\\\dave\\\\x\"", "\"c:\\\\users\\\\[REDACTED]\\\\x\"")]
    #[case("plain message, nothing secret", "plain message, nothing secret")]
    #[case("ünïcode bearer ✓ fine", "ünïcode bearer ✓ fine")]
    #[case("", "")]
    fn redaction_cases(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[test]
    fn truncation_counts_characters_after_redaction() {
        let long = format!("password=x {}", "é".repeat(3000));
        let out = redact_truncated(&long, MAX_STACK_TRACE_CHARS);
        assert_eq!(out.chars().count(), MAX_STACK_TRACE_CHARS);
        assert!(out.starts_with("password=[REDACTED] é"));
        let short = redact_truncated("abc", MAX_STACK_TRACE_CHARS);
        assert_eq!(short, "abc");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "://",
            "://@",
            "password=",
            "password=\"unterminated\\",
            "bearer",
            "/home/",
            "C:\\Users\\",
            "eyJ.",
            "\"token\":",
        ] {
            let _ = redact(s);
        }
        assert_eq!(redact("password=\"unterminated"), "password=\"[REDACTED]");
    }
}
