//! One client stack and one connection pool for a thousand merchants.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt, service_fn};
use truelayer_auth::{
    CacheKey, ClientCredentials, CredentialsSource, Error, KeyedTokenCache, Scopes, TokenClient,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_testkit::emulator::environment;
use truelayer_auth_tower::{BearerAuthError, BearerAuthLayer, CloneBodies};

const MERCHANTS: usize = 1000;

fn merchant(i: usize) -> ClientCredentials {
    ClientCredentials::new(format!("merchant-{i}"), format!("secret-{i}").into()).unwrap()
}

// On the real clock: with a paused one, every moment the runtime waits on loopback I/O
// with nothing ready lets tokio jump to the next timer, and under load those jumps add up
// to the tokens' soft margin (a second fetch for every merchant).
#[tokio::test]
async fn a_thousand_merchants_share_one_stack_each_with_only_its_own_tokens() {
    let emulator = Arc::new(Emulator::start().await.unwrap());
    // One request-signing key, uploaded for every merchant (each could have its own).
    let signer = Signer::generate("platform-key");
    for i in 0..MERCHANTS {
        let id = format!("merchant-{i}");
        emulator.add_client(&id, &format!("secret-{i}"), ["payments"]);
        emulator
            .register_signing_key(&id, "platform-key", &signer.public_key_pem().unwrap())
            .unwrap();
    }
    let env = environment(&emulator);
    // 1,000 token requests and 3,000 signed payments at once on one thread: a token answer
    // can queue behind seconds of signature checks. This test is about routing and single
    // flight, not latency under overload, so the client's timeouts leave room for that.
    let patient = TokenClient::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let keyed = KeyedTokenCache::builder()
        .client(patient)
        .configure(|s| s.wait_timeout(Duration::from_secs(120)))
        .credentials_for(|key| {
            let i: usize = key.client_id().strip_prefix("merchant-")?.parse().ok()?;
            (i < MERCHANTS).then(|| Arc::new(merchant(i)) as Arc<dyn CredentialsSource>)
        })
        .build()
        .unwrap();
    // Below the layer: check that every request carries a token of the merchant it names.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let checked = {
        let emulator = emulator.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let key = request.extensions().get::<CacheKey>().unwrap().clone();
            let bearer = request.headers()[AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            let token = bearer.strip_prefix("Bearer ").unwrap();
            if let Ok(claims) = emulator.verify_token(token) {
                assert_eq!(
                    claims.client_id,
                    key.client_id(),
                    "a token of another merchant"
                );
            }
            hyper.clone().call(request)
        })
    };
    let client = BearerAuthLayer::new(keyed.clone())
        .replay_policy(CloneBodies)
        .layer(SigningLayer::new(signer).layer(checked));
    let request = |i: usize| {
        let mut request = Request::post(format!("{}/v3/payments", emulator.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let key = CacheKey::new(env.clone(), format!("merchant-{i}"), Scopes::payments());
        request.extensions_mut().insert(key);
        request
    };

    // Three requests per merchant, interleaved, all at once.
    let tasks: Vec<_> = (0..3 * MERCHANTS)
        .map(|n| {
            let (client, request) = (client.clone(), request(n % MERCHANTS));
            tokio::spawn(async move {
                let response = client.oneshot(request).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let stats = emulator.stats();
    assert_eq!(
        stats.token_requests, MERCHANTS as u64,
        "one fetch per merchant"
    );
    assert_eq!(stats.api_rejections, 0);

    // Merchant 7's token is revoked: one 401, one refetch for merchant 7 alone.
    let seven = keyed
        .get_with_source(&env, "merchant-7", &Scopes::payments(), || unreachable!())
        .cached()
        .unwrap();
    assert!(emulator.revoke_token(secrecy::ExposeSecret::expose_secret(seven.secret())));
    for i in [7, 8, 7, 9] {
        let response = client.clone().oneshot(request(i)).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "merchant {i}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = emulator.stats();
    assert_eq!(stats.api_rejections, 1);
    assert_eq!(
        stats.token_requests,
        MERCHANTS as u64 + 1,
        "one refetch, merchant 7's"
    );

    // A request that names no merchant, or an unknown one, is never sent.
    let mut anonymous = request(0);
    anonymous.extensions_mut().remove::<CacheKey>();
    let err = client.clone().oneshot(anonymous).await.unwrap_err();
    assert!(
        matches!(err, BearerAuthError::Token(Error::MissingCacheKey)),
        "{err:?}"
    );
    let err = client
        .clone()
        .oneshot(request(MERCHANTS + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BearerAuthError::Token(Error::UnknownCacheKey { .. })),
        "{err:?}"
    );
    assert_eq!(emulator.stats().api_requests, 3 * MERCHANTS as u64 + 5);
}
