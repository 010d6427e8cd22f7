//! A fleet of driver processes against one telemetry endpoint, simulated: N clients, each
//! with its own provider and one connection running statements at a driver's pace, report
//! through the public `telemetry-client` API to a simulated endpoint, on tokio's paused clock
//! with an in-process transport (no sockets), so that ten thousand clients and seventeen
//! minutes run in seconds of wall time.
//!
//! Scenarios (each 2 minutes healthy, 10 minutes of trouble, 5 minutes healthy again):
//! - [`Scenario::Outage`]: the endpoint answers 503 to everything during the trouble.
//! - [`Scenario::Storm`]: the endpoint accepts at most a hundredth of the fleet's healthy
//!   request rate per second and answers 429 with `Retry-After` to the rest.
//!
//! What the endpoint saw, second by second, and what the clients counted, are in the
//! [`FleetReport`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use telemetry_client::{
    BoxFuture, ClientPreset, ConnectionOptions, DisableSwitch, HttpRequest, HttpResponse,
    HttpTransport, OperationType, ProviderOptions, ProviderStats, StatementType,
    TelemetryClientProvider, TransportError,
};
use tokio::time::Instant;

/// What goes wrong at the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 503 to every request during the trouble.
    Outage,
    /// A capacity of a hundredth of the healthy rate during the trouble; 429 to the rest.
    Storm,
}

impl Scenario {
    /// The scenario's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outage => "outage",
            Self::Storm => "storm",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "outage" => Ok(Self::Outage),
            "storm" => Ok(Self::Storm),
            other => Err(format!("unknown scenario '{other}' (outage, storm)")),
        }
    }
}

/// Healthy, before the trouble.
pub const HEALTHY: Duration = Duration::from_secs(120);
/// The trouble.
pub const TROUBLE: Duration = Duration::from_secs(600);
/// Healthy again.
pub const RECOVERY: Duration = Duration::from_secs(300);
/// The `Retry-After` of a 429 in a storm, in seconds.
pub const STORM_RETRY_AFTER_SECS: u64 = 30;

/// How the fleet runs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Client processes.
    pub clients: usize,
    /// What goes wrong.
    pub scenario: Scenario,
    /// Mean time between two statements of one client (each gap drawn uniformly in half to
    /// one and a half of it).
    pub statement_every: Duration,
}

impl FleetConfig {
    /// `clients` clients in `scenario`, a statement every 10 s each.
    pub fn new(clients: usize, scenario: Scenario) -> Self {
        Self {
            clients,
            scenario,
            statement_every: Duration::from_secs(10),
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// Client processes.
    pub clients: usize,
    /// The scenario.
    pub scenario: Scenario,
    /// Statements the clients ran.
    pub statements: u64,
    /// The clients' own totals, summed.
    pub stats: ProviderStats,
    /// Requests the endpoint received, each second.
    pub requests_per_second: Vec<u64>,
    /// Requests it accepted (2xx), each second.
    pub accepted_per_second: Vec<u64>,
    /// The storm's capacity, requests per second (storm only).
    pub storm_capacity: Option<u64>,
    /// Wall time the run took.
    pub wall: std::time::Duration,
}

fn sum(v: &[u64]) -> u64 {
    v.iter().sum()
}

fn secs(d: Duration) -> usize {
    usize::try_from(d.as_secs()).unwrap_or(usize::MAX)
}

impl FleetReport {
    /// Requests the endpoint received in all.
    pub fn endpoint_requests(&self) -> u64 {
        sum(&self.requests_per_second)
    }

    fn phase(series: &[u64], from: Duration, len: Duration) -> &[u64] {
        let start = secs(from).min(series.len());
        let end = (start + secs(len)).min(series.len());
        &series[start..end]
    }

    fn trouble<'a>(&self, series: &'a [u64]) -> &'a [u64] {
        Self::phase(series, HEALTHY, TROUBLE)
    }

    /// Requests the endpoint saw during the outage, per client.
    pub fn outage_requests_per_client(&self) -> f64 {
        sum(self.trouble(&self.requests_per_second)) as f64 / self.clients.max(1) as f64
    }

    /// The largest one-second request count in the 5 minutes after recovery, over the mean
    /// one-second count of the healthy phase before the trouble.
    pub fn recovery_peak_to_mean(&self) -> f64 {
        let before = Self::phase(&self.requests_per_second, Duration::ZERO, HEALTHY);
        let mean = sum(before) as f64 / before.len().max(1) as f64;
        let after = Self::phase(&self.requests_per_second, HEALTHY + TROUBLE, RECOVERY);
        let peak = after.iter().copied().max().unwrap_or(0) as f64;
        if mean > 0.0 { peak / mean } else { 0.0 }
    }

