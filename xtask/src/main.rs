//! Project automation, run as `cargo xtask <task>` (matklad's cargo-xtask pattern).
//!
//! - `cargo xtask ci`: everything CI checks: formatting, clippy, every test (ignored
//!   service-backed ones included, with their services started here), benchmarks in test
//!   mode, and docs with warnings denied.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        _ => {
            eprintln!("usage: cargo xtask ci");
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

fn run(name: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("\n==> {name}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: could not start: {e}"))?;
    eprintln!("<== {name}: {status} in {:.0?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// `<package> --example <name>` for every example CI runs.
const EXAMPLES: [&str; 3] = [
    "truelayer-auth-tower --example hyper_client",
    "truelayer-auth-tower --example axum_service",
    "truelayer-auth-tower --example reqwest_client",
];

fn ci() -> Result<(), String> {
    let started = Instant::now();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("cargo fmt --check", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    run("cargo clippy", clippy)?;

    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--all-features",
        "--",
        "--include-ignored",
    ]);
    run("cargo test (all, ignored included)", test)?;

    let mut benches = cargo();
    benches.args(["test", "--workspace", "--all-features", "--benches"]);
    run("benchmarks in test mode", benches)?;

    // The examples run against the in-process emulator and fail unless the payment is created.
    for example in EXAMPLES {
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "--all-features", "--package"])
            .args(example.split(' '));
        run(&format!("example {example}"), cmd)?;
    }

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--all-features", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("cargo doc", doc)?;

    eprintln!("\nxtask ci: all green in {:.0?}", started.elapsed());
    Ok(())
}
