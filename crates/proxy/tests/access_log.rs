//! The access log (issue #22): one line per request, written when its answer has been sent,
//! or when the client went away before it (499), with no query, header value or body.

use std::time::Duration;

use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::Proxy;
use truelayer_auth_testkit::emulator::token_cache;
use truelayer_auth_testkit::logs::LogCapture;
use truelayer_auth_testkit::recording::RecordingServer;

mod support;
use support::start;

/// The access-log lines written so far.
fn access_lines(logs: &LogCapture) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|l| l.contains("tlauth::access"))
        .map(str::to_owned)
        .collect()
}

// A current-thread runtime and one worker: every line is written on this thread, where the
// capture listens.
#[tokio::test]
async fn a_request_whose_client_goes_away_is_logged_as_499() {
    let (logs, _guard) = LogCapture::trace();
    let emulator = Emulator::start().await.unwrap();
    let upstream = RecordingServer::echoing_upstream()
        .hold("/v3/payments/slow")
        .start()
        .await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(Proxy::builder(upstream.url(""), tokens)).await;
    let http = reqwest::Client::new();

    let answered = http
        .get(proxy.url("/v3/payments/p-1?secret=IN-QUERY"))
        .header("x-private", "HEADER-VALUE")
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    answered.bytes().await.unwrap();
    // The client gives up while the upstream still holds its request.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        http.get(proxy.url("/v3/payments/slow")).send(),
    )
    .await;
    assert!(gave_up.is_err());
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = access_lines(&logs);
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("path=/v3/payments/p-1 status=200"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("path=/v3/payments/slow status=499"),
        "{}",
        lines[1]
    );
    for line in &lines {
        assert!(
            !line.contains("IN-QUERY") && !line.contains("HEADER-VALUE"),
            "{line}"
        );
        assert!(!line.contains("Bearer"), "{line}");
    }
}