    /// Requests sent during the storm over requests accepted during it.
    pub fn storm_offered_to_accepted(&self) -> f64 {
        let offered = sum(self.trouble(&self.requests_per_second)) as f64;
        let accepted = sum(self.trouble(&self.accepted_per_second)) as f64;
        if accepted > 0.0 {
            offered / accepted
        } else {
            offered
        }
    }

    /// Rows dropped, by reason.
    pub fn rows_dropped(&self) -> BTreeMap<&'static str, u64> {
        self.stats
            .dropped
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str(), n))
            .collect()
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::json!({
            "clients": self.clients,
            "scenario": self.scenario.as_str(),
            "statements": self.statements,
            "events_emitted": self.stats.events_emitted,
            "rows_produced": self.stats.rows_produced,
            "rows_exported": self.stats.rows_exported,
            "rows_dropped": self.rows_dropped(),
            "endpoint_requests": self.endpoint_requests(),
            "outage_requests_per_client": self.outage_requests_per_client(),
            "recovery_peak_to_mean": self.recovery_peak_to_mean(),
            "requests_per_second": self.requests_per_second,
            "wall_ms": u64::try_from(self.wall.as_millis()).unwrap_or(u64::MAX),
        });
        if self.scenario == Scenario::Storm {
            out["storm_offered_to_accepted"] = serde_json::json!(self.storm_offered_to_accepted());
            out["storm_capacity_per_second"] = serde_json::json!(self.storm_capacity);
        }
        out
    }
}

/// The simulated endpoint: counts requests per second of the paused clock and answers as
/// the scenario says.
struct Endpoint {
    start: Instant,
    scenario: Scenario,
    seconds: usize,
    requests: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
    /// The storm's capacity, set when the storm begins (a hundredth of the healthy rate).
    capacity: Mutex<Option<u64>>,
}

impl Endpoint {
    fn new(scenario: Scenario) -> Self {
        let seconds = secs(HEALTHY + TROUBLE + RECOVERY) + 60;
        Self {
            start: Instant::now(),
            scenario,
            seconds,
            requests: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            accepted: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            capacity: Mutex::new(None),
        }
    }

    fn answer(&self, req: &HttpRequest) -> HttpResponse {
        let at = self.start.elapsed();
        let second = secs(at).min(self.seconds - 1);
        self.requests[second].fetch_add(1, Ordering::Relaxed);
        let trouble = at >= HEALTHY && at < HEALTHY + TROUBLE;
        let reply = |status: u16, headers: Vec<(String, String)>, body: Vec<u8>| HttpResponse {
            status,
            headers,
            body,
            body_truncated: false,
        };
        if trouble {
            match self.scenario {
                Scenario::Outage => return reply(503, vec![], Vec::new()),
                Scenario::Storm => {
                    let capacity = *self
                        .capacity
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| {
                            let healthy: u64 = self.requests[..secs(HEALTHY)]
                                .iter()
                                .map(|r| r.load(Ordering::Relaxed))
                                .sum();
                            (healthy / HEALTHY.as_secs() / 100).max(1)
                        });
                    if self.accepted[second].load(Ordering::Relaxed) >= capacity {
                        return reply(
                            429,
                            vec![("retry-after".into(), STORM_RETRY_AFTER_SECS.to_string())],
                            Vec::new(),
                        );
                    }
                }
            }
        }
        self.accepted[second].fetch_add(1, Ordering::Relaxed);
        let logs = std::str::from_utf8(&req.body)
            .map_or(0, |b| b.matches("frontend_log_event_id").count());
        let body = format!(
            r#"{{"errors":[],"numSuccess":0,"numProtoSuccess":{logs},"numRealtimeSuccess":0}}"#
        );
        reply(200, vec![], body.into_bytes())
    }
}

/// The in-process transport every client sends through.
struct InProcess(Arc<Endpoint>);

impl HttpTransport for InProcess {
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        let answer = self.0.answer(&req);
        Box::pin(async move {
            // A round trip of a few milliseconds.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(answer)
        })
    }
}

/// A random duration in `[d/2, 3d/2)`.
fn around(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(ms / 2 + telemetry_types::random::random_up_to(ms.saturating_sub(1)))
}

