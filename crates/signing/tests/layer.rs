//! The signing layer in a hyper-util stack with the bearer layer, against the emulator, which
//! checks signatures with its own implementation (RustCrypto `p521`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use truelayer_auth::Environment;
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{
    BodyTimeout, IDEMPOTENCY_KEY, Signer, SignerFuture, SignerSource, SigningError, SigningLayer,
    TL_SIGNATURE,
};
use truelayer_auth_testkit::emulator::{register_new_signer, signer, token_cache};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, NoReplay};

type HyperClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// The hyper client, recording the headers of every request it sends.
#[derive(Clone)]
struct Recording {
    client: HyperClient,
    sent: Arc<Mutex<Vec<HeaderMap>>>,
}

fn recording(sent: Arc<Mutex<Vec<HeaderMap>>>) -> Recording {
    Recording {
        client: Client::builder(TokioExecutor::new()).build_http(),
        sent,
    }
}

impl Service<Request<Full<Bytes>>> for Recording {
    type Response = <HyperClient as Service<Request<Full<Bytes>>>>::Response;
    type Error = <HyperClient as Service<Request<Full<Bytes>>>>::Error;
    type Future = <HyperClient as Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.sent.lock().unwrap().push(request.headers().clone());
        self.client.call(request)
    }
}

fn payment(emulator: &Emulator, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_post_through_bearer_and_signing_is_accepted_in_either_order() {
    let emulator = Emulator::start().await.unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let signing_outside = ServiceBuilder::new()
        .layer(SigningLayer::new(signer(&emulator)))
        .layer(BearerAuthLayer::new(token_cache(&emulator)).replay_policy(CloneBodies))
        .service(recording(sent.clone()));
    let bearer_outside = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(token_cache(&emulator)).replay_policy(CloneBodies))
        .layer(SigningLayer::new(signer(&emulator)))
        .service(recording(sent.clone()));
    let a = signing_outside
        .oneshot(payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::CREATED);
    let b = bearer_outside
        .oneshot(payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::CREATED);
    for headers in sent.lock().unwrap().iter() {
        let key = headers[IDEMPOTENCY_KEY].to_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(key).unwrap().get_version_num(), 4);
        assert!(headers.contains_key(TL_SIGNATURE));
    }
    assert_eq!(emulator.stats().payments_created, 2);
}

