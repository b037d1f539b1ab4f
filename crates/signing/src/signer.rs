//! Signing requests: what is signed ([`Signable`]), who signs ([`SigningBackend`]), and the
//! [`Signer`] that puts them together into a `Tl-Signature` value.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::canonical::{self, Unsignable, shown};
use crate::jws::{self, ALG, HeaderOut, SIGNATURE_LEN};
use crate::key::{KeyError, PrivateKey};

/// A request as far as its signature goes: method, absolute path, headers, body.
///
/// For signing, `headers` are exactly the headers to sign, in signing order (TrueLayer wants
/// at least `Idempotency-Key`). For verifying, they are the request's headers, all or some:
/// the signature names which ones it covers.
///
/// # Example
///
/// ```
/// use truelayer_auth_signing::Signable;
///
/// let request = Signable::new("POST", "/v3/payments")
///     .header("Idempotency-Key", "9d5d5c0e-3b8e-4b5e-9d55-7a1f9c7f2b3a")
///     .body(br#"{"amount_in_minor":100}"#);
/// # let _ = request;
/// ```
#[derive(Debug, Clone)]
pub struct Signable<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: Vec<(&'a str, &'a [u8])>,
    pub(crate) body: &'a [u8],
}

impl<'a> Signable<'a> {
    /// A request with this method and absolute path (no scheme, host or query).
    ///
    /// [`Signer`] signs the method in uppercase (TrueLayer's methods are `POST`, `DELETE`,
    /// ...); [`Verifier`](crate::Verifier) compares it exactly, as HTTP does: a request whose
    /// method is `post` is not the `POST` that was signed.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Signable {
            method,
            path,
            headers: Vec::new(),
            body: &[],
        }
    }

    /// Adds a header. For signing, the order of calls is the signing order.
    #[must_use]
    pub fn header<V: AsRef<[u8]> + ?Sized>(mut self, name: &'a str, value: &'a V) -> Self {
        self.headers.push((name, value.as_ref()));
        self
    }

    /// Adds headers, in order.
    #[must_use]
    pub fn headers<I, V>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a V)>,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        self.headers
            .extend(headers.into_iter().map(|(n, v)| (n, v.as_ref())));
        self
    }

    /// The exact body bytes sent (none by default).
    #[must_use]
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    /// Refuses what the payload could not tell apart from another request (the rules
    /// [`Verifier`](crate::Verifier) applies too).
    fn check(&self) -> Result<(), SignatureError> {
        let refuse = |fault, name: &str| match fault {
            Unsignable::Method => SignatureError::InvalidMethod {
                method: shown(self.method, 20),
            },
            Unsignable::PathNotAbsolute => SignatureError::PathNotAbsolute {
                path: shown(self.path, 100),
            },
            Unsignable::Path => SignatureError::InvalidPath {
                path: shown(self.path, 100),
            },
            Unsignable::Header => SignatureError::InvalidHeader {
                name: shown(name, 100),
            },
            Unsignable::DuplicateHeader => SignatureError::DuplicateHeader {
                name: shown(name, 100),
            },
        };
        canonical::check_request_line(self.method, self.path).map_err(|f| refuse(f, ""))?;
        for (name, _) in &self.headers {
            canonical::signed_value(&self.headers, name).map_err(|f| refuse(f, name))?;
        }
        Ok(())
    }
}

/// Why [`Signer`] could not make a signature (a request through
/// [`Signing`](crate::Signing) fails with [`SigningError::Sign`](crate::SigningError::Sign)
/// holding it).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The path does not start with `/` (a full URL, or a relative path, was given).
    #[error(
        "the path `{path}` is not absolute: sign the request path as sent, starting with `/` (no scheme or host)"
    )]
    PathNotAbsolute {
        /// The path as given (truncated, control characters replaced).
        path: String,
    },
    /// The method is not an HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``), so the
    /// payload would not say where it ends.
    #[error(
        "the method `{method}` cannot be signed: a method is an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
    )]
    InvalidMethod {
        /// The method as given (truncated, control characters replaced).
        method: String,
    },
    /// The path holds a line break (CR or LF), so the payload would read back as headers.
    #[error(
        "the path `{path}` cannot be signed: it holds a line break (sign the path as sent, percent-encoded)"
    )]
    InvalidPath {
        /// The path as given (truncated, control characters replaced).
        path: String,
    },
    /// A header name or value that would make the signed payload ambiguous.
    #[error(
        "the header `{name}` cannot be signed: names must be HTTP tokens (letters, digits and !#$%&'*+-.^_`|~), values hold no line breaks and no spaces or tabs at either end"
    )]
    InvalidHeader {
        /// The header name (truncated, control characters replaced).
        name: String,
    },
    /// A header to sign appears twice (names compare in any case), or has several values:
    /// the receiver could pick another value than the one signed.
    #[error("the header `{name}` appears more than once; a signed header must have one value")]
    DuplicateHeader {
        /// The header name (truncated, control characters replaced).
        name: String,
    },
    /// The signing backend failed (a KMS or HSM call, say).
    #[error("the signing backend failed")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The backend returned something other than a 132-byte ES512 signature.
    #[error(
        "the signing backend returned {0} bytes, not the 132-byte `r || s` ES512 signature a JWS needs (convert DER signatures first)"
    )]
    BadSignatureLength(usize),
}

