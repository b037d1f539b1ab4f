//! Request signing with a P-521 key that never leaves AWS KMS (feature `kms`).
//!
//! [`KmsSigningKey`] is a [`SigningBackend`]: [`Signer::with_backend`] (or
//! [`KmsSigningKey::signer`]) makes `Tl-Signature`s with it, and KMS does the ECDSA.
//!
//! It lives in this crate, beside Secrets Manager, because this is where the workspace's AWS
//! code is: one AWS SDK configuration (the same region, credentials chain and retry
//! settings; a secret can name a KMS key and [`SecretsManagerCredentials`] makes its
//! signer), one hyper/rustls client in the build, and the same classification of AWS errors
//! (throttling, timeouts, credentials, access denied naming the IAM action).
//!
//! KMS answers an ECDSA signature as a DER `ECDSA-Sig-Value`, of varying length; a JWS needs
//! the fixed 132-byte `r || s`. The conversion is RustCrypto's `p521` crate
//! (`Signature::from_der(..)?.to_bytes()`), already in the workspace for the interop tests:
//! it checks the DER strictly, and that `r` and `s` are in range for P-521, and pads them to
//! 66 bytes each. aws-lc-rs, which signs in-process keys, verifies DER signatures but does
//! not convert them, and a hand-written DER reader is the kind of code worth not owning.
//! `p521` reads the SubjectPublicKeyInfo `GetPublicKey` answers, too.
//!
//! [`SecretsManagerCredentials`]: crate::SecretsManagerCredentials

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::operation::get_public_key::GetPublicKeyError;
use aws_sdk_kms::operation::sign::SignError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use p521::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use truelayer_auth_signing::{BackendFuture, KeyError, Signer, SigningBackend};

use crate::sdk_error;

mod error;

pub use error::KmsError;

/// The largest message KMS `Sign` takes with `MessageType::Raw`; a longer signing input is
/// hashed here and its SHA-512 digest sent with `MessageType::Digest`.
const RAW_MESSAGE_LIMIT: usize = 4096;

/// The timeout of each attempt of a KMS call, unless the client's configuration sets one.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The timeout of a KMS call, its retries included, unless the client's configuration sets
/// one.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// A P-521 signing key in AWS KMS, as a [`SigningBackend`] for TrueLayer request signing.
///
/// - [`new`](Self::new) asks KMS for the public key once (`GetPublicKey`), checks it is an
///   `ECC_NIST_P521` key with key usage `SIGN_VERIFY` that signs with `ECDSA_SHA_512`, and
///   keeps it as PEM ([`public_key_pem`](Self::public_key_pem)), for TrueLayer Console, a
///   JWKS or a [`Verifier`](truelayer_auth_signing::Verifier).
/// - Each signature is one KMS `Sign` with `ECDSA_SHA_512`: `MessageType::Raw` for a signing
///   input up to 4,096 bytes (the most KMS takes), `MessageType::Digest` over its SHA-512
///   above that, so large bodies sign too. The DER signature KMS answers is converted to the
///   132-byte `r || s` a JWS needs.
/// - Sign calls name the key by the ARN `GetPublicKey` answered, so an alias moved to
///   another key later does not change the key behind the public key already registered.
/// - Retries are the SDK's: the client's retry configuration (by default the standard mode:
///   3 attempts, exponential backoff with jitter) retries throttling, KMS's internal errors,
///   timeouts and connection failures; this type adds no retry loop of its own. Each
///   attempt times out after 2 s and the call, retries included, after 5 s, unless the client's configuration sets its own, so a slow
///   KMS fails a payment's signature instead of holding it.
/// - Each `Sign` logs a `debug` event with `kms_key_id` and `latency_ms`, in the span of the
///   request being signed.
///
/// The IAM actions needed are `kms:GetPublicKey` and `kms:Sign` on the key
/// (`docs/operations.md` has the policy). Cheap to clone; `Debug` shows the key id only.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth_signing::{Signable, Verifier};
/// use truelayer_auth_vault::KmsSigningKey;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = aws_config::load_from_env().await;
/// let key = KmsSigningKey::new(aws_sdk_kms::Client::new(&config), "alias/truelayer-signing").await?;
/// // The public key to upload in TrueLayer Console, which gives it the kid.
/// println!("{}", key.public_key_pem());
/// let signer = key.signer("45fc75cf-5649-4134-84b3-192c2c78e990")?;
/// let request = Signable::new("POST", "/v3/payments")
///     .header("Idempotency-Key", "2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f")
///     .body(br#"{"amount_in_minor":100}"#);
/// let tl_signature = signer.sign(&request).await?;
/// Verifier::from_public_pem(key.public_key_pem().as_bytes())?.verify(&request, &tl_signature)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KmsSigningKey {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// As configured: a key id, ARN or alias. Named in errors and logs.
    key_id: String,
    /// The key's ARN, as `GetPublicKey` answered it: what `Sign` calls name.
    key_arn: String,
    public_key_pem: String,
    /// The timeouts the client's configuration leaves unset.
    timeouts: Option<TimeoutConfig>,
}