#[tokio::test]
async fn a_replay_after_a_401_keeps_its_idempotency_key_and_is_signed_in_either_order() {
    for signing_outside in [true, false] {
        let emulator = Emulator::start().await.unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let bearer = BearerAuthLayer::new(token_cache(&emulator)).replay_policy(CloneBodies);
        let signing = SigningLayer::new(signer(&emulator));
        let send = |request| {
            let client = recording(sent.clone());
            let bearer = bearer.clone();
            let signing = signing.clone();
            async move {
                if signing_outside {
                    signing
                        .layer(bearer.layer(client))
                        .oneshot(request)
                        .await
                        .unwrap()
                } else {
                    bearer
                        .layer(signing.layer(client))
                        .oneshot(request)
                        .await
                        .unwrap()
                }
            }
        };
        assert_eq!(send(payment(&emulator, "{}")).await.status(), 201);
        emulator.revoke_all_tokens();
        sent.lock().unwrap().clear();
        let response = send(payment(&emulator, r#"{"amount_in_minor":1}"#)).await;
        assert_eq!(response.status(), 201, "signing outside: {signing_outside}");
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "the request and its replay");
        assert_eq!(
            sent[0][IDEMPOTENCY_KEY], sent[1][IDEMPOTENCY_KEY],
            "the replay is the same logical request (signing outside: {signing_outside})"
        );
        let stats = emulator.stats();
        assert_eq!((stats.api_rejections, stats.signature_rejections), (1, 0));
        assert_eq!(stats.payments_created, 2);
    }
}

#[tokio::test]
async fn the_callers_idempotency_key_is_kept_and_get_passes_untouched() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            seen.lock().unwrap().push(request.headers().clone());
            async { Ok::<_, Infallible>(http::Response::new(())) }
        })
    };
    let client = SigningLayer::new(Signer::generate("kid")).layer(recorder);
    let post = Request::post("http://api/v3/payments")
        .header("idempotency-key", "mine-1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    client.clone().oneshot(post).await.unwrap();
    let get = Request::get("http://api/v3/payments/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.oneshot(get).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0][IDEMPOTENCY_KEY], "mine-1");
    assert!(seen[0].contains_key(TL_SIGNATURE));
    assert!(!seen[1].contains_key(IDEMPOTENCY_KEY) && !seen[1].contains_key(TL_SIGNATURE));
}

#[tokio::test]
async fn streaming_bodies_are_collected_and_signed_and_too_large_ones_never_sent() {
    let emulator = Emulator::start().await.unwrap();
    let stack = |limit| {
        ServiceBuilder::new()
            // A streaming body cannot be replayed.
            .layer(BearerAuthLayer::new(token_cache(&emulator)).replay_policy(NoReplay))
            .layer(SigningLayer::new(signer(&emulator)).max_body_bytes(limit))
            .service(Client::builder(TokioExecutor::new()).build_http::<Chunks>())
    };
    let streamed = || {
        let chunks = ["{\"amount_in_minor\":", "100,", "\"currency\":\"GBP\"}"];
        Request::post(format!("{}/v3/payments", emulator.url()))
            .body(Chunks(
                chunks.map(|c| Bytes::from_static(c.as_bytes())).into(),
            ))
            .unwrap()
    };
    let response = stack(1024).oneshot(streamed()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let err = stack(10).oneshot(streamed()).await.unwrap_err();
    match err {
        truelayer_auth_tower::BearerAuthError::Service(SigningError::BodyTooLarge { limit }) => {
            assert_eq!(limit, 10)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        emulator.stats().api_requests,
        1,
        "the large one was never sent"
    );
}

/// A body that arrives in chunks, with no length known in advance.
struct Chunks(std::collections::VecDeque<Bytes>);

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        Chunks([bytes].into())
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// A store whose signing key is rotated: it serves the old key until asked to reload.
#[derive(Clone)]
struct Rotating {
    old: Signer,
    new: Signer,
    reloaded: Arc<AtomicUsize>,
}

impl SignerSource for Rotating {
    fn signer(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        let current = if self.reloaded.load(Ordering::SeqCst) > 0 {
            self.new.clone()
        } else {
            self.old.clone()
        };
        Box::pin(async move { Ok(current) })
    }
    fn reload(&self, request: &http::Extensions) -> SignerFuture<'_> {
        self.reloaded.fetch_add(1, Ordering::SeqCst);
        self.signer(request)
    }
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up_after_a_signature_rejection() {
    let emulator = Emulator::start().await.unwrap();
    // TrueLayer knows only the new key; the store still serves the old one.
    let new = register_new_signer(&emulator, emulator.client_id(), "rotated-key");
    let source = Rotating {
        old: Signer::generate("retired-key"),
        new,
        reloaded: Arc::new(AtomicUsize::new(0)),
    };
    let client = ServiceBuilder::new()
        .layer(SigningLayer::new(source.clone()))
        .layer(BearerAuthLayer::new(token_cache(&emulator)).replay_policy(CloneBodies))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let response = client.oneshot(payment(&emulator, "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(source.reloaded.load(Ordering::SeqCst), 1);
    let stats = emulator.stats();
    assert_eq!(stats.payments_created, 1);
    assert!(stats.signature_rejections >= 1);
}

#[tokio::test]
async fn what_the_layer_sends_verifies_with_truelayers_crate() {
    let signer = Signer::generate("layer-kid");
    let public = signer.public_key_pem().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                seen.lock().unwrap().push((parts, body));
                Ok::<_, Infallible>(http::Response::new(()))
            }
        })
    };
    let client = SigningLayer::new(signer)
        .sign_header("Content-Type")
        .layer(recorder);
    let request =
        Request::post("https://api.truelayer-sandbox.com/v3/payments/p-1/actions/cancel/")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"reason":"x"}"#)))
            .unwrap();
    client.oneshot(request).await.unwrap();
    let (parts, body) = seen.lock().unwrap().pop().unwrap();
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    truelayer_signing::verify_with_pem(public.as_bytes())
        .method(truelayer_signing::Method::Post)
        .path(parts.uri.path())
        .headers(headers)
        .require_header("Idempotency-Key")
        .require_header("Content-Type")
        .body(&body)
        .build_verifier()
        .verify(parts.headers[TL_SIGNATURE].to_str().unwrap())
        .unwrap();
}

/// A store read again on every call, as a secret store is: a new `Signer` each time, parsed
/// from whatever PEM it holds now.
#[derive(Clone)]
struct Store {
    kid: &'static str,
    pem: Arc<Mutex<zeroize::Zeroizing<String>>>,
    reloads: Arc<AtomicUsize>,
}

