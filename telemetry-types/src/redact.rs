//! Redaction of secrets and personal data from free text (error names and messages, user
//! agents, ids, connection parameters): every class of the spec's privacy rules.
//!
//! Each pass finds byte spans in the text and replaces them; the passes run in a fixed order
//! (blocks first, then URLs, credentials, tokens, addresses, literals and paths). Redaction
//! errs on the side of removing too much: this text is diagnostic, not data. Every pass is
//! linear in the text's length.

/// What a redacted span is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The longest `stack_trace` sent, in characters.
pub(crate) const MAX_STACK_TRACE_CHARS: usize = 2048;

/// Key names whose value is a secret, matched as the end of a key (`db_password`,
/// `x-amz-signature`), in any letter case.
const SECRET_KEY_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "credential",
    "credentials",
    "signature",
    "access_key",
    "secret_key",
    "private_key",
];
/// Key names whose value is a secret, matched whole (too short to match as a suffix).
const SECRET_KEYS_EXACT: &[&str] = &["sig", "se", "sv", "st", "skoid", "sktid"];
/// Databricks token prefixes.
const TOKEN_PREFIXES: &[&str] = &["dapi", "dkea", "dose", "dsapi", "dkcl", "dcsa"];
const MIN_TOKEN_BODY: usize = 16;

/// Redacts every secret the spec names from `text`.
///
/// ```
/// use telemetry_types::redact::redact;
/// let out = redact("401 for Bearer abc.def.ghi at /home/alice/app with password=hunter2");
/// assert_eq!(out, "401 for Bearer [REDACTED] at /home/[REDACTED]/app with password=[REDACTED]");
/// ```
pub fn redact(text: &str) -> String {
    let text = redact_pem_blocks(text);
    let text = redact_sql_blocks(&text);
    let text = redact_inline_sql(&text);
    let text = redact_urls(&text);
    let text = redact_auth_schemes(&text);
    let text = redact_key_values(&text);
    let text = redact_token_words(&text);
    let text = redact_emails(&text);
    let text = redact_sql_literals(&text);
    redact_paths(&text)
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

/// The file name of a local path, without its directories (either separator), redacted.
///
/// ```
/// use telemetry_types::redact::file_name_only;
/// assert_eq!(file_name_only("/home/alice/keys/key.p8"), "key.p8");
/// assert_eq!(file_name_only("C:\\Users\\bob\\data.csv"), "data.csv");
/// assert_eq!(file_name_only("plain.txt"), "plain.txt");
/// ```
pub fn file_name_only(path: &str) -> String {
    let name = path.rsplit(['/', '\\']).next().unwrap_or_default();
    redact(name)
}

/// Truncates `s` to at most `max_chars` characters.
pub fn truncate_chars(s: &mut String, max_chars: usize) {
    if let Some((idx, _)) = s.char_indices().nth(max_chars) {
        s.truncate(idx);
    }
}

/// `s` cut to at most `max_bytes` bytes on a character boundary and, when it cut, back to
/// the last whitespace (else the last character that cannot be part of a token), so that a
/// secret straddling the cut is dropped whole rather than left as a fragment redaction can no
/// longer recognise. Text with no such place in its first `max_bytes` is cut at the character
/// boundary: never emptied. Copies at most `max_bytes` bytes, whatever the length of `s`
/// (capping driver text at intake costs work proportional to the cap, not to the text).
///
/// ```
/// use telemetry_types::redact::cap_at_word;
/// assert_eq!(cap_at_word("short", 64), "short");
/// assert_eq!(cap_at_word("see Bearer abcdefgh", 14), "see Bearer");
/// assert_eq!(cap_at_word("a,bcdefgh", 5), "a,");
/// assert_eq!(cap_at_word("abcdefgh", 5), "abcde");
/// ```
pub fn cap_at_word(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    let cut = head
        .rfind(char::is_whitespace)
        .or_else(|| {
            head.bytes()
                .rposition(|b| b.is_ascii() && !is_token_byte(b))
                .map(|i| i + 1)
        })
        .unwrap_or(end);
    head[..cut].to_owned()
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'/' | b'=' | b'~')
}