fn client(endpoint: &Arc<Endpoint>) -> TelemetryClientProvider {
    let mut o = ProviderOptions::new("fleet-sim", "1.0.0", ClientPreset::jdbc());
    o.config.enabled = true;
    o.config.force_enable = true;
    o.config.allow_insecure_loopback = true;
    o.runtime = Some(tokio::runtime::Handle::current());
    o.transport = Some(Arc::new(InProcess(endpoint.clone())));
    o.switch = Some(DisableSwitch::Unset);
    o.read_env = false;
    TelemetryClientProvider::new(o)
}

/// Adds one client's totals to the fleet's.
fn add(total: &mut ProviderStats, one: &ProviderStats) {
    total.events_emitted += one.events_emitted;
    total.rows_produced += one.rows_produced;
    total.rows_exported += one.rows_exported;
    total.dropped.merge(&one.dropped);
    total.export_requests += one.export_requests;
    total.export_retries += one.export_retries;
    total.breaker_openings += one.breaker_openings;
}

/// Runs the fleet; returns what the endpoint saw and what the clients counted.
pub fn run(config: &FleetConfig) -> std::io::Result<FleetReport> {
    let wall = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let (statements, stats, endpoint) = rt.block_on(async {
        let endpoint = Arc::new(Endpoint::new(config.scenario));
        let end = endpoint.start + HEALTHY + TROUBLE + RECOVERY;
        let statements = Arc::new(AtomicU64::new(0));
        let providers: Vec<_> = (0..config.clients).map(|_| client(&endpoint)).collect();
        let tasks: Vec<_> = providers
            .iter()
            .map(|p| {
                let conn = p.connect(ConnectionOptions::new("fleet.example"));
                let (every, statements) = (config.statement_every, statements.clone());
                tokio::spawn(async move {
                    conn.opened(Duration::from_millis(20));
                    loop {
                        tokio::time::sleep(around(every)).await;
                        if Instant::now() >= end {
                            break;
                        }
                        let st =
                            conn.statement(StatementType::Query, OperationType::ExecuteStatement);
                        st.attach_id("01f0-fleet");
                        st.complete();
                        statements.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.close();
                    let _ = conn.flush(Duration::from_secs(10)).await;
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let mut stats = ProviderStats::default();
        for p in &providers {
            let _ = p.shutdown(Duration::from_secs(5)).await;
            add(&mut stats, &p.stats());
        }
        (statements.load(Ordering::Relaxed), stats, endpoint)
    });
    let load = |v: &[AtomicU64]| -> Vec<u64> {
        let mut out: Vec<u64> = v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        while out.len() > secs(HEALTHY + TROUBLE + RECOVERY) && out.last() == Some(&0) {
            out.pop();
        }
        out
    };
    let storm_capacity = *endpoint.capacity.lock().unwrap_or_else(|e| e.into_inner());
    Ok(FleetReport {
        clients: config.clients,
        scenario: config.scenario,
        statements,
        stats,
        requests_per_second: load(&endpoint.requests),
        accepted_per_second: load(&endpoint.accepted),
        storm_capacity,
        wall: wall.elapsed(),
    })
}

/// Draws the endpoint's requests per second over time, the phases marked, as an SVG.
pub fn plot(report: &FleetReport, path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let series = &report.requests_per_second;
    let accepted = &report.accepted_per_second;
    let top = series.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "{} clients, {}: requests per second at the endpoint",
        report.clients,
        report.scenario.as_str()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..series.len().max(1) as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests / s")
        .disable_mesh()
        .draw()
        .map_err(|e| err(&e))?;
    let trouble = (
        HEALTHY.as_secs() as f64,
        (HEALTHY + TROUBLE).as_secs() as f64,
    );
    let label = match report.scenario {
        Scenario::Outage => "outage (503)",
        Scenario::Storm => "storm (429)",
    };
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(trouble.0, 0.0), (trouble.1, top)],
            RGBColor(255, 220, 200).filled(),
        )))
        .map_err(|e| err(&e))?
        .label(label)
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 15, y + 5)],
                RGBColor(255, 220, 200).filled(),
            )
        });
    chart
        .draw_series(LineSeries::new(
            series
                .iter()
                .enumerate()
                .map(|(s, n)| (s as f64, *n as f64)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("received")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            accepted
                .iter()
                .enumerate()
                .map(|(s, n)| (s as f64, *n as f64)),
            &GREEN,
        ))
        .map_err(|e| err(&e))?
        .label("accepted")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], GREEN));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
