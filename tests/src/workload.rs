//! A driver-like workload through the public `telemetry-client` API, shaped like the ADBC
//! driver's SEA path: connections on plain threads (or one after another), a failing session
//! open, statements begun before their execute call with the id attached after it, polls,
//! CloudFetch chunks reported from download threads holding clones of the handle, failures
//! before an id exists, cancels, drops, early closes, chunk failures, metadata look-ups of
//! every kind, volume operations, and an auth provider that blocks.

use std::borrow::Cow;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use telemetry_client::{
    AuthFlow, AuthMech, AuthProvider, AuthType, BoxFuture, ConnectionOptions,
    DriverConnectionParameters, DriverMode, ExecutionResultFormat, HostDetails, OperationType,
    ReportableError, Statement, StatementType, StaticToken, TelemetryClientProvider,
    VolumeOperationType,
};

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent connections.
    pub connections: usize,
    /// Statements per connection.
    pub statements: usize,
    /// CloudFetch chunks per statement.
    pub chunks: usize,
    /// Fraction of statements that end in an error.
    pub error_rate: f64,
    /// Simulated driver work per statement (busy wait), microseconds.
    pub work_us: u64,
    /// Token; `None` reports to the unauthenticated endpoint.
    pub token: Option<String>,
    /// Connections one after another (a serverless driver: one connection per request)
    /// instead of all at once.
    pub sequential: bool,
    /// Pad each error message and statement id to this many bytes (0: short ones): a driver
    /// handing in megabyte strings.
    pub string_bytes: usize,
    /// Every kind of statement ([`Kind::of`]) rather than queries only.
    pub mixed: bool,
    /// Connections (the first ones) whose first session open fails.
    pub failed_opens: usize,
    /// The token provider blocks (`block_in_place`) like an OAuth provider.
    pub blocking_auth: bool,
    /// CloudFetch download threads per connection, each reporting chunks on its clone of the
    /// statement handle; 0 reports them on the connection's own thread (no hand-off cost in
    /// the driver work, for measuring telemetry alone).
    pub download_threads: usize,
    /// Statements per millisecond per connection, paced by sleeping (0: as fast as the
    /// driver thread goes). Pacing keeps a measurement of CPU per statement from measuring a
    /// burst that overruns the queue, without spending CPU on the pause as busy work would.
    pub pace_per_ms: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            connections: 4,
            statements: 50,
            chunks: 3,
            error_rate: 0.05,
            work_us: 0,
            token: None,
            sequential: false,
            string_bytes: 0,
            mixed: true,
            failed_opens: 1,
            blocking_auth: false,
            download_threads: 2,
            pace_per_ms: 0,
        }
    }
}

