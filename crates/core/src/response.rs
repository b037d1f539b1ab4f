//! Parsing the token endpoint's answers: success bodies and OAuth2 error bodies.
//!
//! Bodies are parsed into a `serde_json::Value` and read field by field, so that no parser
//! message can quote a field's value (which could be the token).

use std::time::Duration;

use http::StatusCode;
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::error::{InvalidResponse, OAuthError, OAuthErrorCode, truncate};

/// The longest `expires_in` accepted: TrueLayer's tokens live an hour; a day leaves room
/// for change while rejecting nonsense.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// A successful token response, checked.
#[derive(Debug)]
pub(crate) struct TokenResponse {
    /// `access_token`.
    pub(crate) access_token: SecretString,
    /// `expires_in`, checked to be in `1..=MAX_LIFETIME` seconds.
    pub(crate) expires_in: Duration,
    /// `scope`, if the server sent one.
    pub(crate) scope: Option<String>,
    /// `refresh_token`, if the server sent one (the user grants, with `offline_access`).
    pub(crate) refresh_token: Option<SecretString>,
}

/// Parses a 2xx token endpoint body.
///
/// # Errors
///
/// The [`InvalidResponse`] that says what is wrong; it never quotes the body.
pub(crate) fn parse_token_response(
    body: &[u8],
    secrets: &[&str],
) -> Result<TokenResponse, InvalidResponse> {
    let object = parse_object(body)?;
    let access_token = match object.get("access_token") {
        None | Some(Value::Null) => return Err(InvalidResponse::MissingField("access_token")),
        Some(Value::String(s)) if s.is_empty() => return Err(InvalidResponse::EmptyAccessToken),
        Some(Value::String(s)) => SecretString::from(s.as_str()),
        Some(_) => {
            return Err(InvalidResponse::WrongFieldType {
                field: "access_token",
                expected: "a string",
            });
        }
    };
    match object.get("token_type") {
        None | Some(Value::Null) => return Err(InvalidResponse::MissingField("token_type")),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            return Err(InvalidResponse::NotBearer(truncate(
                &scrub_decoded(t, secrets),
                40,
            )));
        }
        Some(_) => {
            return Err(InvalidResponse::WrongFieldType {
                field: "token_type",
                expected: "a string",
            });
        }
    }
    let expires_in = match object.get("expires_in") {
        None | Some(Value::Null) => return Err(InvalidResponse::MissingField("expires_in")),
        Some(Value::Number(n)) => lifetime(n)?,
        Some(_) => {
            return Err(InvalidResponse::WrongFieldType {
                field: "expires_in",
                expected: "a number",
            });
        }
    };
    let scope = match object.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(InvalidResponse::WrongFieldType {
                field: "scope",
                expected: "a string",
            });
        }
    };
    let refresh_token = match object.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(InvalidResponse::WrongFieldType {
                field: "refresh_token",
                expected: "a non-empty string",
            });
        }
        Some(Value::String(s)) => Some(SecretString::from(s.as_str())),
        Some(_) => {
            return Err(InvalidResponse::WrongFieldType {
                field: "refresh_token",
                expected: "a string",
            });
        }
    };
    Ok(TokenResponse {
        access_token,
        expires_in,
        scope,
        refresh_token,
    })
}

/// The `refresh_token` of a 2xx body whose other fields may be unusable: a non-empty string
/// in a JSON object with no other `refresh_token`.
pub(crate) fn salvage_refresh_token(body: &[u8]) -> Option<SecretString> {
    match parse_object(body).ok()?.get("refresh_token")? {
        Value::String(s) if !s.is_empty() => Some(SecretString::from(s.as_str())),
        _ => None,
    }
}

fn lifetime(n: &serde_json::Number) -> Result<Duration, InvalidResponse> {
    let max = MAX_LIFETIME.as_secs();
    if let Some(secs) = n.as_u64() {
        return match secs {
            0 => Err(InvalidResponse::ZeroLifetime),
            s if s > max => Err(InvalidResponse::LifetimeTooLong { seconds: s, max }),
            s => Ok(Duration::from_secs(s)),
        };
    }
    if let Some(negative) = n.as_i64() {
        return Err(InvalidResponse::NegativeLifetime(negative));
    }
    // A float: only whole numbers are accepted (3600.0 is 3600), anything huge is too long.
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f < 0.0 => {
            Err(InvalidResponse::NegativeLifetime(i64::MIN))
        }
        Some(f) if f.is_finite() && f.fract() == 0.0 && f > max as f64 => {
            Err(InvalidResponse::LifetimeTooLong {
                seconds: u64::MAX,
                max,
            })
        }
        Some(f) if f.is_finite() && f.fract() == 0.0 && f == 0.0 => {
            Err(InvalidResponse::ZeroLifetime)
        }
        Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Duration::from_secs(f as u64)),
        _ => Err(InvalidResponse::WrongFieldType {
            field: "expires_in",
            expected: "a whole number of seconds",
        }),
    }
}

