//! The emulator as a client sees it: the token endpoint, JWKS, the Payments stand-in and
//! the admin routes, over loopback.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use truelayer_auth_emulator::{Claims, Emulator, Fault};

async fn token(emulator: &Emulator, scope: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", emulator.client_id()),
            ("client_secret", emulator.client_secret()),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
}

async fn access_token(emulator: &Emulator) -> String {
    let body: Value = token(emulator, "payments").await.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// Signs a request to the emulator with TrueLayer's own crate and the default client's key.
fn tl_signature(emulator: &Emulator, path: &str, key: &str, body: &[u8]) -> String {
    truelayer_signing::sign_with_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )
    .method(truelayer_signing::Method::Post)
    .path(path)
    .header("Idempotency-Key", key.as_bytes())
    .body(body)
    .build_signer()
    .sign()
    .unwrap()
}

async fn signed_post(
    emulator: &Emulator,
    bearer: &str,
    key: &str,
    body: &[u8],
    signature: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("tl-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn create_payment(emulator: &Emulator, bearer: &str) -> reqwest::Response {
    let key = format!("key-{}", fastrand_id());
    let body = json!({ "amount_in_minor": 100, "currency": "GBP" }).to_string();
    let signature = tl_signature(emulator, "/v3/payments", &key, body.as_bytes());
    signed_post(emulator, bearer, &key, body.as_bytes(), &signature).await
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn issues_the_documented_response_with_a_jwt_that_verifies_against_its_jwks() {
    let emulator = Emulator::start().await.unwrap();
    let response = token(&emulator, "payments signupplus").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "payments signupplus");

    let jwt = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));

    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", emulator.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"].as_str(), header.kid.as_deref());
    let decoding =
        DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["payments_api"]);
    validation.set_issuer(&[emulator.url()]);
    let claims = jsonwebtoken::decode::<Claims>(jwt, &decoding, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims.client_id, "emulator-client");
    assert_eq!(claims.scope, ["payments", "signupplus"]);
    assert_eq!(claims.exp - claims.iat, 3600);
}