/// The future a [`SigningBackend`] returns.
pub type BackendFuture<'a> = Pin<
    Box<dyn Future<Output = Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>> + Send + 'a>,
>;

/// Where the signing happens: the private key can live outside the process.
///
/// A backend signs the JWS signing input (`b64(header).b64(payload)`) with ECDSA on P-521 and
/// SHA-512, and returns the signature as the fixed 132-byte `r || s` that JWS uses (an
/// HSM or a KMS, such as AWS KMS with `ECDSA_SHA_512`, usually returns ASN.1 DER, which the
/// backend converts). The in-process key of [`Signer::from_pem`] is one implementation.
///
/// The input holds the whole body, base64url-encoded. A service that takes the message
/// itself only up to a size (AWS KMS `Sign` takes 4 KiB with `MessageType::Raw`) needs the
/// digest instead: hash the input with SHA-512 and sign that with `MessageType::Digest`.
///
/// # Example
///
/// ```
/// use truelayer_auth_signing::{BackendFuture, Signer, SigningBackend};
///
/// /// Signs with a remote service (here: stubbed by a local key).
/// #[derive(Debug)]
/// struct Remote(Signer);
///
/// impl SigningBackend for Remote {
///     fn sign<'a>(&'a self, input: &'a [u8]) -> BackendFuture<'a> {
///         Box::pin(async move { self.0.sign_input(input).await.map_err(Into::into) })
///     }
/// }
/// # let _ = Remote;
/// ```
pub trait SigningBackend: Send + Sync + fmt::Debug + 'static {
    /// The ES512 signature of `input`, `r || s`, 132 bytes.
    fn sign<'a>(&'a self, input: &'a [u8]) -> BackendFuture<'a>;
}

impl SigningBackend for PrivateKey {
    fn sign<'a>(&'a self, input: &'a [u8]) -> BackendFuture<'a> {
        let signature = PrivateKey::sign(self, input);
        Box::pin(std::future::ready(Ok(signature)))
    }
}

