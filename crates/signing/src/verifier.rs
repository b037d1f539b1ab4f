//! Verifying `Tl-Signature` values: TrueLayer's webhooks, the emulator, and tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::canonical::{self, Unsignable, shown};
use crate::jws::{self, ALG, JwsHeader, Malformed};
use crate::key::{KeyError, PublicKey};
use crate::signer::Signable;

/// Why a signature was refused. Names what is wrong, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a detached JWS (`header..signature`).
    #[error("the signature is not a detached JWS (`<header>..<signature>`)")]
    NotDetached,
    /// A JWS that carries its payload: what it signs is not this request.
    #[error("the signature carries its own payload; a Tl-Signature is detached")]
    AttachedPayload,
    /// The JOSE header is not base64url JSON with `alg` and `kid`.
    #[error("the signature's JOSE header is not valid")]
    MalformedHeader,
    /// The signature part is not base64url.
    #[error("the signature bytes are not base64url")]
    MalformedSignature,
    /// An algorithm other than ES512.
    #[error("the signature uses `{0}`; only ES512 is accepted")]
    UnsupportedAlgorithm(String),
    /// A v1 (body-only) signature, not allowed by this verifier.
    #[error("the signature is v1 (body only); only v2 is accepted")]
    V1NotAllowed,
    /// A `tl_version` this crate does not know.
    #[error("the signature's tl_version `{0}` is not supported")]
    UnsupportedVersion(String),
    /// No key with the signature's `kid` (or none that is EC P-521).
    #[error("no EC P-521 key with id `{0}`")]
    UnknownKey(String),
    /// A header the signature covers is not on the request.
    #[error("the signed header `{0}` is missing from the request")]
    MissingSignedHeader(String),
    /// A header the verifier requires is not among the signed ones.
    #[error("the header `{0}` must be signed and is not")]
    RequiredHeaderNotSigned(String),
    /// The path does not start with `/`.
    #[error("the path `{0}` is not absolute")]
    PathNotAbsolute(String),
    /// The method is not an HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``), so the
    /// payload would not say where it ends.
    #[error("the method `{0}` is not an HTTP token; no signature can cover it unambiguously")]
    InvalidMethod(String),
    /// The path holds a line break (CR or LF), so the payload would read back as headers.
    #[error("the path `{0}` holds a line break; no signature can cover it unambiguously")]
    InvalidPath(String),
    /// A signed header [`Signer`](crate::Signer) would refuse to sign: a name that is not an
    /// HTTP token, or a value with a line break or a space or tab at either end. With a line
    /// break, bytes could move between the value and what follows it, and two requests
    /// would share one signature.
    #[error(
        "the signed header `{0}` cannot be verified: names must be HTTP tokens, values hold no line breaks and no spaces or tabs at either end"
    )]
    InvalidHeader(String),
    /// A signed header appears more than once on the request (names compare in any case):
    /// the receiver could act on another value than the one verified.
    #[error(
        "the signed header `{0}` appears more than once on the request; it must have one value"
    )]
    DuplicateHeader(String),
    /// The signature does not match the request.
    #[error(
        "the signature does not match the request (method, path, signed headers or body differ, or another key signed)"
    )]
    Invalid,
}

impl From<Malformed> for VerifyError {
    fn from(m: Malformed) -> Self {
        match m {
            Malformed::NotDetached => VerifyError::NotDetached,
            Malformed::AttachedPayload => VerifyError::AttachedPayload,
            Malformed::Header => VerifyError::MalformedHeader,
            Malformed::Signature => VerifyError::MalformedSignature,
        }
    }
}

/// The error for a request the signer would have refused; `name` is the header's.
fn refused(fault: Unsignable, request: &Signable<'_>, name: &str) -> VerifyError {
    match fault {
        Unsignable::Method => VerifyError::InvalidMethod(shown(request.method, 20)),
        Unsignable::PathNotAbsolute => VerifyError::PathNotAbsolute(shown(request.path, 100)),
        Unsignable::Path => VerifyError::InvalidPath(shown(request.path, 100)),
        Unsignable::Header => VerifyError::InvalidHeader(shown(name, 100)),
        Unsignable::DuplicateHeader => VerifyError::DuplicateHeader(shown(name, 100)),
    }
}

