//! Secret formats, and parsing a secret's value straight into secrecy types.

use std::collections::HashMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use truelayer_auth::ClientCredentials;
use truelayer_auth_signing::Signer;

use crate::error::SecretProblem;

/// How the client credentials are laid out in the secret's value.
///
/// # Example
///
/// ```
/// use truelayer_auth_vault::SecretFormat;
///
/// // {"client_id": "...", "client_secret": "..."} (the default)
/// let default = SecretFormat::json();
/// // {"tl_id": "...", "tl_secret": "..."}
/// let renamed = SecretFormat::json_fields("tl_id", "tl_secret");
/// // the whole value is the secret; the client_id is configuration
/// let plain = SecretFormat::plain_secret("sandbox-acme-1a2b3c");
/// # let _ = (default, renamed, plain);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretFormat {
    /// A JSON object with the client_id, the client_secret and, optionally, a request-signing
    /// key id with either its private key or the id of a key in AWS KMS.
    Json {
        /// The field holding the client_id. Default `client_id`.
        client_id_field: String,
        /// The field holding the client secret. Default `client_secret`.
        client_secret_field: String,
        /// The optional field holding the signing key id. Default `signing_key_id`.
        signing_key_id_field: String,
        /// The optional field holding the signing private key (PEM). Default `signing_private_key`.
        signing_private_key_field: String,
        /// The optional field naming a P-521 signing key in AWS KMS instead (its key id, ARN
        /// or alias; feature `kms`). Default `signing_kms_key_id`.
        signing_kms_key_id_field: String,
    },
    /// The value is the client secret alone.
    PlainSecret {
        /// The client_id that goes with it.
        client_id: String,
    },
}

impl SecretFormat {
    /// JSON with the default field names.
    pub fn json() -> Self {
        Self::json_fields("client_id", "client_secret")
    }

    /// JSON with these client_id and client_secret field names.
    pub fn json_fields(
        client_id_field: impl Into<String>,
        client_secret_field: impl Into<String>,
    ) -> Self {
        SecretFormat::Json {
            client_id_field: client_id_field.into(),
            client_secret_field: client_secret_field.into(),
            signing_key_id_field: "signing_key_id".into(),
            signing_private_key_field: "signing_private_key".into(),
            signing_kms_key_id_field: "signing_kms_key_id".into(),
        }
    }

    /// The value is the client secret; `client_id` comes from configuration.
    pub fn plain_secret(client_id: impl Into<String>) -> Self {
        SecretFormat::PlainSecret {
            client_id: client_id.into(),
        }
    }

    /// Parses a secret's value in this format, straight into secret types.
    ///
    /// # Errors
    ///
    /// The [`SecretProblem`] (a missing field, the position of a JSON error), never the value.
    pub fn parse(&self, value: &SecretString) -> Result<LoadedSecret, SecretProblem> {
        parse(self, value, None)
    }
}

/// Client credentials loaded from a secret, with the optional request-signing key (held in
/// the secret, or named in AWS KMS).
#[derive(Clone)]
pub struct LoadedSecret {
    credentials: ClientCredentials,
    signing_key_id: Option<SecretString>,
    signing_private_key: Option<SecretString>,
    /// Not secret: an id (or ARN, or alias), named in errors and logs.
    signing_kms_key_id: Option<String>,
    version_id: Option<String>,
}

impl LoadedSecret {
    /// The client credentials.
    pub fn credentials(&self) -> &ClientCredentials {
        &self.credentials
    }

    /// The request-signing key id, if the secret has one.
    pub fn signing_key_id(&self) -> Option<&str> {
        self.signing_key_id
            .as_ref()
            .map(|kid| kid.expose_secret().trim())
    }

    /// The id of the signing key in AWS KMS, if the secret names one (`signing_kms_key_id`)
    /// instead of holding a private key.
    pub fn signing_kms_key_id(&self) -> Option<&str> {
        self.signing_kms_key_id.as_deref().map(str::trim)
    }

    /// The request-signing key id and the KMS key id, when the secret names a key in KMS.
    ///
    /// # Errors
    ///
    /// [`SecretProblem::ConflictingSigningKeys`] when the secret also holds a private key,
    /// [`SecretProblem::MissingField`] when it has no `signing_key_id`.
    pub(crate) fn kms_signing_key(&self) -> Result<Option<(&str, &str)>, SecretProblem> {
        let Some(kms_key_id) = self.signing_kms_key_id() else {
            return Ok(None);
        };
        if self.signing_private_key.is_some() {
            return Err(SecretProblem::ConflictingSigningKeys);
        }
        let kid = self
            .signing_key_id()
            .ok_or_else(|| SecretProblem::MissingField("signing_key_id".into()))?;
        Ok(Some((kid, kms_key_id)))
    }

