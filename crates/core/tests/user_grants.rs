//! The Data API's grants against the emulator: a code is single use, short lived and bound to
//! its PKCE verifier; a refresh rotates; bad answers are typed errors; and neither the code
//! nor the refresh token reaches Debug, Display, an error or a log line.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use truelayer_auth::{
    AuthorizationCode, DataScopes, Error, InvalidResponse, PendingAuthorization, TokenClient,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{authorization_code, credentials, environment};
use truelayer_auth_testkit::logs::{assert_no_markers, every_form_of};

const CODE: &str = "MARKER-CODE-41c7";
const REFRESH: &str = "MARKER-REFRESH-9b03";
const VERIFIER: &str = "MARKER-VERIFIER-0000000000000000000000000000000000000000";

fn assert_clean(what: &str, text: &str) {
    assert_no_markers(&[CODE, REFRESH, VERIFIER], what, text);
}

async fn code_for(emulator: &Emulator) -> (AuthorizationCode, PendingAuthorization) {
    authorization_code(emulator, DataScopes::default()).await
}

#[tokio::test]
async fn a_code_is_exchanged_once_and_its_refresh_token_rotates() {
    let emulator = Emulator::start().await.unwrap();
    let (env, creds, client) = (
        environment(&emulator),
        credentials(&emulator),
        TokenClient::new().unwrap(),
    );
    let (code, _) = code_for(&emulator).await;

    let first = client.exchange_code(&env, &creds, &code).await.unwrap();
    assert_eq!(
        first.access_token().granted_scope(),
        Some(DataScopes::default().as_str())
    );
    let refresh = first.refresh_token().unwrap().clone();

    let second = client
        .refresh_user_token(&env, &creds, &refresh)
        .await
        .unwrap();
    let rotated = second.refresh_token().unwrap().clone();
    assert_ne!(rotated.expose_secret(), refresh.expose_secret());
    let third = client
        .refresh_user_token(&env, &creds, &rotated)
        .await
        .unwrap();

    // A replayed code is refused, and (RFC 6749 §4.1.2) revokes what it issued.
    let again = client.exchange_code(&env, &creds, &code).await.unwrap_err();
    assert!(again.is_invalid_grant() && !again.is_retryable(), "{again}");
    let revoked = client
        .refresh_user_token(&env, &creds, third.refresh_token().unwrap())
        .await
        .unwrap_err();
    assert!(revoked.is_invalid_grant(), "{revoked}");
}

#[tokio::test]
async fn a_spent_refresh_token_is_refused() {
    let emulator = Emulator::start().await.unwrap();
    let (env, creds, client) = (
        environment(&emulator),
        credentials(&emulator),
        TokenClient::new().unwrap(),
    );
    let (code, _) = code_for(&emulator).await;
    let first = client.exchange_code(&env, &creds, &code).await.unwrap();
    let refresh = first.refresh_token().unwrap();
    client
        .refresh_user_token(&env, &creds, refresh)
        .await
        .unwrap();
    let spent = client
        .refresh_user_token(&env, &creds, refresh)
        .await
        .unwrap_err();
    assert!(spent.is_invalid_grant() && !spent.is_retryable(), "{spent}");
}

#[tokio::test]
async fn a_code_past_five_minutes_or_with_another_verifier_is_refused() {
    let emulator = Emulator::start().await.unwrap();
    let (env, creds, client) = (
        environment(&emulator),
        credentials(&emulator),
        TokenClient::new().unwrap(),
    );

    let (code, _) = code_for(&emulator).await;
    let forged = AuthorizationCode::new(
        code.secret().clone(),
        code.client_id(),
        code.redirect_uri(),
        code.scopes().clone(),
        Some(SecretString::from(VERIFIER)),
    );
    let e = client
        .exchange_code(&env, &creds, &forged)
        .await
        .unwrap_err();
    assert!(e.is_invalid_grant(), "{e}");

    let (late, _) = code_for(&emulator).await;
    emulator.advance_clock(Duration::from_secs(5 * 60 + 1));
    let e = client.exchange_code(&env, &creds, &late).await.unwrap_err();
    assert!(e.is_invalid_grant(), "{e}");
    assert!(e.to_string().contains("connect again"), "{e}");
}

#[tokio::test]
async fn another_client_s_credentials_are_refused_before_anything_is_sent() {
    let emulator = Emulator::start().await.unwrap();
    let (code, _) = code_for(&emulator).await;
    let other = truelayer_auth::ClientCredentials::new("someone-else", "x".into()).unwrap();
    let e = TokenClient::new()
        .unwrap()
        .exchange_code(&environment(&emulator), &other, &code)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert_eq!(emulator.data_stats().codes_refused, 0);
}

#[tokio::test]
async fn a_refresh_answer_without_a_refresh_token_is_a_typed_error() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::Body {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"access_token":"a.b.c","expires_in":3600,"token_type":"Bearer"}"#.into(),
    }]);
    let e = TokenClient::new()
        .unwrap()
        .refresh_user_token(
            &environment(&emulator),
            &credentials(&emulator),
            &SecretString::from(REFRESH),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::InvalidResponse {
                problem: InvalidResponse::MissingField("refresh_token"),
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_refresh_answer_with_a_new_refresh_token_but_an_unusable_access_token_keeps_the_refresh_token()
 {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::Body {
        status: 200,
        content_type: "application/json".into(),
        body: format!(
            r#"{{"access_token":"a.b.c","expires_in":3600,"refresh_token":"{REFRESH}"}}"#
        ),
    }]);
    let e = TokenClient::new()
        .unwrap()
        .refresh_user_token(
            &environment(&emulator),
            &credentials(&emulator),
            &SecretString::from("the-spent-one"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::RefreshTokenOnly {
                problem: InvalidResponse::MissingField("token_type"),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(
        e.salvaged_refresh_token().map(|t| t.expose_secret()),
        Some(REFRESH)
    );
    assert_clean("the salvage error", &every_form_of(&e));
}
