//! Where the OpenTelemetry bridge meets the handles, in the same shape whether the
//! `opentelemetry` feature is built or not: without it, [`Slot::get`] is a constant `None` and
//! every bridge branch of the handles compiles away.

#[cfg(feature = "opentelemetry")]
pub(crate) use crate::otel::{ConnBridge, Parent};

/// A connection's bridge, if the provider has one (always empty without the feature).
#[derive(Default)]
pub(crate) struct Slot(#[cfg(feature = "opentelemetry")] pub(crate) Option<ConnBridge>);

#[cfg(feature = "opentelemetry")]
impl Slot {
    /// The connection's bridge, if any.
    #[inline]
    pub(crate) fn get(&self) -> Option<&ConnBridge> {
        self.0.as_ref()
    }
}

#[cfg(not(feature = "opentelemetry"))]
impl Slot {
    /// Never a bridge: the feature is not built.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<&ConnBridge> {
        None
    }
}

/// Without the feature there is no bridge: the type has no value.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) enum ConnBridge {}

#[cfg(not(feature = "opentelemetry"))]
impl ConnBridge {
    pub(crate) fn parent(&self) -> Parent {
        match *self {}
    }

    pub(crate) fn chunk(&self, _latency: std::time::Duration, _bytes: u64) {
        match *self {}
    }

    pub(crate) fn finished(
        &self,
        _parent: Option<&Parent>,
        _begun: std::time::Instant,
        _ended: std::time::Instant,
        _end: &telemetry_types::event::StatementEnd,
    ) {
        match *self {}
    }
}

/// Without the feature there is no parent context.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) enum Parent {}
