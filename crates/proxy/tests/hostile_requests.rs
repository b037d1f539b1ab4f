//! Requests a hostile or careless client sends (issue #20): what the proxy strips, what it
//! refuses with a reason, and what it must still forward.

use serde_json::Value;
use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::Proxy;
use truelayer_auth_testkit::emulator::token_cache;

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
