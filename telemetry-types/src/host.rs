//! Host normalisation: one workspace host, however the driver spelt it, is one key.

use std::fmt;

use thiserror::Error;

/// Why a host string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HostError {
    /// Nothing left after stripping the scheme.
    #[error("host is empty")]
    Empty,
    /// Whitespace, control or zero-width characters.
    #[error("host contains whitespace, control or invisible characters")]
    InvalidCharacter,
    /// `user:pass@host`.
    #[error("host must not contain user info")]
    UserInfo,
    /// A path, query or fragment after the host.
    #[error("host must not contain a path, query or fragment")]
    Path,
    /// A scheme other than https (or http for loopback when allowed).
    #[error("unsupported scheme `{0}`: use https")]
    Scheme(String),
    /// `http://` for a host that is not loopback, or without the config allowing it.
    #[error("plain http is allowed only for loopback hosts when explicitly enabled")]
    InsecureNotAllowed,
    /// A port that is not a number in 1..=65535.
    #[error("invalid port")]
    Port,
    /// Not a host name (empty or over-long labels, characters a name cannot hold) nor a
    /// bracketed IPv6 address.
    #[error("not a valid host name or address")]
    InvalidName,
    /// A name with characters outside ASCII (`wörkspace.example`): the same host can be
    /// spelt in Unicode or in punycode (`xn--wrkspace-d1a.example`), and two spellings would
    /// give one workspace two clients. Only the ASCII (punycode) spelling is taken.
    #[error("host name is not ASCII: use its punycode (xn--) spelling")]
    NotAscii,
}

/// The scheme used to reach a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TLS: every real workspace.
    Https,
    /// Plain HTTP: loopback test servers only.
    Http,
}

/// A normalised workspace host: lower-case, no trailing dot or slash, no default port.
///
/// ```
/// use telemetry_types::host::Host;
/// let a = Host::parse("HTTPS://My-Workspace.cloud.databricks.com:443/", false).unwrap();
/// let b = Host::parse("my-workspace.cloud.databricks.com.", false).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.base_url(), "https://my-workspace.cloud.databricks.com");
/// assert!(Host::parse("http://example.com", true).is_err());
/// assert!(Host::parse("http://127.0.0.1:8080", true).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Host {
    scheme: Scheme,
    name: String,
    port: Option<u16>,
}

impl Host {
    /// Parses and normalises `input`. `allow_insecure_loopback` permits `http://` for
    /// `localhost`, `127.0.0.0/8` and `[::1]` only.
    pub fn parse(input: &str, allow_insecure_loopback: bool) -> Result<Self, HostError> {
        if input.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
                )
        }) {
            return Err(HostError::InvalidCharacter);
        }
        let (scheme, rest) = match input.find("://") {
            Some(idx) => {
                let scheme = &input[..idx];
                let rest = &input[idx + 3..];
                if scheme.eq_ignore_ascii_case("https") {
                    (Scheme::Https, rest)
                } else if scheme.eq_ignore_ascii_case("http") {
                    (Scheme::Http, rest)
                } else {
                    return Err(HostError::Scheme(scheme.to_owned()));
                }
            }
            None => (Scheme::Https, input),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(HostError::UserInfo);
        }
        if rest.contains(['/', '?', '#', '\\']) {
            return Err(HostError::Path);
        }
        let (name, port) = split_port(rest)?;
        if !name.is_ascii() {
            return Err(HostError::NotAscii);
        }
        // ASCII lower case: one host however the driver capitalised it.
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name == "[]" {
            return Err(HostError::Empty);
        }
        if !valid_name(&name) {
            return Err(HostError::InvalidName);
        }
        let port = match (scheme, port) {
            (Scheme::Https, Some(443)) | (Scheme::Http, Some(80)) => None,
            (_, p) => p,
        };
        let host = Self { scheme, name, port };
        if scheme == Scheme::Http && !(allow_insecure_loopback && host.is_loopback()) {
            return Err(HostError::InsecureNotAllowed);
        }
        Ok(host)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The lower-case host name (or bracketed IPv6 literal).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The explicit port, if not the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port used to connect.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        })
    }

    /// Whether the host is a loopback name or address.
    pub fn is_loopback(&self) -> bool {
        self.name == "localhost"
            || self.name == "[::1]"
            || self
                .name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// `https://name[:port]` with no trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        match self.port {
            Some(port) => format!("{scheme}://{}:{port}", self.name),
            None => format!("{scheme}://{}", self.name),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_url())
    }
}

