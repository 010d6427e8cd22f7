//! The feature-flag traits: where a host's flag comes from ([`FlagSource`]) and what the
//! exporter asks before sending ([`FlagGate`]).

use std::time::Duration;

use thiserror::Error;

use crate::BoxFuture;
use crate::auth::AuthProvider;
use crate::host::Host;
use crate::transport::{HttpTransport, TransportError};

/// What is known of a host's feature flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlagState {
    /// Not fetched yet.
    Unknown = 0,
    /// The server says telemetry may be sent.
    Enabled = 1,
    /// Off: server said no, the look-up failed, or the off switch is set.
    Disabled = 2,
}

impl FlagState {
    /// From the `repr(u8)` value (anything unexpected is `Disabled`).
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Enabled,
            _ => Self::Disabled,
        }
    }

    /// Lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// A successful feature-flag look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagAnswer {
    /// Whether the flag is `"true"`.
    pub enabled: bool,
    /// The server's TTL, if it gave one (not yet clamped).
    pub ttl: Option<Duration>,
}

/// Why a feature-flag look-up failed (which means "disabled").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A non-2xx answer.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body was not the expected JSON.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The flag-source plug-in panicked (the panic's message, redacted).
    #[error("flag source panicked: {0}")]
    Plugin(String),
    /// No credentials could be had in time for the look-up: every auth provider known for
    /// the host failed or did not answer within the auth timeout.
    #[error("no credentials for the look-up: {0}")]
    Auth(String),
}

/// Fetches a host's feature flag.
///
/// Contract: resolves within its own timeout, never panics.
pub trait FlagSource: Send + Sync + 'static {
    /// Looks the flag up for `host`, with the credentials of a connection to it if any.
    fn fetch<'a>(
        &'a self,
        host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>>;

    /// [`fetch`](Self::fetch) through a connection's own HTTP stack when it has one (its
    /// proxy, its TLS). Sources that do not use HTTP keep this default, which ignores it.
    fn fetch_via<'a>(
        &'a self,
        host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
        transport: Option<&'a dyn HttpTransport>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
        let _ = transport;
        self.fetch(host, auth)
    }
}

/// What the exporter asks before sending: may this host's telemetry go out?
///
/// Contract: `state` is a cheap non-blocking read; `wait` resolves by `timeout` at the latest.
pub trait FlagGate: Send + Sync + 'static {
    /// The current answer.
    fn state(&self) -> FlagState;
    /// Waits until the answer is known, or `timeout` passes (then returns what is known).
    fn wait(&self, timeout: Duration) -> BoxFuture<'_, FlagState>;
}

/// A gate with a fixed answer (tests, and drivers that bypass the flag).
#[derive(Debug, Clone, Copy)]
pub struct FixedGate(pub FlagState);

impl FlagGate for FixedGate {
    fn state(&self) -> FlagState {
        self.0
    }
    fn wait(&self, _timeout: Duration) -> BoxFuture<'_, FlagState> {
        let state = self.0;
        Box::pin(async move { state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;
    use crate::classify::TransportErrorKind;

    #[test]
    fn fixed_gate_and_flag_state() {
        let g = FixedGate(FlagState::Enabled);
        assert_eq!(g.state(), FlagState::Enabled);
        assert_eq!(block_on(g.wait(Duration::ZERO)), FlagState::Enabled);
        for s in [FlagState::Unknown, FlagState::Enabled, FlagState::Disabled] {
            assert_eq!(FlagState::from_u8(s as u8), s);
            assert!(!s.as_str().is_empty());
        }
        assert_eq!(FlagState::from_u8(9), FlagState::Disabled);
    }

    #[test]
    fn flag_error_names_the_transport_failure() {
        let e = TransportError::new(TransportErrorKind::Timeout, "slow");
        assert_eq!(FlagError::from(e).to_string(), "transport: Timeout: slow");
    }
}
