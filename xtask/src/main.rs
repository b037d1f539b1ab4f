//! Project automation, run as `cargo xtask <task>` (matklad's cargo-xtask pattern).
//!
//! - `cargo xtask ci`: everything CI checks: formatting, clippy, every test (ignored
//!   service-backed ones included, with their services started here), benchmarks in test
//!   mode, the examples, and docs with warnings denied.
//! - `cargo xtask moto`: installs (if needed) and runs moto's Secrets Manager server on a
//!   free 127.0.0.1 port until interrupted, printing `MOTO_URL=...` for
//!   `cargo test -- --ignored`.
//! - `cargo xtask bench-proxy`: `tlauth proxy` against nginx with a hard-coded
//!   `Authorization` header, same upstream, same load generator (wrk), side by side; installs
//!   nginx and wrk from Debian's packages if missing.
//! - `cargo xtask postgres`: installs (if needed) PostgreSQL and runs a throw-away cluster on
//!   a free 127.0.0.1 port until interrupted, printing `DATABASE_URL=...` for `cargo test`
//!   (see `postgres.rs`).

mod postgres;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The moto release the tests are written against; the virtualenv is rebuilt when it changes.
const MOTO: &str = "moto[server]==5.2.5";

/// The unused-dependency checker, pinned, installed into `target/tools`.
const MACHETE: (&str, &str) = ("cargo-machete", "0.9.2");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("moto") => moto_foreground(),
        Some("postgres") => postgres::foreground(),
        Some("bench-proxy") => bench_proxy(),
        Some("readme") => readme(),
        _ => {
            eprintln!(
                "usage: cargo xtask ci | cargo xtask moto | cargo xtask postgres | cargo xtask bench-proxy | cargo xtask readme"
            );
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
    // xtask builds whole workspaces from scratch (CI's clean clone) and in release: incremental
    // state would only cost disk (gigabytes across the test binaries) and time.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
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
const EXAMPLES: [&str; 6] = [
    "truelayer-auth-tower --example hyper_client",
    "truelayer-auth-tower --example multi_merchant",
    "truelayer-auth-tower --example axum_service",
    "truelayer-auth-tower --example reqwest_client",
    "truelayer-auth-webhooks --example webhook_server",
    "truelayer-auth-connections --example data_api",
];

fn ci() -> Result<(), String> {
    let started = Instant::now();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("cargo fmt --check", fmt)?;

    // TrueLayer's own signing crate, a dev-dependency for the interop tests, links OpenSSL.
    ensure_openssl_dev()?;

    let mut machete = Command::new(ensure_tool(MACHETE)?);
    machete.current_dir(root());
    run("cargo machete (unused dependencies)", machete)?;

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

    // The CLI's browser test (crates/cli/tests/browser.rs, ignored unless asked for)
    // drives headless Chromium through chromedriver.
    ensure_tools(&[
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ])?;
    let moto = Moto::start(&ensure_moto()?)?;
    // The PostgreSQL store's tests: DATABASE_URL's server, or a cluster started here.
    let postgres = postgres::Postgres::for_tests()?;
    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--all-features",
        "--",
        "--include-ignored",
    ])
    .env("MOTO_URL", &moto.url)
    .env("DATABASE_URL", &postgres.url);
    let tested = run("cargo test (all, moto-backed included)", test);
    drop(moto); // stopped by its PID, also when the tests failed
    drop(postgres); // likewise (when started here)
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

    readme()?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--all-features", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("cargo doc", doc)?;

    eprintln!("\nxtask ci: all green in {:.0?}", started.elapsed());
    Ok(())
}

/// Runs the README's shell blocks, in order, as one bash script, as a newcomer would paste
/// them: in `target/readme` (the workspace is its parent, so `cargo run -p` works), with no
/// `TRUELAYER_*` setting inherited, aliases expanded (the README defines `tlauth` as one),
/// and every background job stopped at the end. Blocks whose info string says `no-run`
/// (TrueLayer itself, CI itself) are skipped.
fn readme() -> Result<(), String> {
    ensure_tools(&[("curl", "curl"), ("jq", "jq"), ("openssl", "openssl")])?;
    let text = std::fs::read_to_string(root().join("README.md"))
        .map_err(|e| format!("reading README.md: {e}"))?;
    let blocks = shell_blocks(&text);
    if blocks.is_empty() {
        return Err("README.md has no shell block to run".into());
    }
    let mut script = String::from(
        "set -euo pipefail\nshopt -s expand_aliases\n\
         trap 'status=$?; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; exit $status' EXIT\n",
    );
    for (line, block) in &blocks {
        script.push_str(&format!("\n# README.md line {line}\n{block}"));
    }
    let dir = root().join("target").join("readme");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(dir.join("readme.sh"), &script)
        .map_err(|e| format!("writing the README script: {e}"))?;
    // A README whose waits never end (a setting no longer printed, say) fails, not hangs.
    let mut bash = Command::new("timeout");
    bash.args(["--kill-after=10", "600", "bash", "readme.sh"])
        .current_dir(&dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRUELAYER_") {
            bash.env_remove(name);
        }
    }
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        bash.env("CARGO_INCREMENTAL", "0");
    }
    run(
        &format!(
            "the README's {} shell blocks (target/readme/readme.sh)",
            blocks.len()
        ),
        bash,
    )
}

