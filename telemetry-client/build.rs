//! Records the version of the Rust toolchain the crate is built with: the
//! `system_configuration.runtime_version` a Rust driver reports (the JVM's, Node's or
//! Python's version in the other drivers).

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    println!("cargo:rustc-env=TELEMETRY_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