    /// A request signer from the secret's `signing_key_id` and `signing_private_key`.
    ///
    /// A secret that names a key in AWS KMS (`signing_kms_key_id`) gets its signer from
    /// [`SecretsManagerCredentials`](crate::SecretsManagerCredentials) (a `SignerSource`),
    /// which asks KMS for the public key once; here it is
    /// [`SecretProblem::NamesKmsKey`].
    ///
    /// # Errors
    ///
    /// [`SecretProblem::MissingField`] when the secret has no signing key, and
    /// [`SecretProblem::SigningKey`] when it is not a usable P-521 key (its source, the
    /// signing crate's `KeyError`, says why, never quoting the key);
    /// [`SecretProblem::NamesKmsKey`] and [`SecretProblem::ConflictingSigningKeys`] for a
    /// secret naming a key in KMS.
    pub fn signer(&self) -> Result<Signer, SecretProblem> {
        if self.kms_signing_key()?.is_some() {
            return Err(SecretProblem::NamesKmsKey);
        }
        let (Some(kid), Some(pem)) = (&self.signing_key_id, &self.signing_private_key) else {
            let missing = if self.signing_key_id.is_none() {
                "signing_key_id"
            } else {
                "signing_private_key"
            };
            return Err(SecretProblem::MissingField(missing.into()));
        };
        // Secrets Manager consoles often store a PEM with literal `\n`s for line breaks.
        // Built in a buffer sized up front, so no reallocation leaves a copy of the key behind.
        let text = pem.expose_secret();
        let mut pem = zeroize::Zeroizing::new(String::with_capacity(text.len()));
        let mut parts = text.split("\\n");
        if let Some(first) = parts.next() {
            pem.push_str(first);
        }
        for part in parts {
            pem.push('\n');
            pem.push_str(part);
        }
        Signer::from_pem(kid.expose_secret(), pem.as_bytes()).map_err(SecretProblem::SigningKey)
    }

    /// The Secrets Manager version id this came from.
    pub fn version_id(&self) -> Option<&str> {
        self.version_id.as_deref()
    }
}

impl fmt::Debug for LoadedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedSecret")
            .field("credentials", &self.credentials)
            .field(
                "signing_key_id",
                &self.signing_key_id.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "signing_private_key",
                &self.signing_private_key.as_ref().map(|_| "[redacted]"),
            )
            .field("signing_kms_key_id", &self.signing_kms_key_id)
            .field("version_id", &self.version_id)
            .finish()
    }
}

