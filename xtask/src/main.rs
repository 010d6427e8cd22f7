//! Developer automation for the telemetry workspace.
//!
//! - `cargo xtask ci`: format check, clippy (warnings denied), docs (warnings denied), the
//!   whole test suite under line coverage, the per-crate coverage gate, the optional features
//!   (clippy and their tests), and doc tests.
//! - `cargo xtask coverage`: the test suite under coverage and the table only.
//! - `cargo xtask bench`: benchmarks and the simulator comparison, written to
//!   `target/bench-report.md`.
//!
//! Missing tools (`llvm-tools`, `cargo-llvm-cov`) are installed on first use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Line-coverage floor of each library crate, in percent. Crates not listed need [`DEFAULT_FLOOR`].
const FLOORS: &[(&str, f64)] = &[
    ("telemetry-breaker", 90.0),
    ("telemetry-flags", 90.0),
    ("telemetry-aggregator", 90.0),
    ("telemetry-export", 85.0),
    ("telemetry-client", 85.0),
];
const DEFAULT_FLOOR: f64 = 80.0;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("coverage") => coverage(),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci | coverage | bench [--quick]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(step: &str, cmd: &mut Command) -> Result {
    eprintln!("\n==> {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

fn ci() -> Result {
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo doc",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    coverage()?;
    // Features off by default: built, linted and their own tests run once here.
    run(
        "cargo clippy (optional features)",
        cargo().args([
            "clippy",
            "-p",
            "telemetry-client",
            "--all-targets",
            "--locked",
            "--features",
            "reqwest,native-roots,platform-verifier,testing,opentelemetry",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "tests of optional features",
        cargo().args([
            "test",
            "-p",
            "telemetry-client",
            "--locked",
            "--features",
            "reqwest,platform-verifier",
            "--lib",
            "optional_features",
        ]),
    )?;
    run(
        "tests of the OpenTelemetry bridge",
        cargo().args([
            "test",
            "-p",
            "telemetry-client",
            "--locked",
            "--features",
            "opentelemetry",
            "--lib",
            "otel",
        ]),
    )?;
    run(
        "the OpenTelemetry example (exits 1 if SQL text or a token reached the pipeline)",
        cargo().args([
            "run",
            "-q",
            "-p",
            "telemetry-client",
            "--locked",
            "--features",
            "opentelemetry",
            "--example",
            "opentelemetry",
        ]),
    )?;
    run(
        "cargo doc (the OpenTelemetry bridge)",
        cargo()
            .args([
                "doc",
                "-p",
                "telemetry-client",
                "--no-deps",
                "--locked",
                "--features",
                "opentelemetry",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "clippy of the breaker's tower layer",
        cargo().args([
            "clippy",
            "-p",
            "telemetry-breaker",
            "--all-targets",
            "--locked",
            "--features",
            "tower",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "tests of the breaker's tower layer",
        cargo().args([
            "test",
            "-p",
            "telemetry-breaker",
            "--locked",
            "--features",
            "tower",
        ]),
    )?;
    run(
        "clippy without the default transport",
        cargo().args([
            "clippy",
            "-p",
            "telemetry-client",
            "--lib",
            "--tests",
            "--locked",
            "--no-default-features",
            "--features",
            "reqwest",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "tests without the default transport",
        cargo().args([
            "test",
            "-p",
            "telemetry-client",
            "--locked",
            "--no-default-features",
            "--features",
            "reqwest",
            "--lib",
            "without_default_transport",
        ]),
    )?;
    run(
        "doc tests",
        cargo().args(["test", "--workspace", "--doc", "--locked"]),
    )?;
    eprintln!("\nci: all steps passed");
    Ok(())
}

fn ensure_llvm_cov() -> Result {
    let ok = cargo()
        .args(["llvm-cov", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    run(
        "rustup component add llvm-tools",
        Command::new("rustup").args(["component", "add", "llvm-tools"]),
    )?;
    run(
        "cargo install cargo-llvm-cov",
        cargo().args(["install", "cargo-llvm-cov", "--locked"]),
    )
}

/// Runs every unit and integration test under coverage, prints the per-crate table and fails
/// when a library crate is under its floor.
fn coverage() -> Result {
    ensure_llvm_cov()?;
    let json = root().join("target").join("coverage.json");
    run(
        "tests under coverage (cargo llvm-cov)",
        cargo()
            .args([
                "llvm-cov",
                "--workspace",
                "--locked",
                "--json",
                "--summary-only",
                "--output-path",
            ])
            .arg(&json),
    )?;
    let text =
        std::fs::read_to_string(&json).map_err(|e| format!("reading {}: {e}", json.display()))?;
    let table = crate_coverage(&text, &root())?;
    report(&table)
}

/// Sums covered / total lines per library crate (a top-level `telemetry-*` folder of the
/// workspace at `root`) from an llvm-cov JSON export.
fn crate_coverage(json: &str, root: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let root = root.to_string_lossy().replace('\\', "/");
    let root = root.trim_end_matches('/');
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("coverage json: {e}"))?;
    let files = v["data"][0]["files"]
        .as_array()
        .ok_or("coverage json: no data[0].files")?;
    let mut table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in files {
        let name = f["filename"]
            .as_str()
            .unwrap_or_default()
            .replace('\\', "/");
        let Some(rest) = name.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let Some(krate) = rest
            .split('/')
            .next()
            .filter(|k| k.starts_with("telemetry-"))
        else {
            continue;
        };
        let lines = &f["summary"]["lines"];
        let entry = table.entry(krate.to_owned()).or_default();
        entry.0 += lines["covered"].as_u64().unwrap_or(0);
        entry.1 += lines["count"].as_u64().unwrap_or(0);
    }
    if table.is_empty() {
        return Err("coverage json: no library crate found".into());
    }
    Ok(table)
}

fn report(table: &BTreeMap<String, (u64, u64)>) -> Result {
    println!("\n| crate | lines covered | lines | coverage | floor |");
    println!("|---|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    for (krate, (covered, total)) in table {
        let pct = if *total == 0 {
            100.0
        } else {
            *covered as f64 * 100.0 / *total as f64
        };
        let floor = FLOORS
            .iter()
            .find(|(k, _)| k == krate)
            .map_or(DEFAULT_FLOOR, |(_, f)| *f);
        let mark = if pct + 1e-9 < floor { " FAIL" } else { "" };
        println!("| {krate} | {covered} | {total} | {pct:.1} % | {floor:.0} %{mark} |");
        if !mark.is_empty() {
            failures.push(format!("{krate} {pct:.1} % < {floor:.0} %"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("coverage under the floor: {}", failures.join(", ")))
    }
}

/// Runs the benchmarks and the simulator comparison; writes `target/bench-report.md`.
fn bench(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let out = root().join("target").join("bench-report.md");
    let mut report = String::from(
        "# Benchmark report\n\nEvery figure below comes from one run of `cargo xtask bench` on this \
         machine; ratios compare figures of the same run.\n\n",
    );
    micro_benches(quick, &mut report)?;
    let sim = build_sim()?;
    {
        let server = Server::start(&sim, false)?;
        cpu_per_statement(&sim, &server.url, quick, &mut report)?;
        bursts(&sim, &server.url, &mut report)?;
        let counting = Server::start(&sim, true)?;
        sustained(&sim, &server, &counting, quick, &mut report)?;
        compare(&sim, &counting, quick, &mut report)?;
    }
    std::fs::write(&out, &report).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("\n{report}\nwritten to {}", out.display());
    Ok(())
}

/// The bench binaries (`telemetry`: driver thread, floor, aggregation, serialisation,
/// redaction; `memory`: idle hosts); their `BENCH name|value|target|met` lines become a table.
fn micro_benches(quick: bool, report: &mut String) -> Result {
    bench_table(
        quick,
        &["--workspace", "--benches"],
        "## Micro-benchmarks (`cargo bench --workspace`, medians)",
        report,
    )?;
    // The OpenTelemetry bridge, a feature off by default: its own build and table.
    bench_table(
        quick,
        &[
            "-p",
            "telemetry-client",
            "--bench",
            "telemetry",
            "--features",
            "opentelemetry",
            "--",
            "opentelemetry",
        ],
        "## The OpenTelemetry bridge (`cargo bench -p telemetry-client --bench telemetry \
         --features opentelemetry -- opentelemetry`, medians)",
        report,
    )
}

/// Runs `cargo bench <args>` and adds its `BENCH` lines to the report as a table.
fn bench_table(quick: bool, args: &[&str], title: &str, report: &mut String) -> Result {
    let mut bench_cmd = cargo();
    bench_cmd.args(["bench", "--locked"]).args(args);
    if quick {
        bench_cmd.env("TELEMETRY_BENCH_QUICK", "1");
    }
    let output = bench_cmd
        .output()
        .map_err(|e| format!("cargo bench: cannot start: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        return Err("cargo bench failed".into());
    }
    report.push_str(&format!(
        "{title}\n\n| benchmark | median | target | met |\n|---|---:|---:|---|\n"
    ));
    for cols in stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .map(|l| l.split('|').collect::<Vec<_>>())
        .filter(|cols| cols.len() == 4)
    {
        report.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cols[0], cols[1], cols[2], cols[3]
        ));
    }
    report.push('\n');
    Ok(())
}

/// Builds `telemetry-sim` once (release) and returns its path.
fn build_sim() -> Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-q",
            "-p",
            "telemetry-tests",
            "--bin",
            "telemetry-sim",
        ])
        .status()
        .map_err(|e| format!("building telemetry-sim: {e}"))?;
    if !status.success() {
        return Err("building telemetry-sim failed".into());
    }
    Ok(root()
        .join("target")
        .join("release")
        .join(format!("telemetry-sim{}", std::env::consts::EXE_SUFFIX)))
}

/// `telemetry-sim --serve` in its own process, killed on drop: the client's CPU is then
/// the client's alone, and its exports go over real HTTP.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    /// `count_only`: the server checks each request's envelope and counts its logs, without
    /// checking each log against the schema (`--count-only`).
    fn start(sim: &Path, count_only: bool) -> Result<Self> {
        use std::io::BufRead;
        let mut command = Command::new(sim);
        command.arg("--serve");
        if count_only {
            command.arg("--count-only");
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("telemetry-sim --serve: cannot start: {e}"))?;
        let line = child.stdout.take().and_then(|s| {
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line).ok()?;
            Some(line)
        });
        let url = line
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening on "))
            .map(str::to_owned);
        match url {
            Some(url) => Ok(Self { child, url }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err("telemetry-sim --serve did not print its address".into())
            }
        }
    }

    /// The server process's CPU so far (user + system, every thread), in ms; `None` where
    /// `/proc` does not tell (not Linux).
    fn cpu_ms(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        proc_stat_cpu_ms(&stat)
    }
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in ms. Both count clock ticks of USER_HZ,
/// which is 100 on every Linux architecture we build for. The fields after the command name
/// (which may hold spaces) start with the state, so utime and stime are the 12th and 13th.
fn proc_stat_cpu_ms(stat: &str) -> Option<f64> {
    const MS_PER_TICK: f64 = 10.0;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 * MS_PER_TICK)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `telemetry-sim <args> --json` and parses the JSON object it prints last.
fn sim_json(sim: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(sim)
        .args(args)
        .arg("--json")
        .output()
        .map_err(|e| format!("telemetry-sim: cannot start: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("telemetry-sim {}: no JSON result", args.join(" ")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The lowest and highest of `v`, as "low-high" with two decimals.
fn spread(v: &[f64]) -> String {
    let low = v.iter().copied().reduce(f64::min).unwrap_or(f64::NAN);
    let high = v.iter().copied().reduce(f64::max).unwrap_or(f64::NAN);
    format!("{low:.2}-{high:.2}")
}

/// The client process's CPU (user + system, every thread, getrusage) per statement, with the
/// export going over HTTP to the server process: the same paced workload with telemetry on
/// and off, alternating; telemetry's share is the median of each round's difference (a
/// round's two runs are seconds apart, so the machine's drift cancels). Runs of 20 000
/// statements a connection even when quick: with 5 000, the process's fixed costs (its
/// runtime, the first connection, the flag, the close) were a micro-second a statement.
fn cpu_per_statement(sim: &Path, url: &str, quick: bool, report: &mut String) -> Result {
    let statements = "20000";
    let rounds = if quick { 5 } else { 9 };
    #[rustfmt::skip]
    let base = [
        "--host", url, "--token", "bench", "--connections", "2", "--statements", statements,
        "--pace-per-ms", "20", "--error-rate", "0", "--queries-only", "--failed-opens", "0",
        "--non-blocking-auth", "--download-threads", "0",
    ];
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (telemetry, into) in [(true, &mut on), (false, &mut off)] {
            let mut args = base.to_vec();
            if !telemetry {
                args.push("--no-telemetry");
            }
            let v = sim_json(sim, &args)?;
            into.push(v["cpu_us_per_statement"].as_f64().unwrap_or(f64::NAN));
        }
    }
    let shares: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a - b).collect();
    let range = spread(&shares);
    let delta = median(shares);
    let (on, off) = (median(on), median(off));
    report.push_str(&format!(
        "\n## CPU per statement, all threads of the client process\n\n\
         2 connections x {statements} statements (begin, id, 3 chunks, complete) paced at 20 per ms, \
         exports over HTTP to `telemetry-sim --serve` in another process; {rounds} alternating \
         rounds; telemetry's share is the median of the rounds' differences (their range \
         beside it).\n\n\
         | telemetry on | telemetry off | telemetry's share | range | target | met |\n|---:|---:|---:|---:|---:|---|\n\
         | {on:.2} us | {off:.2} us | {delta:.2} us | {range} us | <= 1.5 us | {} |\n",
        if delta <= 1.5 { "yes" } else { "no" }
    ));
    Ok(())
}

/// Rows delivered when connections burst statements back to back against a healthy endpoint
/// in another process, with the default configuration.
fn bursts(sim: &Path, url: &str, report: &mut String) -> Result {
    report.push_str(
        "\n## Bursts against a healthy endpoint (defaults, exports over HTTP)\n\n\
         | connections x statements | rows expected | rows exported | dropped | delivered | target |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for (connections, statements) in [(1, 200), (1, 1000), (16, 200), (64, 200)] {
        let (c, s) = (connections.to_string(), statements.to_string());
        #[rustfmt::skip]
        let args = [
            "--host", url, "--token", "bench", "--connections", &c, "--statements", &s,
            "--queries-only", "--failed-opens", "0", "--non-blocking-auth",
            "--download-threads", "0", "--error-rate", "0",
        ];
        let v = sim_json(sim, &args)?;
        let expected = v["expected_rows"].as_u64().unwrap_or(0);
        let exported = v["rows_exported"].as_u64().unwrap_or(0);
        // Dropped rows by reason; the sum is what the table shows, the reasons follow it.
        let by_reason = v["rows_dropped"].as_object().cloned().unwrap_or_default();
        let dropped: u64 = by_reason.values().filter_map(|n| n.as_u64()).sum();
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        report.push_str(&format!(
            "| {connections} x {statements} | {expected} | {exported} | {dropped}{} | {:.1} % | 100 % |\n",
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
            100.0 * exported as f64 / expected.max(1) as f64
        ));
    }
    Ok(())
}

/// Unpaced connections against a healthy endpoint in another process, with the defaults:
/// whether the background path keeps up with drivers producing as fast as they can (the
/// target: 4 x 250 000 statements, every row delivered within the default byte budget), and
/// what the background spends a row, which says whether one core of it keeps up with 1 M
/// statements a second whatever the machine's core count. Measured against a counting
/// endpoint, whose own CPU takes less of a small machine from the client, and once against
/// the checking one; each run's endpoint CPU is reported beside the client's.
fn sustained(
    sim: &Path,
    checking: &Server,
    counting: &Server,
    quick: bool,
    report: &mut String,
) -> Result {
    let statements = if quick { "50000" } else { "250000" };
    let run = |server: &Server, statements: &str| {
        #[rustfmt::skip]
        let args = [
            "--host", server.url.as_str(), "--token", "bench", "--connections", "4",
            "--statements", statements, "--queries-only", "--failed-opens", "0",
            "--non-blocking-auth", "--download-threads", "0", "--error-rate", "0",
        ];
        let before = server.cpu_ms();
        let v = sim_json(sim, &args)?;
        let server_ms = before.zip(server.cpu_ms()).map(|(b, a)| a - b);
        Ok::<_, String>((v, server_ms))
    };
    // The CPU the process spends beyond its connections' own threads: telemetry's
    // background runtime (fold, request bodies, HTTP), plus its start and close.
    let background_ms = |v: &serde_json::Value| {
        v["cpu_ms"].as_f64().unwrap_or(f64::NAN)
            - v["driver_threads_cpu_ms"].as_f64().unwrap_or(f64::NAN)
    };
    // Start and close alone (runtime, transport, flag look-up, the final flush): a run of
    // 4 x 10 statements, median of three.
    let mut fixed = Vec::new();
    for _ in 0..3 {
        fixed.push(background_ms(&run(counting, "10")?.0));
    }
    let fixed = median(fixed);
    let mut per_row = Vec::new();
    let mut rows = String::new();
    let mut row = |endpoint: &str, v: &serde_json::Value, server_ms: Option<f64>| {
        let expected = v["expected_rows"].as_u64().unwrap_or(0);
        let exported = v["rows_exported"].as_u64().unwrap_or(0);
        let dropped: u64 = v["events_dropped"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(|n| n.as_u64()).sum());
        let elapsed_ms = v["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
        // What the connections offered: their statements over the time before their close,
        // which waits (bounded) for the host's last exports.
        let offering_ms = elapsed_ms - v["close_ms"].as_f64().unwrap_or(0.0);
        let ms = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.0} ms"));
        rows.push_str(&format!(
            "| {endpoint} | {expected} | {exported} | {:.1} % | {dropped} | {:.0} k | {elapsed_ms:.0} ms | {} | {} | {} |\n",
            100.0 * exported as f64 / expected.max(1) as f64,
            expected as f64 / offering_ms.max(1.0),
            ms(v["driver_threads_cpu_ms"].as_f64()),
            ms(Some(background_ms(v))),
            ms(server_ms),
        ));
        (background_ms(v) - fixed) * 1000.0 / exported.max(1) as f64
    };
    for i in 1..=3 {
        let (v, server_ms) = run(counting, statements)?;
        per_row.push(row(&format!("counting, run {i}"), &v, server_ms));
    }
    let (v, server_ms) = run(checking, statements)?;
    row("checking each log", &v, server_ms);
    let range = spread(&per_row);
    let per_row_us = median(per_row);
    let per_core = 1.0 / per_row_us;
    report.push_str(&format!(
        "\n## Sustained: 4 unpaced connections x {statements} statements (defaults, exports over HTTP)\n\n\
         Three runs against an endpoint that checks each request's envelope and counts its logs \
         (`telemetry-sim --serve --count-only`), then one against the endpoint of the other \
         steps, which checks every log against the schema (about 10 us of its CPU a log). Both \
         endpoints share this machine's {} cores with the client. Target: 100 % delivered.\n\n\
         | endpoint | rows expected | rows exported | delivered | events dropped at intake | statements a second offered (before the close) | elapsed, close included | connection threads' CPU | rest of the client's CPU | endpoint's CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}\n\
         The background's CPU a row (the client's beyond its connections' own threads, less \
         its start and close, measured by a run of 4 x 10 statements), median of the three \
         counting runs, and what that makes on one core:\n\n\
         | start and close | background CPU per row exported | range | rows a second on one core | target | met |\n\
         |---:|---:|---:|---:|---:|---|\n\
         | {fixed:.1} ms | {per_row_us:.2} us | {range} us | {per_core:.2} M | >= 1 M | {} |\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        if per_core >= 1.0 { "yes" } else { "no" }
    ));
    Ok(())
}

/// `telemetry-sim --compare`: the same workload with telemetry off and on, alternating,
/// each timed up to its close, with 50 us of driver work per statement; against the
/// embedded mock workspace, then against the counting endpoint in another process (with and
/// without the workload's download threads). The embedded mock checks every log against the
/// schema (about 10 us of CPU a log) in the client's own process, and on a small machine
/// that CPU comes out of the driver's timed work: part of its figure is the mock's. All
/// three are reported, with the endpoint's CPU.
fn compare(sim: &Path, counting: &Server, quick: bool, report: &mut String) -> Result {
    // One driver thread: with more, spinning workers alone fill both cores of the CI machine
    // and the comparison measures the scheduler.
    let mut args = vec!["--compare", "--work-us", "50", "--connections", "1"];
    // 31 rounds: at 9, medians of the same code moved by 10 points from run to run here
    // (spreads of 40 to 60 points); at 31 they agree within a few.
    args.extend(if quick {
        ["--statements", "500", "--rounds", "5"]
    } else {
        ["--statements", "2000", "--rounds", "31"]
    });
    report.push_str(&format!(
        "\n## End to end (`telemetry-sim {}`, target overhead < 0.5 %)\n\n\
         Telemetry off and on, alternating, each timed up to its connections' close: the \
         driver's elapsed time with telemetry on over the time with it off, less one (median \
         of the rounds, their spread beside it).\n\n\
         | endpoint | overhead (median) | spread | off (median) | on (median) | events a second, on | endpoint's CPU, all rounds |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        args.join(" ")
    ));
    let mut remote = args.clone();
    remote.extend(["--host", counting.url.as_str(), "--token", "bench"]);
    // The download threads are two more busy threads on a small machine: without them the
    // spread is a tenth as wide, and what remains is telemetry's.
    let mut alone = remote.clone();
    alone.extend(["--download-threads", "0"]);
    let runs = [
        (
            "embedded mock, in the client's process (checks every log: about 10 us of CPU a log)",
            &args,
            None,
        ),
        (
            "counting endpoint in another process (`--serve --count-only`)",
            &remote,
            Some(counting),
        ),
        (
            "the same, chunks reported on the driver's thread (`--download-threads 0`)",
            &alone,
            Some(counting),
        ),
    ];
    for (endpoint, args, server) in runs {
        let before = server.and_then(Server::cpu_ms);
        match sim_json(sim, args) {
            Ok(v) => {
                let c = &v["compare"];
                let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
                let server_ms = before
                    .zip(server.and_then(Server::cpu_ms))
                    .map_or("in the client's".to_owned(), |(b, a)| {
                        format!("{:.0} ms", a - b)
                    });
                report.push_str(&format!(
                    "| {endpoint} | {:+.2} % | {:+.2} to {:+.2} % | {:.1} ms | {:.1} ms | {:.0} | {server_ms} |\n",
                    f("overhead_pct_median"),
                    f("overhead_pct_min"),
                    f("overhead_pct_max"),
                    f("off_ms_median"),
                    f("on_ms_median"),
                    f("events_per_sec_median"),
                ));
            }
            Err(e) => report.push_str(&format!("| {endpoint} | {e} | | | | | |\n")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_from_proc_stat() {
        // The command name may hold spaces and parentheses; utime 250 and stime 40 ticks.
        let stat =
            "4242 (telemetry (sim) x) S 1 4242 4242 0 -1 4194304 900 0 0 0 250 40 0 0 20 0 3 0";
        assert_eq!(proc_stat_cpu_ms(stat), Some(2900.0));
        assert_eq!(proc_stat_cpu_ms("4242 (sim) S 1 2"), None);
        assert_eq!(proc_stat_cpu_ms("no parenthesis"), None);
    }

    #[test]
    fn sums_lines_per_crate_and_applies_floors() {
        let json = r#"{"data":[{"files":[
            {"filename":"/w/telemetry-types/src/a.rs","summary":{"lines":{"covered":8,"count":10}}},
            {"filename":"/w/telemetry-types/src/b.rs","summary":{"lines":{"covered":2,"count":10}}},
            {"filename":"/w/telemetry-breaker/src/lib.rs","summary":{"lines":{"covered":95,"count":100}}},
            {"filename":"/w/xtask/src/main.rs","summary":{"lines":{"covered":0,"count":100}}}
        ]}]}"#;
        let t = crate_coverage(json, Path::new("/w")).unwrap();
        assert_eq!(t["telemetry-types"], (10, 20));
        assert_eq!(t["telemetry-breaker"], (95, 100));
        assert_eq!(t.len(), 2);
        let err = report(&t).unwrap_err();
        assert!(err.contains("telemetry-types 50.0 %"), "{err}");
        assert!(!err.contains("breaker"));
        assert!(crate_coverage("{}", Path::new("/w")).is_err());
        // Files outside the workspace (registry sources) and non-library folders are skipped.
        let outside = r#"{"data":[{"files":[
            {"filename":"/elsewhere/telemetry-types/src/a.rs","summary":{"lines":{"covered":1,"count":1}}},
            {"filename":"/w/tests/src/mock.rs","summary":{"lines":{"covered":1,"count":1}}}
        ]}]}"#;
        assert!(crate_coverage(outside, Path::new("/w")).is_err());
    }
}
