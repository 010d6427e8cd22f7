//! A connection handle: the session's open and close, its errors, and its statements.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use telemetry_flags::PendingCredentials;
use telemetry_types::auth::AuthProvider;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::event::{DriverError, EventKind, ReportableError, VolumeOp};
use telemetry_types::wire::{OperationType, StatementType, VolumeOperationType};

use crate::clock;
use crate::emitter::{Emitter, capped_id, millis};
use crate::local::LocalStatement;
use crate::provider::TelemetryError;
use crate::registry::HostLease;
use crate::statement::Statement;
use crate::stats::DisabledReason;
use crate::unreported::{self, NotReported};

/// One driver connection's telemetry: `Clone + Send + Sync`, shared by every task of the
/// connection (clones are one connection). Every method but `close` is synchronous, never
/// waits on the network and never fails; when telemetry is off each costs one branch or one
/// atomic load, allocates nothing (but a thread's first not-reported count, which takes its
/// counters once), and a call that would have reported is counted (in the calling thread's
/// own counter: [`calls_not_reported`](crate::calls_not_reported)). With the OpenTelemetry
/// bridge (feature `opentelemetry`) and the server's flag off, statements stay live for the
/// bridge alone. [`close`](Self::close) takes `&self` and is idempotent;
/// dropping the last clone without it releases the host's client the same way (the last
/// release flushes in the background). [`Connection::default()`] is a disabled handle, for a
/// driver struct that needs one before telemetry is set up, or a test.
#[derive(Clone)]
pub struct Connection {
    live: Option<Arc<Handle>>,
    /// Why the handle is disabled, if it is (set only then).
    disabled: Option<DisabledReason>,
}

impl Default for Connection {
    /// A disabled handle; its [`disabled_reason`](Connection::disabled_reason) is
    /// [`DisabledReason::Config`] (telemetry not set up for it).
    fn default() -> Self {
        Self::disabled(DisabledReason::Config)
    }
}

/// What the clones of one live connection share; the last one dropped releases the host.
struct Handle {
    emitter: Arc<Emitter>,
    closed: std::sync::atomic::AtomicBool,
    /// Credentials said to be coming and not attached yet (the host's look-up waits).
    pending: std::sync::Mutex<Option<PendingCredentials>>,
}