impl fmt::Debug for KmsSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsSigningKey")
            .field("key_id", &self.inner.key_id)
            .finish_non_exhaustive()
    }
}

impl KmsSigningKey {
    /// The key `key_id` with a KMS client from the AWS default chain (region, credentials,
    /// `AWS_ENDPOINT_URL` and the rest of the environment and profile), as `tlauth` uses it.
    /// See [`new`](Self::new), whose timeouts apply.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub async fn from_env(key_id: impl Into<String>) -> Result<Self, KmsError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::new(Client::new(&config), key_id).await
    }

    /// The key `key_id` (a key id, key ARN, alias name or alias ARN) of this KMS client:
    /// asks KMS for its public key and checks it can sign TrueLayer requests.
    ///
    /// # Errors
    ///
    /// [`KmsError::WrongKey`] for a key that is not `ECC_NIST_P521`/`SIGN_VERIFY` with
    /// `ECDSA_SHA_512`, [`KmsError::AccessDenied`] naming `kms:GetPublicKey`,
    /// [`KmsError::MissingRegion`], and the other failures of the call.
    pub async fn new(client: Client, key_id: impl Into<String>) -> Result<Self, KmsError> {
        let key_id = key_id.into();
        if client.config().region().is_none() {
            return Err(KmsError::MissingRegion);
        }
        let timeouts = unset_timeouts(client.config().timeout_config());
        let mut call = client.get_public_key().key_id(&key_id).customize();
        if let Some(timeouts) = &timeouts {
            call = call.config_override(with_timeouts(timeouts));
        }
        let out = call.send().await.map_err(|e| {
            let modeled = e.as_service_error().and_then(get_public_key_code);
            KmsError::from_sdk(
                sdk_error::classify(&e, modeled),
                &key_id,
                "kms:GetPublicKey",
            )
        })?;
        // `CustomerMasterKeySpec` is the deprecated name KMS still answers beside `KeySpec`
        // (and moto alone).
        #[allow(deprecated)]
        let spec = out
            .key_spec()
            .map(KeySpec::as_str)
            .or(out.customer_master_key_spec().map(|s| s.as_str()));
        let usage = out.key_usage();
        let algorithms = out.signing_algorithms();
        if spec != Some(KeySpec::EccNistP521.as_str())
            || usage != Some(&KeyUsageType::SignVerify)
            || !algorithms.contains(&SigningAlgorithmSpec::EcdsaSha512)
        {
            let spec = spec.unwrap_or("a key spec KMS did not name");
            let usage = usage.map_or("none", KeyUsageType::as_str);
            let algorithms: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
            return Err(KmsError::WrongKey {
                key_id,
                found: format!(
                    "{spec} with key usage {usage} (signing algorithms: [{}])",
                    algorithms.join(", ")
                ),
            });
        }
        let malformed = |problem| KmsError::MalformedAnswer {
            key_id: key_id.clone(),
            problem,
        };
        let der = out.public_key().ok_or_else(|| malformed("no public key"))?;
        let public_key_pem = p521::PublicKey::from_public_key_der(der.as_ref())
            .ok()
            .and_then(|key| key.to_public_key_pem(LineEnding::LF).ok())
            .ok_or_else(|| malformed("a public key that is not a P-521 SubjectPublicKeyInfo"))?;
        // The ARN, not the configured alias: a `Sign` on an alias would follow it if it moved.
        let key_arn = out
            .key_id()
            .ok_or_else(|| malformed("no key ARN"))?
            .to_owned();
        Ok(KmsSigningKey {
            inner: Arc::new(Inner {
                client,
                key_id,
                key_arn,
                public_key_pem,
                timeouts,
            }),
        })
    }

    /// The key's public half, as SPKI PEM (`-----BEGIN PUBLIC KEY-----`): what TrueLayer
    /// Console wants uploaded, and what
    /// [`Verifier::from_public_pem`](truelayer_auth_signing::Verifier::from_public_pem)
    /// reads.
    pub fn public_key_pem(&self) -> &str {
        &self.inner.public_key_pem
    }

    /// The KMS key id, as given to [`new`](Self::new).
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    /// A request signer with this key, under `kid`: the id TrueLayer Console gave its
    /// public key (configured beside the KMS key id).
    ///
    /// # Errors
    ///
    /// [`KeyError::EmptyKid`].
    pub fn signer(&self, kid: impl Into<String>) -> Result<Signer, KeyError> {
        // Known by its public key: an alias moved to another key is another signer.
        let public_key = self.inner.public_key_pem.clone();
        Signer::with_backend_key(kid, self.clone(), public_key.as_bytes())
    }

    /// The ES512 signature of `input`, `r || s`.
    async fn sign_input(&self, input: &[u8]) -> Result<Vec<u8>, KmsError> {
        let inner = &*self.inner;
        let (message, message_type) = if input.len() <= RAW_MESSAGE_LIMIT {
            (Blob::new(input), MessageType::Raw)
        } else {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, input);
            (Blob::new(digest.as_ref()), MessageType::Digest)
        };
        let mut call = inner
            .client
            .sign()
            .key_id(&inner.key_arn)
            .message(message)
            .message_type(message_type.clone())
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha512)
            .customize();
        if let Some(timeouts) = &inner.timeouts {
            call = call.config_override(with_timeouts(timeouts));
        }
        let started = Instant::now();
        let result = call.send().await;
        tracing::debug!(
            kms_key_id = %inner.key_id,
            message_type = message_type.as_str(),
            latency_ms = millis(started.elapsed()),
            ok = result.is_ok(),
            "KMS Sign"
        );
        let out = result.map_err(|e| {
            let modeled = e.as_service_error().and_then(sign_code);
            KmsError::from_sdk(sdk_error::classify(&e, modeled), &inner.key_id, "kms:Sign")
        })?;
        let malformed = |problem| KmsError::MalformedAnswer {
            key_id: inner.key_id.clone(),
            problem,
        };
        let der = out.signature().ok_or_else(|| malformed("no signature"))?;
        let signature = p521::ecdsa::Signature::from_der(der.as_ref())
            .map_err(|_| malformed("a signature that is not a DER ECDSA-Sig-Value on P-521"))?;
        Ok(signature.to_bytes().to_vec())
    }
}