impl Store {
    fn new(kid: &'static str, key: &Signer) -> Self {
        Store {
            kid,
            pem: Arc::new(Mutex::new(key.private_key_pem().unwrap())),
            reloads: Arc::default(),
        }
    }
    fn rotate(&self, key: &Signer) {
        *self.pem.lock().unwrap() = key.private_key_pem().unwrap();
    }
}

impl SignerSource for Store {
    fn signer(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        let signer = Signer::from_pem(self.kid, self.pem.lock().unwrap().as_bytes());
        Box::pin(async move { Ok(signer?) })
    }
    fn reload(&self, request: &http::Extensions) -> SignerFuture<'_> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        self.signer(request)
    }
}

/// An upstream that accepts only signatures by `key`, and counts what it was sent.
fn checking(
    key: &Signer,
    on_call: impl Fn(usize) + Clone + Send + 'static,
) -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = http::Response<()>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let verifier =
        truelayer_auth_signing::Verifier::from_public_pem(key.public_key_pem().unwrap().as_bytes())
            .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = service_fn(move |request: Request<Full<Bytes>>| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        on_call(n);
        let verifier = verifier.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes();
            let key = parts.headers[IDEMPOTENCY_KEY].clone();
            let signable = truelayer_auth_signing::Signable::new("POST", parts.uri.path())
                .header("Idempotency-Key", key.as_bytes())
                .body(&body);
            let signature = parts.headers[TL_SIGNATURE].to_str().unwrap();
            let status = match verifier.verify(&signable, signature) {
                Ok(_) => StatusCode::CREATED,
                Err(_) => StatusCode::UNAUTHORIZED,
            };
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    (service, calls)
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/v3/payments")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

#[tokio::test]
async fn a_401_with_the_key_unchanged_in_the_store_is_not_sent_again() {
    // The 401 is about something else (a revoked token): reading the store again gives the
    // same key as a new `Signer`, which must not count as a rotation.
    let key = Signer::generate("kid-1");
    let store = Store::new("kid-1", &key);
    let (upstream, calls) = checking(&Signer::generate("kid-1"), |_| {});
    let response = SigningLayer::new(store.clone())
        .layer(upstream)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(store.reloads.load(Ordering::SeqCst), 1, "read again once");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "and not sent again");
}

#[tokio::test]
async fn a_request_rejected_after_another_picked_up_the_new_key_is_resent_without_a_reload() {
    // The store keeps its kid; the key under it is what rotates.
    let (old, new) = (Signer::generate("kid"), Signer::generate("kid"));
    let store = Store::new("kid", &old);
    let layer = SigningLayer::new(store.clone());
    // The first request uses up the kid's reload budget without finding a new key.
    let (upstream, _) = checking(&new, |_| {});
    let first = layer.layer(upstream).oneshot(post()).await.unwrap();
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(store.reloads.load(Ordering::SeqCst), 1);
    // Then the store is rotated while the next request, signed with the old key, is out.
    let rotated = store.clone();
    let new_pem = new.clone();
    let (upstream, calls) = checking(&new, move |n| {
        if n == 1 {
            rotated.rotate(&new_pem);
        }
    });
    let response = layer.layer(upstream).oneshot(post()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "re-signed and resent"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        store.reloads.load(Ordering::SeqCst),
        1,
        "the new key came from the store as it is now, not from a reload"
    );
}

#[tokio::test]
async fn a_signed_header_with_two_values_is_refused_and_nothing_is_sent() {
    let key = Signer::generate("kid-1");
    let (upstream, calls) = checking(&key, |_| {});
    let mut request = post();
    request
        .headers_mut()
        .append(IDEMPOTENCY_KEY, "one".parse().unwrap());
    request
        .headers_mut()
        .append(IDEMPOTENCY_KEY, "two".parse().unwrap());
    let err = SigningLayer::new(key)
        .layer(upstream)
        .oneshot(request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::Sign(truelayer_auth_signing::SignatureError::DuplicateHeader { .. })
        ),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// One signing key per merchant, picked by the request's `CacheKey`.
#[derive(Clone)]
struct PerMerchant(Arc<std::collections::HashMap<truelayer_auth::CacheKey, Signer>>);

impl SignerSource for PerMerchant {
    fn signer(&self, request: &http::Extensions) -> SignerFuture<'_> {
        let signer = request
            .get::<truelayer_auth::CacheKey>()
            .and_then(|key| self.0.get(key))
            .cloned();
        Box::pin(async move { signer.ok_or_else(|| "no signing key for this merchant".into()) })
    }
}

