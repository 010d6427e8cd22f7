//! `telemetry-sim`: simulates a driver workload through the public `telemetry-client` API and
//! prints what happened to its telemetry. Without `--host` it starts an embedded mock
//! workspace on 127.0.0.1 and reports to it. Exits 0 whatever the endpoint does; only bad
//! arguments exit 2.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use serde_json::json;
use telemetry_client::{ClientPreset, DisableSwitch, DropUnit, Host, JsonLinesAudit, Percentiles};
use telemetry_client::{ProviderOptions, ProviderStats, TelemetryClientProvider};
use telemetry_tests::mock::{Fault, MockWorkspace};
use telemetry_tests::schema::RowKind;
use telemetry_tests::workload::{self, Workload, WorkloadReport};

/// Simulates a driver workload through the public telemetry-client API and prints what
/// happened to its telemetry. Without --host it reports to an embedded mock workspace on
/// 127.0.0.1. Exits 0 whatever the endpoint does; only bad arguments exit 2.
#[derive(Debug, Parser)]
#[command(name = "telemetry-sim", version)]
struct Cli {
    /// Report to this workspace (https://..., or http://127.0.0.1:PORT / http://localhost:PORT
    /// for local servers); default: an embedded mock workspace.
    #[arg(long)]
    host: Option<String>,
    /// Credentials; none: the unauthenticated endpoint (the embedded workspace uses
    /// 'sim-token' unless --no-auth).
    #[arg(long, env = "DATABRICKS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Send without credentials (embedded workspace).
    #[arg(long)]
    no_auth: bool,
    /// Feature-flag preset: adbc, jdbc, nodejs, python, go.
    #[arg(long, default_value = "adbc", value_parser = parse_preset)]
    preset: ClientPreset,
    /// Feature-flag client type (default: the preset's).
    #[arg(long)]
    client_type: Option<String>,
    /// Feature-flag name (default: the preset's).
    #[arg(long)]
    flag_name: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Open the connections one after another, each closed before the next (a serverless
    /// driver), instead of all at once.
    #[arg(long)]
    sequential: bool,
    /// Statements per connection.
    #[arg(long, default_value_t = 50)]
    statements: usize,
    /// CloudFetch chunks per statement.
    #[arg(long, default_value_t = 3)]
    chunks: usize,
    /// Fraction of statements ending in an error, 0..=1.
    #[arg(long, default_value_t = 0.05, value_parser = parse_rate)]
    error_rate: f64,
    /// Simulated driver work per statement, microseconds (busy wait). Default 0, which
    /// measures the telemetry calls alone; with --compare the default is 50 (a fast statement
    /// against a warm warehouse), since an overhead relative to no work at all means nothing.
    #[arg(long)]
    work_us: Option<u64>,
    /// Queries only, instead of every kind of statement (failed executes, cancels, drops,
    /// early closes, chunk failures, metadata look-ups, volume operations).
    #[arg(long)]
    queries_only: bool,
    /// Connections whose first session open fails (a connection-failure row each).
    #[arg(long, default_value_t = 1)]
    failed_opens: usize,
    /// CloudFetch download threads per connection (0: chunks reported on the connection's
    /// thread, which measures telemetry without the hand-off's own cost).
    #[arg(long, default_value_t = 2)]
    download_threads: usize,
    /// Statements per millisecond per connection, paced by sleeping (0: unpaced).
    #[arg(long, default_value_t = 0)]
    pace_per_ms: usize,
    /// Use a plain token provider instead of one that blocks in `block_in_place` the way the
    /// ADBC driver's OAuth providers do.
    #[arg(long)]
    non_blocking_auth: bool,
    /// Pad error messages and statement ids to N bytes (0: short ones): shows that
    /// megabyte strings stay within the byte budget.
    #[arg(long, default_value_t = 0)]
    string_bytes: usize,
    /// Rows per export request.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Flush interval, milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval_ms: u64,
    /// Close timeout, milliseconds.
    #[arg(long, default_value_t = 2000)]
    close_timeout_ms: u64,
    /// The warehouse's HTTP path (its `?o=<id>` or `/o/<id>/` is the workspace id).
    #[arg(long, default_value = "/sql/1.0/warehouses/sim?o=1234567890123456")]
    http_path: String,
    /// Run the workload with telemetry off.
    #[arg(long)]
    no_telemetry: bool,
    /// Write every export request's body, exactly as sent, to FILE (one JSON line each).
    #[arg(long)]
    audit: Option<std::path::PathBuf>,
    /// Send nothing (no flag look-up, no export): with --audit, FILE shows what would have
    /// been sent.
    #[arg(long)]
    dry_run: bool,
    /// Embedded workspace only: none, fail500, fail503, fail429, hang, close, slow, flag-off,
    /// flag-malformed, flag-error.
    #[arg(long, default_value = "none", value_parser = parse_fault)]
    fault: Fault,
    /// Run the workload with telemetry off and on, alternating, and print the overhead.
    #[arg(long)]
    compare: bool,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Only serve the mock workspace (prints `listening on <url>`, then runs until killed),
    /// so that a client in another process can report to it (see `--host`).
    #[arg(long)]
    serve: bool,
    /// With --serve: check each request's envelope and count its logs, without checking each
    /// log against the server's schema (about 10 us a log of the server's CPU): an endpoint
    /// for throughput benchmarks, whose own work then takes little of a small machine.
    #[arg(long, requires = "serve")]
    count_only: bool,
    /// Simulate a fleet of N client processes (each its own provider and connection, a
    /// statement every 10 s) against a simulated endpoint, on a paused clock, in process:
    /// 2 minutes healthy, 10 minutes of --scenario, 5 minutes healthy.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    fleet: Option<u64>,
    /// The fleet's trouble: outage (503 to everything) or storm (a hundredth of the healthy
    /// rate accepted, 429 with Retry-After to the rest).
    #[arg(long, default_value = "outage", requires = "fleet")]
    scenario: telemetry_tests::fleet::Scenario,
    /// With --fleet: write the endpoint's requests per second over time to FILE (SVG).
    #[arg(long, requires = "fleet")]
    plot: Option<std::path::PathBuf>,
}

fn parse_rate(v: &str) -> Result<f64, String> {
    let r: f64 = v.parse().map_err(|_| format!("not a number: {v}"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err("must be between 0 and 1".into())
    }
}

fn parse_preset(v: &str) -> Result<ClientPreset, String> {
    ClientPreset::by_name(v).ok_or_else(|| format!("unknown preset {v}"))
}

fn parse_fault(v: &str) -> Result<Fault, String> {
    Fault::parse(v).ok_or_else(|| format!("unknown mode {v}"))
}

#[derive(Debug, Clone)]
struct Args {
    host: Option<String>,
    token: Option<String>,
    no_auth: bool,
    client_type: String,
    flag_name: String,
    workload: Workload,
    batch_size: usize,
    flush_interval_ms: u64,
    close_timeout_ms: u64,
    http_path: String,
    no_telemetry: bool,
    audit: Option<Arc<JsonLinesAudit>>,
    dry_run: bool,
    fault: Fault,
    compare: bool,
    rounds: usize,
    json: bool,
    serve: bool,
    count_only: bool,
    fleet: Option<(
        usize,
        telemetry_tests::fleet::Scenario,
        Option<std::path::PathBuf>,
    )>,
}

/// The arguments, checked beyond what clap checks alone.
fn parse_args(raw: Vec<String>) -> Result<Args, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("telemetry-sim".to_owned()).chain(raw))?;
    let invalid = |msg: &str| Cli::command().error(clap::error::ErrorKind::ValueValidation, msg);
    if cli.host.is_some() && cli.fault != Fault::None {
        return Err(invalid(
            "--fault works only with the embedded workspace (no --host)",
        ));
    }
    if let Some(h) = &cli.host {
        // What the library would refuse is refused here, with its reason.
        if let Err(e) = Host::parse(h, true) {
            return Err(invalid(&format!(
                "--host {h:?}: {e} (https://..., http://127.0.0.1:PORT or http://localhost:PORT)"
            )));
        }
    }
    let audit = match &cli.audit {
        Some(path) => match JsonLinesAudit::create(path) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                return Err(invalid(&format!(
                    "--audit {}: cannot create it: {e}",
                    path.display()
                )));
            }
        },
        None => None,
    };
    let preset = cli.preset;
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(Args {
        host: cli.host,
        token: cli.token.filter(|t| !t.is_empty()),
        no_auth: cli.no_auth,
        client_type: cli.client_type.unwrap_or(preset.client_type),
        flag_name: cli.flag_name.unwrap_or(preset.flag_name),
        workload: Workload {
            connections: as_usize(cli.connections),
            statements: cli.statements,
            chunks: cli.chunks,
            error_rate: cli.error_rate,
            work_us: cli.work_us.unwrap_or(if cli.compare { 50 } else { 0 }),
            sequential: cli.sequential,
            string_bytes: cli.string_bytes,
            mixed: !cli.queries_only,
            failed_opens: cli.failed_opens,
            blocking_auth: !cli.non_blocking_auth,
            download_threads: cli.download_threads,
            pace_per_ms: cli.pace_per_ms,
            token: None,
        },
        batch_size: as_usize(cli.batch_size),
        flush_interval_ms: cli.flush_interval_ms,
        close_timeout_ms: cli.close_timeout_ms,
        http_path: cli.http_path,
        no_telemetry: cli.no_telemetry,
        audit,
        dry_run: cli.dry_run,
        fault: cli.fault,
        compare: cli.compare,
        rounds: as_usize(cli.rounds),
        json: cli.json,
        serve: cli.serve,
        count_only: cli.count_only,
        fleet: cli.fleet.map(|n| (as_usize(n), cli.scenario, cli.plot)),
    })
    .and_then(|args| {
        // The settings are the library's to judge: a config it refuses is refused up front.
        match TelemetryClientProvider::try_new(options(&args, true)) {
            Ok(_) => Ok(args),
            Err(e) => Err(invalid(&e.to_string())),
        }
    })
}