/// Signs requests into `Tl-Signature` values (TrueLayer's v2 scheme: ES512, detached JWS).
///
/// Cheap to clone. `Debug` shows the key id, never the key.
///
/// # Example
///
/// ```
/// use truelayer_auth_signing::{Signable, Signer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pem = Signer::generate("kid").private_key_pem().unwrap();
/// // let pem = std::fs::read("ec512-private.pem")?;
/// let signer = Signer::from_pem("45fc75cf-5649-4134-84b3-192c2c78e990", pem.as_bytes())?;
/// let signature = signer
///     .sign(
///         &Signable::new("POST", "/v3/payments")
///             .header("Idempotency-Key", "a8e2a0b1-1f0e-4a4b-9b7e-0c8f1a6d2e55")
///             .body(br#"{"amount_in_minor":100}"#),
///     )
///     .await?;
/// assert!(signature.contains(".."));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Signer {
    kid: Arc<str>,
    backend: Arc<dyn SigningBackend>,
    /// The public point of an in-process key: two signers read from the same PEM (a secret
    /// store read again) are the same key.
    point: Option<Arc<[u8]>>,
    /// Set only for keys this crate generated, so tools can hand them on.
    generated: Option<Arc<PrivateKey>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Signer {
    /// A signer with the P-521 private key in `pem` (SEC1 `EC PRIVATE KEY`, as
    /// `openssl ecparam -genkey -name secp521r1 -noout` writes, or PKCS#8 `PRIVATE KEY`) and
    /// its key id (the `kid` TrueLayer Console shows for the uploaded public key).
    ///
    /// # Errors
    ///
    /// [`KeyError`]: not PEM, encrypted, another curve or key type (named), or an empty kid.
    pub fn from_pem(kid: impl Into<String>, pem: &[u8]) -> Result<Self, KeyError> {
        let kid = checked_kid(kid.into())?;
        let key = PrivateKey::from_pem(pem)?;
        Ok(Signer {
            kid,
            point: Some(key.public_point().into()),
            backend: Arc::new(key),
            generated: None,
        })
    }

    /// A signer whose key lives behind `backend` (an HSM, a KMS).
    ///
    /// # Errors
    ///
    /// [`KeyError::EmptyKid`].
    pub fn with_backend(
        kid: impl Into<String>,
        backend: impl SigningBackend,
    ) -> Result<Self, KeyError> {
        Ok(Signer {
            kid: checked_kid(kid.into())?,
            backend: Arc::new(backend),
            point: None,
            generated: None,
        })
    }

    /// A signer whose key lives behind `backend`, known by its public key (any stable
    /// encoding of it, such as the SPKI DER or PEM): [`same_key`](Self::same_key) then tells
    /// two keys under one `kid` apart, so a key moved behind an unchanged id (a KMS alias
    /// pointed at a new key) is seen as the change it is.
    ///
    /// # Errors
    ///
    /// [`KeyError::EmptyKid`].
    pub fn with_backend_key(
        kid: impl Into<String>,
        backend: impl SigningBackend,
        public_key: &[u8],
    ) -> Result<Self, KeyError> {
        let mut signer = Signer::with_backend(kid, backend)?;
        signer.point = Some(public_key.into());
        Ok(signer)
    }

    /// A signer with a new, random P-521 key (for tests and local tools; TrueLayer only
    /// accepts keys uploaded in Console).
    pub fn generate(kid: impl Into<String>) -> Self {
        let key = Arc::new(PrivateKey::generate());
        let kid = checked_kid(kid.into()).unwrap_or_else(|_| Arc::from("generated"));
        Signer {
            kid,
            point: Some(key.public_point().into()),
            backend: key.clone(),
            generated: Some(key),
        }
    }

    /// The private key as PKCS#8 PEM, for a key made by [`Signer::generate`] (`None` for any
    /// other: a key loaded from a secret store is never handed out again). Zeroized on drop.
    pub fn private_key_pem(&self) -> Option<zeroize::Zeroizing<String>> {
        self.generated.as_ref().map(|key| key.to_pkcs8_pem())
    }

    /// The public key (SPKI PEM) of a key made by [`Signer::generate`], to register with a
    /// verifier.
    pub fn public_key_pem(&self) -> Option<String> {
        self.generated.as_ref().map(|key| key.public_key().to_pem())
    }

    /// The public key of a key made by [`Signer::generate`] as a JWK with this signer's
    /// `kid` (`kty` EC, `crv` P-521), to publish in a JWKS (`{"keys": [...]}`).
    pub fn public_jwk(&self) -> Option<serde_json::Value> {
        self.generated.as_ref().map(|key| key.public_jwk(&self.kid))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Whether `other` signs with the same key under the same id: the same public key for
    /// in-process keys (however often the PEM was read) and backends built with
    /// [`with_backend_key`](Self::with_backend_key). Another backend's key is known by its
    /// id alone (TrueLayer gives every uploaded key its own).
    pub fn same_key(&self, other: &Signer) -> bool {
        self.kid == other.kid
            && match (&self.point, &other.point) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The `Tl-Signature` value for `request` (v2).
    ///
    /// # Errors
    ///
    /// [`SignatureError`]: a path that is not absolute, a header that cannot be signed, or a
    /// backend failure.
    pub async fn sign(&self, request: &Signable<'_>) -> Result<String, SignatureError> {
        self.sign_with_jku(request, None).await
    }

    /// As [`sign`](Self::sign), with a `jku` (the URL of the signer's JWKS) in the JOSE
    /// header, as TrueLayer signs its webhooks.
    ///
    /// # Errors
    ///
    /// As [`sign`](Self::sign).
    pub async fn sign_with_jku(
        &self,
        request: &Signable<'_>,
        jku: Option<&str>,
    ) -> Result<String, SignatureError> {
        request.check()?;
        let names: Vec<&str> = request.headers.iter().map(|(n, _)| *n).collect();
        let tl_headers = names.join(",");
        let header = HeaderOut {
            alg: ALG,
            kid: &self.kid,
            tl_version: "2",
            tl_headers: &tl_headers,
            jku,
        };
        let header_json = serde_json::to_vec(&header)
            .unwrap_or_else(|_| unreachable!("a struct of strings always serializes"));
        let encoded_header = jws::encode(&header_json);
        // Canonical methods are uppercase; the verifier compares what it gets exactly.
        let payload = jws::payload(
            &request.method.to_ascii_uppercase(),
            request.path,
            request.headers.iter().copied(),
            request.body,
        );
        let input = jws::signing_input(&encoded_header, &payload);
        let signature = self.sign_input(&input).await?;
        Ok(format!("{encoded_header}..{}", jws::encode(&signature)))
    }

    /// Signs raw JWS signing input with the backend, checking the result's length.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Backend`] and [`SignatureError::BadSignatureLength`].
    pub async fn sign_input(&self, input: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let signature = self
            .backend
            .sign(input)
            .await
            .map_err(|e| SignatureError::Backend(Arc::from(e)))?;
        if signature.len() != SIGNATURE_LEN {
            return Err(SignatureError::BadSignatureLength(signature.len()));
        }
        Ok(signature)
    }
}

fn checked_kid(kid: String) -> Result<Arc<str>, KeyError> {
    let kid = kid.trim();
    if kid.is_empty() {
        return Err(KeyError::EmptyKid);
    }
    Ok(Arc::from(kid))
}