/// The JOSE header of a signature, without verifying it: to read its `kid` or `jku` before
/// choosing a key (for webhooks, check the `jku` against an allow-list first).
///
/// # Errors
///
/// When the value is not a detached JWS with a readable header.
pub fn jws_header(signature: &str) -> Result<JwsHeader, VerifyError> {
    Ok(jws::split(signature)?.header)
}

#[derive(Clone)]
enum Keys {
    One(PublicKey),
    ByKid(Arc<HashMap<String, PublicKey>>),
}

/// Verifies `Tl-Signature` values with a public key or a JWKS.
///
/// - The method is compared exactly (HTTP methods are case-sensitive): a signature over
///   `POST` does not verify a request given as `post`.
/// - Header names are looked up case-insensitively; the payload uses the casing and order
///   the signature names.
/// - A single trailing-slash difference in the path is tolerated (`/a/` for `/a`, and back).
/// - Refuses attached payloads, any `alg` but ES512, and v1 signatures unless
///   [`allow_v1`](Self::allow_v1).
/// - Refuses what [`Signer`](crate::Signer) refuses to sign, with the same checks: a method
///   that is not an HTTP token, a path with a line break, and a signed header whose name is
///   not a token, whose value holds a line break or is padded with spaces or tabs, or that
///   appears more than once on the request. Such a request's payload could equal another's.
///
/// # A signature is not an identifier
///
/// ECDSA signatures are malleable: for a valid `(r, s)`, the twin `(r, n - s)` is valid too.
/// Like TrueLayer's own libraries (and OpenSSL, AWS-LC), this verifier accepts both the
/// low-S and the high-S form, so anyone holding one `Tl-Signature` can write a second,
/// different string that verifies for the same request; and nonces are random, so the
/// signer makes a new one on every call anyway. Never deduplicate, cache or look up replays
/// by signature bytes: key replays on what the request says (an `Idempotency-Key`, a
/// webhook's `event_id`).
///
/// # Example
///
/// ```
/// use truelayer_auth_signing::{Signable, Signer, Verifier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let signer = Signer::generate("my-kid");
/// let verifier = Verifier::from_public_pem(signer.public_key_pem().unwrap().as_bytes())?
///     .require_header("Idempotency-Key");
/// let request = Signable::new("POST", "/v3/payments")
///     .header("Idempotency-Key", "k-1")
///     .body(b"{}");
/// let signature = signer.sign(&request).await?;
/// verifier.verify(&request, &signature)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    required: Vec<String>,
    allow_v1: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            Keys::One(_) => vec!["(one key)".to_owned()],
            Keys::ByKid(map) => map.keys().cloned().collect(),
        };
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("required", &self.required)
            .field("allow_v1", &self.allow_v1)
            .finish()
    }
}