#[tokio::test]
async fn json_bodies_and_basic_auth_are_accepted_too() {
    let emulator = Emulator::start().await.unwrap();
    let response = reqwest::Client::new()
        .post(emulator.token_url())
        .json(&json!({
            "grant_type": "client_credentials",
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "scope": "payments",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = reqwest::Client::new()
        .post(emulator.token_url())
        .basic_auth(emulator.client_id(), Some(emulator.client_secret()))
        .form(&[("grant_type", "client_credentials"), ("scope", "payments")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn oauth_errors_for_bad_grants_credentials_and_scopes() {
    let emulator = Emulator::start().await.unwrap();
    emulator.add_client("narrow", "narrow-secret", ["payments"]);
    let cases = [
        (
            vec![
                ("grant_type", "password"),
                ("client_id", "narrow"),
                ("client_secret", "narrow-secret"),
                ("scope", "payments"),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![
                ("client_id", "narrow"),
                ("client_secret", "narrow-secret"),
                ("scope", "payments"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "narrow"),
                ("client_secret", "nope"),
                ("scope", "payments"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "ghost"),
                ("client_secret", "x"),
                ("scope", "payments"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "narrow"),
                ("client_secret", "narrow-secret"),
                ("scope", "signupplus"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "narrow"),
                ("client_secret", "narrow-secret"),
                ("scope", "nonsense"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "narrow"),
                ("client_secret", "narrow-secret"),
            ],
            400,
            "invalid_scope",
        ),
    ];
    for (form, status, code) in cases {
        let response = reqwest::Client::new()
            .post(emulator.token_url())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{form:?}");
        assert!(body["error_description"].is_string());
    }
    assert_eq!(emulator.stats().token_errors, 7);
    assert_eq!(emulator.stats().tokens_issued, 0);
}

#[tokio::test]
async fn the_payments_stand_in_accepts_a_fresh_token() {
    let emulator = Emulator::start().await.unwrap();
    let bearer = access_token(&emulator).await;
    let response = create_payment(&emulator, &bearer).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let fetched: Value = reqwest::Client::new()
        .get(format!("{}/v3/payments/{id}", emulator.url()))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["id"], id);
    assert_eq!(fetched["status"], "authorization_required");
}

async fn assert_rejected(emulator: &Emulator, bearer: &str, status: u16, error: &str) {
    let response = create_payment(emulator, bearer).await;
    assert_eq!(response.status(), status, "{error}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(challenge.contains(error), "{challenge}");
}

#[tokio::test]
async fn the_payments_stand_in_rejects_bad_tokens() {
    let emulator = Emulator::start().await.unwrap();

    let expired = emulator.issue_token("emulator-client", &["payments"], 60);
    emulator.advance_clock(Duration::from_secs(61));
    assert_rejected(&emulator, &expired, 401, "error=\"invalid_token\"").await;

    let revoked = access_token(&emulator).await;
    assert_eq!(create_payment(&emulator, &revoked).await.status(), 201);
    emulator.revoke_all_tokens();
    assert_rejected(&emulator, &revoked, 401, "error=\"invalid_token\"").await;
    let after_revocation = access_token(&emulator).await;
    assert_eq!(
        create_payment(&emulator, &after_revocation).await.status(),
        201
    );
    assert!(emulator.revoke_token(&after_revocation));
    assert_rejected(&emulator, &after_revocation, 401, "error=\"invalid_token\"").await;

    let wrong_scope = emulator.issue_token("emulator-client", &["signupplus"], 600);
    assert_rejected(&emulator, &wrong_scope, 403, "insufficient_scope").await;

    let good = access_token(&emulator).await;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert_rejected(&emulator, &parts.join("."), 401, "error=\"invalid_token\"").await;

    let other = Emulator::start().await.unwrap();
    let foreign = access_token(&other).await;
    assert_rejected(&emulator, &foreign, 401, "error=\"invalid_token\"").await;

    let response = reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn faults_are_served_in_order_and_counted() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::unavailable(), Fault::rate_limited(3)]);
    assert_eq!(token(&emulator, "payments").await.status(), 503);
    let limited = token(&emulator, "payments").await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "3");
    assert_eq!(token(&emulator, "payments").await.status(), 200);
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.token_requests,
            stats.faults_served,
            stats.tokens_issued
        ),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn the_admin_routes_control_faults_lifetime_and_secrets() {
    let emulator = Emulator::start().await.unwrap();
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/emulator/{path}", emulator.url());

    let r = http
        .post(admin("faults"))
        .json(&json!({ "faults": [{ "kind": "status", "status": 500 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(token(&emulator, "payments").await.status(), 500);

    http.post(admin("token-lifetime"))
        .json(&json!({ "seconds": 20 }))
        .send()
        .await
        .unwrap();
    let body: Value = token(&emulator, "payments").await.json().await.unwrap();
    assert_eq!(body["expires_in"], 20);

    let rotated: Value = http
        .post(admin("clients/emulator-client/rotate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(
        rotated["client_secret"].as_str().unwrap(),
        emulator.client_secret()
    );
    assert_eq!(token(&emulator, "payments").await.status(), 401);

    let stats: Value = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["token_requests"], 3);
}

#[tokio::test]
async fn a_dropped_connection_gets_no_answer() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::DropConnection]);
    let err = reqwest::Client::new()
        .post(emulator.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout());
    // The emulator keeps serving on new connections.
    assert_eq!(token(&emulator, "payments").await.status(), 200);
}

#[tokio::test]
async fn posts_need_a_valid_signature_from_a_registered_key_and_an_idempotency_key() {
    let emulator = Emulator::start().await.unwrap();
    let bearer = access_token(&emulator).await;
    let body = br#"{"amount_in_minor":100,"currency":"GBP"}"#;
    let good = tl_signature(&emulator, "/v3/payments", "k-1", body);
    let problem = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let json: Value = response.json().await.unwrap();
        json["detail"].as_str().unwrap().to_owned()
    };
    // Unsigned, signed over another body, another key's signature, no Idempotency-Key.
    let unsigned = reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .bearer_auth(&bearer)
        .header("idempotency-key", "k-1")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert!(
        problem(unsigned)
            .await
            .contains("Tl-Signature header is missing")
    );
    let other_body = signed_post(&emulator, &bearer, "k-1", b"{}", &good).await;
    assert!(problem(other_body).await.contains("does not match"));
    let stranger = truelayer_signing::sign_with_pem(
        emulator.signing_key_id(),
        include_bytes!("../../signing/tests/vectors/ec512-private.pem"),
    )
    .method(truelayer_signing::Method::Post)
    .path("/v3/payments")
    .header("Idempotency-Key", b"k-1")
    .body(body)
    .build_signer()
    .sign()
    .unwrap();
    let forged = signed_post(&emulator, &bearer, "k-1", body, &stranger).await;
    assert!(problem(forged).await.contains("does not match"));
    let no_key = reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .bearer_auth(&bearer)
        .header("tl-signature", &good)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert!(problem(no_key).await.contains("Idempotency-Key"));
    assert_eq!(emulator.stats().signature_rejections, 4);
    assert_eq!(emulator.stats().payments_created, 0);

    // A key registered for another client does not sign for this one.
    let other = truelayer_signing::sign_with_pem(
        "vector-kid",
        include_bytes!("../../signing/tests/vectors/ec512-private.pem"),
    )
    .method(truelayer_signing::Method::Post)
    .path("/v3/payments")
    .header("Idempotency-Key", b"k-1")
    .body(body)
    .build_signer()
    .sign()
    .unwrap();
    emulator.add_client("other-client", "other-secret", ["payments"]);
    emulator
        .register_signing_key(
            "other-client",
            "vector-kid",
            include_str!("../../signing/tests/vectors/ec512-public.pem"),
        )
        .unwrap();
    let wrong_client = signed_post(&emulator, &bearer, "k-1", body, &other).await;
    assert!(problem(wrong_client).await.contains("not a registered key"));
    assert_eq!(
        signed_post(&emulator, &bearer, "k-1", body, &good)
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn idempotency_keys_repeat_answers_and_refuse_reuse_and_concurrency() {
    let emulator = Emulator::start().await.unwrap();
    let bearer = access_token(&emulator).await;
    let body = br#"{"amount_in_minor":100,"currency":"GBP"}"#;
    let signature = tl_signature(&emulator, "/v3/payments", "same-key", body);
    let first = signed_post(&emulator, &bearer, "same-key", body, &signature).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // The same key and body: the first answer again, and no second payment.
    let again = signed_post(&emulator, &bearer, "same-key", body, &signature).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(emulator.stats().payments_created, 1);
    // The same key with another body: 422.
    let other_body = br#"{"amount_in_minor":999,"currency":"GBP"}"#;
    let other = tl_signature(&emulator, "/v3/payments", "same-key", other_body);
    let reused = signed_post(&emulator, &bearer, "same-key", other_body, &other).await;
    assert_eq!(reused.status(), 422);
    // The same key while the first request is still in flight: 409.
    emulator.set_api_latency(Duration::from_millis(500));
    let slow = tl_signature(&emulator, "/v3/payments", "slow-key", body);
    let (a, b) = tokio::join!(
        signed_post(&emulator, &bearer, "slow-key", body, &slow),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            signed_post(&emulator, &bearer, "slow-key", body, &slow).await
        }
    );
    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 409);
    assert_eq!(emulator.stats().payments_created, 2);

    // A client that gives up mid-request frees its key: the retry is served, not refused.
    let gave_up = tl_signature(&emulator, "/v3/payments", "gave-up-key", body);
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        signed_post(&emulator, &bearer, "gave-up-key", body, &gave_up),
    )
    .await;
    assert!(cut.is_err(), "the client hung up during the latency");
    tokio::time::sleep(Duration::from_millis(100)).await; // the server sees the close
    emulator.set_api_latency(Duration::ZERO);
    let retry = signed_post(&emulator, &bearer, "gave-up-key", body, &gave_up).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(emulator.stats().payments_created, 3);
}

#[tokio::test]
async fn test_signature_answers_204_or_401_as_the_sandbox_does() {
    let emulator = Emulator::start().await.unwrap();
    let body = b"{}";
    let signature = tl_signature(&emulator, "/test-signature", "k", body);
    let post = |signature: String| {
        reqwest::Client::new()
            .post(format!("{}/test-signature", emulator.url()))
            .header("idempotency-key", "k")
            .header("tl-signature", signature)
            .body(body.to_vec())
            .send()
    };
    assert_eq!(post(signature.clone()).await.unwrap().status(), 204);
    let tampered = signature.replacen('A', "B", 1).replacen("..A", "..B", 1);
    let tampered = if tampered == signature {
        format!("{signature}x")
    } else {
        tampered
    };
    assert_eq!(post(tampered).await.unwrap().status(), 401);
}
