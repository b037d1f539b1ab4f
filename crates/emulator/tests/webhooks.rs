//! Payment statuses and webhooks: a recording receiver on loopback gets what the emulator
//! sends, and TrueLayer's own `truelayer-signing` crate checks the signatures against the JWKS
//! the `jku` names.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use serde_json::{Value, json};
use truelayer_auth_emulator::{
    Emulator, Error, PaymentStatus, WEBHOOK_KEY_ID, WEBHOOK_MAX_ATTEMPTS,
};
use truelayer_auth_testkit::emulator::access_token;
use truelayer_auth_testkit::logs::LogCapture;
use truelayer_auth_testkit::recording::{
    Answer, Recorded, RecordingServer, RecordingServerBuilder,
};

/// Where the receiver (a `RecordingServer`) takes webhooks.
const HOOKS: &str = "/hooks/truelayer";

/// A webhook receiver started from `server`, and the emulator's webhooks sent to it.
async fn receiver_for(emulator: &Emulator, server: RecordingServerBuilder) -> RecordingServer {
    let receiver = server.start().await;
    emulator
        .set_webhook_url(Some(&receiver.url(HOOKS)))
        .unwrap();
    receiver
}

/// Verifies a received webhook's `Tl-Signature` with TrueLayer's crate against `jwks`.
fn verify(jwks: &[u8], webhook: &Recorded) -> Result<(), truelayer_signing::Error> {
    let signature = webhook.header("tl-signature");
    truelayer_signing::verify_with_jwks(jwks)
        .method(truelayer_signing::Method::Post)
        .path(webhook.path())
        .headers(
            webhook
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        )
        .body(&webhook.body)
        .build_verifier()
        .verify(signature)
}

/// Fetches the JWKS a webhook's `jku` names, checking it is the emulator's.
async fn jwks_from_jku(emulator: &Emulator, webhook: &Recorded) -> Vec<u8> {
    let signature = webhook.header("tl-signature");
    let header = truelayer_signing::extract_jws_header(signature).unwrap();
    let jku = header.jku.as_deref().expect("a jku").to_owned();
    assert_eq!(jku, emulator.webhook_jku());
    assert_eq!(jku, format!("{}/webhooks/jwks", emulator.url()));
    assert_eq!(header.kid, WEBHOOK_KEY_ID);
    assert_eq!(
        header.tl_headers.as_deref(),
        Some("X-Tl-Webhook-Timestamp,Content-Type")
    );
    let response = reqwest::get(&jku).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "max-age=300");
    response.bytes().await.unwrap().to_vec()
}

/// Creates a payment through the API, signed with TrueLayer's crate; returns its id.
async fn create_payment(emulator: &Emulator, request: &Value) -> String {
    let bearer = access_token(emulator).await;
    let key = format!("key-{}", fastrand_id());
    let body = request.to_string();
    let signature = truelayer_signing::sign_with_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )
    .method(truelayer_signing::Method::Post)
    .path("/v3/payments")
    .header("Idempotency-Key", key.as_bytes())
    .body(body.as_bytes())
    .build_signer()
    .sign()
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("tl-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn simple_payment() -> Value {
    json!({ "amount_in_minor": 100, "currency": "GBP", "payment_method": { "type": "bank_transfer" } })
}