#[tokio::test]
async fn one_layer_signs_each_merchants_requests_with_its_own_key() {
    let env = Environment::custom("http://127.0.0.1:1").unwrap();
    let merchants: Vec<_> = (0..3)
        .map(|i| {
            let key = truelayer_auth::CacheKey::new(
                env.clone(),
                format!("m-{i}"),
                truelayer_auth::Scopes::payments(),
            );
            (key, Signer::generate(format!("kid-{i}")))
        })
        .collect();
    let source = PerMerchant(Arc::new(merchants.iter().cloned().collect()));
    let layer = SigningLayer::new(source);
    for (key, signer) in &merchants {
        let (upstream, calls) = checking(signer, |_| {});
        let mut request = post();
        request.extensions_mut().insert(key.clone());
        let response = layer.layer(upstream).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{key:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
    // A request naming no merchant is not signed, and not sent.
    let (upstream, calls) = checking(&merchants[0].1, |_| {});
    let err = layer.layer(upstream).oneshot(post()).await.unwrap_err();
    assert!(matches!(err, SigningError::Signer(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A body whose parts arrive when a sender sends them: it stalls while the sender is kept
/// and sends nothing, and ends when the sender is dropped.
struct Piped(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

fn piped() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Piped) {
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    (send, Piped(receive))
}

impl From<Bytes> for Piped {
    fn from(bytes: Bytes) -> Self {
        let (send, body) = piped();
        send.send(bytes).unwrap();
        body
    }
}

impl http_body::Body for Piped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// An upstream taking `Piped` bodies, counting its calls.
fn counting() -> (
    impl Service<Request<Piped>, Response = http::Response<()>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = service_fn(move |_: Request<Piped>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(())) }
    });
    (service, calls)
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_fails_at_the_idle_timeout_and_nothing_is_sent() {
    let (upstream, calls) = counting();
    let (send, body) = piped();
    send.send(Bytes::from_static(b"{\"amount")).unwrap();
    let request = Request::post("/v3/payments").body(body).unwrap();
    let started = tokio::time::Instant::now();
    // The defaults: 10 s idle, 30 s in all. (The outer limit turns a hang into a failure.)
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        SigningLayer::new(Signer::generate("kid"))
            .layer(upstream)
            .oneshot(request),
    )
    .await
    .expect("the body's wait is bounded");
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::BodyTimedOut {
                limit: BodyTimeout::Idle(idle)
            } if idle == Duration::from_secs(10)
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(err.to_string().contains("idle timeout"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
    drop(send);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_trickles_fails_at_the_total_timeout() {
    let (upstream, calls) = counting();
    let (send, body) = piped();
    // A part every 5 s: always within the 10 s idle timeout, never done.
    tokio::spawn(async move {
        while send.send(Bytes::from_static(b" ")).is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let request = Request::post("/v3/payments").body(body).unwrap();
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        SigningLayer::new(Signer::generate("kid"))
            .layer(upstream)
            .oneshot(request),
    )
    .await
    .expect("the body's wait is bounded");
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::BodyTimedOut {
                limit: BodyTimeout::Total(total)
            } if total == Duration::from_secs(30)
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert!(err.to_string().contains("total timeout"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn body_timeouts_can_be_set() {
    let (upstream, _) = counting();
    let (send, body) = piped();
    let request = Request::post("/v3/payments").body(body).unwrap();
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        SigningLayer::new(Signer::generate("kid"))
            .body_timeouts(Duration::from_secs(2), Duration::from_secs(3))
            .layer(upstream)
            .oneshot(request),
    )
    .await
    .expect("the body's wait is bounded");
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::BodyTimedOut {
                limit: BodyTimeout::Idle(idle)
            } if idle == Duration::from_secs(2)
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    drop(send);
}

/// A store whose key was rotated, read again slowly (a secret store across a network): it
/// serves the old key until a reload, which takes `takes`, has finished.
#[derive(Clone)]
struct SlowStore {
    old: Signer,
    new: Signer,
    takes: Duration,
    reloaded: Arc<std::sync::atomic::AtomicBool>,
    reloads: Arc<AtomicUsize>,
}

impl SlowStore {
    fn new(old: &Signer, new: &Signer, takes: Duration) -> Self {
        SlowStore {
            old: old.clone(),
            new: new.clone(),
            takes,
            reloaded: Arc::default(),
            reloads: Arc::default(),
        }
    }
}

impl SignerSource for SlowStore {
    fn signer(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        let current = if self.reloaded.load(Ordering::SeqCst) {
            self.new.clone()
        } else {
            self.old.clone()
        };
        Box::pin(async move { Ok(current) })
    }
    fn reload(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(self.takes).await;
            self.reloaded.store(true, Ordering::SeqCst);
            Ok(self.new.clone())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_rejected_while_another_reloads_the_key_waits_for_it_and_is_resent() {
    // The store keeps its kid; the key under it is what rotates.
    let (old, new) = (Signer::generate("kid"), Signer::generate("kid"));
    let store = SlowStore::new(&old, &new, Duration::from_secs(2));
    let layer = SigningLayer::new(store.clone());
    let (upstream, calls) = checking(&new, |_| {});
    let keys_sent = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let keys_sent = keys_sent.clone();
        ServiceBuilder::new()
            .map_request(move |request: Request<Full<Bytes>>| {
                let key = request.headers()[IDEMPOTENCY_KEY].clone();
                keys_sent.lock().unwrap().push(key);
                request
            })
            .service(upstream)
    };
    let started = tokio::time::Instant::now();
    // The first is rejected at once and reads the key again, from 0 s to 2 s.
    let first = tokio::spawn(layer.layer(upstream.clone()).oneshot(post()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The second is rejected at 1 s, while that read is under way.
    let second = tokio::time::timeout(
        Duration::from_secs(60),
        layer.layer(upstream).oneshot(post()),
    )
    .await
    .expect("the wait for the other read is bounded")
    .unwrap();
    assert_eq!(
        second.status(),
        StatusCode::CREATED,
        "re-signed with the new key and resent"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "as soon as the other read ended"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(store.reloads.load(Ordering::SeqCst), 1, "one read for both");
    assert_eq!(calls.load(Ordering::SeqCst), 4, "each sent twice");
    // Each resend kept its request's Idempotency-Key: two keys, each sent twice.
    let mut keys_sent = keys_sent.lock().unwrap().clone();
    keys_sent.sort();
    assert_eq!(keys_sent[0], keys_sent[1]);
    assert_eq!(keys_sent[2], keys_sent[3]);
    assert_ne!(keys_sent[1], keys_sent[2]);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_a_read_that_hangs_gets_its_401_after_30_s() {
    let (old, new) = (Signer::generate("kid"), Signer::generate("kid"));
    // A store whose read never ends (no timeout of its own).
    let store = SlowStore::new(&old, &new, Duration::from_secs(24 * 3600));
    let layer = SigningLayer::new(store.clone());
    let (upstream, _calls) = checking(&new, |_| {});
    let _first = tokio::spawn(layer.layer(upstream.clone()).oneshot(post()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    let second = layer.layer(upstream).oneshot(post()).await.unwrap();
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED, "its own answer");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(30),
        "the wait is bounded"
    );
    assert_eq!(store.reloads.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_another_reload_is_let_go_when_that_request_is_dropped() {
    let (old, new) = (Signer::generate("kid"), Signer::generate("kid"));
    let store = SlowStore::new(&old, &new, Duration::from_secs(2));
    let layer = SigningLayer::new(store.clone());
    let (upstream, calls) = checking(&new, |_| {});
    let started = tokio::time::Instant::now();
    let first = tokio::spawn(layer.layer(upstream.clone()).oneshot(post()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = tokio::spawn(async move {
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            layer.layer(upstream).oneshot(post()),
        )
        .await;
        (response, started.elapsed())
    });
    // The caller of the first gives up mid-read (a client hung up, a timeout above).
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.abort();
    let (second, answered_at) = second.await.unwrap();
    let second = second
        .expect("the wait ends with the read it waited for")
        .unwrap();
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED, "no new key came");
    assert_eq!(
        answered_at,
        Duration::from_millis(1500),
        "it waited for the read, and no longer than the read lasted"
    );
    assert_eq!(store.reloads.load(Ordering::SeqCst), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn after_a_401_a_key_is_read_again_at_most_once_per_30_s() {
    // Every request is refused (a key TrueLayer does not know), and the store never changes.
    let key = Signer::generate("kid-1");
    let store = Store::new("kid-1", &key);
    let layer = SigningLayer::new(store.clone());
    let (upstream, calls) = checking(&Signer::generate("kid-1"), |_| {});
    let mut reads = Vec::new();
    for wait in [0, 29, 2, 1] {
        tokio::time::advance(Duration::from_secs(wait)).await;
        let response = layer.layer(upstream.clone()).oneshot(post()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        reads.push(store.reloads.load(Ordering::SeqCst));
    }
    // At 0 s, 29 s (none), 31 s (again), 32 s (none).
    assert_eq!(reads, [1, 1, 2, 2]);
    assert_eq!(calls.load(Ordering::SeqCst), 4, "none sent again");
}
