//! A connection handle: the session's open and close, its errors, and its statements.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_types::connection::ConnectionInfo;
use telemetry_types::event::{DriverError, EventKind};
use telemetry_types::wire::{OperationType, StatementType};

use crate::emitter::{Emitter, millis};
use crate::registry::HostLease;
use crate::statement::Statement;
use crate::stats::DisabledReason;

/// One driver connection's telemetry. Every method is synchronous, never waits on the network
/// and never fails; when telemetry is off each costs one branch or one atomic load and
/// allocates nothing. Dropping the handle releases the host's client (the last release
/// flushes in the background); [`close`](Self::close) also waits for that flush.
pub struct Connection {
    live: Option<Arc<Emitter>>,
    /// Why the handle is disabled, if it is (set only then).
    disabled: Option<DisabledReason>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.live {
            Some(l) => f.debug_struct("Connection").field("info", &l.info).finish(),
            None => write!(
                f,
                "Connection(disabled: {})",
                self.disabled.map_or("closed", DisabledReason::as_str)
            ),
        }
    }
}

impl Connection {
    pub(crate) fn disabled(reason: DisabledReason) -> Self {
        Self {
            live: None,
            disabled: Some(reason),
        }
    }

    pub(crate) fn new(info: Arc<ConnectionInfo>, lease: HostLease) -> Self {
        Self {
            live: Some(Arc::new(Emitter { info, lease })),
            disabled: None,
        }
    }

    /// Why this handle reports nothing from the start, if it does not (the server's flag,
    /// which may turn a live handle off later, is per host: see the provider's stats).
    pub fn disabled_reason(&self) -> Option<DisabledReason> {
        self.disabled
    }

    /// The live state if telemetry may be sent: one atomic load of the host's flag.
    #[inline]
    fn live(&self) -> Option<&Arc<Emitter>> {
        self.live.as_ref().filter(|l| l.is_on())
    }

    /// Whether this connection reports telemetry (not off by config, override, env switch or
    /// the server's flag). While the flag is not yet known this is `true`: events are kept
    /// and sent or discarded once it is.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.live().is_some()
    }

    /// The session was opened; `latency` is the open call's own duration.
    #[inline]
    pub fn opened(&self, latency: Duration) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::ConnectionOpened {
                    latency_ms: millis(latency),
                },
            );
        }
    }

    /// The session was closed; `latency` is the close call's own duration.
    #[inline]
    pub fn closed(&self, latency: Duration) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::ConnectionClosed {
                    latency_ms: millis(latency),
                },
            );
        }
    }

    /// A statement started. The returned handle reports its chunks, errors and completion;
    /// dropped without [`Statement::complete`], it reports the statement as abandoned.
    #[inline]
    pub fn statement(
        &self,
        statement_id: &str,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> Statement {
        match self.live() {
            Some(l) => Statement::start(l, statement_id, statement_type, operation_type),
            None => Statement::disabled(),
        }
    }

    /// An error not tied to a statement (or whose statement is not tracked).
    #[inline]
    pub fn error(&self, error: DriverError) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::Error {
                    statement_id: None,
                    error: Box::new(error),
                },
            );
        }
    }

    /// Releases this connection and, if it was the host's last, waits for the final flush
    /// (bounded by the close timeout). Needs no particular runtime: it only awaits a signal.
    pub async fn close(mut self) {
        let Some(live) = self.live.take() else { return };
        let done = match live.lease.release() {
            Some(closed) => closed,
            // Other connections keep the client: flush this connection's rows now.
            None => live.lease.flush_within_close_timeout(),
        };
        let _ = done.await;
    }

    /// [`close`](Self::close) for callers without an async context: blocks this thread up to
    /// the close timeout (plus a little). Do not call it from inside an async task.
    pub fn close_blocking(mut self) {
        let Some(live) = self.live.take() else { return };
        if let Some(done) = live.lease.release() {
            let limit = live
                .lease
                .close_timeout()
                .saturating_add(Duration::from_millis(200));
            let (tx, rx) = std::sync::mpsc::channel();
            live.lease.runtime().spawn(async move {
                let _ = done.await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(limit);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(l) = self.live.take() {
            let _ = l.lease.release();
        }
    }
}