async fn get_payment(emulator: &Emulator, id: &str) -> Value {
    let bearer = access_token(emulator).await;
    reqwest::Client::new()
        .get(format!("{}/v3/payments/{id}", emulator.url()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn is_rfc3339_utc_seconds(text: &str) -> bool {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(text, &format).is_ok()
}

fn is_uuid_v4(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && parts[2].starts_with('4')
        && matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b'))
}

#[tokio::test]
async fn advancing_to_settled_sends_signed_authorized_executed_and_settled_webhooks_in_order() {
    let emulator = Emulator::start().await.unwrap();
    let mut receiver = receiver_for(&emulator, RecordingServer::builder()).await;
    let request = json!({
        "amount_in_minor": 100,
        "currency": "GBP",
        "payment_method": { "type": "bank_transfer" },
        "user": { "id": "f9b48c9d-176b-46dd-b2da-fe1a2b77350c", "name": "Remi Terr" },
        "metadata": { "order": "ord-42" },
    });
    let id = create_payment(&emulator, &request).await;

    emulator
        .advance_payment(&id, PaymentStatus::Settled)
        .unwrap();
    assert_eq!(get_payment(&emulator, &id).await["status"], "settled");

    let webhooks = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    let jwks = jwks_from_jku(&emulator, &webhooks[0]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&jwks).unwrap(),
        emulator.webhook_jwks()
    );
    let mut event_ids = Vec::new();
    for (webhook, (kind, at)) in webhooks.iter().zip([
        ("payment_authorized", "authorized_at"),
        ("payment_executed", "executed_at"),
        ("payment_settled", "settled_at"),
    ]) {
        assert_eq!(webhook.path(), "/hooks/truelayer");
        assert_eq!(webhook.header("content-type"), "application/json");
        let timestamp = webhook.header("x-tl-webhook-timestamp");
        assert!(is_rfc3339_utc_seconds(timestamp), "{timestamp}");
        verify(&jwks, webhook).unwrap_or_else(|e| panic!("{kind}: {e}"));
        // The pinned-key route agrees.
        truelayer_signing::verify_with_pem(emulator.webhook_public_key_pem().as_bytes())
            .method(truelayer_signing::Method::Post)
            .path(webhook.path())
            .headers(
                webhook
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            )
            .body(&webhook.body)
            .build_verifier()
            .verify(webhook.header("tl-signature"))
            .unwrap();
        assert_eq!(jwks_from_jku(&emulator, webhook).await, jwks);

        let body = webhook.json();
        assert_eq!(body["type"], kind);
        assert_eq!(body["event_version"], 1);
        assert_eq!(body["payment_id"], id.as_str());
        assert_eq!(body["payment_method"], json!({ "type": "bank_transfer" }));
        assert_eq!(body["metadata"], json!({ "order": "ord-42" }));
        assert!(is_rfc3339_utc_seconds(body[at].as_str().unwrap()), "{body}");
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        assert!(is_uuid_v4(&event_id), "{event_id}");
        event_ids.push(event_id);
    }
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 3);
    let settled = webhooks[2].json();
    assert_eq!(settled["user_id"], "f9b48c9d-176b-46dd-b2da-fe1a2b77350c");
    assert_eq!(
        settled["payment_source"]["account_holder_name"],
        "Emulated Payer"
    );
    assert!(settled["payment_source"]["id"].is_string());
    assert!(webhooks[0].json().get("user_id").is_none());

    // A tampered body or another path does not verify: the check above is not vacuous.
    let mut tampered = Recorded {
        body: Bytes::from([&webhooks[0].body[..], b" "].concat()),
        ..webhooks[0].clone()
    };
    assert!(verify(&jwks, &tampered).is_err());
    tampered.body = webhooks[0].body.clone();
    tampered.uri = Uri::from_static("/hooks/other");
    assert!(verify(&jwks, &tampered).is_err());

    assert!(receiver.quiet_for(Duration::from_millis(200)).await);
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.webhooks_sent,
            stats.webhooks_delivered,
            stats.webhooks_abandoned
        ),
        (3, 3, 0)
    );
}

