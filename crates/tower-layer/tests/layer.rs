//! The bearer layer end to end against the emulator's Payments API stand-in.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use truelayer_auth::{Error, TokenCache};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_signing::{Signer, Signing, SigningLayer};
use truelayer_auth_testkit::emulator::{cache_builder, signer};
use truelayer_auth_tower::{BearerAuthError, BearerAuthLayer, CloneBodies, replay_with};

type HyperClient = Client<HttpConnector, Full<Bytes>>;

fn cache(emulator: &Emulator) -> TokenCache {
    cache_builder(emulator)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// hyper-util's client with the signing layer: the emulator, like TrueLayer, wants every
/// POST signed (with the default client's registered key).
fn hyper_client(emulator: &Emulator) -> Signing<HyperClient, Signer> {
    SigningLayer::new(signer(emulator)).layer(Client::builder(TokioExecutor::new()).build_http())
}

fn create_payment(emulator: &Emulator, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn status_of<B>(response: Response<B>) -> StatusCode
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(start_paused = true)]
async fn the_payments_stand_in_accepts_requests_through_the_layer() {
    let emulator = Emulator::start().await.unwrap();
    let client = BearerAuthLayer::new(cache(&emulator)).layer(hyper_client(&emulator));
    for _ in 0..3 {
        let response = client
            .clone()
            .oneshot(create_payment(&emulator, "{}"))
            .await
            .unwrap();
        assert_eq!(status_of(response).await, StatusCode::CREATED);
    }
    let stats = emulator.stats();
    assert_eq!(
        (
            stats.token_requests,
            stats.api_requests,
            stats.api_rejections
        ),
        (1, 3, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_token_gives_one_401_one_refresh_and_a_successful_replay() {
    let emulator = Emulator::start().await.unwrap();
    let client = BearerAuthLayer::new(cache(&emulator))
        .replay_policy(CloneBodies)
        .layer(hyper_client(&emulator));
    let warm = client
        .clone()
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(status_of(warm).await, StatusCode::CREATED);

    emulator.revoke_all_tokens();
    let response = client
        .clone()
        .oneshot(create_payment(&emulator, r#"{"amount_in_minor":1}"#))
        .await
        .unwrap();
    assert_eq!(status_of(response).await, StatusCode::CREATED);
    let stats = emulator.stats();
    assert_eq!(stats.api_rejections, 1, "one 401");
    assert_eq!(stats.token_requests, 2, "one refresh");
    assert_eq!(stats.api_requests, 3, "the replay");
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_for_one_token_cause_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let client = BearerAuthLayer::new(cache(&emulator))
        .replay_policy(CloneBodies)
        .layer(hyper_client(&emulator));
    let warm = client
        .clone()
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(status_of(warm).await, StatusCode::CREATED);
    emulator.revoke_all_tokens();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let request = create_payment(&emulator, "{}");
            tokio::spawn(async move { status_of(client.oneshot(request).await.unwrap()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_gets_the_401_back_and_the_token_is_still_reported() {
    let emulator = Emulator::start().await.unwrap();
    // The default policy replays empty bodies only; this body is not empty.
    let client = BearerAuthLayer::new(cache(&emulator)).layer(hyper_client(&emulator));
    client
        .clone()
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    emulator.revoke_all_tokens();
    let response = client
        .clone()
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(emulator.stats().api_requests, 2, "not replayed");
    // The rejected (fresh) token was reported: the cache refreshes in the background, at
    // most one fetch a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let next = client
        .clone()
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(
        status_of(next).await,
        StatusCode::CREATED,
        "the next request gets a fresh token"
    );
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn empty_bodies_and_custom_policies_are_replayed() {
    let emulator = Emulator::start().await.unwrap();
    let tokens = cache(&emulator);
    let created = BearerAuthLayer::new(tokens.clone())
        .layer(hyper_client(&emulator))
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    let body = created.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    emulator.revoke_all_tokens();
    let get = Request::get(format!("{}/v3/payments/{id}", emulator.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = BearerAuthLayer::new(tokens.clone())
        .layer(hyper_client(&emulator))
        .oneshot(get)
        .await
        .unwrap();
    assert_eq!(
        status_of(response).await,
        StatusCode::OK,
        "an empty body is replayed by default"
    );

    // A second revocation, in a new run of rejections (more than a minute later).
    tokio::time::sleep(Duration::from_secs(120)).await;
    emulator.revoke_all_tokens();
    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let policy = replay_with(move |body: &Full<Bytes>| {
        counted.fetch_add(1, Ordering::SeqCst);
        Some(body.clone())
    });
    let response = BearerAuthLayer::new(tokens)
        .replay_policy(policy)
        .layer(hyper_client(&emulator))
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap();
    assert_eq!(status_of(response).await, StatusCode::CREATED);
    assert_eq!(copies.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn with_the_token_endpoint_down_the_inner_service_is_never_called() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_randomly(1.0, vec![Fault::unavailable()]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
    });
    let err = BearerAuthLayer::new(cache(&emulator))
        .layer(inner)
        .oneshot(create_payment(&emulator, "{}"))
        .await
        .unwrap_err();
    match &err {
        BearerAuthError::Token(Error::ServerError { status, .. }) => {
            assert_eq!(status.as_u16(), 503)
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("request was not sent"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "never sent without auth");
}

#[tokio::test(start_paused = true)]
async fn the_header_replaces_any_other_and_is_sensitive() {
    let emulator = Emulator::start().await.unwrap();
    let tokens = cache(&emulator);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        let values: Vec<_> = req
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .cloned()
            .collect();
        assert_eq!(values.len(), 1, "exactly one Authorization header");
        assert!(values[0].is_sensitive());
        record.lock().unwrap().push(format!("{req:?}"));
        async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
    });
    let mut request = create_payment(&emulator, "{}");
    request
        .headers_mut()
        .insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
    request
        .headers_mut()
        .append(AUTHORIZATION, "Bearer stale".parse().unwrap());
    BearerAuthLayer::new(tokens.clone())
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap();

    let token = tokens.cached().unwrap();
    let debug = seen.lock().unwrap().join("\n");
    assert!(!debug.contains(token.secret().expose_secret()), "{debug}");
    assert!(debug.contains("Sensitive"), "{debug}");
    assert!(!debug.contains("dXNlcjpwYXNz") && !debug.contains("stale"));
}

#[tokio::test(start_paused = true)]
async fn composes_with_buffer_concurrency_limit_timeout_and_trace() {
    let emulator = Emulator::start().await.unwrap();
    let client = ServiceBuilder::new()
        .buffer(64)
        .concurrency_limit(4)
        .timeout(Duration::from_secs(10))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(BearerAuthLayer::new(cache(&emulator)).replay_policy(CloneBodies))
        .service(hyper_client(&emulator));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let client = client.clone();
            let request = create_payment(&emulator, "{}");
            tokio::spawn(async move { status_of(client.oneshot(request).await.unwrap()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let stats = emulator.stats();
    assert_eq!((stats.token_requests, stats.api_requests), (1, 40));
}

/// A body that never ends: an upstream trickling its 401 page.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_401_whose_body_never_ends_does_not_hold_the_replay() {
    let emulator = Emulator::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Endless);
                if n == 0 {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let client = BearerAuthLayer::new(cache(&emulator)).layer(upstream);
    let started = tokio::time::Instant::now();
    let response = client
        .oneshot(
            Request::get("/v3/payments/p-1")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "replayed");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