fn provider(args: &Args, enabled: bool) -> TelemetryClientProvider {
    TelemetryClientProvider::new(options(args, enabled))
}

fn options(args: &Args, enabled: bool) -> ProviderOptions {
    let mut o = ProviderOptions::new(
        "telemetry-sim",
        env!("CARGO_PKG_VERSION"),
        ClientPreset::new(args.client_type.clone(), args.flag_name.clone()),
    );
    o.config.enabled = enabled;
    let agg = &mut o.config.aggregation;
    agg.batch_size = args.batch_size;
    agg.max_pending_rows = agg.max_pending_rows.max(args.batch_size * 5);
    agg.flush_interval = Duration::from_millis(args.flush_interval_ms);
    agg.close_timeout = Duration::from_millis(args.close_timeout_ms);
    o.config.allow_insecure_loopback = true;
    o.config.dry_run = args.dry_run;
    o.switch = Some(DisableSwitch::from_env());
    if let Some(audit) = &args.audit {
        o.audit = Some(audit.clone());
    }
    o
}

/// Prints progress to stderr once a second while a long run goes on.
fn progress(
    provider: &TelemetryClientProvider,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let provider = provider.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut next = Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if started.elapsed() >= next {
                let s = provider.stats();
                eprintln!(
                    "[{:>4.1}s] events {}  rows exported {}  dropped {}",
                    started.elapsed().as_secs_f64(),
                    s.events_emitted,
                    s.rows_exported,
                    s.total_rows_dropped()
                );
                next += Duration::from_secs(1);
            }
        }
    })
}