#[tokio::test]
async fn failing_a_payment_sends_payment_failed_with_its_stage_and_reason() {
    let emulator = Emulator::start().await.unwrap();
    let mut receiver = receiver_for(&emulator, RecordingServer::builder()).await;
    let id = create_payment(&emulator, &simple_payment()).await;

    // Authorizing has no webhook of its own.
    emulator
        .advance_payment(&id, PaymentStatus::Authorizing)
        .unwrap();
    emulator.fail_payment(&id, "provider_rejected").unwrap();

    let failed = receiver.next().await;
    let body = failed.json();
    assert_eq!(body["type"], "payment_failed");
    assert_eq!(body["payment_id"], id.as_str());
    assert_eq!(body["failure_stage"], "authorizing");
    assert_eq!(body["failure_reason"], "provider_rejected");
    assert!(is_rfc3339_utc_seconds(body["failed_at"].as_str().unwrap()));
    let jwks = jwks_from_jku(&emulator, &failed).await;
    verify(&jwks, &failed).unwrap();
    assert!(receiver.quiet_for(Duration::from_millis(200)).await);

    let view = get_payment(&emulator, &id).await;
    assert_eq!(
        view,
        json!({
            "id": id,
            "status": "failed",
            "failure_stage": "authorizing",
            "failure_reason": "provider_rejected",
        })
    );
    assert_eq!(emulator.payment(&id), Some(view));
    // Failed is final.
    assert!(matches!(
        emulator.fail_payment(&id, "expired"),
        Err(Error::PaymentFailed { .. })
    ));
    assert!(matches!(
        emulator.advance_payment(&id, PaymentStatus::Settled),
        Err(Error::PaymentFailed { payment_id }) if payment_id == id
    ));
    assert!(matches!(
        emulator.fail_payment("no-such-payment", "expired"),
        Err(Error::UnknownPayment { .. })
    ));
}

#[tokio::test]
async fn a_webhook_answered_500_is_retried_with_backoff_and_the_same_event() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_webhook_retry_base(Duration::from_millis(50));
    let server = RecordingServer::builder().answers([Answer::status(500), Answer::status(500)]);
    let mut receiver = receiver_for(&emulator, server).await;
    let id = create_payment(&emulator, &simple_payment()).await;

    emulator
        .advance_payment(&id, PaymentStatus::Authorized)
        .unwrap();
    let attempts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    assert!(receiver.quiet_for(Duration::from_millis(300)).await);

    let jwks = jwks_from_jku(&emulator, &attempts[0]).await;
    for attempt in &attempts {
        assert_eq!(attempt.body, attempts[0].body, "the same body each time");
        verify(&jwks, attempt).unwrap();
    }
    assert_eq!(attempts[0].json()["type"], "payment_authorized");
    // Backoff: 50 ms after the first failure, then 100 ms.
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(50));
    assert!(attempts[2].at - attempts[1].at >= Duration::from_millis(100));
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.webhooks_sent,
            stats.webhooks_delivered,
            stats.webhooks_abandoned
        ),
        (3, 1, 0)
    );
}

#[tokio::test]
async fn a_webhook_never_answered_2xx_is_abandoned_after_the_last_attempt() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_webhook_retry_base(Duration::from_millis(1));
    let server = RecordingServer::builder().answer(Answer::status(503));
    let mut receiver = receiver_for(&emulator, server).await;
    let id = create_payment(&emulator, &simple_payment()).await;

    emulator
        .advance_payment(&id, PaymentStatus::Executed)
        .unwrap();
    // The executed webhook waits for the authorized one to be delivered or abandoned.
    let mut types = Vec::new();
    for _ in 0..2 * WEBHOOK_MAX_ATTEMPTS {
        types.push(
            receiver.next().await.json()["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let n = WEBHOOK_MAX_ATTEMPTS as usize;
    assert!(
        types[..n].iter().all(|t| t == "payment_authorized"),
        "{types:?}"
    );
    assert!(
        types[n..].iter().all(|t| t == "payment_executed"),
        "{types:?}"
    );
    assert!(receiver.quiet_for(Duration::from_millis(300)).await);
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.webhooks_sent,
            stats.webhooks_delivered,
            stats.webhooks_abandoned
        ),
        (2 * u64::from(WEBHOOK_MAX_ATTEMPTS), 0, 2)
    );
}

