//! Two OS processes serve one connection from one SQLite store: each refresh happens once
//! across both, and no connection is lost.
//!
//! The parent test starts the emulator and connects a user, then runs this test binary twice
//! more as children (`child_process_workload`, which does nothing unless `TLC_CHILD` is set).
//! Each child runs 100 callers that take the connection's token and call the Data API
//! through the bearer layer, for the whole run.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{ClientCredentials, DataScopes, Environment};
use truelayer_auth_connections::{ConnectionId, ConnectionManager, EncryptionKeys, SqliteStore};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator as emu;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

const CALLERS: usize = 100;
const KEY: [u8; 32] = [9; 32];

fn run_for() -> Duration {
    let secs = std::env::var("TLC_RUN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "two processes for 30 s (TLC_RUN_SECS to change): cargo xtask ci runs it"]
async fn two_processes_refresh_each_expiry_once_and_lose_nothing() {
    let emulator = Emulator::start().await.unwrap();
    let lifetime = Duration::from_secs(2);
    emulator.set_data_token_lifetime(lifetime);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connections.db");

    let id = {
        let store = SqliteStore::open(&path, EncryptionKeys::new("k", KEY).unwrap())
            .await
            .unwrap();
        let manager = ConnectionManager::builder(
            emu::environment(&emulator),
            emu::credentials(&emulator),
            store,
        )
        .build()
        .unwrap();
        let (code, _) = emu::authorization_code(&emulator, DataScopes::default()).await;
        manager.connect(&code).await.unwrap()
    };

    let run = run_for();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_process_workload", "--nocapture"])
                .env("TLC_CHILD", "1")
                .env("TLC_URL", emulator.url())
                .env("TLC_CLIENT_ID", emulator.client_id())
                .env("TLC_CLIENT_SECRET", emulator.client_secret())
                .env("TLC_DB", &path)
                .env("TLC_CONNECTION", id.as_str())
                .env("TLC_RUN_SECS", run.as_secs().to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    let mut tokens = HashSet::new();
    for output in &outputs {
        assert!(output.status.success(), "a child failed: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("TLC_RESULT "))
            .unwrap_or_else(|| panic!("no result from a child: {stdout}"));
        let result: serde_json::Value = serde_json::from_str(line).unwrap();
        eprintln!("child: {result}");
        assert_eq!(result["token_errors"], 0, "{result}");
        assert_eq!(result["api_failures"], 0, "{result}");
        assert!(result["calls"].as_u64().unwrap() > 1000, "{result}");
        for t in result["tokens"].as_array().unwrap() {
            tokens.insert(t.as_str().unwrap().to_owned());
        }
    }

    let stats = emulator.data_stats();
    let connection = &emulator.connections()[0];
    eprintln!(
        "{} s of 2 s tokens: {} refreshes served, {} distinct tokens used, {stats:?}",
        run.as_secs(),
        stats.refreshes_served,
        tokens.len()
    );
    // Not one refresh token was spent twice: with reuse detection on, that would have
    // revoked the connection.
    assert_eq!(stats.refreshes_refused, 0, "{stats:?}");
    assert_eq!(
        connection.status,
        truelayer_auth_emulator::ConnectionStatus::Active
    );
    // One refresh per expiry across both processes: no more refreshes than the run holds
    // usable lifetimes (a token is used until 1 s before its whole-second expiry, the
    // engine's rule), and every token a refresh issued was used by someone (a refresh
    // nobody needed issues a token nobody uses). Two processes refreshing on their own
    // would double the count.
    let lifetimes = run.as_secs_f64() / (lifetime - Duration::from_secs(1)).as_secs_f64();
    assert!(
        (stats.refreshes_served as f64) <= lifetimes + 2.0,
        "{} refreshes in {lifetimes} lifetimes",
        stats.refreshes_served
    );
    assert!(
        stats.refreshes_served >= lifetimes as u64 / 2,
        "{} refreshes in {lifetimes} lifetimes: were tokens refreshed at all?",
        stats.refreshes_served
    );
    assert!(
        tokens.len() as u64 >= stats.refreshes_served,
        "{} refreshes but {} tokens used: some refresh was not needed",
        stats.refreshes_served,
        tokens.len()
    );
}

/// The children's workload; does nothing in an ordinary test run.
#[test]
fn child_process_workload() {
    if std::env::var_os("TLC_CHILD").is_none() {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(env("TLC_DB"), EncryptionKeys::new("k", KEY).unwrap())
            .await
            .unwrap();
        let creds =
            ClientCredentials::new(env("TLC_CLIENT_ID"), env("TLC_CLIENT_SECRET").into()).unwrap();
        let environment = Environment::custom(&env("TLC_URL")).unwrap();
        let data_url = environment.data_api_url();
        let manager = ConnectionManager::builder(environment, creds, store)
            .build()
            .unwrap();
        let id: ConnectionId = env("TLC_CONNECTION").parse().unwrap();
        let client = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(manager.clone()).replay_policy(CloneBodies))
            .service(ReqwestService::new(reqwest::Client::new()));

        let calls = Arc::new(AtomicU64::new(0));
        let token_errors = Arc::new(AtomicU64::new(0));
        let api_failures = Arc::new(AtomicU64::new(0));
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let deadline = tokio::time::Instant::now() + run_for();
        let callers = (0..CALLERS).map(|n| {
            let (manager, id, client) = (manager.clone(), id.clone(), client.clone());
            let (calls, token_errors, api_failures, tokens) = (
                calls.clone(),
                token_errors.clone(),
                api_failures.clone(),
                tokens.clone(),
            );
            let accounts = format!("{}/accounts", data_url.as_str().trim_end_matches('/'));
            tokio::spawn(async move {
                let mut i = 0u64;
                while tokio::time::Instant::now() < deadline {
                    i += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                    match manager.token(&id).await {
                        Ok(t) => {
                            // A digest, so no token is printed.
                            let mut h = std::hash::DefaultHasher::new();
                            std::hash::Hash::hash(t.secret().expose_secret(), &mut h);
                            tokens
                                .lock()
                                .unwrap()
                                .insert(format!("{:016x}", std::hash::Hasher::finish(&h)));
                        }
                        Err(e) => {
                            eprintln!("caller {n}: {}", truelayer_auth::error_chain(&e));
                            token_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Every caller calls the API now and then, through the bearer layer.
                    if (i + n as u64).is_multiple_of(25) {
                        let mut request = http::Request::get(&accounts)
                            .body(bytes::Bytes::new())
                            .unwrap();
                        request.extensions_mut().insert(id.clone());
                        match client.clone().oneshot(request).await {
                            Ok(r) if r.status() == 200 => {}
                            other => {
                                eprintln!(
                                    "caller {n}: the API answered {:?}",
                                    other.map(|r| r.status())
                                );
                                api_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        for caller in futures_util::future::join_all(callers).await {
            caller.unwrap();
        }
        let tokens: Vec<String> = tokens.lock().unwrap().iter().cloned().collect();
        let result = serde_json::json!({
            "calls": calls.load(Ordering::Relaxed),
            "token_errors": token_errors.load(Ordering::Relaxed),
            "api_failures": api_failures.load(Ordering::Relaxed),
            "tokens": tokens,
        });
        println!("TLC_RESULT {result}");
    });
}
