//! Hostile or broken token endpoint answers, each mapped to the error kind a caller gets.
//! Served over loopback by the emulator, read by the real client (body cap included).

use truelayer_auth::{Error, InvalidResponse as I, OAuthErrorCode, Scopes, TokenClient};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{credentials, environment};

const T: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

fn ok_body(token: &str, expires: &str, token_type: &str) -> String {
    format!(r#"{{"access_token":"{token}","expires_in":{expires},"token_type":"{token_type}"}}"#)
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"access_token":"{T}","expires_in":3600,"token_type":"Bearer","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

type Check = fn(&Result<truelayer_auth::AccessToken, Error>) -> bool;

fn invalid(r: &Result<truelayer_auth::AccessToken, Error>, want: fn(&I) -> bool) -> bool {
    matches!(r, Err(Error::InvalidResponse { problem, .. }) if want(problem))
}

#[tokio::test(start_paused = true)]
async fn hostile_token_endpoint_answers_map_to_their_error_kinds() {
    let huge_token = "A".repeat(70 * 1024);
    let cases: Vec<(&str, Fault, Check)> = vec![
        ("valid JSON as text/plain is read by its content", Fault::Body { status: 200, content_type: "text/plain".into(), body: ok_body(T, "3600", "Bearer") }, |r| r.is_ok()),
        ("valid JSON with no content type", Fault::Body { status: 200, content_type: "".into(), body: ok_body(T, "3600", "Bearer") }, |r| r.is_ok()),
        ("HTML error page with 200", Fault::Body { status: 200, content_type: "text/html".into(), body: "<!DOCTYPE html><title>Oops</title>".into() }, |r| invalid(r, |p| *p == I::HtmlPage)),
        ("XML", Fault::Body { status: 200, content_type: "application/xml".into(), body: "<?xml version=\"1.0\"?><token/>".into() }, |r| invalid(r, |p| *p == I::HtmlPage)),
        ("empty body", Fault::malformed(""), |r| invalid(r, |p| *p == I::EmptyBody)),
        ("whitespace body", Fault::malformed(" \r\n\t "), |r| invalid(r, |p| *p == I::EmptyBody)),
        ("JSON null", Fault::malformed("null"), |r| invalid(r, |p| *p == I::NotAnObject)),
        ("JSON string", Fault::malformed("\"token\""), |r| invalid(r, |p| *p == I::NotAnObject)),
        ("JSON array", Fault::malformed("[]"), |r| invalid(r, |p| *p == I::NotAnObject)),
        ("truncated JSON", Fault::malformed("{\"access_token\":\"abc"), |r| invalid(r, |p| matches!(p, I::NotJson { .. }))),
        ("trailing garbage", Fault::malformed(format!("{} trailing", ok_body(T, "3600", "Bearer"))), |r| invalid(r, |p| matches!(p, I::NotJson { .. }))),
        ("byte order mark", Fault::malformed(format!("\u{feff}{}", ok_body(T, "3600", "Bearer"))), |r| invalid(r, |p| matches!(p, I::NotJson { .. }))),
        ("deeply nested JSON, under the size cap", Fault::malformed(nested(10_000)), |r| invalid(r, |p| matches!(p, I::NotJson { .. }))),
        ("nesting under the limit", Fault::malformed(nested(100)), |r| r.is_ok()),
        ("body over 64 KiB", Fault::malformed(ok_body(&huge_token, "3600", "Bearer")), |r| invalid(r, |p| *p == I::BodyTooLarge { limit: 65536 })),
        ("duplicate access_token", Fault::malformed(format!(r#"{{"access_token":"{T}","access_token":"other","expires_in":3600,"token_type":"Bearer"}}"#)), |r| invalid(r, |p| *p == I::DuplicateField("access_token".into()))),
        ("duplicate expires_in", Fault::malformed(format!(r#"{{"access_token":"{T}","expires_in":1,"expires_in":3600,"token_type":"Bearer"}}"#)), |r| invalid(r, |p| *p == I::DuplicateField("expires_in".into()))),
        ("expires_in beyond f64", Fault::malformed(ok_body(T, "1e400", "Bearer")), |r| invalid(r, |p| matches!(p, I::NotJson { .. }))),
        ("expires_in beyond u64", Fault::malformed(ok_body(T, "18446744073709551616", "Bearer")), |r| invalid(r, |p| matches!(p, I::LifetimeTooLong { .. }))),
        ("expires_in i64 minimum", Fault::malformed(ok_body(T, "-9223372036854775808", "Bearer")), |r| invalid(r, |p| matches!(p, I::NegativeLifetime(_)))),
        ("expires_in fractional", Fault::malformed(ok_body(T, "0.5", "Bearer")), |r| invalid(r, |p| matches!(p, I::WrongFieldType { field: "expires_in", .. }))),
        ("expires_in a string", Fault::malformed(ok_body(T, "\"3600\"", "Bearer")), |r| invalid(r, |p| matches!(p, I::WrongFieldType { field: "expires_in", .. }))),
        ("expires_in zero", Fault::malformed(ok_body(T, "0", "Bearer")), |r| invalid(r, |p| *p == I::ZeroLifetime)),
        ("expires_in a year", Fault::malformed(ok_body(T, "31536000", "Bearer")), |r| invalid(r, |p| matches!(p, I::LifetimeTooLong { .. }))),
        ("token_type with a NUL", Fault::malformed(ok_body(T, "3600", "Bearer\\u0000")), |r| invalid(r, |p| matches!(p, I::NotBearer(_)))),
        ("fullwidth BEARER", Fault::malformed(ok_body(T, "3600", "ＢＥＡＲＥＲ")), |r| invalid(r, |p| matches!(p, I::NotBearer(_)))),
        ("token_type DPoP", Fault::malformed(ok_body(T, "3600", "DPoP")), |r| invalid(r, |p| matches!(p, I::NotBearer(_)))),
        ("token with a zero-width space", Fault::malformed(ok_body("abc\u{200b}def", "3600", "Bearer")), |r| invalid(r, |p| *p == I::AccessTokenCharacters)),
        ("token with CRLF (header injection)", Fault::malformed(ok_body("abc\\r\\nX-Evil: 1", "3600", "Bearer")), |r| invalid(r, |p| *p == I::AccessTokenCharacters)),
        ("token with an escaped quote", Fault::malformed(ok_body("abc\\\"def", "3600", "Bearer")), |r| r.is_ok()),
        ("token an object", Fault::malformed(r#"{"access_token":{"t":1},"expires_in":3600,"token_type":"Bearer"}"#), |r| invalid(r, |p| matches!(p, I::WrongFieldType { field: "access_token", .. }))),
        ("scope a number", Fault::malformed(format!(r#"{{"access_token":"{T}","expires_in":3600,"token_type":"Bearer","scope":7}}"#)), |r| invalid(r, |p| matches!(p, I::WrongFieldType { field: "scope", .. }))),
        ("an OAuth error with 200", Fault::malformed(r#"{"error":"invalid_client","error_description":"nope"}"#), |r| matches!(r, Err(Error::OAuth(e)) if e.code == OAuthErrorCode::InvalidClient)),
        ("OAuth error with a 1 MB description", Fault::Body { status: 400, content_type: "application/json".into(), body: format!(r#"{{"error":"invalid_request","error_description":"{}"}}"#, "x".repeat(1 << 20)) }, |r| matches!(r, Err(Error::UnexpectedStatus { .. }) | Err(Error::InvalidResponse { .. }))),
        ("OAuth error with control characters", Fault::Body { status: 400, content_type: "application/json".into(), body: r#"{"error":"invalid_scope","error_description":"line1\nFAKE LOG LINE\u001b[31m"}"#.into() }, |r| matches!(r, Err(Error::OAuth(e)) if !e.description.as_deref().unwrap_or("").chars().any(char::is_control))),
        ("OAuth error code not a string", Fault::Body { status: 400, content_type: "application/json".into(), body: r#"{"error":["invalid_client"]}"#.into() }, |r| matches!(r, Err(Error::UnexpectedStatus { .. }))),
        ("401 HTML", Fault::Body { status: 401, content_type: "text/html".into(), body: "<h1>401</h1>".into() }, |r| matches!(r, Err(Error::UnexpectedStatus { status }) if status.as_u16() == 401)),
        ("truncated stream", Fault::Truncate, |r| invalid(r, |p| *p == I::Truncated)),
        ("dropped connection", Fault::DropConnection, |r| matches!(r, Err(Error::Transport(_)))),
        ("status 299 with a token", Fault::Body { status: 299, content_type: "application/json".into(), body: ok_body(T, "3600", "Bearer") }, |r| r.is_ok()),
        ("status 999", Fault::Body { status: 999, content_type: "application/json".into(), body: "{}".into() }, |r| matches!(r, Err(Error::UnexpectedStatus { .. }))),
    ];
    let emulator = Emulator::start().await.unwrap();
    let env = environment(&emulator);
    let creds = credentials(&emulator);
    let client = TokenClient::new().unwrap();
    let mut failures = Vec::new();
    for (name, fault, check) in cases {
        emulator.fail_next([fault]);
        let result = client
            .request_token_once(&env, &creds, &Scopes::payments())
            .await;
        if !check(&result) {
            failures.push(format!("{name}: got {result:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
