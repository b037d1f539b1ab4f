//! A newcomer's first hour (issue #22): `tlauth emulator` prints everything a signing proxy
//! needs, `tlauth proxy` in front of it creates a payment, and the mistakes on the way
//! (a port in use, no signing key) get a message that says what to do.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

mod support;
use std::time::{Duration, Instant};
use support::SpawnedEmulator;

/// `tlauth emulator --port 0`, the settings it printed, and its `export` line.
struct Emulator {
    spawned: SpawnedEmulator,
    settings: Vec<(String, String)>,
    export_line: String,
}

impl Emulator {
    fn start() -> Emulator {
        let mut spawned = SpawnedEmulator::start(&[]);
        let export_line = std::iter::from_fn(|| spawned.stderr_line())
            .find(|l| l.contains("export "))
            .expect("an export line");
        spawned.drain_stderr();
        let settings = spawned.settings.clone();
        Emulator {
            spawned,
            settings,
            export_line,
        }
    }

    fn var(&self, name: &str) -> &str {
        self.spawned.var(name)
    }
}

/// Runs `tlauth proxy --listen 127.0.0.1:0` with `env` and returns it and its first lines.
fn proxy(env: &[(String, String)], extra: &[&str]) -> (Child, String, Vec<String>) {
    let (child, addr, seen, _) = proxy_with_log(env, extra);
    (child, addr, seen)
}

