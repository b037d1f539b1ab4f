//! Property tests for every parser that reads the network or configuration: arbitrary input
//! never panics and gives a value or a typed error; valid input round-trips. (Inside the
//! crate: the parsers are not public.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::OAuthErrorCode;
use crate::response::{parse_oauth_error, parse_token_response};
use crate::retry::{MAX_RETRY_AFTER, parse_retry_after};
use crate::scope::{Scope, Scopes};
use http::StatusCode;
use proptest::prelude::*;
use secrecy::ExposeSecret;

fn scope_token() -> impl Strategy<Value = String> {
    // RFC 6749 §3.3: %x21 / %x23-5B / %x5D-7E
    proptest::collection::vec(
        prop_oneof![Just(0x21u8), 0x23u8..=0x5B, 0x5Du8..=0x7E],
        1..20,
    )
    .prop_map(|b| String::from_utf8(b).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn token_responses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_token_response(&bytes, &[]);
    }

    #[test]
    fn json_shaped_token_responses_never_panic(
        token in any::<String>(), expires in any::<i128>(), kind in any::<String>(), extra in any::<String>()
    ) {
        let body = format!(r#"{{"access_token":{},"expires_in":{expires},"token_type":{},"x":{}}}"#,
            serde_json::to_string(&token).unwrap(), serde_json::to_string(&kind).unwrap(), serde_json::to_string(&extra).unwrap());
        let _ = parse_token_response(body.as_bytes(), &[]);
    }

    #[test]
    fn valid_token_responses_round_trip(
        token in "[A-Za-z0-9._~+/-]{1,300}",
        expires in 1u64..=86_400,
        kind in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER")],
        scope in proptest::option::of(proptest::collection::btree_set(scope_token(), 1..5)),
    ) {
        let scope = scope.map(|s| s.into_iter().collect::<Vec<_>>().join(" "));
        let mut body = serde_json::json!({ "access_token": token, "expires_in": expires, "token_type": kind });
        if let Some(s) = &scope {
            body["scope"] = serde_json::Value::String(s.clone());
        }
        let parsed = parse_token_response(body.to_string().as_bytes(), &[]).unwrap();
        prop_assert_eq!(parsed.access_token.expose_secret(), token.as_str());
        prop_assert_eq!(parsed.expires_in, Duration::from_secs(expires));
        prop_assert_eq!(parsed.scope, scope);
    }

    #[test]
    fn oauth_error_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), secret in ".{0,20}") {
        let _ = parse_oauth_error(StatusCode::BAD_REQUEST, &bytes, &[&secret]);
    }

    #[test]
    fn oauth_errors_round_trip(code in "[a-z_]{1,40}", description in "[ -~]{0,300}") {
        let body = serde_json::json!({ "error": code, "error_description": description }).to_string();
        let parsed = parse_oauth_error(StatusCode::UNAUTHORIZED, body.as_bytes(), &["not-in-here-0000"]).unwrap();
        prop_assert_eq!(parsed.code.as_str(), code.as_str());
        prop_assert_eq!(parsed.code == OAuthErrorCode::InvalidClient, code == "invalid_client");
        prop_assert_eq!(parsed.description.as_deref(), Some(description.as_str()));
        prop_assert_eq!(parsed.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn oauth_errors_never_carry_the_secret(secret in "[A-Za-z0-9]{4,30}", before in "[ -~]{0,50}", after in "[ -~]{0,50}") {
        let body = serde_json::json!({ "error": "invalid_client", "error_description": format!("{before}{secret}{after}") }).to_string();
        let parsed = parse_oauth_error(StatusCode::UNAUTHORIZED, body.as_bytes(), &[&secret]).unwrap();
        prop_assert!(!parsed.to_string().contains(&secret));
    }

    #[test]
    fn oauth_errors_never_carry_the_form_encoded_secret(secret in "[ -~]{4,30}", before in "[ -~]{0,50}", after in "[ -~]{0,50}") {
        let sent: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let body = serde_json::json!({ "error": "invalid_request", "error_description": format!("{before}client_secret={sent}{after}") }).to_string();
        let parsed = parse_oauth_error(StatusCode::BAD_REQUEST, body.as_bytes(), &[&secret]).unwrap();
        let shown = parsed.to_string();
        prop_assert!(!shown.contains(&format!("client_secret={sent}")), "{}", shown);
    }

    #[test]
    fn retry_after_never_panics(value in any::<String>()) {
        if let Some(d) = parse_retry_after(&value, SystemTime::now()) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn retry_after_seconds_round_trip(secs in 0u64..=86_400) {
        prop_assert_eq!(parse_retry_after(&secs.to_string(), SystemTime::now()), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn retry_after_dates_round_trip(now_secs in 0u64..4_000_000_000, ahead in 0u64..=86_400) {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(ahead)));
    }

    #[test]
    fn scope_strings_never_panic(value in any::<String>()) {
        let _ = value.parse::<Scopes>();
        let _ = Scopes::parse_without_payments(&value);
        let _ = value.parse::<Scope>();
    }

    #[test]
    fn scope_sets_round_trip(tokens in proptest::collection::btree_set(scope_token(), 1..8)) {
        let joined = tokens.iter().cloned().collect::<Vec<_>>().join(" ");
        let parsed = Scopes::parse_without_payments(&joined).unwrap();
        let back: std::collections::BTreeSet<String> = parsed.iter().map(|s| s.as_str().to_owned()).collect();
        prop_assert_eq!(&back, &tokens);
        let again = Scopes::parse_without_payments(parsed.as_str()).unwrap();
        prop_assert_eq!(again, parsed);
    }
}