/// What one run did: the driver's side, the provider's stats, and the calls that reported
/// nothing during it (by reason; the process-wide counts' difference over the run).
struct RunOutcome {
    report: WorkloadReport,
    stats: ProviderStats,
    not_reported: BTreeMap<String, u64>,
}

fn run_once(args: &Args, host: &str, enabled: bool, show_progress: bool) -> RunOutcome {
    let not_reported_before = telemetry_client::calls_not_reported();
    let p = provider(args, enabled);
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = show_progress.then(|| progress(&p, stop.clone()));
    let report = workload::run(&p, host, &args.http_path, &args.workload);
    // Process exit: where a driver waits for what is still in flight (bounded).
    let _ = p.shutdown_blocking(
        Duration::from_millis(args.close_timeout_ms).saturating_add(Duration::from_secs(1)),
    );
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = monitor {
        let _ = m.join();
    }
    let not_reported = telemetry_client::calls_not_reported()
        .into_iter()
        .map(|(reason, n)| {
            let before = not_reported_before.get(&reason).copied().unwrap_or(0);
            (reason.to_string(), n.saturating_sub(before))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    RunOutcome {
        report,
        stats: p.stats(),
        not_reported,
    }
}

/// CPU time this process has used so far, all threads, user and system.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is handed and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident memory of this process, KiB (Linux `VmHWM`; `None` elsewhere).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `{p50, p95, p99}` in milliseconds, or null when nothing was recorded.
fn pct_json(p: Option<Percentiles>) -> serde_json::Value {
    p.map_or(
        serde_json::Value::Null,
        |p| json!({"p50": ms(p.p50), "p95": ms(p.p95), "p99": ms(p.p99), "count": p.count}),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() -> ExitCode {
    // A command-line tool ends quietly when its reader goes away (`telemetry-sim | head`):
    // the default action of SIGPIPE, which Rust's runtime replaces with an error on write.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        // Help and version print and exit 0; bad arguments print and exit 2.
        Err(e) => e.exit(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();

    // The embedded workspace runs on its own small runtime, apart from the driver's threads.
    let mock_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telemetry-sim: cannot start a runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    if let Some((clients, scenario, plot)) = &args.fleet {
        return fleet(*clients, *scenario, plot.as_deref(), args.json);
    }
    let mut args = args;
    if args.serve {
        return serve(&mock_rt, &args.flag_name, args.count_only);
    }
    let mock = if args.host.is_none() {
        match mock_rt.block_on(MockWorkspace::start(&args.flag_name)) {
            Ok(m) => {
                m.set_fault(args.fault.clone());
                if args.token.is_none() && !args.no_auth {
                    args.token = Some("sim-token".into());
                }
                Some(m)
            }
            Err(e) => {
                eprintln!("telemetry-sim: cannot start the embedded workspace: {e}");
                return ExitCode::SUCCESS;
            }
        }
    } else {
        None
    };
    if args.no_auth {
        args.token = None;
    }
    args.workload.token = args.token.clone();
    let host = args.host.clone().unwrap_or_else(|| {
        mock.as_ref()
            .map(MockWorkspace::base_url)
            .unwrap_or_default()
    });

    let mut compare = None;
    if args.compare {
        let (mut ratios, mut on_eps) = (Vec::new(), Vec::new());
        let (mut off_ms, mut on_ms) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let off = run_once(&args, &host, false, false).report;
            let on = run_once(&args, &host, true, false).report;
            // Both sides timed the same way: the driver's work up to its connections' close
            // (the close and the wait for the final flush are not part of it).
            let (a, b) = (off.work.as_secs_f64(), on.work.as_secs_f64());
            ratios.push(b / a.max(1e-9) - 1.0);
            on_eps.push(on.events as f64 / b.max(1e-9));
            off_ms.push(a * 1000.0);
            on_ms.push(b * 1000.0);
            eprintln!(
                "round {}: off {:.1} ms, on {:.1} ms (close {:.1} ms)",
                round + 1,
                a * 1000.0,
                b * 1000.0,
                on.close_max.as_secs_f64() * 1000.0
            );
        }
        let spread = ratios.iter().cloned().fold(f64::INFINITY, f64::min)
            ..=ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let m = median(&mut ratios);
        println!(
            "compare: overhead {:+.2} % median over {} rounds (spread {:+.2} % .. {:+.2} %), {:.0} events/s end to end",
            m * 100.0,
            args.rounds,
            spread.start() * 100.0,
            spread.end() * 100.0,
            median(&mut on_eps)
        );
        compare = Some(json!({
            "rounds": args.rounds,
            "overhead_pct_median": m * 100.0,
            "overhead_pct_min": spread.start() * 100.0,
            "overhead_pct_max": spread.end() * 100.0,
            "off_ms_median": median(&mut off_ms),
            "on_ms_median": median(&mut on_ms),
            "events_per_sec_median": median(&mut on_eps),
        }));
    }

    let cpu_before = process_cpu();
    let RunOutcome {
        report,
        stats,
        not_reported,
    } = run_once(&args, &host, !args.no_telemetry, true);
    let cpu = process_cpu().saturating_sub(cpu_before);
    let statements = (args.workload.connections * args.workload.statements).max(1);
    let cpu_us_per_statement = cpu.as_secs_f64() * 1e6 / statements as f64;
    let server_rows = mock.as_ref().map(MockWorkspace::rows_received);
    let dropped_of = |unit: DropUnit| -> BTreeMap<&str, u64> {
        stats
            .dropped
            .iter()
            .filter(|(reason, _)| reason.unit() == unit)
            .map(|(reason, n)| (reason.as_str(), n))
            .collect()
    };
    let (events_dropped, dropped) = (dropped_of(DropUnit::Event), dropped_of(DropUnit::Row));
    // Why telemetry was off, where it was: by connection (a choice or a setting) and by host
    // (the flag look-up failed, or the server said no).
    let off_connections: BTreeMap<&str, u64> = stats
        .disabled_connections
        .iter()
        .map(|(r, n)| (r.as_str(), *n))
        .collect();
    let flag_failed: BTreeMap<String, u64> = stats
        .hosts_flag_failed
        .iter()
        .map(|(f, n)| (f.to_string(), *n))
        .collect();
    println!(
        "telemetry-sim against {}{}",
        host,
        if mock.is_some() {
            " (embedded mock workspace)"
        } else {
            ""
        }
    );
    println!(
        "  workload: {} connections x {} statements x {} chunks, error rate {}, {} us work",
        args.workload.connections,
        args.workload.statements,
        args.workload.chunks,
        args.workload.error_rate,
        args.workload.work_us
    );
    println!(
        "  driver calls      {:>10}   expected rows {}",
        report.events, report.expected_rows
    );
    println!("  events emitted    {:>10}", stats.events_emitted);
    println!(
        "  calls not reported{:>10}   {:?}",
        not_reported.values().sum::<u64>(),
        not_reported
    );
    println!(
        "  events dropped    {:>10}   {:?}",
        stats.events_dropped(),
        events_dropped
    );
    println!("  rows produced     {:>10}", stats.rows_produced);
    println!("  rows exported     {:>10}", stats.rows_exported);
    println!(
        "  rows dropped      {:>10}   {:?}",
        stats.total_rows_dropped(),
        dropped
    );
    println!(
        "  export requests   {:>10}   retries {}",
        stats.export_requests, stats.export_retries
    );
    println!("  breaker openings  {:>10}", stats.breaker_openings);
    let pct = |p: Option<Percentiles>| {
        p.map_or_else(
            || "-".to_owned(),
            |p| {
                format!(
                    "p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
                    ms(p.p50),
                    ms(p.p95),
                    ms(p.p99)
                )
            },
        )
    };
    println!(
        "  latency           statement {}; first result {}; chunk {}",
        pct(stats.latency.statement),
        pct(stats.latency.first_result),
        pct(stats.latency.chunk)
    );
    if !off_connections.is_empty() || !flag_failed.is_empty() || stats.hosts_flag_refused > 0 {
        println!(
            "  telemetry off     connections {:?}; hosts whose flag look-up failed {:?}; hosts the server said no to {}",
            off_connections, flag_failed, stats.hosts_flag_refused
        );
    }
    if stats.statements_open_at_close > 0 {
        println!(
            "  statements open at close {:>3}   (their ends come too late: counted, not sent)",
            stats.statements_open_at_close
        );
    }
    let by_kind: BTreeMap<&str, u64> = mock
        .as_ref()
        .map(|m| {
            m.rows_by_kind()
                .into_iter()
                .map(|(k, n)| (k.as_str(), n))
                .collect()
        })
        .unwrap_or_default();
    if let (Some(m), Some(rows)) = (&mock, server_rows) {
        println!(
            "  server received   {:>10}   rejected requests {}, privacy violations {}",
            rows,
            m.rejected(),
            m.privacy_violations()
        );
        let missing: Vec<&str> = RowKind::ALL
            .iter()
            .map(|k| k.as_str())
            .filter(|k| !by_kind.contains_key(k))
            .collect();
        println!(
            "  rows by kind      {:?}{}",
            by_kind,
            if missing.is_empty() {
                "  (every row kind, each valid against the server's schema)".to_owned()
            } else {
                format!("  (none of: {})", missing.join(", "))
            }
        );
        println!(
            "  server saw        {:>10} export requests, {} flag requests",
            m.export_requests(),
            m.flag_requests()
        );
    }
    let peak = peak_rss_kib();
    println!(
        "  process CPU {:.1} ms, {:.2} us per statement (all threads, driver work included{})",
        cpu.as_secs_f64() * 1000.0,
        cpu_us_per_statement,
        if mock.is_some() {
            ", and the embedded workspace's: use --serve in another process to exclude it"
        } else {
            ""
        }
    );
    println!(
        "  of which the connections' own threads (and their download threads) {:.1} ms, the \
         rest of the process (telemetry's background runtime{}) {:.1} ms",
        report.driver_cpu.as_secs_f64() * 1000.0,
        if mock.is_some() {
            ", and the embedded workspace"
        } else {
            ""
        },
        cpu.saturating_sub(report.driver_cpu).as_secs_f64() * 1000.0
    );
    println!(
        "  elapsed {:.1} ms, slowest close {:.1} ms, peak memory {} KiB",
        report.elapsed.as_secs_f64() * 1000.0,
        report.close_max.as_secs_f64() * 1000.0,
        peak.map_or_else(|| "?".to_owned(), |k| k.to_string())
    );
    if args.json {
        let mut out = json!({
            "events_emitted": stats.events_emitted,
            "driver_calls": report.events,
            "calls_not_reported": not_reported,
            "expected_rows": report.expected_rows,
            "rows_produced": stats.rows_produced,
            "rows_exported": stats.rows_exported,
            "rows_dropped": dropped,
            "events_dropped": events_dropped,
            "statement_latency_percentiles_ms": pct_json(stats.latency.statement),
            "first_result_latency_percentiles_ms": pct_json(stats.latency.first_result),
            "chunk_latency_percentiles_ms": pct_json(stats.latency.chunk),
            "telemetry_off": {
                "connections": off_connections,
                "hosts_flag_failed": flag_failed,
                "hosts_flag_refused": stats.hosts_flag_refused,
            },
            "export_requests": stats.export_requests,
            "export_retries": stats.export_retries,
            "breaker_openings": stats.breaker_openings,
            "statements_open_at_close": stats.statements_open_at_close,
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "close_ms": report.close_max.as_millis() as u64,
            "peak_rss_kib": peak,
            "cpu_ms": cpu.as_secs_f64() * 1000.0,
            "cpu_us_per_statement": cpu_us_per_statement,
            "driver_threads_cpu_ms": report.driver_cpu.as_secs_f64() * 1000.0,
        });
        if let Some(rows) = server_rows {
            out["server_rows_received"] = json!(rows);
            out["server_rows_by_kind"] = json!(by_kind);
            out["server_rejected"] = json!(mock.as_ref().map_or(0, MockWorkspace::rejected));
            out["server_privacy_violations"] =
                json!(mock.as_ref().map_or(0, MockWorkspace::privacy_violations));
            out["server_export_requests"] =
                json!(mock.as_ref().map_or(0, MockWorkspace::export_requests));
            out["server_flag_requests"] =
                json!(mock.as_ref().map_or(0, MockWorkspace::flag_requests));
        }
        if let Some(c) = compare {
            out["compare"] = c;
        }
        println!("{out}");
    }
    drop(mock);
    mock_rt.shutdown_background();
    ExitCode::SUCCESS
}

/// Serves the mock workspace until the process is killed.
/// `--fleet`: runs the fleet, prints its summary (and JSON, and the plot).
fn fleet(
    clients: usize,
    scenario: telemetry_tests::fleet::Scenario,
    plot: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    use telemetry_tests::fleet;
    let report = match fleet::run(&fleet::FleetConfig::new(clients, scenario)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("telemetry-sim: cannot start a runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let s = &report.stats;
    println!(
        "telemetry-sim fleet: {} clients, {} (2 min healthy, 10 min trouble, 5 min healthy), simulated in {:.1} s",
        report.clients,
        scenario.as_str(),
        report.wall.as_secs_f64()
    );
    println!("  statements        {:>10}", report.statements);
    println!("  rows produced     {:>10}", s.rows_produced);
    println!("  rows exported     {:>10}", s.rows_exported);
    println!(
        "  rows dropped      {:>10}   {:?}",
        s.total_rows_dropped(),
        report.rows_dropped()
    );
    println!("  endpoint requests {:>10}", report.endpoint_requests());
    println!(
        "  during the trouble: {:.2} requests per client",
        report.outage_requests_per_client()
    );
    println!(
        "  recovery peak / healthy mean (1-second counts): {:.2}",
        report.recovery_peak_to_mean()
    );
    if scenario == fleet::Scenario::Storm {
        println!(
            "  storm: offered / accepted {:.2} (capacity {} requests/s)",
            report.storm_offered_to_accepted(),
            report.storm_capacity.unwrap_or(0)
        );
    }
    if let Some(path) = plot {
        match fleet::plot(&report, path) {
            Ok(()) => println!("  plot written to {}", path.display()),
            Err(e) => eprintln!("telemetry-sim: cannot write the plot: {e}"),
        }
    }
    if json {
        println!("{}", report.to_json());
    }
    ExitCode::SUCCESS
}

fn serve(rt: &tokio::runtime::Runtime, flag_name: &str, count_only: bool) -> ExitCode {
    match rt.block_on(MockWorkspace::start(flag_name)) {
        Ok(mock) => {
            use std::io::Write;
            // It serves until killed: it validates (or, count only, checks the envelope) and
            // counts, but keeps no request.
            if count_only {
                mock.count_without_checking();
            } else {
                mock.keep_counts_only();
            }
            println!("listening on {}", mock.base_url());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Err(e) => {
            eprintln!("telemetry-sim: cannot start the workspace: {e}");
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, clap::Error> {
        parse_args(s.split_whitespace().map(str::to_owned).collect())
    }

    #[test]
    fn arguments() {
        let a = parse(
            "--connections 8 --statements 10 --chunks 0 --error-rate 0.5 --fault fail500 --json",
        )
        .unwrap();
        assert_eq!(
            (
                a.workload.connections,
                a.workload.statements,
                a.workload.chunks
            ),
            (8, 10, 0)
        );
        assert_eq!(a.fault, Fault::Fail500);
        assert!(a.json);
        for bad in [
            "--connections x",
            "--error-rate 2",
            "--fault nope",
            "--bogus",
            "--host ftp://x",
            "--host https://a --fault hang",
            "--batch-size 0",
            "--host",
            "--count-only",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let served = parse("--serve --count-only").unwrap();
        assert!(served.serve && served.count_only);
        assert!(!parse("--serve").unwrap().count_only);
        // What the library would refuse is refused up front, with the library's reason.
        for (bad, reason) in [
            ("--batch-size 20000", "aggregation.batch_size"),
            ("--close-timeout-ms 99999999", "aggregation.close_timeout"),
            ("--host https://", "empty"),
            ("--host https://exa%mple.com", "not a valid host"),
            ("--host http://localhost:notaport", "port"),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains(reason), "{bad}: {err}");
        }
        let err = parse("--audit /nonexistent-dir/audit.jsonl").unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
        let a = parse("--http-path /sql/1.0/warehouses/w?o=77").unwrap();
        assert_eq!(a.http_path, "/sql/1.0/warehouses/w?o=77");
        assert!(parse("--host http://127.0.0.1:8080").is_ok());
        assert_eq!(
            parse("--help").unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert!(parse("--sequential --string-bytes 10").is_ok_and(|a| a.workload.sequential));
        let compare = parse("--compare").unwrap();
        assert_eq!(
            compare.workload.work_us, 50,
            "--compare measures against real work"
        );
        assert_eq!(parse("--compare --work-us 7").unwrap().workload.work_us, 7);
        let defaults = parse("").unwrap();
        assert_eq!(defaults.workload.work_us, 0);
        assert!(defaults.workload.mixed && defaults.workload.blocking_auth);
        assert_eq!(defaults.client_type, "ADBC");
        assert!(parse("--preset cobol").is_err());
        assert_eq!(parse("--preset jdbc").unwrap().client_type, "OSS_JDBC");
    }
}