/// What a run did, from the driver's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Events the telemetry calls produce when telemetry is on (what a statement records on
    /// its handle rides with its end instead of being an event of its own).
    pub events: u64,
    /// Rows those events should become: per connection one open, one per statement, one per
    /// error, one per failed chunk, one close, and one per failed open.
    pub expected_rows: u64,
    /// Statements that ended in an error.
    pub errors: u64,
    /// Wall time of the driver work, connections closed included.
    pub elapsed: Duration,
    /// Wall time of the driver work up to the connections' close (the longest connection's,
    /// or their sum when sequential): what telemetry's overhead on the driver is measured by.
    pub work: Duration,
    /// The longest time one connection's close took.
    pub close_max: Duration,
    /// CPU time of the connections' own threads and their download threads, each read on
    /// its thread (Linux; zero elsewhere): with the process's CPU time, what the rest of the
    /// process (telemetry's background runtime) spent.
    pub driver_cpu: Duration,
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`; zero if unreadable).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is handed, nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Whether statement `n` (counted over the whole run) ends in an error: evenly spread.
pub fn is_error(n: usize, rate: f64) -> bool {
    let golden = 0.618_033_988_749_895_f64;
    ((n as f64 + 1.0) * golden).fract() < rate
}

fn busy_wait(us: u64) {
    if us == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Runs `w` against `host` and closes every connection (then waits for each host's final
/// flush; `close_max` is the close call alone).
pub fn run(
    provider: &TelemetryClientProvider,
    host: &str,
    http_path: &str,
    w: &Workload,
) -> WorkloadReport {
    let started = Instant::now();
    let mut report = WorkloadReport::default();
    let sequential = w.sequential;
    let mut add = |r: WorkloadReport| {
        report.events += r.events;
        report.expected_rows += r.expected_rows;
        report.errors += r.errors;
        report.close_max = report.close_max.max(r.close_max);
        report.driver_cpu += r.driver_cpu;
        report.work = if sequential {
            report.work + r.work
        } else {
            report.work.max(r.work)
        };
    };
    if w.sequential {
        for c in 0..w.connections {
            add(connection(provider, host, http_path, w, c));
        }
    } else {
        let threads: Vec<_> = (0..w.connections)
            .map(|c| {
                let provider = provider.clone();
                let host = host.to_owned();
                let http_path = http_path.to_owned();
                let w = w.clone();
                std::thread::spawn(move || connection(&provider, &host, &http_path, &w, c))
            })
            .collect();
        for t in threads {
            if let Ok(r) = t.join() {
                add(r);
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The metadata look-ups a driver runs, in turn.
const METADATA: [OperationType; 11] = [
    OperationType::ListCatalogs,
    OperationType::ListSchemas,
    OperationType::ListTables,
    OperationType::ListColumns,
    OperationType::ListFunctions,
    OperationType::ListTableTypes,
    OperationType::ListTypeInfo,
    OperationType::ListPrimaryKeys,
    OperationType::ListImportedKeys,
    OperationType::ListExportedKeys,
    OperationType::ListCrossReferences,
];

/// The volume operations, in turn.
const VOLUME: [VolumeOperationType; 5] = [
    VolumeOperationType::Put,
    VolumeOperationType::Get,
    VolumeOperationType::Delete,
    VolumeOperationType::List,
    VolumeOperationType::Query,
];

/// What statement `n` of a connection does: most run a query with CloudFetch chunks; one in
/// each [`Kind::CYCLE`] does each of the other things a real driver's statements do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Execute, attach the id, poll, download chunks on the download threads, read, complete.
    Query,
    /// `EXECUTE_STATEMENT_ASYNC`, otherwise as a query.
    AsyncQuery,
    /// The execute call fails before the server assigns an id.
    ExecuteFails,
    /// Cancelled while polling.
    Cancelled,
    /// The handle is dropped after the driver recorded the format and polls.
    Dropped,
    /// Closed before it completed.
    ClosedEarly,
    /// One chunk fails after its retries; the others arrive; then it completes.
    ChunkFails,
    /// A metadata look-up.
    Metadata,
    /// A Unity Catalog volume operation.
    Volume,
}

impl Kind {
    /// Statements per cycle of kinds.
    pub const CYCLE: usize = 20;

    /// The kind of statement `n`.
    pub fn of(n: usize) -> Self {
        match n % Self::CYCLE {
            3 => Self::ExecuteFails,
            5 => Self::Cancelled,
            7 => Self::Dropped,
            9 | 19 => Self::Metadata,
            11 => Self::Volume,
            13 => Self::ChunkFails,
            15 => Self::ClosedEarly,
            17 => Self::AsyncQuery,
            _ => Self::Query,
        }
    }

    /// Whether its chunks are downloaded.
    fn has_chunks(self) -> bool {
        matches!(self, Self::Query | Self::AsyncQuery | Self::ChunkFails)
    }
}

/// The driver's own error type, reported through [`ReportableError`].
struct SimError {
    sqlstate: &'static str,
    status: Option<u16>,
    message: String,
}

impl ReportableError for SimError {
    fn error_name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("SimulatedDriverError"))
    }
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.sqlstate))
    }
    fn http_status(&self) -> Option<u16> {
        self.status
    }
    fn message(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.message))
    }
}

/// A connection's CloudFetch download threads: they receive a clone of the statement handle
/// per chunk, report the chunk on it, and drop the clone.
struct Downloads {
    jobs: Option<mpsc::Sender<(Statement, usize, mpsc::Sender<()>)>>,
    /// Each thread returns the CPU time it used.
    threads: Vec<std::thread::JoinHandle<Duration>>,
}

impl Downloads {
    fn start(n: usize) -> Self {
        let (tx, rx) = mpsc::channel::<(Statement, usize, mpsc::Sender<()>)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok((statement, k, done)) = job else {
                            break;
                        };
                        statement.chunk(
                            Duration::from_millis(5 + (k as u64 * 7) % 40),
                            1 << 20,
                            k % 2 == 0,
                        );
                        drop(statement);
                        let _ = done.send(());
                    }
                    thread_cpu()
                })
            })
            .collect();
        Self {
            jobs: Some(tx),
            threads,
        }
    }

    /// Downloads `chunks` chunks of `statement` on the threads (on this one if there are
    /// none); returns when all are in.
    fn fetch(&self, statement: &Statement, chunks: usize) {
        let Some(jobs) = self.jobs.as_ref().filter(|_| !self.threads.is_empty()) else {
            for k in 0..chunks {
                statement.chunk(
                    Duration::from_millis(5 + (k as u64 * 7) % 40),
                    1 << 20,
                    k % 2 == 0,
                );
            }
            return;
        };
        let (done_tx, done_rx) = mpsc::channel();
        for k in 0..chunks {
            let _ = jobs.send((statement.clone(), k, done_tx.clone()));
        }
        drop(done_tx);
        for _ in 0..chunks {
            let _ = done_rx.recv();
        }
    }
}

impl Downloads {
    /// Stops the threads and returns the CPU time they used.
    fn finish(mut self) -> Duration {
        self.jobs = None;
        self.threads.drain(..).filter_map(|t| t.join().ok()).sum()
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn connection(
    provider: &TelemetryClientProvider,
    host: &str,
    http_path: &str,
    w: &Workload,
    index: usize,
) -> WorkloadReport {
    let cpu_started = thread_cpu();
    let mut r = WorkloadReport::default();
    let auth = |mut options: ConnectionOptions| {
        match w.token.clone() {
            Some(t) if w.blocking_auth => {
                options = options.with_auth(Arc::new(BlockingToken::new(t)), AuthType::OauthM2m);
            }
            Some(t) => options = options.with_auth(Arc::new(StaticToken::new(t)), AuthType::Pat),
            None => options.auth_type = Some(AuthType::Unknown),
        }
        options
            .with_http_path(http_path)
            .with_connection_params(connection_params(host))
    };
    // A session open that fails before any credentials work: a connection-failure row.
    if index < w.failed_opens {
        let failed = provider.connect(auth(ConnectionOptions::new(host)));
        failed.open_failed(
            Duration::from_millis(30),
            &SimError {
                sqlstate: "08001",
                status: None,
                message: "connect to https://user:pw@warehouse failed: connection refused".into(),
            },
        );
        r.events += 1;
        r.expected_rows += 1;
        failed.close();
    }
    // The driver's work is timed from here.
    let work_started = Instant::now();
    let conn = provider.connect(auth(ConnectionOptions::new(host)));
    let open_started = Instant::now();
    conn.session_opened(&format!("sim-session-{index}"), open_started.elapsed());
    r.events += 1;
    r.expected_rows += 2; // open and close
    let pad = |text: String| {
        let missing = w.string_bytes.saturating_sub(text.len());
        if missing == 0 {
            text
        } else {
            text + &" x".repeat(missing / 2)
        }
    };
    let downloads = Downloads::start(if w.chunks > 0 { w.download_threads } else { 0 });
    let paced_from = Instant::now();
    for s in 0..w.statements {
        if w.pace_per_ms > 0 && s > 0 && s % w.pace_per_ms == 0 {
            let due = paced_from + Duration::from_millis((s / w.pace_per_ms) as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let kind = if w.mixed { Kind::of(s) } else { Kind::Query };
        r.events += 1; // its end; everything else rides on the handle
        r.expected_rows += 1;
        let stmt = match kind {
            Kind::Metadata => conn.metadata(METADATA[(s / Kind::CYCLE + index) % METADATA.len()]),
            Kind::Volume => conn.volume(
                VOLUME[(s / Kind::CYCLE + index) % VOLUME.len()],
                "/Volumes/main/default/landing/in.csv",
                Some("/home/alice/data/in.csv"),
            ),
            Kind::AsyncQuery => {
                conn.statement(StatementType::Query, OperationType::ExecuteStatementAsync)
            }
            _ => conn.statement(StatementType::Query, OperationType::ExecuteStatement),
        };
        busy_wait(w.work_us);
        if kind == Kind::ExecuteFails {
            stmt.fail(&SimError {
                sqlstate: "42P01",
                status: Some(400),
                message: pad(
                    "[TABLE_OR_VIEW_NOT_FOUND] == SQL ==\nSELECT * FROM t WHERE k = 'secret'"
                        .to_owned(),
                ),
            });
            continue;
        }
        // The execute call answered: the server's id.
        stmt.attach_id(&pad(format!("01ef-{index:04x}-{s:08x}")));
        stmt.poll(Duration::from_millis(3));
        if kind == Kind::Cancelled {
            stmt.cancel();
            continue;
        }
        stmt.result_format(ExecutionResultFormat::ExternalLinks);
        stmt.poll(Duration::from_millis(2));
        if kind == Kind::Dropped {
            drop(stmt);
            continue;
        }
        if kind.has_chunks() && w.chunks > 0 {
            stmt.chunks_present(w.chunks as u32);
            stmt.compressed(true);
            downloads.fetch(&stmt, w.chunks);
        }
        if kind == Kind::ChunkFails {
            stmt.chunk_failed(
                w.chunks as i64,
                &SimError {
                    sqlstate: "HY000",
                    status: Some(403),
                    message:
                        "GET https://bucket.s3.amazonaws.com/chunk?X-Amz-Signature=abc expired"
                            .into(),
                },
            );
            r.events += 1;
            r.expected_rows += 1;
        }
        stmt.result_ready();
        if kind == Kind::ClosedEarly {
            stmt.close();
            continue;
        }
        if is_error(index * w.statements + s, w.error_rate) {
            stmt.error(&SimError {
                sqlstate: "08S01",
                status: Some(503),
                message: pad("warehouse busy, try again".to_owned()),
            });
            r.events += 1;
            r.expected_rows += 1;
            r.errors += 1;
        }
        stmt.result_consumed();
        stmt.complete();
        stmt.close(); // the driver closes it after reading: an ignored second ending
    }
    let download_cpu = downloads.finish();
    conn.closed(Duration::from_micros(300));
    r.events += 1;
    r.work = work_started.elapsed();
    let close_started = Instant::now();
    conn.close();
    r.close_max = close_started.elapsed();
    // Where a driver chooses to wait (the last database released): the host's final flush,
    // itself bounded by the close timeout.
    let _ = conn.flush_blocking(Duration::from_secs(60));
    r.driver_cpu = thread_cpu().saturating_sub(cpu_started) + download_cpu;
    r
}

/// The connection parameters a SEA driver reports.
fn connection_params(host: &str) -> DriverConnectionParameters {
    DriverConnectionParameters {
        mode: Some(DriverMode::Sea),
        host_info: Some(HostDetails::new(host, 443)),
        auth_mech: Some(AuthMech::Pat),
        auth_flow: Some(AuthFlow::TokenPassthrough),
        use_proxy: Some(false),
        enable_arrow: Some(true),
        enable_direct_results: Some(true),
        socket_timeout: Some(900),
        async_poll_interval_millis: Some(100),
        rows_fetched_per_block: Some(100_000),
        string_column_length: Some(255),
        ..Default::default()
    }
}

/// A token provider that blocks the way the ADBC driver's OAuth providers do: it calls
/// `block_in_place` inside `auth_headers` (which panics on a current-thread runtime).
#[derive(Debug)]
pub struct BlockingToken(StaticToken);

impl BlockingToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        Self(StaticToken::new(token))
    }
}

impl AuthProvider for BlockingToken {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(async move {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(2)));
            self.0.auth_headers().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_spread_matches_the_rate() {
        let n = (0..10_000).filter(|i| is_error(*i, 0.05)).count();
        assert!((450..=550).contains(&n), "{n}");
        assert_eq!((0..100).filter(|i| is_error(*i, 0.0)).count(), 0);
    }
}
