//! The token request against the emulator over loopback: success, every error kind,
//! retries on a paused clock, and transport rules.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use truelayer_auth::{
    AccessToken, ClientCredentials, ConfigError, Environment, Error, InvalidResponse,
    OAuthErrorCode, RetryPolicy, Scope, Scopes, TokenClient,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{credentials as creds, environment as env};

/// The default client's `payments` token from a new client, retried by `policy`.
async fn with_retries(emulator: &Emulator, policy: &RetryPolicy) -> Result<AccessToken, Error> {
    TokenClient::new()
        .unwrap()
        .request_token(
            &env(emulator),
            &creds(emulator),
            &Scopes::payments(),
            policy,
        )
        .await
}

fn no_retry() -> TokenClient {
    TokenClient::new().unwrap()
}

async fn fail_once_with(fault: Fault) -> (Error, u64) {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([fault]);
    let err = no_retry()
        .request_token_once(&env(&emulator), &creds(&emulator), &Scopes::payments())
        .await
        .unwrap_err();
    (err, emulator.stats().token_requests)
}

#[tokio::test(start_paused = true)]
async fn a_token_is_issued_cached_data_and_verifiable() {
    let emulator = Emulator::start().await.unwrap();
    let scopes = Scopes::payments().with(Scope::RecurringPaymentsSweeping);
    let before = Instant::now();
    let token = TokenClient::new()
        .unwrap()
        .request_token(
            &env(&emulator),
            &creds(&emulator),
            &scopes,
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
    assert_eq!(token.lifetime(), Duration::from_secs(3600));
    assert_eq!(
        token.issued_at(),
        before,
        "expiry counts from the instant the request was sent"
    );
    assert_eq!(
        token.granted_scope(),
        Some("payments recurring_payments:sweeping")
    );
    assert_eq!(token.granted_scopes().unwrap(), scopes);
    let claims = emulator
        .verify_token(token.secret().expose_secret())
        .unwrap();
    assert_eq!(claims.client_id, "emulator-client");
    assert_eq!(
        token.authorization_header().to_str().unwrap(),
        format!("Bearer {}", token.secret().expose_secret())
    );
    assert!(token.authorization_header().is_sensitive());
    assert_eq!(emulator.stats().tokens_issued, 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_are_invalid_client_and_not_retried() {
    let emulator = Emulator::start().await.unwrap();
    let wrong = ClientCredentials::new(emulator.client_id(), "wrong-secret".into()).unwrap();
    let err = TokenClient::new()
        .unwrap()
        .request_token(
            &env(&emulator),
            &wrong,
            &Scopes::payments(),
            &RetryPolicy::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_client(), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    let text = err.to_string();
    assert!(
        text.contains("invalid_client") && text.contains("environment"),
        "{text}"
    );
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "invalid_client must not be retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scope_the_client_may_not_use_is_invalid_scope() {
    let emulator = Emulator::start().await.unwrap();
    emulator.add_client("narrow", "narrow-secret", ["payments"]);
    let creds = ClientCredentials::new("narrow", "narrow-secret".into()).unwrap();
    let err = no_retry()
        .request_token_once(
            &env(&emulator),
            &creds,
            &Scopes::payments().with(Scope::SignupPlus),
        )
        .await
        .unwrap_err();
    let oauth = err.oauth().expect("an OAuth2 error");
    assert_eq!(oauth.code, OAuthErrorCode::InvalidScope);
    assert!(oauth.description.as_deref().unwrap().contains("signupplus"));
}

#[tokio::test(start_paused = true)]
async fn every_oauth_code_maps_to_its_kind() {
    let cases = [
        ("invalid_client", OAuthErrorCode::InvalidClient, 401),
        ("invalid_scope", OAuthErrorCode::InvalidScope, 400),
        ("invalid_grant", OAuthErrorCode::InvalidGrant, 400),
        (
            "unauthorized_client",
            OAuthErrorCode::UnauthorizedClient,
            400,
        ),
        (
            "unsupported_grant_type",
            OAuthErrorCode::UnsupportedGrantType,
            400,
        ),
        ("invalid_request", OAuthErrorCode::InvalidRequest, 400),
        (
            "made_up_code",
            OAuthErrorCode::Other("made_up_code".into()),
            400,
        ),
    ];
    for (code, expected, status) in cases {
        let (err, _) = fail_once_with(Fault::Body {
            status,
            content_type: "application/json".into(),
            body: format!(r#"{{"error":"{code}","error_description":"because"}}"#),
        })
        .await;
        let oauth = err.oauth().unwrap_or_else(|| panic!("{code}: {err:?}"));
        assert_eq!(oauth.code, expected);
        assert_eq!(oauth.description.as_deref(), Some("because"));
        assert_eq!(oauth.status.as_u16(), status);
        assert!(!err.is_retryable(), "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn server_failures_are_retryable_and_carry_retry_after() {
    let (err, _) = fail_once_with(Fault::rate_limited(7)).await;
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7))
    );
    assert!(err.is_retryable());

    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    let (err, _) = fail_once_with(Fault::Status {
        status: 429,
        retry_after: Some(date),
    })
    .await;
    let after = err.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(100) && after <= Duration::from_secs(120),
        "{after:?}"
    );

    for status in [500, 502, 503, 504] {
        let (err, _) = fail_once_with(Fault::Status {
            status,
            retry_after: None,
        })
        .await;
        assert!(matches!(&err, Error::ServerError { status: s, .. } if s.as_u16() == status));
        assert!(err.is_retryable());
    }
    let (err, _) = fail_once_with(Fault::Body {
        status: 404,
        content_type: "text/html".into(),
        body: "<h1>Not found</h1>".into(),
    })
    .await;
    assert!(matches!(err, Error::UnexpectedStatus { status } if status.as_u16() == 404));
}

#[tokio::test(start_paused = true)]
async fn malformed_responses_each_have_their_kind() {
    let ok_token = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
    let cases: Vec<(String, InvalidResponse)> = vec![
        (String::new(), InvalidResponse::EmptyBody),
        (
            "<html><body>Bad gateway</body></html>".into(),
            InvalidResponse::HtmlPage,
        ),
        (
            "[\"not\",\"an\",\"object\"]".into(),
            InvalidResponse::NotAnObject,
        ),
        (
            r#"{"expires_in":3600,"token_type":"Bearer"}"#.into(),
            InvalidResponse::MissingField("access_token"),
        ),
        (
            format!(r#"{{"access_token":"{ok_token}","token_type":"Bearer"}}"#),
            InvalidResponse::MissingField("expires_in"),
        ),
        (
            format!(r#"{{"access_token":"{ok_token}","expires_in":3600,"token_type":"mac"}}"#),
            InvalidResponse::NotBearer("mac".into()),
        ),
        (
            format!(r#"{{"access_token":"{ok_token}","expires_in":0,"token_type":"Bearer"}}"#),
            InvalidResponse::ZeroLifetime,
        ),
        (
            format!(r#"{{"access_token":"{ok_token}","expires_in":-60,"token_type":"Bearer"}}"#),
            InvalidResponse::NegativeLifetime(-60),
        ),
        (
            format!(
                r#"{{"access_token":"{ok_token}","expires_in":315360000,"token_type":"Bearer"}}"#
            ),
            InvalidResponse::LifetimeTooLong {
                seconds: 315_360_000,
                max: 86_400,
            },
        ),
        (
            r#"{"access_token":"has space","expires_in":3600,"token_type":"Bearer"}"#.into(),
            InvalidResponse::AccessTokenCharacters,
        ),
    ];
    for (body, expected) in cases {
        let (err, _) = fail_once_with(Fault::malformed(body.clone())).await;
        match err {
            Error::InvalidResponse { problem, status } => {
                assert_eq!(problem, expected, "{body}");
                assert_eq!(status.as_u16(), 200);
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    let (err, _) = fail_once_with(Fault::malformed("{\"access_token\": ")).await;
    assert!(matches!(
        err,
        Error::InvalidResponse {
            problem: InvalidResponse::NotJson { .. },
            ..
        }
    ));
    let (err, _) = fail_once_with(Fault::malformed("x".repeat(100 * 1024))).await;
    assert!(matches!(
        err,
        Error::InvalidResponse {
            problem: InvalidResponse::BodyTooLarge { limit: 65536 },
            ..
        }
    ));
    let (err, _) = fail_once_with(Fault::Truncate).await;
    assert!(
        matches!(
            err,
            Error::InvalidResponse {
                problem: InvalidResponse::Truncated,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_is_a_retryable_transport_error() {
    let (err, _) = fail_once_with(Fault::DropConnection).await;
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_then_succeed() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::unavailable(), Fault::internal_error()]);
    let policy = RetryPolicy::default()
        .with_backoff(Duration::from_secs(1), Duration::from_secs(60))
        .with_max_attempts(3)
        .unwrap();
    let client = TokenClient::new().unwrap();
    let started = Instant::now();
    let token = client
        .request_token(
            &env(&emulator),
            &creds(&emulator),
            &Scopes::payments(),
            &policy,
        )
        .await
        .unwrap();
    assert!(!token.is_expired());
    assert_eq!(emulator.stats().token_requests, 3);
    // Full jitter: the two waits are drawn from [0, 1 s] and [0, 2 s]. On the paused clock
    // only those waits move time, so some did pass (two draws of exactly 0 ns would be a
    // 1-in-10^18 chance): a retry loop that did not wait would leave it at zero.
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::ZERO,
        "the retries did not wait at all"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_last_attempt() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next(std::iter::repeat_n(Fault::unavailable(), 10));
    let policy = RetryPolicy::default().with_max_attempts(4).unwrap();
    let err = with_retries(&emulator, &policy).await.unwrap_err();
    assert!(matches!(err, Error::ServerError { .. }));
    assert_eq!(emulator.stats().token_requests, 4);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::rate_limited(7)]);
    let started = Instant::now();
    with_retries(&emulator, &RetryPolicy::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_deadline_ends_retries_at_once() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::rate_limited(3600)]);
    let started = Instant::now();
    let err = with_retries(&emulator, &RetryPolicy::default())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(emulator.stats().token_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn redirects_are_refused_and_never_followed() {
    let emulator = Emulator::start().await.unwrap();
    let elsewhere = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::Redirect {
        location: format!("{}?steal=1", elsewhere.token_url()),
    }]);
    let err = with_retries(&emulator, &RetryPolicy::default())
        .await
        .unwrap_err();
    match &err {
        Error::RedirectRefused { status, location } => {
            assert_eq!(status.as_u16(), 307);
            assert_eq!(location.as_deref(), Some(elsewhere.token_url().as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(
        elsewhere.stats().token_requests,
        0,
        "the secret must not be replayed"
    );
}

#[test]
fn plain_http_to_a_remote_host_is_refused_before_sending() {
    assert!(matches!(
        Environment::custom("http://auth.truelayer.com"),
        Err(ConfigError::InsecureUrl { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn slow_answers_time_out() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_latency(Duration::from_secs(60));
    let client = TokenClient::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .request_token_once(&env(&emulator), &creds(&emulator), &Scopes::payments())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(3)
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let env = Environment::custom(&format!("http://127.0.0.1:{port}")).unwrap();
    let creds = ClientCredentials::new("id", SecretString::from("secret")).unwrap();
    let err = no_retry()
        .request_token_once(&env, &creds, &Scopes::payments())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.is_retryable());
}
