//! Formats every secret-bearing type and every error with marker secrets, and captures
//! TRACE-level logs of requests that carry them: the markers must never appear.

use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;
use truelayer_auth::{AccessToken, ClientCredentials, RetryPolicy, Scopes, TokenClient};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::environment;
use truelayer_auth_testkit::logs::{LogCapture, assert_no_markers};

const SECRET: &str = "MARKER-SECRET-7d1e";
const TOKEN: &str = "MARKER-TOKEN-93ab";

fn assert_clean(what: &str, text: &str) {
    assert_no_markers(&[SECRET, TOKEN], what, text);
}

#[tokio::test(start_paused = true)]
async fn no_secret_or_token_reaches_debug_display_errors_or_logs() {
    let (capture, _guard) = LogCapture::trace();

    let emulator = Emulator::start().await.unwrap();
    emulator.add_client("marker-client", SECRET, ["payments"]);
    let env = environment(&emulator);
    let creds = ClientCredentials::new("marker-client", SECRET.into()).unwrap();
    assert_clean("ClientCredentials Debug", &format!("{creds:?}"));
    let client = TokenClient::new().unwrap();
    let retries =
        RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(2));
    assert_clean("TokenClient Debug", &format!("{client:?}"));

    // Success with a marker token, served by the emulator.
    emulator.fail_next([Fault::malformed(format!(
        r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"Bearer","scope":"payments"}}"#
    ))]);
    let token = client
        .request_token(&env, &creds, &Scopes::payments(), &retries)
        .await
        .unwrap();
    assert_clean("AccessToken Debug", &format!("{token:?}"));
    assert_clean(
        "header Debug",
        &format!("{:?}", token.authorization_header()),
    );

    // Every failure kind, some of them carrying the markers in the body.
    let echo = |status: u16, body: String| Fault::Body {
        status,
        content_type: "application/json".into(),
        body,
    };
    let faults = vec![
        echo(
            401,
            format!(
                r#"{{"error":"invalid_client","error_description":"secret {SECRET} is wrong"}}"#
            ),
        ),
        echo(
            400,
            format!(r#"{{"error":"{SECRET}","error_description":"{SECRET}"}}"#),
        ),
        echo(
            200,
            format!(r#"{{"access_token":{{"v":"{TOKEN}"}},"expires_in":1,"token_type":"Bearer"}}"#),
        ),
        echo(
            200,
            format!(r#"{{"access_token":"{TOKEN}","expires_in":"{TOKEN}","token_type":"Bearer"}}"#),
        ),
        echo(
            200,
            format!(r#"{{"access_token":"{TOKEN}","expires_in":0,"token_type":"Bearer"}}"#),
        ),
        echo(
            200,
            format!(r#"{{"access_token":"{TOKEN} x","expires_in":9,"token_type":"Bearer"}}"#),
        ),
        echo(200, format!(r#"{{"access_token":"{TOKEN}""#)),
        Fault::rate_limited(1),
        Fault::unavailable(),
        Fault::DropConnection,
        Fault::Truncate,
        Fault::Redirect {
            location: format!("https://evil.example/?token={TOKEN}&secret={SECRET}"),
        },
        // Parts of an answer that an error quotes: an echoed `token_type`, and a `Location`
        // path (kept in the error, unlike its query), raw and form-encoded.
        echo(
            200,
            format!(r#"{{"access_token":"t","expires_in":9,"token_type":"{SECRET}"}}"#),
        ),
        Fault::Redirect {
            location: format!("https://evil.example/{SECRET}/x"),
        },
        Fault::Redirect {
            location: format!("https://evil.example/a/{}", SECRET.replace('-', "%2D")),
        },
    ];
    for fault in faults {
        emulator.fail_next([fault.clone()]);
        let err = client
            .request_token_once(&env, &creds, &Scopes::payments())
            .await
            .unwrap_err();
        assert_clean(&format!("error Display for {fault:?}"), &err.to_string());
        assert_clean(&format!("error Debug for {fault:?}"), &format!("{err:?}"));
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert_clean("error source", &s.to_string());
            source = s.source();
        }
    }
    // Retries log too.
    emulator.fail_next([Fault::unavailable()]);
    client
        .request_token(&env, &creds, &Scopes::payments(), &retries)
        .await
        .unwrap();
    let direct = AccessToken::new(
        SecretString::from(TOKEN),
        Duration::from_secs(60),
        Instant::now(),
        None,
    )
    .unwrap();
    assert_clean("AccessToken Debug", &format!("{direct:?}"));

    let logs = capture.text();
    assert!(
        logs.contains("token request failed"),
        "the capture works: {logs}"
    );
    assert_clean("TRACE logs", &logs);
}
