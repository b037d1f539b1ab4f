//! Requests a hostile or careless client sends (issue #20): what the proxy strips, what it
//! refuses with a reason, and what it must still forward.

use serde_json::Value;
use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::Proxy;
use truelayer_auth_testkit::emulator::{signer, token_cache};

mod support;
use support::{recorder, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_header_named_in_connection_is_dropped_however_many_there_are() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let names: Vec<String> = (0..60).map(|i| format!("x-hop-{i}")).collect();
    let mut request = reqwest::Client::new()
        .get(proxy.url("/v3/payments/p-1"))
        .header("connection", format!("keep-alive, {}", names.join(", ")))
        .header("x-end-to-end", "kept");
    for name in &names {
        request = request.header(name, "must not pass");
    }
    let echo: Value = request.send().await.unwrap().json().await.unwrap();
    let headers = echo["headers"].as_object().unwrap();
    let leaked: Vec<&String> = headers.keys().filter(|h| h.starts_with("x-hop-")).collect();
    assert!(
        leaked.is_empty(),
        "named in Connection, yet forwarded: {leaked:?}"
    );
    assert_eq!(headers["x-end-to-end"], serde_json::json!(["kept"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_only_begin_like_the_admin_path_are_forwarded() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(Proxy::builder(upstream.url(""), tokens)).await;
    let http = reqwest::Client::new();
    for path in ["/.tlauthz/healthz", "/.tlauthv3/payments", "/.tlauth.json"] {
        let response = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["uri"], path, "forwarded to the upstream");
    }
    // The admin path itself, and what lies under it, are the proxy's.
    let health = http
        .get(proxy.url("/.tlauth/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    for path in ["/.tlauth", "/.tlauth/", "/.tlauth/nope"] {
        let local = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(local.status(), 404, "{path}");
        assert_eq!(local.json::<Value>().await.unwrap()["error"], "not_found");
    }
    assert_eq!(
        upstream.requests(),
        3,
        "only the three lookalikes went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_path_given_with_a_trailing_slash_serves_its_endpoints() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(Proxy::builder(upstream.url(""), tokens).admin_path("/_proxy/")).await;
    let health = reqwest::get(proxy.url("/_proxy/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["ready"], true);
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_spelled_in_another_case_is_refused_not_forwarded_unsigned() {
    let emulator = Emulator::start().await.unwrap();
    let mut upstream = recorder().await;
    let proxy =
        start(Proxy::builder(upstream.url(""), token_cache(&emulator)).signer(signer(&emulator)))
            .await;
    let http = reqwest::Client::new();
    // hyper takes `post` as an extension method: the signing layer would not sign it, the
    // bearer layer would still authorize it, and an upstream that reads methods without
    // regard to case would take it for a POST.
    for (sent, canonical) in [("post", "POST"), ("Delete", "DELETE"), ("get", "GET")] {
        let method = reqwest::Method::from_bytes(sent.as_bytes()).unwrap();
        let response = http
            .request(method, proxy.url("/v3/payments"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{sent}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "method_not_canonical", "{sent}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{canonical}`")), "{message}");
    }
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    // Spelled as standard, the same request is signed and forwarded.
    let response = http
        .post(proxy.url("/v3/payments"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = upstream.next().await;
    assert_eq!(forwarded.method, "POST");
    forwarded.header("tl-signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idempotency_keys_are_a_400_naming_the_header_signed_or_not() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let signed =
        start(Proxy::builder(upstream.url(""), token_cache(&emulator)).signer(signer(&emulator)))
            .await;
    let plain = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let http = reqwest::Client::new();
    for proxy in [&signed, &plain] {
        // Which of the two the upstream would read is anyone's guess.
        let response = http
            .post(proxy.url("/v3/payments"))
            .header("idempotency-key", "key-a")
            .header("idempotency-key", "key-b")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "duplicate_header", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{body}"
        );
    }
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_path_and_those_under_it_get_403_and_lookalikes_are_forwarded() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy =
        start(Proxy::builder(upstream.url(""), token_cache(&emulator)).refuse_path("/emulator/"))
            .await;
    let http = reqwest::Client::new();
    for path in ["/emulator", "/emulator/", "/emulator/revoke?all=1"] {
        let refused = http.post(proxy.url(path)).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "path_not_forwarded", "{path}: {body}");
    }
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    let lookalike = http.get(proxy.url("/emulators/1")).send().await.unwrap();
    assert_eq!(lookalike.status(), 200);
    assert_eq!(upstream.requests(), 1);
    let everything = Proxy::builder(upstream.url(""), token_cache(&emulator))
        .refuse_path("/")
        .build()
        .unwrap_err();
    assert!(
        everything.to_string().contains("refuse_path"),
        "{everything}"
    );
}