/// A JSON field's value: strings go straight into a secret, anything else keeps only its kind.
enum Field {
    Text(SecretString),
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Text(SecretString::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Field, E> {
        Ok(Field::Text(SecretString::from(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

/// Parses a secret's text per `format`. Errors never quote the text.
pub(crate) fn parse(
    format: &SecretFormat,
    text: &SecretString,
    version_id: Option<String>,
) -> Result<LoadedSecret, SecretProblem> {
    let raw = text.expose_secret().trim();
    if raw.is_empty() {
        return Err(SecretProblem::Empty);
    }
    match format {
        SecretFormat::PlainSecret { client_id } => {
            let credentials = ClientCredentials::new(client_id.as_str(), SecretString::from(raw))
                .map_err(|_| SecretProblem::Empty)?;
            Ok(LoadedSecret {
                credentials,
                signing_key_id: None,
                signing_private_key: None,
                signing_kms_key_id: None,
                version_id,
            })
        }
        SecretFormat::Json {
            client_id_field,
            client_secret_field,
            signing_key_id_field,
            signing_private_key_field,
            signing_kms_key_id_field,
        } => {
            let mut fields: HashMap<String, Field> =
                serde_json::from_str(raw).map_err(|e| match e.classify() {
                    serde_json::error::Category::Data => SecretProblem::NotAnObject,
                    _ => SecretProblem::NotJson {
                        line: e.line(),
                        column: e.column(),
                    },
                })?;
            let mut take =
                |name: &str, required: bool| -> Result<Option<SecretString>, SecretProblem> {
                    match fields.remove(name) {
                        None if required => Err(SecretProblem::MissingField(name.to_owned())),
                        None => Ok(None),
                        Some(Field::Other) => Err(SecretProblem::NotAString(name.to_owned())),
                        Some(Field::Text(s)) if s.expose_secret().trim().is_empty() => {
                            Err(SecretProblem::EmptyField(name.to_owned()))
                        }
                        Some(Field::Text(s)) => Ok(Some(s)),
                    }
                };
            let id = take(client_id_field, true)?
                .ok_or_else(|| SecretProblem::MissingField(client_id_field.clone()))?;
            let secret = take(client_secret_field, true)?
                .ok_or_else(|| SecretProblem::MissingField(client_secret_field.clone()))?;
            let signing_key_id = take(signing_key_id_field, false)?;
            let signing_private_key = take(signing_private_key_field, false)?;
            let signing_kms_key_id = take(signing_kms_key_id_field, false)?
                .map(|id| id.expose_secret().trim().to_owned());
            let credentials = ClientCredentials::new(id.expose_secret(), secret)
                .map_err(|_| SecretProblem::EmptyField(client_id_field.clone()))?;
            Ok(LoadedSecret {
                credentials,
                signing_key_id,
                signing_private_key,
                signing_kms_key_id,
                version_id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> Result<LoadedSecret, SecretProblem> {
        parse(&SecretFormat::json(), &SecretString::from(text), None)
    }

    #[test]
    fn json_with_default_and_renamed_fields() {
        let s = parse_json(r#"{"client_id":"id-1","client_secret":"s3cret","other":1}"#).unwrap();
        assert_eq!(s.credentials().client_id(), "id-1");
        assert_eq!(s.credentials().client_secret().expose_secret(), "s3cret");
        assert!(s.signing_key_id().is_none());
        let renamed = parse(
            &SecretFormat::json_fields("id", "secret"),
            &SecretString::from(r#"{"id":"a","secret":"b","signing_key_id":"k","signing_private_key":"-----BEGIN"}"#),
            Some("v1".into()),
        )
        .unwrap();
        assert_eq!(renamed.credentials().client_id(), "a");
        assert_eq!(renamed.signing_key_id(), Some("k"));
        assert_eq!(renamed.version_id(), Some("v1"));
        let shown = format!("{renamed:?}");
        assert!(
            !shown.contains("-----BEGIN") && !shown.contains("\"b\""),
            "{shown}"
        );
    }

    #[test]
    fn a_secret_may_name_its_signing_key_in_kms_instead_of_holding_it() {
        let s = parse_json(
            r#"{"client_id":"m","client_secret":"s","signing_key_id":"kid","signing_kms_key_id":" alias/tl "}"#,
        )
        .unwrap();
        assert_eq!(s.signing_kms_key_id(), Some("alias/tl"));
        assert_eq!(s.kms_signing_key(), Ok(Some(("kid", "alias/tl"))));
        // The signer needs KMS: not made from the secret alone.
        assert_eq!(s.signer().unwrap_err(), SecretProblem::NamesKmsKey);
        assert!(
            format!("{s:?}").contains("alias/tl"),
            "a key id, not a secret"
        );

        let both = parse_json(
            r#"{"client_id":"m","client_secret":"s","signing_key_id":"kid","signing_kms_key_id":"alias/tl","signing_private_key":"-----BEGIN"}"#,
        )
        .unwrap();
        assert_eq!(
            both.signer().unwrap_err(),
            SecretProblem::ConflictingSigningKeys
        );
        let no_kid =
            parse_json(r#"{"client_id":"m","client_secret":"s","signing_kms_key_id":"alias/tl"}"#)
                .unwrap();
        assert_eq!(
            no_kid.kms_signing_key(),
            Err(SecretProblem::MissingField("signing_key_id".into()))
        );
        assert_eq!(
            parse_json(r#"{"client_id":"m","client_secret":"s","signing_kms_key_id":7}"#)
                .unwrap_err(),
            SecretProblem::NotAString("signing_kms_key_id".into())
        );
    }

    #[test]
    fn plain_secret_takes_the_client_id_from_configuration() {
        let s = parse(
            &SecretFormat::plain_secret("cid"),
            &SecretString::from("  s3cret\n"),
            None,
        )
        .unwrap();
        assert_eq!(s.credentials().client_id(), "cid");
        assert_eq!(s.credentials().client_secret().expose_secret(), "s3cret");
    }

    #[test]
    fn problems_name_fields_and_positions_never_values() {
        use SecretProblem as P;
        assert_eq!(parse_json("  ").unwrap_err(), P::Empty);
        assert_eq!(
            parse_json(r#"{"client_id":"x"}"#).unwrap_err(),
            P::MissingField("client_secret".into())
        );
        assert_eq!(
            parse_json(r#"{"client_secret":"x"}"#).unwrap_err(),
            P::MissingField("client_id".into())
        );
        assert_eq!(
            parse_json(r#"{"client_id":7,"client_secret":"x"}"#).unwrap_err(),
            P::NotAString("client_id".into())
        );
        assert_eq!(
            parse_json(r#"{"client_id":"","client_secret":"x"}"#).unwrap_err(),
            P::EmptyField("client_id".into())
        );
        assert_eq!(parse_json(r#"["client_id"]"#).unwrap_err(), P::NotAnObject);
        assert_eq!(
            parse_json("VALUE-OF-SECRET").unwrap_err(),
            P::NotJson { line: 1, column: 1 }
        );
        let truncated = parse_json("{\"client_id\":\"SECRETVALUE").unwrap_err();
        assert!(matches!(truncated, P::NotJson { .. }));
        assert!(!truncated.to_string().contains("SECRETVALUE"));
    }
}