/// As [`proxy`], and the rest of its standard error, a line at a time.
fn proxy_with_log(
    env: &[(String, String)],
    extra: &[&str],
) -> (
    Child,
    String,
    Vec<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlauth"))
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("TRUELAYER_SIGNING_KEY_FILE")
        .env_remove("TRUELAYER_SIGNING_KEY_ID")
        .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("the proxy exited before listening")
            .unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("tlauth: proxy listening on http://") {
            break rest.split(' ').next().unwrap().to_owned();
        }
    };
    // The line after the listening line, if the proxy warns.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let _ = tx.send(line.unwrap());
        }
    });
    if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    (child, addr, seen, rx)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_settings_let_a_proxy_in_front_of_it_create_a_payment() {
    let mut emulator = Emulator::start();
    let names: Vec<&str> = emulator.settings.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "TRUELAYER_ENV",
            "TRUELAYER_CLIENT_ID",
            "TRUELAYER_CLIENT_SECRET",
            "TRUELAYER_SIGNING_KEY_FILE",
            "TRUELAYER_SIGNING_KEY_ID"
        ]
    );
    for (name, value) in &emulator.settings {
        assert!(
            emulator.export_line.contains(&format!("{name}={value}")),
            "{}",
            emulator.export_line
        );
    }
    let key_file = std::path::PathBuf::from(emulator.var("TRUELAYER_SIGNING_KEY_FILE"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only its owner reads the key");
        let dir = std::fs::metadata(key_file.parent().unwrap()).unwrap();
        assert_eq!(
            dir.permissions().mode() & 0o777,
            0o700,
            "in a directory of its own"
        );
    }

    let (mut running, addr, lines) = proxy(&emulator.settings, &[]);
    assert!(
        lines.iter().any(|l| l.contains("signing requests")),
        "{lines:?}"
    );
    let created = reqwest::Client::new()
        .post(format!("http://{addr}/v3/payments"))
        .header("content-type", "application/json")
        .body(r#"{"amount_in_minor":100,"currency":"GBP"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    // An idle proxy stops at once on SIGTERM.
    let asked = Instant::now();
    sigterm(&running);
    assert!(running.wait().unwrap().success());
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // SIGTERM stops the emulator promptly, and its key file goes with it.
    let asked = Instant::now();
    sigterm(&emulator.spawned.child);
    let status = emulator.spawned.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(!key_file.exists(), "the key file is removed at exit");
}

#[test]
fn a_proxy_without_a_signing_key_warns_at_start() {
    let emulator = Emulator::start();
    let unsigned: Vec<(String, String)> = emulator
        .settings
        .iter()
        .filter(|(n, _)| !n.starts_with("TRUELAYER_SIGNING"))
        .cloned()
        .collect();
    let (mut running, _, lines) = proxy(&unsigned, &[]);
    let _ = running.kill();
    let _ = running.wait();
    let warning = lines
        .iter()
        .find(|l| l.contains("WARNING"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(warning.contains("unsigned"), "{warning}");
    assert!(warning.contains("--signing-key-file"), "{warning}");
}

#[test]
fn a_port_in_use_says_how_to_pick_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tlauth"))
        .args(["emulator", "--port", &port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--port 0"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_tlauth"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("TRUELAYER_ENV")
        .env_remove("TRUELAYER_CLIENT_ID")
        .env_remove("TRUELAYER_CLIENT_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen 127.0.0.1:0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_writes_one_access_log_line_per_request_without_values() {
    let emulator = Emulator::start();
    let (mut running, addr, _, log) = proxy_with_log(&emulator.settings, &["--log-format", "json"]);
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    // A signed 201, a 404 with a secret-looking query, a 403 for a foreign Host, and a
    // replay after the emulator revoked the token.
    let created = http
        .post(format!("{base}/v3/payments"))
        .header("content-type", "application/json")
        .body(r#"{"amount_in_minor":100,"currency":"GBP"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let missing = http
        .get(format!("{base}/v3/payments/nope?token=SECRET-IN-QUERY"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let foreign = http
        .get(format!("{base}/v3/payments/nope"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let revoked = http
        .post(format!("{}/emulator/revoke", emulator.var("TRUELAYER_ENV")))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let replayed = http
        .get(format!("{base}/v3/payments/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 404);

    let mut lines = Vec::new();
    while lines.len() < 4 {
        let line = log
            .recv_timeout(Duration::from_secs(5))
            .expect("an access-log line per request");
        if line.contains("tlauth::access") {
            assert!(!line.contains("SECRET-IN-QUERY"), "{line}");
            assert!(!line.contains("evil.example"), "{line}");
            assert!(!line.contains("Bearer") && !line.contains("eyJ"), "{line}");
            lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    }
    let fields: Vec<&serde_json::Value> = lines.iter().map(|l| &l["fields"]).collect();
    assert_eq!(fields[0]["method"], "POST");
    assert_eq!(fields[0]["path"], "/v3/payments");
    assert_eq!(fields[0]["status"], 201);
    assert_eq!(fields[0]["signed"], true);
    assert!(
        fields[0]["upstream_ms"].as_f64().is_some(),
        "{:?}",
        fields[0]
    );
    assert!(fields[0]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(fields[1]["path"], "/v3/payments/nope", "no query");
    assert_eq!(fields[1]["status"], 404);
    assert_eq!(fields[1]["replayed"], false);
    assert_eq!(fields[2]["status"], 403);
    assert!(
        fields[2].get("upstream_ms").is_none(),
        "never forwarded: {:?}",
        fields[2]
    );
    assert_eq!(fields[3]["replayed"], true, "{:?}", fields[3]);
    let _ = running.kill();
    let _ = running.wait();

    // --access-log off: none.
    let (mut quiet, addr, _, log) = proxy_with_log(&emulator.settings, &["--access-log", "off"]);
    let ok = http
        .get(format!("http://{addr}/v3/payments/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 404);
    let extra = log.recv_timeout(Duration::from_millis(500));
    assert!(extra.is_err(), "{extra:?}");
    let _ = quiet.kill();
    let _ = quiet.wait();
}

#[test]
fn proxy_flags_given_wrong_say_what_to_give() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tlauth"))
            .arg("proxy")
            .args(args)
            .env_remove("TRUELAYER_ENV")
            .env_remove("TRUELAYER_CLIENT_ID")
            .env_remove("TRUELAYER_CLIENT_SECRET")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--listen", "localhost:9000"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:9000"), "{stderr}");

    let out = run(&["--listen", "127.0.0.1:0", "--admin-path", "tlauth"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-path: give"), "{stderr}");
    assert!(stderr.contains("/.tlauth"), "{stderr}");
}

#[test]
fn a_wrong_secret_is_logged_once_at_start_and_shutdown_once_per_proxy() {
    let emulator = Emulator::start();
    let settings: Vec<(String, String)> = emulator
        .settings
        .iter()
        .map(|(n, v)| match n.as_str() {
            "TRUELAYER_CLIENT_SECRET" => (n.clone(), "not-the-secret".to_owned()),
            _ => (n.clone(), v.clone()),
        })
        .chain([("RUST_LOG".to_owned(), "info".to_owned())])
        .collect();
    let (running, _, mut lines, log) = proxy_with_log(&settings, &["--workers", "2"]);
    while let Ok(line) = log.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    sigterm(&running);
    while let Ok(line) = log.recv_timeout(Duration::from_millis(1000)) {
        lines.push(line);
    }
    let mut running = running;
    let _ = running.wait();
    // The token failure's cause (the server's description) is written once.
    let causes = lines
        .iter()
        .filter(|l| l.contains("invalid_client"))
        .count();
    let chains = lines.iter().filter(|l| l.contains("error=")).count();
    assert_eq!(chains, 1, "{lines:#?}");
    assert!(causes >= 1, "{lines:#?}");
    // Two workers, one shutdown line.
    let shutdowns = lines
        .iter()
        .filter(|l| l.contains("shutting down; waiting"))
        .count();
    assert_eq!(shutdowns, 1, "{lines:#?}");
}
