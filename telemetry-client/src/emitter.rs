//! The core a connection handle and its statements share: the connection's identity, its
//! lease on the host client, and the one method that queues an event.

use std::sync::Arc;
use std::time::Duration;

use telemetry_types::clock::Stamp;

use telemetry_types::connection::ConnectionInfo;
use telemetry_types::event::{EventKind, TelemetryEvent};

use crate::registry::HostLease;

/// One live connection's event source.
pub(crate) struct Emitter {
    pub(crate) info: Arc<ConnectionInfo>,
    pub(crate) lease: HostLease,
    /// The provider's OpenTelemetry bridge, for this connection (empty without one).
    pub(crate) bridge: crate::bridge::Slot,
}

impl Emitter {
    /// Whether events may be queued: the host's flag is not off (one atomic load).
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        !self.lease.flag_off()
    }

    /// Queues one event. `at` dates the row it starts (see [`TelemetryEvent::at`]); events
    /// that date nothing pass `None` and cost no clock reading. Not `#[inline]`: the public
    /// methods inline only their enabled check into the driver; the queue push stays here.
    pub(crate) fn emit(&self, at: Option<Stamp>, kind: EventKind) {
        self.emit_event(TelemetryEvent {
            connection: self.info.clone(),
            at,
            kind,
        });
    }

    /// Queues a built event: inlined, down to the queue push, into the out-of-line end of a
    /// statement handle, which builds its end event and pushes it in one function (about 30
    /// instructions a statement fewer than across calls, by callgrind: fewer copies of the
    /// 232-byte event).
    #[inline(always)]
    pub(crate) fn emit_event(&self, event: TelemetryEvent) {
        self.lease.emit(event);
    }
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Longest statement id kept at intake, in bytes (ids are sent capped at 128 characters).
const MAX_INTAKE_ID_BYTES: usize = 512;
/// `id`, cut to [`MAX_INTAKE_ID_BYTES`] on a character boundary: one comparison unless the
/// driver hands in something absurd.
#[inline]
pub(crate) fn capped_id(id: &str) -> &str {
    if id.len() <= MAX_INTAKE_ID_BYTES {
        return id;
    }
    let mut end = MAX_INTAKE_ID_BYTES;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_ids_are_capped_at_intake() {
        let id = "é".repeat(1000);
        let capped = capped_id(&id);
        assert!(capped.len() <= MAX_INTAKE_ID_BYTES && id.starts_with(capped));
        assert_eq!(capped_id("01ef-abc"), "01ef-abc");
    }
}
