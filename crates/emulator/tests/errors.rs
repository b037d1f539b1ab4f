//! The handle's typed errors: one variant per refusal, the cause in `source()` and never in
//! the message, and no secret in either.

use std::error::Error as _;
use std::time::Duration;

use truelayer_auth_emulator::{Emulator, Error, PaymentStatus};

#[tokio::test]
async fn a_token_the_payments_api_would_refuse_says_why() {
    let emulator = Emulator::start().await.unwrap();
    let client = emulator.client_id().to_owned();
    let token = emulator.issue_token(&client, &["payments"], 60);
    assert_eq!(emulator.verify_token(&token).unwrap().client_id, client);

    assert!(matches!(
        emulator.verify_token("not-a-jwt"),
        Err(Error::TokenNotJwt)
    ));
    let (head, rest) = token.split_once('.').unwrap();
    let tampered = format!("{head}.e30{}", &rest[rest.find('.').unwrap()..]);
    assert!(matches!(
        emulator.verify_token(&tampered),
        Err(Error::TokenInvalid)
    ));
    let unscoped = emulator.issue_token(&client, &["payouts"], 60);
    let lacks = emulator.verify_token(&unscoped).unwrap_err();
    assert!(matches!(lacks, Error::TokenLacksScope), "{lacks:?}");
    assert_eq!(lacks.to_string(), "the token lacks the payments scope");

    let short = emulator.issue_token(&client, &["payments"], 60);
    emulator.advance_clock(Duration::from_secs(61));
    assert!(matches!(
        emulator.verify_token(&short),
        Err(Error::TokenExpired)
    ));

    let revoked = emulator.issue_token(&client, &["payments"], 600);
    assert!(emulator.revoke_token(&revoked));
    let why = emulator.verify_token(&revoked).unwrap_err();
    assert!(matches!(why, Error::TokenRevoked), "{why:?}");
    assert!(why.source().is_none());
    for shown in [why.to_string(), format!("{why:?}")] {
        assert!(!shown.contains(&revoked), "{shown}");
    }
}

#[tokio::test]
async fn a_bad_signing_key_names_its_cause_in_source_only() {
    let emulator = Emulator::start().await.unwrap();
    let why = emulator
        .register_signing_key(emulator.client_id(), "kid", "not a pem")
        .unwrap_err();
    assert!(matches!(why, Error::InvalidSigningKey { .. }), "{why:?}");
    assert_eq!(why.to_string(), "not an EC P-521 public key (SPKI PEM)");
    let cause = why.source().expect("the parser's reason").to_string();
    assert!(!cause.is_empty() && !why.to_string().contains(&cause));
}

#[tokio::test]
async fn a_webhook_url_error_leaves_out_what_may_be_a_receivers_secret() {
    let emulator = Emulator::start().await.unwrap();
    let why = emulator
        .set_webhook_url(Some("https://hooks.example.com/in?token=s3cret"))
        .unwrap_err();
    let Error::WebhookUrlHttps { url } = &why else {
        panic!("{why:?}");
    };
    assert_eq!(url, "https://hooks.example.com/in");
    let why = emulator
        .set_webhook_url(Some("http://user:pa55@127.0.0.1:9/in"))
        .unwrap_err();
    assert!(matches!(why, Error::WebhookUrlHost { .. }), "{why:?}");
    for shown in [why.to_string(), format!("{why:?}")] {
        assert!(
            !shown.contains("pa55") && !shown.contains("user:"),
            "{shown}"
        );
    }
    let why = emulator.set_webhook_url(Some("http://[::1")).unwrap_err();
    assert!(matches!(why, Error::WebhookUrlInvalid { .. }), "{why:?}");
    assert!(why.source().is_some());
    assert!(matches!(
        emulator.set_webhook_url(Some("gopher://example.com/")),
        Err(Error::WebhookUrlScheme { scheme, .. }) if scheme == "gopher"
    ));
    assert!(matches!(
        emulator.set_webhook_url(Some("/in")),
        Err(Error::WebhookUrlRelative { .. })
    ));
}

#[tokio::test]
async fn payment_moves_and_status_names_are_refused_with_their_own_variants() {
    let emulator = Emulator::start().await.unwrap();
    assert!(matches!(
        emulator.advance_payment("nope", PaymentStatus::Settled),
        Err(Error::UnknownPayment { payment_id }) if payment_id == "nope"
    ));
    assert!(matches!(
        emulator.fail_payment("nope", " "),
        Err(Error::MissingFailureReason)
    ));
    let why = "failed".parse::<PaymentStatus>().unwrap_err();
    assert!(matches!(&why, Error::UnknownPaymentStatus { status } if status == "failed"));
    assert_eq!(why.to_string(), "unknown payment status \"failed\"");
    assert_eq!(
        "executed".parse::<PaymentStatus>().ok(),
        Some(PaymentStatus::Executed)
    );
}
