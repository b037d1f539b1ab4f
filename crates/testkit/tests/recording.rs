//! The recording server answers as told and records what reached it: the tests that use it
//! rely on both.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use truelayer_auth_testkit::recording::{Answer, RecordingServer};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(
    client: &HttpClient,
    url: String,
    body: &'static str,
) -> (StatusCode, HeaderMap, Bytes) {
    let request = Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let (parts, body) = client.request(request).await.unwrap().into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn told_answers_come_first_then_the_default_and_every_request_is_recorded() {
    let mut server = RecordingServer::builder()
        .answers([Answer::status(500).body("first")])
        .answer(Answer::status(202).header("x-default", "yes"))
        .header("x-every", "1")
        .start()
        .await;
    let client = client();

    let (status, headers, body) = post(&client, server.url("/one?q=1"), "abc").await;
    assert_eq!((status.as_u16(), &body[..]), (500, &b"first"[..]));
    assert_eq!(headers["x-every"], "1");
    assert!(headers.get("x-default").is_none());
    let (status, headers, _) = post(&client, server.url("/two"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["x-every"], "1");
    assert_eq!(headers["x-default"], "yes");
    server.answer_next([Answer::status(401)]);
    assert_eq!(post(&client, server.url("/three"), "").await.0, 401);
    assert_eq!(post(&client, server.url("/four"), "").await.0, 202);

    let first = server.next().await;
    assert_eq!(first.method, Method::POST);
    assert_eq!(
        (first.uri.to_string(), first.path()),
        ("/one?q=1".into(), "/one")
    );
    assert_eq!((&first.body[..], first.len), (&b"abc"[..], 3));
    assert_eq!(first.header("Content-Length"), "3");
    assert_eq!(server.next().await.path(), "/two");
    let rest: Vec<_> = server.drain().iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(rest, ["/three", "/four"]);
    assert!(server.quiet_for(Duration::from_millis(50)).await);
    assert_eq!(server.requests(), 4);
    assert_eq!(server.connections(), 1, "the client's connection was kept");
}

#[tokio::test]
async fn an_echoing_upstream_describes_each_request_and_keeps_no_body() {
    let mut server = RecordingServer::echoing_upstream().start().await;
    let (status, headers, body) = post(&client(), server.url("/echo?x=1"), "12345").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "kept");
    assert_eq!(headers["x-upstream-hop"], "dropped");
    assert_eq!(headers["connection"], "keep-alive, x-upstream-hop");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/echo?x=1");
    assert_eq!(echo["bytes"], 5);
    assert_eq!(echo["headers"]["content-length"], json!(["5"]));
    let recorded = server.next().await;
    assert!(recorded.body.is_empty(), "bodies are counted, not kept");
    assert_eq!(recorded.len, 5);
    assert_eq!(recorded.echo(), echo);
}

#[tokio::test]
async fn without_keep_alive_each_request_has_its_own_connection() {
    let server = RecordingServer::builder().keep_alive(false).start().await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(post(&client, server.url("/"), "").await.0, 200);
    }
    assert_eq!((server.requests(), server.connections()), (3, 3));
}

#[tokio::test]
async fn a_held_request_is_answered_only_once_released() {
    let server = RecordingServer::builder().hold("/hold").start().await;
    let client = client();
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/hold"));
        async move { post(&client, url, "").await.0 }
    });
    server.held().await;
    assert_eq!(post(&client, server.url("/other"), "").await.0, 200);
    assert!(!pending.is_finished(), "answered before its release");
    server.release();
    assert_eq!(pending.await.unwrap(), 200);
}