/// A bracketed IPv6 address, or dot-separated labels of 1..=63 letters, digits, `-` or `_`
/// (ASCII only: an internationalised name is taken in its punycode spelling), at most 253
/// bytes in all.
fn valid_name(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn split_port(rest: &str) -> Result<(&str, Option<u16>), HostError> {
    // Bracketed IPv6 literal: `[::1]:8080`.
    let colon = if rest.starts_with('[') {
        match rest.find(']') {
            Some(end) => rest[end..].find(':').map(|c| c + end),
            None => return Err(HostError::InvalidCharacter),
        }
    } else {
        rest.rfind(':')
    };
    match colon {
        None => Ok((rest, None)),
        Some(idx) => {
            let port = rest[idx + 1..]
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(HostError::Port)?;
            Ok((&rest[..idx], Some(port)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("adb-123.azuredatabricks.net", "https://adb-123.azuredatabricks.net")]
    #[case("ADB-123.AzureDatabricks.NET", "https://adb-123.azuredatabricks.net")]
    #[case(
        "https://adb-123.azuredatabricks.net/",
        "https://adb-123.azuredatabricks.net"
    )]
    #[case(
        "HTTPS://adb-123.azuredatabricks.net:443",
        "https://adb-123.azuredatabricks.net"
    )]
    #[case("adb-123.azuredatabricks.net.", "https://adb-123.azuredatabricks.net")]
    #[case(
        "adb-123.azuredatabricks.net.:443//",
        "https://adb-123.azuredatabricks.net"
    )]
    #[case("host.example:8443", "https://host.example:8443")]
    #[case("http://127.0.0.1:8080", "http://127.0.0.1:8080")]
    #[case("http://LOCALHOST:9", "http://localhost:9")]
    #[case("http://[::1]:8080/", "http://[::1]:8080")]
    #[case("[::1]:8443", "https://[::1]:8443")]
    #[case("XN--MY-WRKSPACE-D1A.example", "https://xn--my-wrkspace-d1a.example")]
    fn normalises(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(Host::parse(input, true).unwrap().base_url(), expected);
    }

    #[rstest]
    #[case("", HostError::Empty)]
    #[case("https://", HostError::Empty)]
    #[case("host .example", HostError::InvalidCharacter)]
    #[case(" host.example", HostError::InvalidCharacter)]
    #[case("host.example\n", HostError::InvalidCharacter)]
    #[case("host\u{200B}.example", HostError::InvalidCharacter)]
    #[case("host\u{FEFF}.example", HostError::InvalidCharacter)]
    #[case("user:pw@host.example", HostError::UserInfo)]
    #[case("https://user@host.example", HostError::UserInfo)]
    #[case("host.example/sql/1.0", HostError::Path)]
    #[case("host.example?o=1", HostError::Path)]
    #[case("host.example#x", HostError::Path)]
    #[case("ftp://host.example", HostError::Scheme("ftp".into()))]
    #[case("host.example:0", HostError::Port)]
    #[case("host.example:99999", HostError::Port)]
    #[case("host.example:abc", HostError::Port)]
    #[case("[::1", HostError::InvalidCharacter)]
    #[case("http://host.example", HostError::InsecureNotAllowed)]
    #[case("http://10.0.0.1:80", HostError::InsecureNotAllowed)]
    #[case("h:443:443", HostError::InvalidName)]
    #[case("[::1]evil.com", HostError::InvalidName)]
    #[case("[::1]evil.com:443", HostError::InvalidName)]
    #[case("[nothex]", HostError::InvalidName)]
    #[case("a..b", HostError::InvalidName)]
    #[case(".a.example", HostError::InvalidName)]
    #[case("a*b.example", HostError::InvalidName)]
    #[case("my-wörkspace.example", HostError::NotAscii)]
    #[case("https://MY-WÖRKSPACE.example:443", HostError::NotAscii)]
    #[case("ａｄｂ.example", HostError::NotAscii)]
    fn rejects(#[case] input: &str, #[case] expected: HostError) {
        assert_eq!(Host::parse(input, true), Err(expected));
    }

    #[test]
    fn http_loopback_needs_explicit_permission() {
        assert_eq!(
            Host::parse("http://127.0.0.1:8080", false),
            Err(HostError::InsecureNotAllowed)
        );
        let h = Host::parse("http://127.0.0.1:8080", true).unwrap();
        assert_eq!(h.scheme(), Scheme::Http);
        assert_eq!(h.effective_port(), 8080);
        assert_eq!(h.name(), "127.0.0.1");
        assert_eq!(h.port(), Some(8080));
        assert_eq!(h.to_string(), "http://127.0.0.1:8080");
    }

    #[test]
    fn default_ports() {
        assert_eq!(
            Host::parse("a.example", false).unwrap().effective_port(),
            443
        );
        assert_eq!(
            Host::parse("http://localhost:80", true)
                .unwrap()
                .effective_port(),
            80
        );
        assert!(!Host::parse("a.example", false).unwrap().is_loopback());
    }
}
