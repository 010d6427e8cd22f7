//! The hard off switch: `DATABRICKS_TELEMETRY_DISABLED` turns telemetry off without any
//! request, whatever the config says.

/// Environment variable that turns telemetry off without any request: `1`, `true`, `yes`, `on`
/// (any case).
pub const DISABLE_ENV_VAR: &str = "DATABRICKS_TELEMETRY_DISABLED";

/// What the off switch's environment value means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableSwitch {
    /// Not set or empty.
    Unset,
    /// `1`, `true`, `yes`, `on` (any case): telemetry is off, no request is made.
    Disabled,
    /// Another value: ignored (callers warn once).
    Ignored(String),
}

impl DisableSwitch {
    /// Interprets a raw value of [`DISABLE_ENV_VAR`].
    ///
    /// ```
    /// use telemetry_flags::DisableSwitch;
    /// assert_eq!(DisableSwitch::parse(Some("YES")), DisableSwitch::Disabled);
    /// assert_eq!(DisableSwitch::parse(Some("")), DisableSwitch::Unset);
    /// assert_eq!(DisableSwitch::parse(Some("0")), DisableSwitch::Ignored("0".into()));
    /// ```
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Self::Unset,
            Some(v)
                if ["1", "true", "yes", "on"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Self::Disabled
            }
            Some(v) => Self::Ignored(v.to_owned()),
        }
    }

    /// Reads [`DISABLE_ENV_VAR`] from the process environment.
    pub fn from_env() -> Self {
        Self::parse(std::env::var(DISABLE_ENV_VAR).ok().as_deref())
    }

    /// Whether telemetry is forced off.
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(None, DisableSwitch::Unset)]
    #[case(Some(""), DisableSwitch::Unset)]
    #[case(Some("1"), DisableSwitch::Disabled)]
    #[case(Some("true"), DisableSwitch::Disabled)]
    #[case(Some("TRUE"), DisableSwitch::Disabled)]
    #[case(Some("Yes"), DisableSwitch::Disabled)]
    #[case(Some("on"), DisableSwitch::Disabled)]
    #[case(Some("0"), DisableSwitch::Ignored("0".into()))]
    #[case(Some("nope"), DisableSwitch::Ignored("nope".into()))]
    fn disable_switch(#[case] value: Option<&str>, #[case] expected: DisableSwitch) {
        let got = DisableSwitch::parse(value);
        assert_eq!(got.is_disabled(), expected == DisableSwitch::Disabled);
        assert_eq!(got, expected);
    }
}
