//! How a component's config says that a value is out of range. Each component (aggregator,
//! exporter, flag cache) declares, defaults and validates its own config beside its code;
//! they share this one error so that the facade reports any of them the same way.

use thiserror::Error;

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` is out of range.
    #[error("invalid telemetry config: `{field}` {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ConfigError {
    /// `Ok` if `ok`, else an [`Invalid`](Self::Invalid) naming `field`.
    ///
    /// ```
    /// use telemetry_types::validation::ConfigError;
    /// assert!(ConfigError::check(true, "x", "must be").is_ok());
    /// assert_eq!(ConfigError::check(false, "x", "must be").unwrap_err().to_string(),
    ///            "invalid telemetry config: `x` must be");
    /// ```
    pub fn check(ok: bool, field: &'static str, reason: &'static str) -> Result<(), Self> {
        if ok {
            Ok(())
        } else {
            Err(Self::Invalid { field, reason })
        }
    }

    /// `field` must lie in `min..=max`; `reason` says so in words.
    pub fn check_range<T: PartialOrd>(
        value: T,
        min: T,
        max: T,
        field: &'static str,
        reason: &'static str,
    ) -> Result<(), Self> {
        Self::check(value >= min && value <= max, field, reason)
    }
}
