//! `tlauth emulator --webhook-url` as a process: a payment created through its API moves on
//! its schedule and the webhooks reach a receiver, signed with the key its `jku` publishes.

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use truelayer_auth_signing::{Signable, Signer, Verifier};
use truelayer_auth_testkit::recording::RecordingServer;

mod support;
use support::SpawnedEmulator;

/// `tlauth emulator` and its startup lines on standard error.
struct Running {
    emulator: SpawnedEmulator,
    banner: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut emulator = SpawnedEmulator::start(args);
        let mut banner = vec![emulator.stderr_line().expect("a startup line")];
        if args.contains(&"--webhook-url") {
            banner.push(emulator.stderr_line().expect("a webhook line"));
        }
        emulator.drain_stderr();
        Running { emulator, banner }
    }

    fn var(&self, name: &str) -> &str {
        self.emulator.var(name)
    }
}

/// Registers a request-signing key (as in Console) with the emulator at `base`, and creates a
/// payment with order metadata `"7"`; returns its id.
async fn create_payment(running: &Running, base: &str) -> String {
    let http = reqwest::Client::new();
    let registered = http
        .post(format!(
            "{base}/emulator/clients/emulator-client/signing-keys"
        ))
        .json(&json!({
            "kid": "cli-test-kid",
            "public_key_pem": include_str!("../../signing/tests/vectors/ec512-public.pem"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 204);
    let token: Value = http
        .post(format!("{base}/connect/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", running.var("TRUELAYER_CLIENT_ID")),
            ("client_secret", running.var("TRUELAYER_CLIENT_SECRET")),
            ("scope", "payments"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signer = Signer::from_pem(
        "cli-test-kid",
        include_bytes!("../../signing/tests/vectors/ec512-private.pem"),
    )
    .unwrap();
    let body = br#"{"amount_in_minor":100,"currency":"GBP","metadata":{"order":"7"}}"#;
    let signature = signer
        .sign(
            &Signable::new("POST", "/v3/payments")
                .header("Idempotency-Key", "cli-key-1")
                .body(body),
        )
        .await
        .unwrap();
    let created = http
        .post(format!("{base}/v3/payments"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("content-type", "application/json")
        .header("idempotency-key", "cli-key-1")
        .header("tl-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_move_on_their_schedule_and_send_signed_webhooks() {
    // A receiver answering 200 to everything.
    let mut hooks = RecordingServer::start().await;
    let hook_url = hooks.url("/webhooks");
    let running = tokio::task::spawn_blocking(move || {
        Running::start(&["--webhook-url", &hook_url, "--payment-step-ms", "50"])
    })
    .await
    .unwrap();
    let base = running.var("TRUELAYER_ENV").to_owned();
    let jku = format!("{base}/webhooks/jwks");
    assert!(
        running.banner[0].contains(&format!("jku {jku}")),
        "{:?}",
        running.banner
    );
    assert!(
        running.banner[1].contains("every 50 ms"),
        "{:?}",
        running.banner
    );

    let id = create_payment(&running, &base).await;
    let http = reqwest::Client::new();
    let jwks = http.get(&jku).send().await.unwrap().bytes().await.unwrap();
    let verifier = Verifier::from_jwks(&jwks)
        .unwrap()
        .require_header("X-Tl-Webhook-Timestamp");
    for kind in ["payment_authorized", "payment_executed", "payment_settled"] {
        let hook = hooks.next().await;
        let json: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(json["type"], kind);
        assert_eq!(json["payment_id"], id.as_str());
        assert_eq!(json["metadata"], json!({ "order": "7" }));
        assert_eq!(hook.path(), "/webhooks");
        let signature = hook.header("tl-signature");
        let header = truelayer_auth_signing::jws_header(signature).unwrap();
        assert_eq!(header.jku.as_deref(), Some(jku.as_str()));
        let request = Signable::new("POST", hook.path())
            .headers(hook.headers.iter().map(|(n, v)| (n.as_str(), v)))
            .body(&hook.body);
        verifier.verify(&request, signature).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_alone_moves_payments_every_two_seconds_and_https_is_refused() {
    let mut hooks = RecordingServer::start().await;
    let hook_url = hooks.url("/webhooks");
    let running =
        tokio::task::spawn_blocking(move || Running::start(&["--webhook-url", &hook_url]))
            .await
            .unwrap();
    assert!(
        running.banner[1].contains("every 2000 ms"),
        "{:?}",
        running.banner
    );
    let base = running.var("TRUELAYER_ENV").to_owned();
    let created = std::time::Instant::now();
    let id = create_payment(&running, &base).await;
    // The first move comes one step (2 s) after the payment was created, not sooner.
    let hook = tokio::time::timeout(std::time::Duration::from_secs(20), hooks.next())
        .await
        .expect("the payment moved within 20 s");
    let json: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(json["type"], "payment_authorized");
    assert_eq!(json["payment_id"], id.as_str());
    let waited = created.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "moved after {waited:?}"
    );
    drop(running);

    let out = Command::new(env!("CARGO_BIN_EXE_tlauth"))
        .args([
            "emulator",
            "--port",
            "0",
            "--webhook-url",
            "https://example.com/hooks",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--webhook-url") && stderr.contains("https"),
        "{stderr}"
    );
}