#[tokio::test]
async fn a_connection_refused_is_retried_too() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_webhook_retry_base(Duration::from_millis(1));
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    emulator.set_webhook_url(Some(&url)).unwrap();
    let id = create_payment(&emulator, &simple_payment()).await;
    emulator
        .advance_payment(&id, PaymentStatus::Authorized)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulator.stats().webhooks_abandoned == 0 {
        assert!(Instant::now() < deadline, "{:?}", emulator.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        emulator.stats().webhooks_sent,
        u64::from(WEBHOOK_MAX_ATTEMPTS)
    );
}

#[tokio::test]
async fn the_schedule_moves_new_payments_to_settled_sending_each_webhook() {
    let emulator = Emulator::start().await.unwrap();
    let mut receiver = receiver_for(&emulator, RecordingServer::builder()).await;
    let before = create_payment(&emulator, &simple_payment()).await;

    emulator.set_payment_schedule(Some(Duration::from_millis(20)));
    let id = create_payment(&emulator, &simple_payment()).await;
    let mut types = Vec::new();
    for _ in 0..3 {
        let webhook = receiver.next().await;
        assert_eq!(webhook.json()["payment_id"], id.as_str());
        types.push(webhook.json()["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        types,
        ["payment_authorized", "payment_executed", "payment_settled"]
    );
    assert!(receiver.quiet_for(Duration::from_millis(200)).await);
    assert_eq!(get_payment(&emulator, &id).await["status"], "settled");
    // Only payments created after the schedule was set move.
    assert_eq!(
        get_payment(&emulator, &before).await["status"],
        "authorization_required"
    );
}

#[tokio::test(start_paused = true)]
async fn the_schedule_runs_on_tokios_clock() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_payment_schedule(Some(Duration::from_secs(3600)));
    let id = create_payment(&emulator, &simple_payment()).await;
    assert_eq!(
        emulator.payment(&id).unwrap()["status"],
        "authorization_required"
    );
    // Four hourly steps, skipped by the paused clock.
    tokio::time::sleep(Duration::from_secs(4 * 3600 + 1)).await;
    assert_eq!(emulator.payment(&id).unwrap()["status"], "settled");
    // With no webhook URL nothing was sent.
    assert_eq!(emulator.stats().webhooks_sent, 0);
}

#[tokio::test]
async fn the_schedule_stops_at_a_manual_failure() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_payment_schedule(Some(Duration::from_millis(100)));
    let id = create_payment(&emulator, &simple_payment()).await;
    let (logs, _guard) = LogCapture::trace();
    emulator.fail_payment(&id, "authorization_failed").unwrap();
    // Five steps: a schedule that kept going would try (and log) a move at each.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = emulator.payment(&id).unwrap();
    assert_eq!(view["status"], "failed");
    assert_eq!(view["failure_stage"], "authorization_required");
    let stops = logs.text().matches("payment schedule stopped").count();
    assert_eq!(
        stops,
        1,
        "the schedule stops at its next step:\n{}",
        logs.text()
    );
}

#[tokio::test]
async fn moves_backwards_or_from_a_final_status_are_refused() {
    let emulator = Emulator::start().await.unwrap();
    let id = create_payment(&emulator, &simple_payment()).await;
    emulator
        .advance_payment(&id, PaymentStatus::Executed)
        .unwrap();
    let why = emulator
        .advance_payment(&id, PaymentStatus::Authorized)
        .unwrap_err();
    assert!(
        matches!(why, Error::PaymentCannotMoveBack { .. }),
        "{why:?}"
    );
    assert!(why.to_string().contains("back"), "{why}");
    assert!(matches!(
        emulator.advance_payment(&id, PaymentStatus::Executed),
        Err(Error::PaymentAlreadyInStatus {
            status: PaymentStatus::Executed,
            ..
        })
    ));
    assert_eq!(emulator.payment(&id).unwrap()["status"], "executed");
    emulator
        .advance_payment(&id, PaymentStatus::Settled)
        .unwrap();
    assert!(emulator.fail_payment(&id, "expired").is_err());
    assert!(
        emulator
            .advance_payment(&id, PaymentStatus::Settled)
            .is_err()
    );
    assert!(
        emulator
            .advance_payment("no-such-payment", PaymentStatus::Authorized)
            .is_err()
    );
    assert_eq!(emulator.payment(&id).unwrap()["status"], "settled");
    // No URL: statuses change, nothing is sent.
    assert_eq!(emulator.stats().webhooks_sent, 0);
}

