//! The fleet simulator's contract, on a small fleet: every row accounted, the endpoint's
//! load during trouble and after it bounded.

use telemetry_tests::fleet::{self, FleetConfig, Scenario};

#[test]
fn a_small_fleet_through_an_outage_is_exact_and_gentle() {
    let report = fleet::run(&FleetConfig::new(60, Scenario::Outage)).unwrap();
    let s = &report.stats;
    assert!(report.statements > 60 * 90, "{}", report.statements);
    assert_eq!(s.events_emitted, s.rows_produced + s.events_dropped());
    assert_eq!(s.rows_produced, s.rows_exported + s.total_rows_dropped());
    assert!(s.rows_exported > 0 && s.total_rows_dropped() > 0);
    let per_client = report.outage_requests_per_client();
    assert!(per_client > 1.0 && per_client <= 15.0, "{per_client}");
    // 60 clients make a few requests a second: the peak of such small counts is noisy (about
    // 2 here), unlike the 1.06 of 10,000 clients; this bound catches a herd, not noise.
    assert!(
        report.recovery_peak_to_mean() <= 4.0,
        "{}",
        report.recovery_peak_to_mean()
    );
    let json = report.to_json();
    assert_eq!(json["clients"], 60);
    // 17 minutes, and the closes' final flushes just after.
    let seconds = json["requests_per_second"].as_array().unwrap().len();
    assert!((17 * 60..17 * 60 + 60).contains(&seconds), "{seconds}");
}

#[test]
fn a_small_fleet_in_a_storm_is_exact_and_the_plot_is_written() {
    let report = fleet::run(&FleetConfig::new(60, Scenario::Storm)).unwrap();
    let s = &report.stats;
    assert_eq!(s.rows_produced, s.rows_exported + s.total_rows_dropped());
    assert!(report.storm_capacity.is_some());
    assert!(report.storm_offered_to_accepted() >= 1.0);
    let dir = std::env::temp_dir().join(format!("fleet-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("storm.svg");
    fleet::plot(&report, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("storm (429)"),
        "{}",
        &svg[..200]
    );
    let _ = std::fs::remove_dir_all(dir);
}