impl SigningBackend for KmsSigningKey {
    fn sign<'a>(&'a self, input: &'a [u8]) -> BackendFuture<'a> {
        Box::pin(async move { self.sign_input(input).await.map_err(Into::into) })
    }
}

/// A configuration override that sets these timeouts (merged with the client's).
fn with_timeouts(timeouts: &TimeoutConfig) -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::config::Builder::default().timeout_config(timeouts.clone())
}

/// This module's attempt and operation timeouts, for those `configured` leaves unset.
fn unset_timeouts(configured: Option<&TimeoutConfig>) -> Option<TimeoutConfig> {
    let attempt = configured.and_then(TimeoutConfig::operation_attempt_timeout);
    let operation = configured.and_then(TimeoutConfig::operation_timeout);
    if attempt.is_some() && operation.is_some() {
        return None;
    }
    let mut timeouts = TimeoutConfig::builder();
    if attempt.is_none() {
        timeouts = timeouts.operation_attempt_timeout(ATTEMPT_TIMEOUT);
    }
    if operation.is_none() {
        timeouts = timeouts.operation_timeout(OPERATION_TIMEOUT);
    }
    Some(timeouts.build())
}

/// Milliseconds, to a tenth, as the proxy's access log writes them.
fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The code of a modeled `GetPublicKey` error (those built in tests carry none).
fn get_public_key_code(e: &GetPublicKeyError) -> Option<&'static str> {
    Some(match e {
        GetPublicKeyError::NotFoundException(_) => "NotFoundException",
        GetPublicKeyError::DisabledException(_) => "DisabledException",
        GetPublicKeyError::KmsInvalidStateException(_) => "KMSInvalidStateException",
        GetPublicKeyError::KmsInternalException(_) => "KMSInternalException",
        GetPublicKeyError::DependencyTimeoutException(_) => "DependencyTimeoutException",
        GetPublicKeyError::KeyUnavailableException(_) => "KeyUnavailableException",
        GetPublicKeyError::InvalidKeyUsageException(_) => "InvalidKeyUsageException",
        _ => return None,
    })
}

/// The code of a modeled `Sign` error (those built in tests carry none).
fn sign_code(e: &SignError) -> Option<&'static str> {
    Some(match e {
        SignError::NotFoundException(_) => "NotFoundException",
        SignError::DisabledException(_) => "DisabledException",
        SignError::KmsInvalidStateException(_) => "KMSInvalidStateException",
        SignError::KmsInternalException(_) => "KMSInternalException",
        SignError::DependencyTimeoutException(_) => "DependencyTimeoutException",
        SignError::KeyUnavailableException(_) => "KeyUnavailableException",
        SignError::InvalidKeyUsageException(_) => "InvalidKeyUsageException",
        _ => return None,
    })
}