impl Handle {
    /// Ends this connection's part in the wait for credentials.
    fn stop_waiting(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(pending);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.emitter.lease.release();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.live {
            Some(l) => f
                .debug_struct("Connection")
                .field("info", &l.emitter.info)
                .finish(),
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

    pub(crate) fn new(
        info: Arc<ConnectionInfo>,
        lease: HostLease,
        pending: Option<PendingCredentials>,
        bridge: crate::bridge::Slot,
    ) -> Self {
        Self {
            live: Some(Arc::new(Handle {
                emitter: Arc::new(Emitter {
                    info,
                    lease,
                    bridge,
                }),
                closed: std::sync::atomic::AtomicBool::new(false),
                pending: std::sync::Mutex::new(pending),
            })),
            disabled: None,
        }
    }

    /// Attaches (or replaces) the connection's credentials, for a connection registered
    /// before the driver had any ([`ConnectionOptions::with_auth_later`](crate::ConnectionOptions::with_auth_later)),
    /// or whose provider object changed. Rows sent from now on use them, and the host's flag
    /// look-up, if it is waiting for credentials, goes on with them at once. Cheap; never
    /// calls the provider here.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use telemetry_client::{Connection, StaticToken};
    /// let conn = Connection::default();
    /// conn.attach_auth(Arc::new(StaticToken::new("token"))); // a disabled handle: nothing
    /// ```
    pub fn attach_auth(&self, auth: Arc<dyn AuthProvider>) {
        let Some(handle) = self.live.as_ref() else {
            return;
        };
        let e = &handle.emitter;
        e.info.attach_auth(auth.clone());
        if let Some(flag) = e.lease.flag_handle() {
            flag.add_credentials(
                crate::provider::flag_credentials(auth, &e.info),
                e.info.transport.clone(),
            );
        }
        handle.stop_waiting();
    }

    /// Why this handle reports nothing from the start, if it does not (the server's flag,
    /// which may turn a live handle off later, is per host: see the provider's stats).
    pub fn disabled_reason(&self) -> Option<DisabledReason> {
        self.disabled
    }

    /// The live state if telemetry may be sent: one atomic load of the host's flag.
    #[inline]
    fn live(&self) -> Option<&Arc<Emitter>> {
        self.live.as_ref().map(|h| &h.emitter).filter(|l| l.is_on())
    }

    /// A statement begun: live if telemetry may be sent, or, with the server's flag off, for
    /// the OpenTelemetry bridge alone (its row is counted as not reported at once).
    #[inline]
    fn begin(
        &self,
        statement_type: StatementType,
        operation_type: OperationType,
        volume: impl FnOnce() -> Option<VolumeOp>,
    ) -> Statement {
        match &self.live {
            Some(h) if h.emitter.is_on() => {
                Statement::begin(&h.emitter, statement_type, operation_type, volume(), true)
            }
            Some(h) => {
                unreported::count(NotReported::FlagOff);
                if h.emitter.bridge.get().is_some() {
                    Statement::begin(&h.emitter, statement_type, operation_type, volume(), false)
                } else {
                    Statement::disabled()
                }
            }
            None => {
                unreported::count(NotReported::Disabled);
                Statement::disabled()
            }
        }
    }

    /// [`live`](Self::live), for a call that would report: when it cannot, the call is counted
    /// as not reported, with its reason (a thread-local count, no atomic read-modify-write).
    #[inline]
    fn live_or_count(&self) -> Option<&Arc<Emitter>> {
        match &self.live {
            Some(h) if h.emitter.is_on() => Some(&h.emitter),
            Some(_) => {
                unreported::count(NotReported::FlagOff);
                None
            }
            None => {
                unreported::count(NotReported::Disabled);
                None
            }
        }
    }

    /// Whether this connection reports telemetry (not off by config, override, env switch or
    /// the server's flag). While the flag is not yet known this is `true`: events are kept
    /// and sent or discarded once it is.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.live().is_some()
    }

    /// The session was opened; `latency` is the open call's own duration. For a session id
    /// that only the open call's answer carries, use [`session_opened`](Self::session_opened).
    #[inline]
    pub fn opened(&self, latency: Duration) {
        if let Some(l) = self.live_or_count() {
            emit_opened(l, latency);
        }
    }

    /// The session was opened and the server named it `session_id` (kept if one was given
    /// before: the first stays). Every later row of the connection carries it.
    pub fn session_opened(&self, session_id: &str, latency: Duration) {
        if let Some(l) = self.live_or_count() {
            let _ = l.info.session_id.set(capped_id(session_id).to_owned());
            emit_opened(l, latency);
        }
    }

    /// Opening the session failed: a `CREATE_SESSION` row with the error, sent at once (to
    /// the unauthenticated endpoint when the connection has no working credentials).
    pub fn open_failed<E: ReportableError + ?Sized>(&self, latency: Duration, error: &E) {
        if let Some(l) = self.live_or_count() {
            l.emit(
                Some(clock::now()),
                EventKind::ConnectionFailed {
                    latency_ms: millis(latency),
                    error: Box::new(DriverError::from_error(error)),
                },
            );
        }
    }

    /// The session was closed; `latency` is the close call's own duration.
    #[inline]
    pub fn closed(&self, latency: Duration) {
        if let Some(l) = self.live_or_count() {
            l.emit(
                Some(clock::now()),
                EventKind::ConnectionClosed {
                    latency_ms: millis(latency),
                },
            );
        }
    }

    /// Begins a statement, before its execute call (the server's id comes with the answer:
    /// [`Statement::attach_id`]). The handle is shared by cloning; see [`Statement`] for how
    /// it ends.
    #[inline]
    pub fn statement(
        &self,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> Statement {
        self.begin(statement_type, operation_type, || None)
    }

    /// Begins a statement run by one task from its begin to its end: a [`LocalStatement`]
    /// records into plain fields (no atomic operation per call, no allocation),
    /// and [`share`](LocalStatement::share)s into a [`Statement`] when other tasks need it.
    /// The row is the one [`statement`](Self::statement) gives for the same calls.
    #[inline]
    pub fn local_statement(
        &self,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> LocalStatement {
        match &self.live {
            Some(h) if h.emitter.is_on() => {
                LocalStatement::begin(&h.emitter, statement_type, operation_type, true)
            }
            Some(h) => {
                unreported::count(NotReported::FlagOff);
                if h.emitter.bridge.get().is_some() {
                    LocalStatement::begin(&h.emitter, statement_type, operation_type, false)
                } else {
                    LocalStatement::default()
                }
            }
            None => {
                unreported::count(NotReported::Disabled);
                LocalStatement::default()
            }
        }
    }

    /// Begins a metadata look-up (`METADATA` with its `LIST_*` operation: catalogs, schemas,
    /// tables, columns, functions, primary / imported / exported keys, cross references, type
    /// info, table types).
    /// A non-metadata operation is refused: the handle is disabled and the refusal counted
    /// (`ProviderStats::statements_refused`). [`OperationType::for_metadata_call`] maps a
    /// driver's metadata call by name (procedures to `LIST_FUNCTIONS`).
    #[inline]
    pub fn metadata(&self, operation_type: OperationType) -> Statement {
        if !operation_type.is_metadata() {
            match &self.live {
                Some(h) => h.emitter.lease.count_refused_statement(),
                None => unreported::count(NotReported::Disabled),
            }
            return Statement::disabled();
        }
        self.statement(StatementType::Metadata, operation_type)
    }

    /// Begins a Unity Catalog volume operation (`VOLUME`, with `vol_operation`). The path is
    /// redacted and the local file reduced to its name when the row is built, off this thread.
    pub fn volume(
        &self,
        operation: VolumeOperationType,
        volume_path: &str,
        local_file: Option<&str>,
    ) -> Statement {
        self.begin(
            StatementType::Volume,
            OperationType::ExecuteStatement,
            || {
                Some(VolumeOp {
                    operation,
                    volume_path: Some(capped_text(volume_path)),
                    local_file: local_file.map(capped_text),
                })
            },
        )
    }

    /// An error not tied to a statement (or whose statement is not tracked).
    #[inline]
    pub fn error<E: ReportableError + ?Sized>(&self, error: &E) {
        if let Some(l) = self.live_or_count() {
            l.emit(
                Some(clock::now()),
                EventKind::Error {
                    statement_id: None,
                    error: Box::new(DriverError::from_error(error)),
                },
            );
        }
    }

    /// Closes this connection, every clone of it, once: releases the host's client and
    /// returns at once. When it was the host's last connection the host's final flush runs
    /// in the background (bounded by the close timeout, every row settled and counted);
    /// otherwise the host flushes at its next interval. Never waits: a driver's close is
    /// never held up by telemetry, whatever the endpoint does. To wait for the rows, call
    /// [`flush`](Self::flush) (or the provider's `shutdown`) where waiting is wanted (the last
    /// database released, process exit). Later calls, from any clone, do nothing. Statements
    /// still open keep reporting while the host lives (see
    /// `ProviderStats::statements_open_at_close`).
    pub fn close(&self) {
        let Some(handle) = self.live.as_ref() else {
            return;
        };
        if !handle
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            handle.stop_waiting();
            let _ = handle.emitter.lease.release();
        }
    }

    /// Waits, at most `timeout`, until every row of this connection's host produced so far
    /// is settled (sent, or dropped with a counted reason); after [`close`](Self::close) of
    /// the host's last connection, until the host's final flush is done. Needs no particular
    /// runtime: it awaits a signal from the provider's. `Err` names the host if time ran
    /// out. A disabled handle returns `Ok` at once.
    pub async fn flush(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let Some(handle) = self.live.as_ref() else {
            return Ok(());
        };
        let lease = &handle.emitter.lease;
        match lease.settle_within(timeout).await {
            Ok(true) => Ok(()),
            _ => Err(TelemetryError::Timeout {
                hosts: vec![handle.emitter.info.host.to_string()],
            }),
        }
    }

    /// [`flush`](Self::flush) for callers without an async context: blocks this thread at
    /// most `timeout` (plus a little). Do not call it from inside an async task.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let Some(handle) = self.live.as_ref() else {
            return Ok(());
        };
        let lease = &handle.emitter.lease;
        let settled = lease.settle_within(timeout);
        let (tx, rx) = std::sync::mpsc::channel();
        lease.runtime().spawn(async move {
            let _ = tx.send(settled.await.unwrap_or(false));
        });
        match rx.recv_timeout(timeout.saturating_add(Duration::from_millis(200))) {
            Ok(true) => Ok(()),
            _ => Err(TelemetryError::Timeout {
                hosts: vec![handle.emitter.info.host.to_string()],
            }),
        }
    }
}

/// Longest path kept at intake, in bytes (paths are sent capped at 1024 characters).
const MAX_INTAKE_PATH_BYTES: usize = 4096;

/// `text` copied, cut to [`MAX_INTAKE_PATH_BYTES`] on a character boundary.
fn capped_text(text: &str) -> String {
    let mut end = text.len().min(MAX_INTAKE_PATH_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The session-open event (`CREATE_SESSION`), dated now.
fn emit_opened(l: &Emitter, latency: Duration) {
    l.emit(
        Some(clock::now()),
        EventKind::ConnectionOpened {
            latency_ms: millis(latency),
        },
    );
}