impl Verifier {
    /// A verifier with one public key (SPKI `PUBLIC KEY` PEM; the public half of a private
    /// key PEM works too). It accepts any `kid`.
    ///
    /// # Errors
    ///
    /// [`KeyError`]: not PEM, or not an EC P-521 key (the curve or type found is named).
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::with_keys(Keys::One(PublicKey::from_pem(pem)?)))
    }

    /// A verifier with the EC P-521 keys of a JWKS (`{"keys": [...]}`), picked by `kid`;
    /// keys of other types or curves are ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidJwks`] when it is not a JSON object with a `keys` array.
    pub fn from_jwks(jwks: &[u8]) -> Result<Self, KeyError> {
        let value: serde_json::Value =
            serde_json::from_slice(jwks).map_err(|_| KeyError::InvalidJwks)?;
        let keys = value
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or(KeyError::InvalidJwks)?;
        let mut by_kid = HashMap::new();
        for key in keys {
            let field = |name: &str| key.get(name).and_then(serde_json::Value::as_str);
            if field("kty") != Some("EC") || field("crv") != Some("P-521") {
                continue;
            }
            let (Some(kid), Some(x), Some(y)) = (field("kid"), field("x"), field("y")) else {
                continue;
            };
            if let Some(public) = PublicKey::from_jwk_coordinates(x, y) {
                by_kid.entry(kid.to_owned()).or_insert(public);
            }
        }
        Ok(Self::with_keys(Keys::ByKid(Arc::new(by_kid))))
    }

    fn with_keys(keys: Keys) -> Self {
        Verifier {
            keys,
            required: Vec::new(),
            allow_v1: false,
        }
    }

    /// Requires `name` (any case) to be among the signed headers.
    #[must_use]
    pub fn require_header(mut self, name: impl Into<String>) -> Self {
        self.required.push(name.into());
        self
    }

    /// Accepts v1 (body-only) signatures too. Off by default. A v1 signature still fails
    /// when a header is [required](Self::require_header): it signs no headers.
    #[must_use]
    pub fn allow_v1(mut self, allow: bool) -> Self {
        self.allow_v1 = allow;
        self
    }

    /// Whether the verifier has a key for `kid` (always true for a single-key verifier).
    pub fn has_key(&self, kid: &str) -> bool {
        match &self.keys {
            Keys::One(_) => true,
            Keys::ByKid(map) => map.contains_key(kid),
        }
    }

    /// Verifies `signature` against `request` (whose headers may be all of the request's:
    /// the signature names the ones it covers).
    ///
    /// # Errors
    ///
    /// The [`VerifyError`] naming what is wrong.
    pub fn verify(&self, request: &Signable<'_>, signature: &str) -> Result<(), VerifyError> {
        canonical::check_request_line(request.method, request.path)
            .map_err(|fault| refused(fault, request, ""))?;
        let detached = jws::split(signature)?;
        let header = &detached.header;
        if header.alg != ALG {
            return Err(VerifyError::UnsupportedAlgorithm(
                header.alg.chars().take(20).collect(),
            ));
        }
        let key = match &self.keys {
            Keys::One(key) => key,
            Keys::ByKid(map) => map
                .get(&header.kid)
                .ok_or_else(|| VerifyError::UnknownKey(header.kid.chars().take(100).collect()))?,
        };
        match header.tl_version.as_deref() {
            Some("2") => {}
            // A v1 signature covers the body only: it cannot have signed a required header.
            None | Some("1") if self.allow_v1 => {
                if let Some(required) = self.required.first() {
                    return Err(VerifyError::RequiredHeaderNotSigned(required.clone()));
                }
                let input = jws::signing_input(&detached.encoded_header, request.body);
                return if key.verify(&input, &detached.signature) {
                    Ok(())
                } else {
                    Err(VerifyError::Invalid)
                };
            }
            None | Some("1") => return Err(VerifyError::V1NotAllowed),
            Some(other) => {
                return Err(VerifyError::UnsupportedVersion(
                    other.chars().take(20).collect(),
                ));
            }
        }
        let signed: Vec<&str> = header.signed_headers().collect();
        for required in &self.required {
            if !signed.iter().any(|s| s.eq_ignore_ascii_case(required)) {
                return Err(VerifyError::RequiredHeaderNotSigned(required.clone()));
            }
        }
        let mut values = Vec::with_capacity(signed.len());
        for name in &signed {
            // The same checks as the signer's: one value, a token name, no line break.
            let value = canonical::signed_value(&request.headers, name)
                .map_err(|fault| refused(fault, request, name))?
                .ok_or_else(|| VerifyError::MissingSignedHeader(shown(name, 100)))?;
            values.push((*name, value));
        }
        let path = request.path;
        let other_path = match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
            Some(_) => String::new(),
            None => format!("{path}/"),
        };
        for candidate in [path, other_path.as_str()] {
            if candidate.is_empty() {
                continue;
            }
            let payload = jws::payload(
                request.method,
                candidate,
                values.iter().copied(),
                request.body,
            );
            let input = jws::signing_input(&detached.encoded_header, &payload);
            if key.verify(&input, &detached.signature) {
                return Ok(());
            }
        }
        Err(VerifyError::Invalid)
    }
}