#[tokio::test]
async fn only_http_webhook_urls_are_accepted() {
    let emulator = Emulator::start().await.unwrap();
    let why = emulator
        .set_webhook_url(Some("https://example.com/hooks"))
        .unwrap_err();
    assert!(matches!(why, Error::WebhookUrlHttps { .. }), "{why:?}");
    let why = why.to_string();
    assert!(why.contains("https") && why.contains("TLS"), "{why}");
    assert!(
        emulator
            .set_webhook_url(Some("ftp://example.com/"))
            .is_err()
    );
    assert!(emulator.set_webhook_url(Some("/relative")).is_err());
    assert!(emulator.set_webhook_url(Some("http://")).is_err());
    assert!(
        emulator
            .set_webhook_url(Some("http://127.0.0.1:1/x"))
            .is_ok()
    );
    assert!(emulator.set_webhook_url(None).is_ok());
}

#[tokio::test]
async fn the_admin_routes_set_the_url_schedule_and_statuses() {
    let emulator = Emulator::start().await.unwrap();
    let mut receiver = RecordingServer::start().await;
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/emulator/{path}", emulator.url());
    let post = |path: String, body: Value| http.post(path).json(&body).send();

    let bad = post(admin("webhooks"), json!({ "url": "https://example.com/" }))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("https"));
    let ok = post(admin("webhooks"), json!({ "url": receiver.url(HOOKS) }))
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);

    let id = create_payment(&emulator, &simple_payment()).await;
    let status = |body: Value| post(admin(&format!("payments/{id}/status")), body);
    let moved = status(json!({ "status": "authorized" })).await.unwrap();
    assert_eq!(moved.status(), 200);
    assert_eq!(
        moved.json::<Value>().await.unwrap(),
        json!({ "id": id, "status": "authorized" })
    );
    assert_eq!(receiver.next().await.json()["type"], "payment_authorized");
    let back = status(json!({ "status": "authorizing" })).await.unwrap();
    assert_eq!(back.status(), 409);
    assert!(back.json::<Value>().await.unwrap()["error"].is_string());
    for body in [
        json!({ "status": "paid" }),
        json!({ "status": "failed" }),
        json!({ "status": "settled", "failure_reason": "expired" }),
        json!({ "state": "settled" }),
    ] {
        let response = status(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    }
    // A body not sent as JSON is refused before it is read (a web page could send it).
    let not_json = http
        .post(admin(&format!("payments/{id}/status")))
        .body("settled")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let not_json = http
        .post(admin(&format!("payments/{id}/status")))
        .header("content-type", "application/json")
        .body("settled")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let unknown = post(
        admin("payments/no-such-payment/status"),
        json!({ "status": "settled" }),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    let failed = status(json!({ "status": "failed", "failure_reason": "insufficient_funds" }))
        .await
        .unwrap();
    assert_eq!(failed.status(), 200);
    assert_eq!(
        failed.json::<Value>().await.unwrap(),
        json!({
            "id": id,
            "status": "failed",
            "failure_stage": "authorized",
            "failure_reason": "insufficient_funds",
        })
    );
    let body = receiver.next().await.json();
    assert_eq!(
        (
            &body["type"],
            &body["failure_stage"],
            &body["failure_reason"]
        ),
        (
            &json!("payment_failed"),
            &json!("authorized"),
            &json!("insufficient_funds")
        )
    );
    assert_eq!(
        status(json!({ "status": "settled" }))
            .await
            .unwrap()
            .status(),
        409
    );

    let schedule = post(admin("payment-schedule"), json!({ "step_millis": 10 }))
        .await
        .unwrap();
    assert_eq!(schedule.status(), 204);
    let scheduled = create_payment(&emulator, &simple_payment()).await;
    for kind in ["payment_authorized", "payment_executed", "payment_settled"] {
        let body = receiver.next().await.json();
        assert_eq!(
            (body["type"].as_str(), body["payment_id"].as_str()),
            (Some(kind), Some(scheduled.as_str()))
        );
    }
    let off = post(admin("payment-schedule"), json!({ "step_millis": null }))
        .await
        .unwrap();
    assert_eq!(off.status(), 204);
    let unscheduled = create_payment(&emulator, &simple_payment()).await;

    let cleared = post(admin("webhooks"), json!({ "url": null }))
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    emulator
        .advance_payment(&unscheduled, PaymentStatus::Settled)
        .unwrap();
    assert!(receiver.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn dropping_the_emulator_stops_retries_and_schedules() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_webhook_retry_base(Duration::from_millis(20));
    let server = RecordingServer::builder().answer(Answer::status(500));
    let mut receiver = receiver_for(&emulator, server).await;
    let id = create_payment(&emulator, &simple_payment()).await;
    emulator.set_payment_schedule(Some(Duration::from_millis(20)));
    let _scheduled = create_payment(&emulator, &simple_payment()).await;
    emulator
        .advance_payment(&id, PaymentStatus::Authorized)
        .unwrap();
    receiver.next().await;
    drop(emulator);
    // Let an attempt already on the wire land, then nothing more arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    receiver.drain();
    assert!(receiver.quiet_for(Duration::from_millis(500)).await);
}

#[tokio::test]
async fn sign_webhook_signs_crafted_webhooks_as_the_emulator_would() {
    let emulator = Emulator::start().await.unwrap();
    let body = br#"{"type":"payment_settled","event_id":"x"}"#;
    let stale = "2021-11-29T11:42:55Z";
    let signature = emulator.sign_webhook("/hooks/truelayer", stale, body);
    let jwks = serde_json::to_vec(&emulator.webhook_jwks()).unwrap();
    let check = |timestamp: &str, path: &str| {
        truelayer_signing::verify_with_jwks(&jwks)
            .method(truelayer_signing::Method::Post)
            .path(path)
            .header("X-Tl-Webhook-Timestamp", timestamp.as_bytes())
            .header("Content-Type", b"application/json")
            .body(body)
            .build_verifier()
            .verify(&signature)
    };
    check(stale, "/hooks/truelayer").unwrap();
    assert!(check("2021-11-29T11:42:56Z", "/hooks/truelayer").is_err());
    assert!(check(stale, "/hooks/other").is_err());
    let header = truelayer_signing::extract_jws_header(&signature).unwrap();
    assert_eq!(header.jku.as_deref(), Some(emulator.webhook_jku().as_str()));
}

#[tokio::test]
async fn webhook_timestamps_follow_the_real_clock_not_the_emulated_one() {
    let emulator = Emulator::start().await.unwrap();
    let mut receiver = receiver_for(&emulator, RecordingServer::builder()).await;
    // Moving the emulator's clock (to expire tokens) must not push webhook timestamps out
    // of every receiver's window.
    emulator.advance_clock(Duration::from_secs(3600));
    let id = create_payment(&emulator, &simple_payment()).await;
    emulator
        .advance_payment(&id, PaymentStatus::Authorized)
        .unwrap();
    let webhook = receiver.next().await;
    let stamped = time::OffsetDateTime::parse(
        webhook.header("x-tl-webhook-timestamp"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let skew = (stamped - time::OffsetDateTime::now_utc())
        .whole_seconds()
        .abs();
    assert!(skew < 60, "the timestamp is {skew} s from now");
}
