//! Project automation, run as `cargo xtask <task>` (matklad's cargo-xtask pattern).
//!
//! - `cargo xtask ci`: everything CI checks: formatting, clippy, every test (ignored
//!   service-backed ones included, with their services started here), benchmarks in test
//!   mode, the examples, and docs with warnings denied.
//! - `cargo xtask moto`: installs (if needed) and runs moto's Secrets Manager server on a
//!   free 127.0.0.1 port until interrupted, printing `MOTO_URL=...` for
//!   `cargo test -- --ignored`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The moto release the tests are written against; the virtualenv is rebuilt when it changes.
const MOTO: &str = "moto[server]==5.2.5";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("moto") => moto_foreground(),
        _ => {
            eprintln!("usage: cargo xtask ci | cargo xtask moto");
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

    // Build the tests before starting moto, so it does not sit idle through a compile.
    let mut build = cargo();
    build.args(["test", "--workspace", "--all-features", "--no-run"]);
    run("build the tests", build)?;

    let moto = Moto::start(&ensure_moto()?)?;
    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--all-features",
        "--",
        "--include-ignored",
    ])
    .env("MOTO_URL", &moto.url);
    let tested = run("cargo test (all, moto-backed included)", test);
    drop(moto); // stopped by its PID, also when the tests failed
    tested?;

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

/// Installs moto's server into `target/moto-venv`, unless the pinned version is already there.
fn ensure_moto() -> Result<PathBuf, String> {
    let venv = root().join("target").join("moto-venv");
    let server = venv.join("bin").join("moto_server");
    let marker = venv.join("truelayer-auth-installed.txt");
    if server.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == MOTO) {
        return Ok(server);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut venv_cmd = Command::new(&python);
    venv_cmd.args(["-m", "venv", "--clear"]).arg(&venv);
    if run("create the moto virtualenv", venv_cmd).is_err() {
        // Debian's python3 ships venv separately.
        let mut apt = Command::new("apt-get");
        apt.args(["install", "-y", "--no-install-recommends", "python3-venv"]);
        let _ = run("apt-get install python3-venv", apt);
        let mut retry = Command::new(&python);
        retry.args(["-m", "venv", "--clear"]).arg(&venv);
        run("create the moto virtualenv", retry)?;
    }
    let mut pip = Command::new(venv.join("bin").join("pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check", MOTO]);
    run(&format!("pip install {MOTO}"), pip)?;
    std::fs::write(&marker, MOTO).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    Ok(server)
}

/// A running moto server, stopped (by PID) when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start(server: &Path) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let log_path = root().join("target").join("moto.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", server.display()))?;
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while !answers(port) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("moto_server exited ({status}):\n{log}"));
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "moto_server did not answer on port {port} within 60 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "moto_server (pid {}) answers at {}",
            moto.child.id(),
            moto.url
        );
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether moto answers HTTP on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        "GET /moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn moto_foreground() -> Result<(), String> {
    let mut moto = Moto::start(&ensure_moto()?)?;
    println!("MOTO_URL={}", moto.url);
    moto.child.wait().map_err(|e| e.to_string())?;
    Ok(())
}
