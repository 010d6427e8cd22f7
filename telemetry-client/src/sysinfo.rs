//! Defaults for `system_configuration` in a pure-Rust driver, and HTTP-path parsing.

use telemetry_types::wire::DriverSystemConfiguration;

/// The system configuration of this process: driver name and version from the caller,
/// runtime `Rust` with the toolchain version the crate was built with and vendor
/// `rust-lang`, the OS name / version / architecture, locale and charset from the
/// environment (`LC_ALL`, `LC_CTYPE`, `LANG`; `C` when none names one), and the process
/// name (basename only).
/// An embedding driver (Node.js, Python) overwrites the fields it knows better.
pub fn default_system_configuration(
    driver_name: &str,
    driver_version: &str,
) -> DriverSystemConfiguration {
    let (locale, charset) = locale_from(|k| std::env::var(k).ok());
    DriverSystemConfiguration {
        driver_name: Some(driver_name.to_owned()),
        driver_version: Some(driver_version.to_owned()),
        runtime_name: Some("Rust".to_owned()),
        runtime_version: Some(env!("TELEMETRY_RUSTC_VERSION"))
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        runtime_vendor: Some("rust-lang".to_owned()),
        os_name: Some(std::env::consts::OS.to_owned()),
        os_version: os_version(),
        os_arch: Some(std::env::consts::ARCH.to_owned()),
        client_app_name: None,
        locale_name: locale,
        char_set_encoding: charset,
        process_name: process_name(),
    }
}

fn os_version() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn process_name() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    exe.file_name()?.to_str().map(str::to_owned)
}

/// The `system_configuration` field an identity option names (the Databricks SQL kernel's
/// and the other drivers' names, in any case and separator style, with or without a
/// `telemetry` or `databricks` prefix), set to `value`; `false` if `key` names none.
pub(crate) fn apply_identity_option(
    sys: &mut DriverSystemConfiguration,
    key: &str,
    value: &str,
) -> bool {
    let k: String = key
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    let k = k.strip_prefix("databricks").unwrap_or(&k);
    let k = k.strip_prefix("telemetry").unwrap_or(k);
    let field = match k {
        "drivername" => &mut sys.driver_name,
        "driverversion" => &mut sys.driver_version,
        "runtimename" => &mut sys.runtime_name,
        "runtimeversion" => &mut sys.runtime_version,
        "runtimevendor" => &mut sys.runtime_vendor,
        "osname" => &mut sys.os_name,
        "osversion" => &mut sys.os_version,
        "osarch" => &mut sys.os_arch,
        "clientappname" | "applicationname" | "appname" => &mut sys.client_app_name,
        "localename" | "locale" => &mut sys.locale_name,
        "charsetencoding" | "charset" => &mut sys.char_set_encoding,
        "processname" => &mut sys.process_name,
        _ => return false,
    };
    // Redacted and capped when the first row is built, as every driver string is.
    *field = Some(value.to_owned()).filter(|v| !v.trim().is_empty());
    true
}

/// Every identity option, by one of its names (see [`ProviderOptions::apply_option`](crate::ProviderOptions::apply_option)).
pub const IDENTITY_OPTIONS: &[&str] = &[
    "driver_name",
    "driver_version",
    "runtime_name",
    "runtime_version",
    "runtime_vendor",
    "os_name",
    "os_version",
    "os_arch",
    "client_app_name",
    "locale_name",
    "char_set_encoding",
    "process_name",
];

/// `en_US.UTF-8` -> (`en_US`, `UTF-8`); `C.UTF-8` -> (`C`, `UTF-8`); unset -> (`C`, None):
/// the process then runs in the POSIX locale, which is what is reported.
pub(crate) fn locale_from(
    get: impl Fn(&str) -> Option<String>,
) -> (Option<String>, Option<String>) {
    let raw = ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .filter_map(|k| get(k))
        .find(|v| !v.is_empty());
    let Some(raw) = raw else {
        return (Some("C".to_owned()), None);
    };
    let raw = raw.split('@').next().unwrap_or_default();
    let (locale, charset) = match raw.split_once('.') {
        Some((l, c)) => (l, Some(c)),
        None => (raw, None),
    };
    if locale.is_empty() || locale == "POSIX" {
        return (Some("C".to_owned()), charset.map(str::to_owned));
    }
    (Some(locale.to_owned()), charset.map(str::to_owned))
}

