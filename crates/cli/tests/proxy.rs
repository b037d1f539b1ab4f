//! `tlauth proxy` as a process, in front of the emulator and of a recording upstream.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::recording::RecordingServer;

struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tlauth"))
            .arg("proxy")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TRUELAYER_ENV")
            .env_remove("TRUELAYER_CLIENT_ID")
            .env_remove("TRUELAYER_CLIENT_SECRET")
            .env_remove("TRUELAYER_SECRET_ID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the proxy exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("tlauth: proxy listening on http://") {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the proxy never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proxy { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulator_env(emulator: &Emulator) -> Vec<(&'static str, String)> {
    vec![
        ("TRUELAYER_ENV", emulator.url()),
        ("TRUELAYER_CLIENT_ID", emulator.client_id().to_owned()),
        (
            "TRUELAYER_CLIENT_SECRET",
            emulator.client_secret().to_owned(),
        ),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An upstream that records what reaches it: it echoes requests, counts streamed uploads
/// without holding them, and holds requests to `/hold` until told to answer.
async fn recorder() -> RecordingServer {
    RecordingServer::echoing_upstream()
        .hold("/hold")
        .start()
        .await
}

async fn json_of<B: hyper::body::Body>(
    response: Response<B>,
) -> (StatusCode, http::HeaderMap, Value)
where
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_configured_it_fronts_the_embedded_emulator_and_signs() {
    // The README's example: `tlauth proxy`, then a POST with curl, and a payment is made.
    let proxy = Proxy::start(&[], &[]);
    let created = reqwest::Client::new()
        .post(proxy.url("/v3/payments"))
        .json(&json!({ "amount_in_minor": 100, "currency": "GBP" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_payments_stand_in_signed_with_the_configured_key() {
    let emulator = Emulator::start().await.unwrap();
    let key_file =
        std::env::temp_dir().join(format!("tlauth-proxy-key-{}.pem", std::process::id()));
    std::fs::write(&key_file, emulator.signing_key_pem()).unwrap();
    let mut env = emulator_env(&emulator);
    env.push(("TRUELAYER_SIGNING_KEY_FILE", key_file.display().to_string()));
    env.push((
        "TRUELAYER_SIGNING_KEY_ID",
        emulator.signing_key_id().to_owned(),
    ));
    let proxy = Proxy::start(&["--upstream", &emulator.url()], &pairs(&env));
    let http = reqwest::Client::new();
    let created = http
        .post(proxy.url("/v3/payments"))
        .header("authorization", "Bearer caller-supplied-is-replaced")
        .json(&json!({ "amount_in_minor": 100, "currency": "GBP" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["via"], "1.1 tlauth");
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fetched = http
        .get(proxy.url(&format!("/v3/payments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let health: Value = http
        .get(proxy.url("/.tlauth/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        !health.to_string().contains("eyJ"),
        "health never shows the token"
    );
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.tokens_issued,
            stats.api_requests,
            stats.api_rejections,
            stats.signature_rejections
        ),
        (1, 2, 0, 0)
    );
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_without_growing_the_proxy() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let env = emulator_env(&emulator);
    let proxy = Proxy::start(&["--upstream", &upstream.url("")], &pairs(&env));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let warm = client
        .get(proxy.url("/warm").parse().unwrap())
        .await
        .unwrap();
    json_of(warm).await;
    let before = proxy.peak_rss_kib();

    const MIB: usize = 1024 * 1024;
    let chunk = Bytes::from(vec![7u8; MIB]);
    let uploader = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(proxy.url("/sink"))
        .body(Chunks { chunk, left: 100 })
        .unwrap();
    let (status, _, echo) = json_of(uploader.request(request).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(echo["bytes"], 100 * MIB as u64, "every byte arrived");
    let grown_kib = proxy.peak_rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 8 * 1024,
        "the proxy's peak memory grew by {grown_kib} KiB for a 100 MiB upload"
    );
}

/// `left` copies of `chunk`, streamed one frame at a time.
struct Chunks {
    chunk: Bytes,
    left: usize,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let env = emulator_env(&emulator);
    let proxy = Proxy::start(&["--upstream", &upstream.url("")], &pairs(&env));
    let in_flight = tokio::spawn({
        let url = proxy.url("/hold");
        async move { reqwest::get(url).await.unwrap() }
    });
    upstream.held().await;
    let pid = proxy.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    upstream.release();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200, "the in-flight request finished");
    let mut proxy = proxy;
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_logs_have_no_colour_codes_and_json_logs_are_json() {
    for (format, check) in [
        (
            "text",
            (|line: &str| !line.contains('\u{1b}')) as fn(&str) -> bool,
        ),
        ("json", |line: &str| {
            serde_json::from_str::<Value>(line).is_ok()
        }),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tlauth"))
            .args(["--log-format", format, "token"])
            .env_remove("TRUELAYER_ENV")
            .env_remove("TRUELAYER_CLIENT_ID")
            .env_remove("TRUELAYER_CLIENT_SECRET")
            .env("RUST_LOG", "truelayer_auth=debug")
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let log_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("tlauth:"))
            .collect();
        assert!(!log_lines.is_empty(), "{format}: debug logs were written");
        for line in log_lines {
            assert!(check(line), "{format}: {line:?}");
        }
    }
}

#[test]
fn a_non_loopback_address_needs_an_explicit_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_tlauth"))
        .args(["proxy", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_admin_routes_are_not_forwarded_when_the_proxy_chose_the_emulator() {
    let http = reqwest::Client::new();
    // The demo: nothing configured, the embedded emulator is the upstream. Anything that
    // reaches the proxy must not rotate its client's secret or revoke its tokens.
    let embedded = Proxy::start(&[], &[]);
    let mut routes: Vec<(String, String)> = truelayer_auth_emulator::ADMIN_ROUTES
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (method, path) = (words.next()?, words.next()?);
            path.starts_with('/')
                .then(|| (method.to_owned(), path.replace("{id}", "emulator-client")))
        })
        // The webhook JWKS is public: receivers fetch it.
        .filter(|(_, path)| path != "/webhooks/jwks")
        .collect();
    assert_eq!(routes.len(), 24, "{routes:?}");
    routes.push(("POST".to_owned(), "/emulator".to_owned()));
    for (method, path) in routes {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let refused = http
            .request(method, embedded.url(&path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "path_not_forwarded", "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("/emulator"),
            "{body}"
        );
    }
    let created = http
        .post(embedded.url("/v3/payments"))
        .json(&json!({ "amount_in_minor": 100, "currency": "GBP" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "its token and secret still work");
    // An emulator the proxy found from a loopback environment is fronted the same way.
    let emulator = Emulator::start().await.unwrap();
    let env = emulator_env(&emulator);
    let derived = Proxy::start(&[], &pairs(&env));
    let refused = http
        .post(derived.url("/emulator/clients/emulator-client/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    truelayer_auth_testkit::emulator::access_token(&emulator).await;
}