/// Parses an OAuth2 error body (`{"error": "...", "error_description": "..."}`).
///
/// Returns `None` when the body is not one. Server text is scrubbed of `secret` should a
/// server echo it back (in any encoding the client sent it in), then truncated and stripped
/// of control characters.
pub(crate) fn parse_oauth_error(
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> Option<OAuthError> {
    let object = parse_object(body).ok()?;
    let code = object.get("error")?.as_str()?;
    let description = object
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| truncate(&scrub(d, secrets), 300));
    Some(OAuthError {
        code: OAuthErrorCode::from_code(&scrub(code, secrets)),
        description,
        status,
    })
}

/// Replaces every form of `secret` a server could echo: as sent in the form body
/// (`application/x-www-form-urlencoded`: `+` for space, `%XX` in upper case), the same with
/// lower-case escapes or `%20`, and decoded.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        out = scrub_one(&out, secret);
    }
    out
}

fn scrub_one(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_owned();
    }
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let variants = [
        secret.to_owned(),
        form.clone(),
        lower_escapes(&form),
        form.replace('+', "%20"),
        lower_escapes(&form.replace('+', "%20")),
    ];
    let mut out = text.to_owned();
    for variant in variants {
        if out.contains(&variant) {
            out = out.replace(&variant, "[redacted]");
        }
    }
    out
}

/// [`scrub`] over `text` percent-decoded as well (a server may escape any byte), for server
/// text that an error quotes outside an OAuth2 error body: an echoed `token_type`, a
/// redirect's `Location`. The result is the decoded text when that is where a secret was found.
pub(crate) fn scrub_decoded(text: &str, secrets: &[&str]) -> String {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    let scrubbed = scrub(&decoded, secrets);
    if scrubbed == decoded {
        scrub(text, secrets)
    } else {
        scrubbed
    }
}

/// `%2B` → `%2b`: the hex digits after each `%` in lower case.
fn lower_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            if c == '%' {
                hex_left = 2;
            }
            out.push(c);
        }
    }
    out
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, InvalidResponse> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(InvalidResponse::EmptyBody);
    }
    if trimmed.first() == Some(&b'<') {
        return Err(InvalidResponse::HtmlPage);
    }
    match serde_json::from_slice::<UniqueObject>(trimmed) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            let message = e.to_string();
            match message.strip_prefix(DUPLICATE) {
                Some(rest) => Err(InvalidResponse::DuplicateField(
                    rest.split('`').nth(1).unwrap_or_default().to_owned(),
                )),
                None => Err(InvalidResponse::NotAnObject),
            }
        }
        // serde_json's syntax messages name the problem and position, never the input.
        Err(e) => Err(InvalidResponse::NotJson {
            detail: e.to_string(),
        }),
    }
}

const DUPLICATE: &str = "duplicate field ";

