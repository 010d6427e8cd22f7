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
            "reqwest,native-roots,platform-verifier,testing",
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
    let mut report = String::from("# Benchmark report\n\n");
    let mut bench_cmd = cargo();
    bench_cmd.args(["bench", "--workspace", "--locked", "--benches"]);
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
    report.push_str("## Micro-benchmarks (median)\n\n| benchmark | median | target | met |\n|---|---:|---:|---|\n");
    for line in stdout.lines().filter_map(|l| l.strip_prefix("BENCH ")) {
        // BENCH <name>|<value>|<target>|<met>
        let cols: Vec<&str> = line.split('|').collect();
        if cols.len() == 4 {
            report.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                cols[0], cols[1], cols[2], cols[3]
            ));
        }
    }
    let sim = cargo()
        .args([
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            "telemetry-tests",
            "--bin",
            "telemetry-sim",
            "--",
            "--compare",
            "--work-us",
            "50",
            // One driver thread: with more, spinning workers alone fill both cores of the
            // CI machine and the comparison measures the scheduler.
            "--connections",
            "1",
            "--json",
        ])
        .args(if quick {
            vec!["--statements", "500"]
        } else {
            vec!["--statements", "2000", "--rounds", "9"]
        })
        .output()
        .map_err(|e| format!("telemetry-sim: cannot start: {e}"))?;
    let sim_out = String::from_utf8_lossy(&sim.stdout);
    print!("{sim_out}");
    report.push_str(
        "\n## End to end (`telemetry-sim --compare --work-us 50 --connections 1`, target overhead < 0.5 %)\n\n",
    );
    match sim_out
        .lines()
        .last()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Ok(v)) => {
            report.push_str("| metric | value |\n|---|---:|\n");
            if let Some(obj) = v.get("compare").and_then(|c| c.as_object()) {
                for (k, val) in obj {
                    match val.as_f64() {
                        Some(x) if !val.is_u64() => report.push_str(&format!("| {k} | {x:.2} |\n")),
                        _ => report.push_str(&format!("| {k} | {val} |\n")),
                    }
                }
            }
        }
        _ => report.push_str("simulator output could not be read\n"),
    }
    std::fs::write(&out, &report).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("\n{report}\nwritten to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
