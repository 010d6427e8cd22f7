//! `telemetry-sim`: simulates a driver workload through the public `telemetry-client` API and
//! prints what happened to its telemetry. Without `--host` it starts an embedded mock
//! workspace on 127.0.0.1 and reports to it. Exits 0 whatever the endpoint does; only bad
//! arguments exit 2.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use telemetry_client::{ClientPreset, DisableSwitch};
use telemetry_client::{ProviderOptions, ProviderStats, TelemetryClientProvider};
use telemetry_tests::mock::{Fault, MockWorkspace};
use telemetry_tests::workload::{self, Workload, WorkloadReport};

const USAGE: &str = "usage: telemetry-sim [options]
  --host URL             report to this workspace (https://..., or http://127.0.0.1:PORT /
                         http://localhost:PORT for local servers); default: an embedded mock
  --token TOKEN          credentials (or env DATABRICKS_TOKEN); none: unauthenticated endpoint
                         (the embedded workspace uses token 'sim-token' unless --no-auth)
  --no-auth              send without credentials (embedded workspace)
  --client-type T        feature-flag client type (default OSS_JDBC)
  --flag-name NAME       feature-flag name (default the JDBC telemetry flag)
  --connections N        concurrent connections (default 4)
  --sequential           open the connections one after another, each closed before the next
                         (a serverless driver), instead of all at once
  --statements N         statements per connection (default 50)
  --chunks N             CloudFetch chunks per statement (default 3)
  --error-rate F         fraction of statements ending in an error (default 0.05)
  --string-bytes N       pad error messages and statement ids to N bytes (default 0: short);
                         shows that megabyte strings stay within the byte budget
  --work-us N            simulated driver work per statement, microseconds (default 0)
  --batch-size N         rows per export request (default 100)
  --flush-interval-ms N  flush interval (default 5000)
  --close-timeout-ms N   close timeout (default 2000)
  --no-telemetry         run the workload with telemetry off
  --fault MODE           embedded workspace only: none, fail500, fail503, fail429, hang, close,
                         slow, flag-off, flag-malformed, flag-error
  --compare              run the workload with telemetry off and on, alternating, and print
                         the overhead
  --rounds N             rounds of --compare (default 5)
  --json                 print one JSON object as the last line";

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
    no_telemetry: bool,
    fault: Fault,
    compare: bool,
    rounds: usize,
    json: bool,
}