/// The README's ```` ```sh ```` blocks to run, with the line each starts on: not those whose
/// info string also says `no-run`.
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    // Inside a block: whether it runs, where it starts, what it says so far.
    let mut inside: Option<(bool, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (inside.take(), fence) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace();
                let runs = words.next() == Some("sh") && !words.any(|w| w == "no-run");
                inside = Some((runs, n + 2, String::new()));
            }
            (None, None) => {}
            (Some((runs, start, body)), Some(_)) => {
                if runs {
                    blocks.push((start, body));
                }
            }
            (Some((runs, start, mut body)), None) => {
                body.push_str(line);
                body.push('\n');
                inside = Some((runs, start, body));
            }
        }
    }
    blocks
}

/// Installs a pinned cargo tool into `target/tools` unless that version is already there;
/// returns the binary.
fn ensure_tool((name, version): (&str, &str)) -> Result<PathBuf, String> {
    let tools = root().join("target").join("tools");
    let binary = tools.join("bin").join(name);
    let marker = tools.join(format!("{name}.version"));
    if binary.exists() && std::fs::read_to_string(&marker).is_ok_and(|v| v.trim() == version) {
        return Ok(binary);
    }
    let mut install = cargo();
    install
        .args([
            "install",
            "--locked",
            "--force",
            "--version",
            version,
            "--root",
        ])
        .arg(&tools)
        .arg(name);
    run(&format!("cargo install {name} {version}"), install)?;
    std::fs::write(&marker, version).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    Ok(binary)
}

/// OpenSSL's headers and pkg-config, from Debian's packages, when they are missing.
fn ensure_openssl_dev() -> Result<(), String> {
    let found = Command::new("pkg-config")
        .args(["--exists", "openssl"])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    run("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "libssl-dev",
            "pkg-config",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get install libssl-dev pkg-config", install)
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

/// A child process stopped when dropped: with SIGTERM (so nginx's master stops its
/// workers), then SIGKILL if it is still there.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn wait_for_port(port: u16, what: &str) -> Result<(), String> {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{what} did not listen on port {port} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Installs the Debian packages (`(command, package)`) of the commands that are missing, as
/// root: the proxy bench's nginx and wrk, the README's curl, jq and openssl, the browser
/// test's chromium and chromedriver (by path: the test runs those exact binaries).
fn ensure_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    run("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&format!("apt-get install {}", missing.join(" ")), install)
}

/// Starts an nginx with `server_block` as its only server, in its own prefix under target/.
fn nginx(name: &str, workers: u8, server_block: &str) -> Result<Running, String> {
    let prefix = root().join("target").join("bench-proxy").join(name);
    std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n{server_block}\n}}\n",
        p = prefix.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .args(["-p"])
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nginx: {e}"))?;
    Ok(Running(child))
}

/// Requests per second and p99 latency (ms) from one wrk run.
fn wrk(url: &str) -> Result<(f64, f64), String> {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", "64", "-d", "10s", "--latency", url])
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(parse_latency_ms)
        .ok_or_else(|| format!("no 99% latency in wrk output:\n{text}"))?;
    if text.contains("Non-2xx") {
        return Err(format!("{url} answered errors under load:\n{text}"));
    }
    Ok((rps, p99))
}

