//! The code, the PKCE verifier and the refresh token never reach Debug, Display, an error or
//! a log line. Alone in its test binary: the log capture is the thread's subscriber, and
//! tests running beside it on other threads could register `tracing`'s call sites first.

use secrecy::{ExposeSecret, SecretString};
use truelayer_auth::{AuthorizationCode, DataScopes, PendingAuthorization, TokenClient};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{authorization_code, credentials, environment};
use truelayer_auth_testkit::logs::LogCapture;
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
async fn no_code_verifier_or_refresh_token_reaches_debug_display_errors_or_logs() {
    let (capture, _guard) = LogCapture::trace();
    let emulator = Emulator::start().await.unwrap();
    let (env, creds, client) = (
        environment(&emulator),
        credentials(&emulator),
        TokenClient::new().unwrap(),
    );
    let (real, pending) = code_for(&emulator).await;
    let code = AuthorizationCode::new(
        SecretString::from(CODE),
        real.client_id(),
        real.redirect_uri(),
        real.scopes().clone(),
        Some(SecretString::from(VERIFIER)),
    );
    assert_clean("AuthorizationCode Debug", &format!("{code:?}"));
    assert_clean("PendingAuthorization Debug", &format!("{pending:?}"));

    let echo = |status: u16, body: String| Fault::Body {
        status,
        content_type: "application/json".into(),
        body,
    };
    let faults = || {
        vec![
            echo(
                400,
                format!(
                    r#"{{"error":"invalid_grant","error_description":"code={CODE}&code_verifier={VERIFIER}&refresh_token={REFRESH}"}}"#
                ),
            ),
            echo(
                400,
                format!(r#"{{"error":"{REFRESH}","error_description":"{CODE}"}}"#),
            ),
            echo(
                200,
                format!(
                    r#"{{"access_token":"t","expires_in":9,"token_type":"Bearer","refresh_token":{{"v":"{REFRESH}"}}}}"#
                ),
            ),
            echo(
                200,
                format!(r#"{{"access_token":"t","expires_in":9,"token_type":"{REFRESH}"}}"#),
            ),
            Fault::Redirect {
                location: format!("https://evil.example/{CODE}/{REFRESH}?c={CODE}"),
            },
        ]
    };
    for fault in faults() {
        emulator.fail_next([fault.clone()]);
        let e = client.exchange_code(&env, &creds, &code).await.unwrap_err();
        assert_no_markers(
            &[CODE, VERIFIER],
            &format!("exchange error for {fault:?}"),
            &every_form_of(&e),
        );
    }
    for fault in faults() {
        emulator.fail_next([fault.clone()]);
        let e = client
            .refresh_user_token(&env, &creds, &SecretString::from(REFRESH))
            .await
            .unwrap_err();
        assert_no_markers(
            &[REFRESH],
            &format!("refresh error for {fault:?}"),
            &every_form_of(&e),
        );
    }
    // A real exchange and refresh, logged at TRACE.
    let tokens = client.exchange_code(&env, &creds, &real).await.unwrap();
    assert_clean("UserTokens Debug", &format!("{tokens:?}"));
    let refresh = tokens.refresh_token().unwrap().expose_secret().to_owned();
    assert!(!format!("{tokens:?}").contains(&refresh));
    let renewed = client
        .refresh_user_token(&env, &creds, tokens.refresh_token().unwrap())
        .await
        .unwrap();
    let logs = capture.text();
    assert!(logs.contains("token endpoint answered"), "{logs}");
    assert_clean("TRACE logs", &logs);
    for secret in [
        refresh.as_str(),
        renewed.refresh_token().unwrap().expose_secret(),
        real.secret().expose_secret(),
    ] {
        assert!(!logs.contains(secret), "a real secret is in the logs");
    }
}