fn parse_args(raw: Vec<String>) -> Result<Args, String> {
    let jdbc = ClientPreset::jdbc();
    let mut a = Args {
        host: None,
        token: std::env::var("DATABRICKS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        no_auth: false,
        client_type: jdbc.client_type,
        flag_name: jdbc.flag_name,
        workload: Workload::default(),
        batch_size: 100,
        flush_interval_ms: 5000,
        close_timeout_ms: 2000,
        no_telemetry: false,
        fault: Fault::None,
        compare: false,
        rounds: 5,
        json: false,
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: not a valid number: {v}"))
        }
        match flag.as_str() {
            "--host" => a.host = Some(value("--host")?),
            "--token" => a.token = Some(value("--token")?),
            "--no-auth" => a.no_auth = true,
            "--client-type" => a.client_type = value("--client-type")?,
            "--flag-name" => a.flag_name = value("--flag-name")?,
            "--connections" => {
                a.workload.connections = num("--connections", value("--connections")?)?
            }
            "--sequential" => a.workload.sequential = true,
            "--string-bytes" => {
                a.workload.string_bytes = num("--string-bytes", value("--string-bytes")?)?
            }
            "--statements" => a.workload.statements = num("--statements", value("--statements")?)?,
            "--chunks" => a.workload.chunks = num("--chunks", value("--chunks")?)?,
            "--error-rate" => {
                let r: f64 = num("--error-rate", value("--error-rate")?)?;
                if !(0.0..=1.0).contains(&r) {
                    return Err("--error-rate must be between 0 and 1".into());
                }
                a.workload.error_rate = r;
            }
            "--work-us" => a.workload.work_us = num("--work-us", value("--work-us")?)?,
            "--batch-size" => a.batch_size = num("--batch-size", value("--batch-size")?)?,
            "--flush-interval-ms" => {
                a.flush_interval_ms = num("--flush-interval-ms", value("--flush-interval-ms")?)?
            }
            "--close-timeout-ms" => {
                a.close_timeout_ms = num("--close-timeout-ms", value("--close-timeout-ms")?)?
            }
            "--no-telemetry" => a.no_telemetry = true,
            "--fault" => {
                let v = value("--fault")?;
                a.fault = Fault::parse(&v).ok_or_else(|| format!("--fault: unknown mode {v}"))?;
            }
            "--compare" => a.compare = true,
            "--rounds" => a.rounds = num("--rounds", value("--rounds")?)?,
            "--json" => a.json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.workload.connections == 0 || a.batch_size == 0 || a.flush_interval_ms == 0 || a.rounds == 0
    {
        return Err(
            "--connections, --batch-size, --flush-interval-ms and --rounds must be at least 1"
                .into(),
        );
    }
    if a.host.is_some() && a.fault != Fault::None {
        return Err("--fault works only with the embedded workspace (no --host)".into());
    }
    if let Some(h) = &a.host {
        let lower = h.to_ascii_lowercase();
        let local =
            lower.starts_with("http://127.0.0.1:") || lower.starts_with("http://localhost:");
        if !(lower.starts_with("https://") || local) {
            return Err(
                "--host must be https://..., http://127.0.0.1:PORT or http://localhost:PORT".into(),
            );
        }
    }
    Ok(a)
}

fn provider(args: &Args, enabled: bool) -> TelemetryClientProvider {
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
    o.switch = Some(DisableSwitch::from_env());
    TelemetryClientProvider::new(o)
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

fn run_once(
    args: &Args,
    host: &str,
    enabled: bool,
    show_progress: bool,
) -> (WorkloadReport, ProviderStats) {
    let p = provider(args, enabled);
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = show_progress.then(|| progress(&p, stop.clone()));
    let report = workload::run(
        &p,
        host,
        "/sql/1.0/warehouses/sim?o=1234567890123456",
        &args.workload,
    );
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = monitor {
        let _ = m.join();
    }
    (report, p.stats())
}

/// Peak resident memory of this process, KiB (Linux `VmHWM`; `None` elsewhere).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("telemetry-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
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
    let mut args = args;
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
            let (off, _) = run_once(&args, &host, false, false);
            let (on, _) = run_once(&args, &host, true, false);
            let (a, b) = (off.elapsed.as_secs_f64(), on.elapsed.as_secs_f64());
            ratios.push((b - on.close_max.as_secs_f64()) / a.max(1e-9) - 1.0);
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

    let (report, stats) = run_once(&args, &host, !args.no_telemetry, true);
    let server_rows = mock.as_ref().map(MockWorkspace::rows_received);
    let dropped: BTreeMap<&str, u64> = stats
        .dropped
        .iter()
        .map(|(reason, n)| (reason.as_str(), n))
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
    if let (Some(m), Some(rows)) = (&mock, server_rows) {
        println!(
            "  server received   {:>10}   rejected requests {}, privacy violations {}",
            rows,
            m.rejected(),
            m.privacy_violations()
        );
        println!(
            "  server saw        {:>10} export requests, {} flag requests",
            m.export_requests(),
            m.flag_requests()
        );
    }
    let peak = peak_rss_kib();
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
            "expected_rows": report.expected_rows,
            "rows_produced": stats.rows_produced,
            "rows_exported": stats.rows_exported,
            "rows_dropped": dropped,
            "export_requests": stats.export_requests,
            "export_retries": stats.export_retries,
            "breaker_openings": stats.breaker_openings,
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "close_ms": report.close_max.as_millis() as u64,
            "peak_rss_kib": peak,
        });
        if let Some(rows) = server_rows {
            out["server_rows_received"] = json!(rows);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
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
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("--host http://127.0.0.1:8080").is_ok());
        assert_eq!(parse("--help").unwrap_err(), "");
    }
}