fn parse_latency_ms(v: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn bench_proxy() -> Result<(), String> {
    ensure_tools(&[("nginx", "nginx-light"), ("wrk", "wrk")])?;
    let mut build = cargo();
    build.args(["build", "--release", "--package", "truelayer-auth-cli"]);
    run("build tlauth (release)", build)?;
    let tlauth = root().join("target").join("release").join("tlauth");

    // One upstream for both: nginx answering 200 with a small JSON body.
    let upstream_port = free_port()?;
    let _upstream = nginx(
        "upstream",
        1,
        &format!(
            " server {{ listen 127.0.0.1:{upstream_port}; keepalive_requests 100000;\n\
             location / {{ default_type application/json; return 200 '{{\"status\":\"ok\"}}'; }} }}"
        ),
    )?;
    wait_for_port(upstream_port, "the upstream nginx")?;

    // tlauth proxy with the embedded emulator's credentials: without its access log, like the
    // nginx below (`access_log off`), and with it (written to /dev/null: the cost of making
    // the lines).
    let start_proxy = |binary: &Path, extra: &[&str]| -> Result<(Running, u16), String> {
        let port = free_port()?;
        let running = Running(
            Command::new(binary)
                .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--upstream", &format!("http://127.0.0.1:{upstream_port}")])
                .args(extra)
                .env_remove("TRUELAYER_ENV")
                .env_remove("TRUELAYER_CLIENT_ID")
                .env_remove("TRUELAYER_CLIENT_SECRET")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", binary.display()))?,
        );
        wait_for_port(port, "tlauth proxy")?;
        Ok((running, port))
    };
    let (_proxy, proxy_port) = start_proxy(&tlauth, &["--access-log", "off"])?;
    let (_logging, logging_port) = start_proxy(&tlauth, &[])?;
    // An older build to compare with, side by side in the same run (`BENCH_PROXY_BASELINE`:
    // the path of its `tlauth`), with its default settings.
    let baseline = match std::env::var_os("BENCH_PROXY_BASELINE") {
        Some(path) => Some(start_proxy(Path::new(&path), &[])?),
        None => None,
    };

    // nginx as the reverse proxy, with a valid token hard-coded: the practical limit.
    let token_json = Command::new(&tlauth)
        .arg("token")
        .env_remove("TRUELAYER_ENV")
        .env_remove("TRUELAYER_CLIENT_ID")
        .env_remove("TRUELAYER_CLIENT_SECRET")
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("tlauth token: {e}"))?;
    let token_text = String::from_utf8_lossy(&token_json.stdout).into_owned();
    let token = token_text
        .split("\"access_token\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("tlauth token printed no token")?
        .to_owned();
    let nginx_port = free_port()?;
    // As many workers as cores: nginx at its best on this machine.
    let _reverse = nginx(
        "reverse",
        2,
        &format!(
            " upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 100000;\n\
             location / {{ proxy_pass http://backend; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; proxy_set_header Authorization \"Bearer {token}\"; }} }}"
        ),
    )?;
    wait_for_port(nginx_port, "the reverse-proxy nginx")?;

    let nginx_url = format!("http://127.0.0.1:{nginx_port}/v3/payments/p-1");
    let tlauth_url = format!("http://127.0.0.1:{proxy_port}/v3/payments/p-1");
    let logging_url = format!("http://127.0.0.1:{logging_port}/v3/payments/p-1");
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    // Alternate them, twice, so drift in the machine's load hits all.
    for _ in 0..2 {
        let (rps, p99) = wrk(&nginx_url)?;
        results.push(("nginx", rps, p99));
        let (rps, p99) = wrk(&tlauth_url)?;
        results.push(("tlauth", rps, p99));
        let (rps, p99) = wrk(&logging_url)?;
        results.push(("logging", rps, p99));
        if let Some((_, port)) = &baseline {
            let (rps, p99) = wrk(&format!("http://127.0.0.1:{port}/v3/payments/p-1"))?;
            results.push(("baseline", rps, p99));
        }
    }
    let mean = |name: &str, pick: fn(&(&str, f64, f64)) -> f64| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == name).map(pick).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (n_rps, n_p99) = (mean("nginx", |r| r.1), mean("nginx", |r| r.2));
    let (t_rps, t_p99) = (mean("tlauth", |r| r.1), mean("tlauth", |r| r.2));
    let (l_rps, l_p99) = (mean("logging", |r| r.1), mean("logging", |r| r.2));
    let report = format!(
        "| contender | requests/s | p99 latency |\n| --- | --- | --- |\n\
         | nginx, hard-coded Authorization, no access log | {n_rps:.0} | {n_p99:.2} ms |\n\
         | tlauth proxy --access-log off | {t_rps:.0} | {t_p99:.2} ms |\n\
         | tlauth proxy, access log on (to /dev/null) | {l_rps:.0} | {l_p99:.2} ms |\n\
         | ratio (tlauth, log off / nginx) | **{:.2}** | **{:.2}** |\n\
         | ratio (tlauth, log on / nginx) | **{:.2}** | **{:.2}** |\n",
        t_rps / n_rps,
        t_p99 / n_p99,
        l_rps / n_rps,
        l_p99 / n_p99
    );
    let report = if baseline.is_some() {
        let (b_rps, b_p99) = (mean("baseline", |r| r.1), mean("baseline", |r| r.2));
        format!(
            "{report}| baseline tlauth proxy (BENCH_PROXY_BASELINE) | {b_rps:.0} | {b_p99:.2} ms |\n\
             | ratio (tlauth, log off / baseline) | **{:.2}** | **{:.2}** |\n",
            t_rps / b_rps,
            t_p99 / b_p99
        )
    } else {
        report
    };
    println!("{report}");
    let path = root().join("target").join("bench-proxy").join("report.md");
    std::fs::write(&path, &report).map_err(|e| e.to_string())?;
    eprintln!("written to {}", path.display());
    Ok(())
}
