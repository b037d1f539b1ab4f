//! The bearer layer in a runtime built without timers (`enable_time` off): a 401 is replayed
//! and no panic message is printed for each one. A test binary of its own, because it
//! replaces the process's panic hook to count the messages.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use secrecy::SecretString;
use tower::{Layer, ServiceExt, service_fn};
use truelayer_auth::{AccessToken, Error, TokenFuture, TokenSource};
use truelayer_auth_tower::BearerAuthLayer;

/// A fixed token whose rejections are acted on, so every 401 is replayed.
#[derive(Clone)]
struct Fixed(AccessToken);

impl TokenSource for Fixed {
    fn cached(&self, _: &http::Extensions) -> Result<Option<AccessToken>, Error> {
        Ok(Some(self.0.clone()))
    }
    fn token(&self, _: &http::Extensions) -> TokenFuture {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
    fn invalidate(&self, _: &AccessToken) -> bool {
        true
    }
}

#[test]
fn without_timers_401s_are_replayed_without_a_panic_message_each() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    std::panic::set_hook(Box::new(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let token = AccessToken::new(
            SecretString::from("t"),
            Duration::from_secs(3600),
            tokio::time::Instant::now(),
            None,
        )
        .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let upstream = {
            let calls = calls.clone();
            service_fn(move |_: Request<Full<Bytes>>| {
                // Every other call is a 401.
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"no")));
                    if n.is_multiple_of(2) {
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let client = BearerAuthLayer::new(Fixed(token)).layer(upstream);
        for _ in 0..5 {
            let response = client
                .clone()
                .oneshot(
                    Request::get("/v3/payments/p-1")
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "replayed");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10);
    });
    let _ = std::panic::take_hook();
    assert!(
        panics.load(Ordering::SeqCst) <= 1,
        "{} panic messages for 5 401s",
        panics.load(Ordering::SeqCst)
    );
}