/// Rebuilds `text` with each (sorted, disjoint) byte span replaced by `with`.
fn replace_spans_with(text: &str, spans: &[(usize, usize)], with: &str) -> String {
    if spans.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for &(start, end) in spans {
        if start < last {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str(with);
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

fn replace_spans(text: &str, spans: &[(usize, usize)]) -> String {
    replace_spans_with(text, spans, REDACTED)
}

fn starts_with_ignore_case(hay: &[u8], at: usize, needle: &str) -> bool {
    hay.len() >= at + needle.len()
        && hay[at..at + needle.len()].eq_ignore_ascii_case(needle.as_bytes())
}

/// Finds `needle` (ASCII) in `hay` from `from`, ignoring ASCII case.
fn find_ignore_case(hay: &[u8], from: usize, needle: &str) -> Option<usize> {
    let n = needle.as_bytes();
    let first = n.first()?.to_ascii_lowercase();
    (from..hay.len().saturating_sub(n.len() - 1))
        .find(|&i| hay[i].to_ascii_lowercase() == first && starts_with_ignore_case(hay, i, needle))
}

/// `-----BEGIN ... PRIVATE KEY-----` ... `-----END ...-----` (or to the end of the text).
fn redact_pem_blocks(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(start) = find_ignore_case(b, i, "-----BEGIN") {
        let end = match find_ignore_case(b, start + 10, "-----END") {
            Some(e) => {
                // Past the END line's closing dashes.
                let after = e + 8;
                match text[after..].find("-----") {
                    Some(d) => after + d + 5,
                    None => b.len(),
                }
            }
            None => b.len(),
        };
        spans.push((start, end));
        i = end;
    }
    replace_spans(text, &spans)
}

/// Keywords that begin a statement a message may quote inline (`table not found: SELECT ...`).
const SQL_STARTS: &[&str] = &[
    "select", "insert", "update", "delete", "merge", "create", "drop", "alter", "truncate",
    "grant", "revoke", "copy", "optimize", "vacuum",
];
/// Words of a statement's body: a start keyword followed on its line by one of these (within
/// [`SQL_LOOKAHEAD_WORDS`] words) is taken as SQL text.
const SQL_BODIES: &[&str] = &[
    "from", "into", "set", "table", "view", "schema", "database", "catalog", "where", "values",
    "join", "function", "volume", "select", "on",
];
const SQL_LOOKAHEAD_WORDS: usize = 40;

/// SQL quoted inline in a message: from a statement keyword to the end of its line, when a
/// word of a statement's body follows it on that line. Conservative on purpose: `cannot
/// update table x` is redacted too, since the text may be a statement and no SQL text may
/// leave the process.
fn redact_inline_sql(text: &str) -> String {
    let b = text.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    // Words of the text: (start, end) byte offsets.
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_word(b[i]) {
            let start = i;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
            words.push((start, i));
        } else {
            i += 1;
        }
    }
    let is = |w: (usize, usize), set: &[&str]| {
        let word = &text[w.0..w.1];
        set.iter().any(|k| k.eq_ignore_ascii_case(word))
    };
    let mut spans = Vec::new();
    let mut k = 0;
    while k < words.len() {
        let w = words[k];
        if is(w, SQL_STARTS) {
            let line_end = text[w.1..].find('\n').map_or(b.len(), |n| w.1 + n);
            let body = words[k + 1..]
                .iter()
                .take(SQL_LOOKAHEAD_WORDS)
                .take_while(|x| x.0 < line_end)
                .any(|x| is(*x, SQL_BODIES));
            if body {
                spans.push((w.0, line_end));
                while k < words.len() && words[k].0 < line_end {
                    k += 1;
                }
                continue;
            }
        }
        k += 1;
    }
    replace_spans_with(text, &spans, "[REDACTED SQL]")
}

/// Server errors quote the statement in an `== SQL ==` block: the block's lines (up to a
/// blank line, the next `==` heading or the end) are removed.
fn redact_sql_blocks(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(pos) = find_ignore_case(b, i, "== SQL ==") {
        let start = pos + "== SQL ==".len();
        let mut end = start;
        // The rest of the heading's line belongs to the block too.
        let mut line_start = start;
        loop {
            let line_end = text[line_start..]
                .find('\n')
                .map_or(b.len(), |n| line_start + n);
            let line = text[line_start..line_end].trim();
            if line_start > start && (line.is_empty() || line.starts_with("==")) {
                break;
            }
            end = line_end;
            if line_end >= b.len() {
                break;
            }
            line_start = line_end + 1;
        }
        if end > start {
            spans.push((start, end));
        }
        i = end.max(start);
    }
    replace_spans_with(text, &spans, "\n[REDACTED]")
}

/// URLs: user-info (`scheme://user:pass@host`) and the whole query string (presigned
/// CloudFetch links carry their signature there) are removed; scheme, host and path stay.
fn redact_urls(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("://") {
        let start = i + pos + 3;
        let mut j = start;
        let url_char =
            |c: u8| !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`');
        // Authority.
        while j < b.len() && url_char(b[j]) && !matches!(b[j], b'/' | b'?' | b'#' | b'@') {
            j += 1;
        }
        if j < b.len() && b[j] == b'@' && j > start {
            spans.push((start, j));
            j += 1;
            while j < b.len() && url_char(b[j]) && !matches!(b[j], b'/' | b'?' | b'#') {
                j += 1;
            }
        }
        // Path, then a query (and fragment) to the end of the URL.
        while j < b.len() && url_char(b[j]) && b[j] != b'?' {
            j += 1;
        }
        if j < b.len() && b[j] == b'?' {
            let q = j + 1;
            let mut k = q;
            while k < b.len() && url_char(b[k]) {
                k += 1;
            }
            // A closing bracket or sentence punctuation right after the URL stays.
            while k > q && matches!(b[k - 1], b')' | b']' | b',' | b';' | b'.') {
                k -= 1;
            }
            if k > q {
                spans.push((q, k));
            }
            j = k;
        }
        i = j.max(start);
    }
    replace_spans(text, &spans)
}

/// `Bearer <t>`, `Basic <t>`, `Token <t>` (any length) and the value of an
/// `Authorization:` header, to the end of its line.
fn redact_auth_schemes(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if boundary && starts_with_ignore_case(b, i, "authorization") {
            let mut j = i + "authorization".len();
            if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                j += 1;
            }
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j < b.len() && (b[j] == b':' || b[j] == b'=') {
                j += 1;
                while j < b.len() && (b[j] == b' ' || b[j] == b'"' || b[j] == b'\'') {
                    j += 1;
                }
                let value_start = j;
                while j < b.len() && !matches!(b[j], b'\n' | b'\r' | b'"' | b'\'' | b',' | b';') {
                    j += 1;
                }
                if j > value_start {
                    spans.push((value_start, j));
                }
                i = j;
                continue;
            }
        }
        let scheme_len = ["bearer", "basic", "token"]
            .iter()
            .find(|s| boundary && starts_with_ignore_case(b, i, s))
            .map_or(0, |s| s.len());
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
        // After Bearer / Basic any word is a credential, however short; after the common
        // word "token" only a credential-shaped one (a digit or symbol in it, or long).
        let word = &b[token_start..j];
        let credential = match scheme_len {
            5 if b[i].eq_ignore_ascii_case(&b't') => {
                word.iter().any(|c| !c.is_ascii_alphabetic()) || word.len() >= 16
            }
            _ => true,
        };
        if token_start > spaces && !word.is_empty() && credential {
            spans.push((token_start, j));
        }
        i = j.max(i + scheme_len);
    }
    replace_spans(text, &spans)
}

/// `password=...`, `"client_secret": "..."`, `api_key: ...`, `sig=...` -> the key with a
/// redacted value.
fn redact_key_values(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    let mut word = String::new();
    while i < b.len() {
        if !is_word_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word_byte(b[i]) {
            i += 1;
        }
        word.clear();
        word.push_str(&text[start..i]);
        word.make_ascii_lowercase();
        let secret = SECRET_KEY_SUFFIXES.iter().any(|k| word.ends_with(k))
            || SECRET_KEYS_EXACT.contains(&word.as_str());
        if !secret {
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

/// Whole words that are Databricks tokens, JWTs, cloud access key ids or well-known vendor
/// token shapes.
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
        if is_token_word(&text[start..i]) {
            spans.push((start, i));
        }
    }
    replace_spans(text, &spans)
}

fn is_token_word(word: &str) -> bool {
    let w = word.as_bytes();
    let alnum_after = |n: usize| w.len() > n && w[n..].iter().all(|c| is_word_byte(*c));
    let jwt = word.starts_with("eyJ") && word.contains('.');
    let databricks = TOKEN_PREFIXES.iter().any(|p| {
        word.len() >= p.len() + MIN_TOKEN_BODY
            && word[..p.len()].eq_ignore_ascii_case(p)
            && word[p.len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            && word[p.len()..].bytes().any(|c| c.is_ascii_digit())
    });
    // AWS access key ids: AKIA / ASIA + 16 upper-case letters or digits.
    let aws = w.len() == 20
        && (word.starts_with("AKIA") || word.starts_with("ASIA"))
        && w[4..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let github = ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]
        .iter()
        .any(|p| word.starts_with(p) && word.len() >= p.len() + 20 && alnum_after(p.len()));
    let slack = word.len() >= 15
        && ["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xapp-"]
            .iter()
            .any(|p| word.starts_with(p));
    let stripe_or_openai = ["sk_live_", "sk_test_", "rk_live_", "sk-"]
        .iter()
        .any(|p| word.starts_with(p) && word.len() >= p.len() + 16 && alnum_after(p.len()));
    jwt || databricks || aws || github || slack || stripe_or_openai
}

/// `local@domain.tld` e-mail addresses.
fn redact_emails(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let local = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let domain = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-');
    let mut i = 0;
    while let Some(pos) = text[i..].find('@') {
        let at = i + pos;
        let mut s = at;
        while s > 0 && local(b[s - 1]) {
            s -= 1;
        }
        let mut e = at + 1;
        while e < b.len() && domain(b[e]) {
            e += 1;
        }
        // The domain's last label ends at the last dot: trailing dots are punctuation.
        while e > at + 1 && b[e - 1] == b'.' {
            e -= 1;
        }
        let dom = &text[at + 1..e];
        let tld_is_a_name = dom
            .rsplit('.')
            .next()
            .is_some_and(|t| t.len() >= 2 && t.bytes().all(|c| c.is_ascii_alphabetic()));
        if s < at && dom.contains('.') && !dom.starts_with('.') && tld_is_a_name {
            spans.push((s, e));
        }
        i = e.max(at + 1);
    }
    replace_spans(text, &spans)
}

/// SQL keywords a parser's error quotes (`Syntax error at or near 'FROM'`): kept when a
/// quoted span is exactly one of them, since they are the language's words, not data.
const SQL_KEYWORDS: &[&str] = &[
    "ALL",
    "ALTER",
    "AND",
    "AS",
    "ASC",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "CREATE",
    "CROSS",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DROP",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "FALSE",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IN",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "MERGE",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "RIGHT",
    "SELECT",
    "SET",
    "TABLE",
    "THEN",
    "TRUE",
    "UNION",
    "UPDATE",
    "USING",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WITH",
    "<EOF>",
    "EOF",
    "(",
    ")",
    ",",
    ";",
];

/// SQL string literals: `'…'` (with `''` escapes) -> `'?'`, but for a lone SQL keyword
/// ([`SQL_KEYWORDS`]). A quote inside a word (an apostrophe) does not open a literal.
fn redact_sql_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\'' || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut k = start;
        let mut closed = false;
        while k < b.len() {
            if b[k] == b'\'' {
                if k + 1 < b.len() && b[k + 1] == b'\'' {
                    k += 2;
                    continue;
                }
                closed = true;
                break;
            }
            if b[k] == b'\n' {
                break;
            }
            k += 1;
        }
        if !closed {
            i = start;
            continue;
        }
        let content = &text[start..k];
        let keyword = SQL_KEYWORDS.iter().any(|w| w.eq_ignore_ascii_case(content));
        if !content.is_empty() && content != "?" && content != REDACTED && !keyword {
            spans.push((start, k));
        }
        i = k + 1;
    }
    replace_spans_with(text, &spans, "?")
}

/// Home and user directories in any case and separator style (`/home/<user>/`,
/// `/Users/<user>/`, `C:\Users\<user>\`, `c:/users/<user>/`, doubled backslashes), macOS
/// per-user temporary folders (`/private/var/folders/…`, `/var/folders/…`) and UNC paths
/// (`\\server\share\…`).
fn redact_paths(text: &str) -> String {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let path_end = |mut j: usize, stop_at_separator: bool| {
        let ends_path = |c: u8| {
            matches!(c, b'"' | b'\'' | b':' | b',' | b';' | b')' | b']')
                || c.is_ascii_whitespace()
                || (stop_at_separator && matches!(c, b'/' | b'\\'))
        };
        while j < b.len() && !ends_path(b[j]) {
            j += 1;
        }
        j
    };
    let mut i = 0;
    while i < b.len() {
        // The user segment after a home prefix.
        let home = if starts_with_ignore_case(b, i, "/home/") {
            6
        } else if starts_with_ignore_case(b, i, "/users/") {
            7
        } else if i + 3 <= b.len() && b[i].is_ascii_alphabetic() && b[i + 1] == b':' {
            let rest = i + 2;
            ["\\users\\", "/users/", "\\\\users\\\\"]
                .iter()
                .find(|p| starts_with_ignore_case(b, rest, p))
                .map_or(0, |p| 2 + p.len())
        } else {
            0
        };
        if home > 0 {
            let start = i + home;
            let end = path_end(start, true);
            if end > start && &text[start..end] != REDACTED {
                spans.push((start, end));
            }
            i = end.max(start);
            continue;
        }
        // Everything after a per-user temporary folder or a UNC server.
        let whole = if starts_with_ignore_case(b, i, "/private/var/folders/") {
            "/private/var/folders/".len()
        } else if starts_with_ignore_case(b, i, "/var/folders/")
            && !(i >= 8 && starts_with_ignore_case(b, i - 8, "/private"))
        {
            "/var/folders/".len()
        } else if b[i..].starts_with(b"\\\\")
            && (i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'(' | b'='))
            && i + 2 < b.len()
            && is_word_byte(b[i + 2])
        {
            2
        } else {
            0
        };
        if whole > 0 {
            let start = i + whole;
            let end = path_end(start, false);
            if end > start {
                spans.push((start, end));
            }
            i = end.max(start);
            continue;
        }
        i += 1;
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
        "Authorization: [REDACTED]"
    )]
    #[case("header basic dXNlcjpwYXNzd29yZA==", "header basic [REDACTED]")]
    #[case("bearer short", "bearer [REDACTED]")]
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

    #[rstest]
    // Credentials in headers or text, any length.
    #[case("Authorization: Token abc", "Authorization: [REDACTED]")]
    #[case("header Token 0123456789abcdef", "header Token [REDACTED]")]
    #[case("Bearer x1", "Bearer [REDACTED]")]
    #[case(
        "{\"Authorization\": \"Basic dXNlcg==\"}",
        "{\"Authorization\": \"[REDACTED]\"}"
    )]
    #[case("the token is missing", "the token is missing")]
    fn credentials(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case("key AKIAIOSFODNN7EXAMPLE used", "key [REDACTED] used")]
    #[case("ASIAY34FZKBOKMUTVV7A", "[REDACTED]")]
    #[case("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "[REDACTED]")]
    #[case("xoxb-123456789012-abcdefghij", "[REDACTED]")]
    #[case("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[REDACTED]")]
    #[case("sk-proj0123456789abcdefghij", "[REDACTED]")]
    #[case("AKIA is an acronym", "AKIA is an acronym")]
    #[case(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY----- then",
        "[REDACTED] then"
    )]
    #[case("-----BEGIN PRIVATE KEY-----\nMIIEv truncated", "[REDACTED]")]
    fn vendor_tokens_and_keys(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case(
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG",
        "aws_secret_access_key=[REDACTED]"
    )]
    #[case("ID_TOKEN: abc", "ID_TOKEN: [REDACTED]")]
    #[case("\"credential\":\"c\"", "\"credential\":\"[REDACTED]\"")]
    #[case("pwd=x", "pwd=[REDACTED]")]
    #[case("config=ok", "config=ok")]
    fn secret_keys(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case(
        "GET https://bucket.s3.us-west-2.amazonaws.com/a/b.arrow?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc123 failed",
        "GET https://bucket.s3.us-west-2.amazonaws.com/a/b.arrow?[REDACTED] failed"
    )]
    #[case(
        "(https://acct.blob.core.windows.net/c/f?sv=2021&se=2026-01-01&sig=AbC%3D)",
        "(https://acct.blob.core.windows.net/c/f?[REDACTED])"
    )]
    #[case(
        "https://storage.googleapis.com/b/o?X-Goog-Signature=ff00&X-Goog-Credential=x",
        "https://storage.googleapis.com/b/o?[REDACTED]"
    )]
    #[case("see https://docs.example/page.", "see https://docs.example/page.")]
    #[case(
        "https://u:p@h.example/x?y=1",
        "https://[REDACTED]@h.example/x?[REDACTED]"
    )]
    fn urls(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case("user alice.smith+x@corp.example.com denied", "user [REDACTED] denied")]
    #[case("mail bob@example.org.", "mail [REDACTED].")]
    #[case("a @ b", "a @ b")]
    #[case("scala@2.12", "scala@2.12")]
    fn emails(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case("WHERE name = 'O''Brien' AND x='1'", "WHERE name = '?' AND x='?'")]
    #[case("can't parse 'ssn 123-45-6789'", "can't parse '?'")]
    #[case("don't stop", "don't stop")]
    #[case(
        "[PARSE_SYNTAX_ERROR] Syntax error at 'FROM'.\n== SQL ==\nSELECT ssn FROM people WHERE ssn = 123\n------^^^\n\nmore",
        "[PARSE_SYNTAX_ERROR] Syntax error at 'FROM'.\n== SQL ==\n[REDACTED]\n\nmore"
    )]
    #[case("syntax error at or near 'from'", "syntax error at or near 'from'")]
    #[case("mismatched input '<EOF>'", "mismatched input '<EOF>'")]
    #[case("value 'FROM here'", "value '?'")]
    #[case(
        "table not found: SELECT * FROM secret_table",
        "table not found: [REDACTED SQL]"
    )]
    #[case(
        "[TABLE_OR_VIEW_NOT_FOUND] select a, b from hr.salaries where id = 7\nretry later",
        "[TABLE_OR_VIEW_NOT_FOUND] [REDACTED SQL]\nretry later"
    )]
    #[case("INSERT INTO t VALUES (1)", "[REDACTED SQL]")]
    #[case(
        "Failed to create session: timeout",
        "Failed to create session: timeout"
    )]
    #[case("select one of the options", "select one of the options")]
    fn sql_text(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[rstest]
    #[case("/home/alice/x", "/home/[REDACTED]/x")]
    #[case("/HOME/alice/x", "/HOME/[REDACTED]/x")]
    #[case("/users/bob/x", "/users/[REDACTED]/x")]
    #[case("c:/users/carol/x", "c:/users/[REDACTED]/x")]
    #[case("C:\\USERS\\dave\\x", "C:\\USERS\\[REDACTED]\\x")]
    #[case(
        "open \\\\fileserver\\share\\q.csv failed",
        "open \\\\[REDACTED] failed"
    )]
    #[case(
        "/private/var/folders/xy/abc123/T/tmp.1 gone",
        "/private/var/folders/[REDACTED] gone"
    )]
    #[case("/var/folders/xy/abc/T", "/var/folders/[REDACTED]")]
    #[case("/opt/app/bin", "/opt/app/bin")]
    fn paths(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(redact(input), expected);
    }

    #[test]
    fn caps_and_file_names() {
        assert_eq!(file_name_only("/home/alice/.ssh/id_rsa"), "id_rsa");
        assert_eq!(file_name_only("\\\\srv\\share\\f.txt"), "f.txt");
        assert_eq!(cap_at_word("a b c", 3), "a");
        assert_eq!(cap_at_word(&"é".repeat(10), 5), "éé");
        assert_eq!(cap_at_word("abc", 0), "");
        let huge = "x".repeat(1 << 20);
        let cut = cap_at_word(&huge, 16 * 1024);
        assert_eq!((cut.len(), cut.capacity()), (16 * 1024, 16 * 1024));
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

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const SAFE_WORDS: &[&str] = &[
            "the",
            "warehouse",
            "is",
            "stopped",
            "table",
            "not",
            "found",
            "retry",
            "in",
            "seconds",
            "error",
            "at",
            "line",
            "42",
            "row",
            "column",
            "Query",
            "failed",
            "with",
            "status",
            "503",
            "timeout",
            "after",
            "connection",
            "reset",
            "SQLSTATE",
            "42P01",
        ];
        const SEPARATORS: &[&str] = &[" ", ", ", ". ", ": ", " (", ") ", "\n", " - "];

        fn safe_text() -> impl Strategy<Value = String> {
            prop::collection::vec(
                (
                    prop::sample::select(SAFE_WORDS),
                    prop::sample::select(SEPARATORS),
                ),
                0..40,
            )
            .prop_map(|parts| parts.into_iter().map(|(w, s)| format!("{w}{s}")).collect())
        }

        /// A secret of each class, with the random part that must not survive.
        fn planted() -> impl Strategy<Value = (String, String)> {
            let payload = "[a-z][a-z0-9]{11,30}";
            let upper = "[A-Z0-9]{16}";
            let hex = "[a-f][a-f0-9]{30}[0-9]";
            (0usize..12, payload, upper, hex).prop_map(|(kind, p, u, h)| {
                let secret = match kind {
                    0 => format!("Bearer {p}"),
                    1 => format!("dapi{h}"),
                    2 => format!("password={p}"),
                    3 => format!(
                        "https://b.s3.amazonaws.com/x.arrow?X-Amz-Signature={p}&X-Amz-Credential=c"
                    ),
                    4 => format!("{p}@corp.example.com"),
                    5 => format!("AKIA{u}"),
                    6 => format!("/home/{p}/data.csv"),
                    7 => format!("'{p}'"),
                    8 => format!("-----BEGIN PRIVATE KEY-----\n{p}\n-----END PRIVATE KEY-----"),
                    9 => format!("Authorization: Basic {p}"),
                    10 => format!("eyJ{p}.{p}.sig"),
                    _ => format!("== SQL ==\nSELECT * FROM t WHERE ssn = {p}\n"),
                };
                let payload = match kind {
                    1 => h,
                    5 => u,
                    _ => p,
                };
                (secret, payload)
            })
        }

        proptest! {
            #[test]
            fn text_without_secrets_survives_unchanged(text in safe_text()) {
                prop_assert_eq!(redact(&text), text);
            }

            #[test]
            fn planted_secrets_never_survive(
                before in safe_text(),
                (secret, payload) in planted(),
                after in safe_text(),
            ) {
                let text = format!("{before} {secret} {after}");
                let out = redact(&text);
                prop_assert!(!out.contains(&payload), "{} -> {}", text, out);
            }

            #[test]
            fn arbitrary_text_never_panics_and_stays_valid(text in "\\PC{0,200}") {
                let out = redact_truncated(&text, 64);
                prop_assert!(out.chars().count() <= 64);
            }
        }
    }
}
