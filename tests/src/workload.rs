//! A driver-like workload through the public `telemetry-client` API: connections on plain
//! threads, each opening a session, running statements with CloudFetch chunks (some ending in
//! an error), and closing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_client::{
    AuthType, ConnectionOptions, DriverError, ExecutionResultFormat, OperationType,
    StatementCompletion, StatementType, StaticToken, TelemetryClientProvider,
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
        }
    }
}

/// What a run did, from the driver's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Events the telemetry calls produce when telemetry is on (a chunk call folds into its
    /// statement's completion instead of being an event of its own).
    pub events: u64,
    /// Rows those events should become: per connection one open, one per statement, one per
    /// error, one close.
    pub expected_rows: u64,
    /// Statements that ended in an error.
    pub errors: u64,
    /// Wall time of the driver work, connections closed included.
    pub elapsed: Duration,
    /// The longest time one connection's close took.
    pub close_max: Duration,
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

/// Runs `w` against `host` and closes every connection (waiting for the final flush).
pub fn run(
    provider: &TelemetryClientProvider,
    host: &str,
    http_path: &str,
    w: &Workload,
) -> WorkloadReport {
    let started = Instant::now();
    let mut report = WorkloadReport::default();
    let mut add = |r: WorkloadReport| {
        report.events += r.events;
        report.expected_rows += r.expected_rows;
        report.errors += r.errors;
        report.close_max = report.close_max.max(r.close_max);
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

fn connection(
    provider: &TelemetryClientProvider,
    host: &str,
    http_path: &str,
    w: &Workload,
    index: usize,
) -> WorkloadReport {
    let mut options = ConnectionOptions::new(host)
        .with_http_path(http_path)
        .with_session_id(format!("sim-session-{index}"));
    match w.token.clone() {
        Some(t) => options = options.with_auth(Arc::new(StaticToken::new(t)), AuthType::Pat),
        None => options.auth_type = Some(AuthType::Unknown),
    }
    let open_started = Instant::now();
    let conn = provider.connect(options);
    conn.opened(open_started.elapsed());
    let mut r = WorkloadReport {
        events: 1,
        expected_rows: 2,
        ..Default::default()
    };
    let pad = |text: String| {
        let missing = w.string_bytes.saturating_sub(text.len());
        if missing == 0 {
            text
        } else {
            text + &" x".repeat(missing / 2)
        }
    };
    for s in 0..w.statements {
        let id = pad(format!("sim-{index}-{s}"));
        let stmt = conn.statement(&id, StatementType::Query, OperationType::ExecuteStatement);
        busy_wait(w.work_us);
        for k in 0..w.chunks {
            stmt.chunk(
                Duration::from_millis(5 + (k as u64 * 7) % 40),
                1 << 20,
                k % 2 == 0,
            );
        }
        r.events += 2; // start and completion; chunks fold into the completion
        r.expected_rows += 1;
        if is_error(index * w.statements + s, w.error_rate) {
            stmt.error(
                DriverError::new(
                    "SimulatedServerError",
                    pad("warehouse busy, try again".to_owned()),
                )
                .with_http_status(503),
            );
            r.events += 1;
            r.expected_rows += 1;
            r.errors += 1;
        }
        stmt.complete(StatementCompletion {
            execution_result: Some(ExecutionResultFormat::ExternalLinks),
            poll_count: Some(1),
            chunks_present: Some(w.chunks as u32),
            ..Default::default()
        });
    }
    conn.closed(Duration::from_micros(300));
    r.events += 1;
    let close_started = Instant::now();
    conn.close_blocking();
    r.close_max = close_started.elapsed();
    r
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