/// The workspace id of an HTTP path: `?o=<digits>` or `/o/<digits>/` (or at the end).
/// Nothing else is guessed.
///
/// ```
/// use telemetry_client::workspace_id_from_http_path;
/// assert_eq!(workspace_id_from_http_path("/sql/protocolv1/o/1234567890123456/0123-abc"), Some(1234567890123456));
/// assert_eq!(workspace_id_from_http_path("/sql/1.0/warehouses/abc?o=42"), Some(42));
/// assert_eq!(workspace_id_from_http_path("/sql/1.0/warehouses/abc"), None);
/// ```
pub fn workspace_id_from_http_path(http_path: &str) -> Option<i64> {
    let digits = |s: &str| -> Option<i64> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        let rest = &s[d.len()..];
        (!d.is_empty() && (rest.is_empty() || rest.starts_with(['/', '&', '#', '?'])))
            .then(|| d.parse().ok())?
    };
    let (path, query) = http_path.split_once('?').unwrap_or((http_path, ""));
    if let Some(id) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("o=").and_then(digits))
    {
        return Some(id);
    }
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .windows(2)
        .find_map(|w| if w[0] == "o" { digits(w[1]) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("/sql/protocolv1/o/123/abc", Some(123))]
    #[case("/sql/protocolv1/o/123", Some(123))]
    #[case("sql/protocolv1/o/123/", Some(123))]
    #[case("/sql/1.0/warehouses/x?o=77", Some(77))]
    #[case("/sql/1.0/warehouses/x?a=1&o=77&b=2", Some(77))]
    #[case("/sql/1.0/warehouses/x?o=abc", None)]
    #[case("/sql/protocolv1/o/12ab/x", None)]
    #[case("/sql/1.0/warehouses/o", None)]
    #[case("/sql/1.0/warehouses/123", None)]
    #[case("", None)]
    fn workspace_ids(#[case] path: &str, #[case] expected: Option<i64>) {
        assert_eq!(workspace_id_from_http_path(path), expected);
    }

    #[rstest]
    #[case(&[("LANG", "en_US.UTF-8")], Some("en_US"), Some("UTF-8"))]
    #[case(&[("LC_ALL", "de_DE.ISO-8859-1@euro"), ("LANG", "en_US.UTF-8")], Some("de_DE"), Some("ISO-8859-1"))]
    #[case(&[("LANG", "C.UTF-8")], Some("C"), Some("UTF-8"))]
    #[case(&[("LANG", "POSIX")], Some("C"), None)]
    #[case(&[("LANG", "fr_FR")], Some("fr_FR"), None)]
    #[case(&[], Some("C"), None)]
    fn locales(
        #[case] env: &[(&str, &str)],
        #[case] locale: Option<&str>,
        #[case] charset: Option<&str>,
    ) {
        let got = locale_from(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        assert_eq!(got, (locale.map(str::to_owned), charset.map(str::to_owned)));
    }

    #[test]
    fn defaults_for_a_rust_driver() {
        let c = default_system_configuration("RustDriver", "1.2.3");
        assert_eq!(c.driver_name.as_deref(), Some("RustDriver"));
        assert_eq!(c.runtime_name.as_deref(), Some("Rust"));
        let version = c.runtime_version.unwrap();
        assert!(version.starts_with("1."), "the toolchain's: {version}");
        assert_eq!(c.runtime_vendor.as_deref(), Some("rust-lang"));
        assert!(c.locale_name.is_some());
        assert_eq!(c.os_name.as_deref(), Some(std::env::consts::OS));
        let p = c.process_name.unwrap();
        assert!(!p.contains('/') && !p.is_empty());
    }
}