/// A top-level JSON object whose keys are unique: two `access_token`s are a parser
/// differential waiting to happen, so they are an error rather than "last one wins".
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "{DUPLICATE}`{}`",
                    truncate(&key, 40).replace('`', "'")
                )));
            }
            map.insert(key, value);
        }
        Ok(UniqueObject(map))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn ok(body: &str) -> TokenResponse {
        parse_token_response(body.as_bytes(), &[]).unwrap()
    }

    fn err(body: &str) -> InvalidResponse {
        parse_token_response(body.as_bytes(), &[]).unwrap_err()
    }

    #[test]
    fn documented_success_body() {
        let r = ok(
            r#"{"access_token":"eyJ.x.y","expires_in":3600,"token_type":"Bearer","scope":"payments"}"#,
        );
        assert_eq!(r.access_token.expose_secret(), "eyJ.x.y");
        assert_eq!(r.expires_in, Duration::from_secs(3600));
        assert_eq!(r.scope.as_deref(), Some("payments"));
        let lower = ok(r#"{"access_token":"t","expires_in":3600.0,"token_type":"bearer"}"#);
        assert_eq!(lower.scope, None);
        assert_eq!(lower.expires_in, Duration::from_secs(3600));
    }

    #[test]
    fn each_malformation_has_its_own_kind() {
        use InvalidResponse as I;
        assert_eq!(err(""), I::EmptyBody);
        assert_eq!(err(" \n"), I::EmptyBody);
        assert_eq!(
            err("<html><body>502 Bad Gateway</body></html>"),
            I::HtmlPage
        );
        assert!(matches!(err("{\"access_token\":"), I::NotJson { .. }));
        assert_eq!(err("[1,2]"), I::NotAnObject);
        assert_eq!(
            err(r#"{"expires_in":1,"token_type":"Bearer"}"#),
            I::MissingField("access_token")
        );
        assert_eq!(
            err(r#"{"access_token":"t","expires_in":1}"#),
            I::MissingField("token_type")
        );
        assert_eq!(
            err(r#"{"access_token":"t","token_type":"Bearer"}"#),
            I::MissingField("expires_in")
        );
        assert_eq!(
            err(r#"{"access_token":"","expires_in":1,"token_type":"Bearer"}"#),
            I::EmptyAccessToken
        );
        assert_eq!(
            err(r#"{"access_token":"t","expires_in":1,"token_type":"MAC"}"#),
            I::NotBearer("MAC".into())
        );
        assert_eq!(
            err(r#"{"access_token":"t","expires_in":0,"token_type":"Bearer"}"#),
            I::ZeroLifetime
        );
        assert_eq!(
            err(r#"{"access_token":"t","expires_in":-5,"token_type":"Bearer"}"#),
            I::NegativeLifetime(-5)
        );
        assert!(matches!(
            err(r#"{"access_token":"t","expires_in":99999999,"token_type":"Bearer"}"#),
            I::LifetimeTooLong {
                seconds: 99_999_999,
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"access_token":"t","expires_in":1e300,"token_type":"Bearer"}"#),
            I::LifetimeTooLong { .. }
        ));
        assert!(matches!(
            err(r#"{"access_token":"t","expires_in":"3600","token_type":"Bearer"}"#),
            I::WrongFieldType {
                field: "expires_in",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"access_token":"t","expires_in":1.5,"token_type":"Bearer"}"#),
            I::WrongFieldType {
                field: "expires_in",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"access_token":42,"expires_in":1,"token_type":"Bearer"}"#),
            I::WrongFieldType {
                field: "access_token",
                ..
            }
        ));
    }

    #[test]
    fn wrong_shapes_never_quote_the_token() {
        let e = err(
            r#"{"access_token":"TOPSECRET-TOKEN","expires_in":"TOPSECRET-2","token_type":"Bearer"}"#,
        );
        assert!(!e.to_string().contains("TOPSECRET"));
        assert!(!format!("{e:?}").contains("TOPSECRET"));
    }

    #[test]
    fn oauth_errors_map_and_scrub() {
        let e = parse_oauth_error(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#,
            &["s3cr3t-value"],
        )
        .unwrap();
        assert_eq!(e.code, OAuthErrorCode::InvalidClient);
        assert_eq!(e.description.as_deref(), Some("bad secret [redacted]"));
        let other = parse_oauth_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":"weird_code"}"#,
            &["x"],
        )
        .unwrap();
        assert_eq!(other.code, OAuthErrorCode::Other("weird_code".into()));
        assert!(parse_oauth_error(StatusCode::BAD_REQUEST, b"<html>", &["x"]).is_none());
        assert!(parse_oauth_error(StatusCode::BAD_REQUEST, br#"{"error":7}"#, &["x"]).is_none());
    }

    #[test]
    fn every_encoding_of_the_secret_a_server_echoes_is_scrubbed() {
        let secret = "a+b&c=d/e f%g~";
        for echoed in [
            "a+b&c=d/e f%g~",
            "a%2Bb%26c%3Dd%2Fe+f%25g%7E",
            "a%2bb%26c%3dd%2fe+f%25g%7e",
            "a%2Bb%26c%3Dd%2Fe%20f%25g%7E",
            "a%2bb%26c%3dd%2fe%20f%25g%7e",
        ] {
            let body = format!(
                r#"{{"error":"invalid_request","error_description":"bad body client_id=x&client_secret={echoed}&scope=payments"}}"#
            );
            let e = parse_oauth_error(StatusCode::BAD_REQUEST, body.as_bytes(), &[secret]).unwrap();
            let shown = format!("{e} {e:?}");
            assert!(
                shown.contains("client_secret=[redacted]&scope"),
                "{echoed}: {shown}"
            );
        }
    }

    #[test]
    fn a_secret_on_the_truncation_boundary_is_scrubbed_whole() {
        let secret = "SECRET-VALUE-0123456789";
        let description = format!("{}{secret}", "x".repeat(290));
        let body = serde_json::json!({"error": "invalid_client", "error_description": description});
        let e = parse_oauth_error(
            StatusCode::UNAUTHORIZED,
            body.to_string().as_bytes(),
            &[secret],
        )
        .unwrap();
        assert!(!e.to_string().contains("SECRET-VAL"), "{e}");
    }
}
