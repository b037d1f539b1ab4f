//! The AWS Secrets Manager credentials source, with its cache.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_secretsmanager::Client;
use secrecy::SecretString;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use truelayer_auth::{CredentialsFuture, CredentialsSource};
use truelayer_auth_signing::{Signer, SignerFuture, SignerSource};
use zeroize::Zeroize;

use crate::error::{SecretProblem, VaultError};
use crate::format::{LoadedSecret, SecretFormat, parse};
use crate::sdk_error::{self, SdkFailure};

/// How long a failure to re-read the secret lets the cached value be served before AWS is
/// asked again.
const STALE_RETRY: Duration = Duration::from_secs(30);

/// Client credentials from an AWS Secrets Manager secret.
///
/// - Reads the version in the configured stage (`AWSCURRENT` by default, always sent
///   explicitly) with `GetSecretValue`, the only IAM action it needs, and parses it straight
///   into `secrecy` types ([`SecretFormat`]).
/// - Reuses it for a TTL (1 hour by default, like AWS's own caching clients), then reads it
///   again. Concurrent callers share one call.
/// - Once a secret is held, it is served through any failure to read it again (throttling,
///   an outage, expired AWS credentials, a permission removed by mistake), retried every
///   30 s meanwhile: a token refresh never fails because Secrets Manager had a bad minute.
/// - [`reload`](CredentialsSource::reload) always returns a value read after it was asked
///   for: the token cache calls it when TrueLayer answers `invalid_client`, which is how a
///   rotated secret is picked up without a restart.
///
/// Why no `DescribeSecret` check of the version after the TTL (as AWS's caching clients do):
/// a token cache asks for credentials about once an hour, so a full read costs no more than
/// the check would, and saves an IAM action.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth::{Environment, TokenCache};
/// use truelayer_auth_vault::SecretsManagerCredentials;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Region and AWS credentials from the default chain (environment, profile, role).
/// let creds = SecretsManagerCredentials::builder("prod/truelayer/merchant-a").build().await?;
/// let tokens = TokenCache::builder(Environment::Production, creds).build()?;
/// # let _ = tokens; Ok(()) }
/// ```
#[derive(Clone)]
pub struct SecretsManagerCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    secret_id: String,
    stage: String,
    format: SecretFormat,
    ttl: Duration,
    cache: Mutex<Option<Cached>>,
    fetching: tokio::sync::Mutex<()>,
    /// Reads started so far; a read's number is the count when it started.
    reads: AtomicU64,
    /// The request signer built from the last secret, so its PEM is parsed once per version.
    signer: Mutex<Option<(Arc<LoadedSecret>, Signer)>>,
    /// For secrets that name their signing key in KMS. None when built from a Secrets
    /// Manager client alone.
    #[cfg(feature = "kms")]
    kms_client: Option<aws_sdk_kms::Client>,
    /// The last KMS key set up and the kid it was set up for, kept across secret versions
    /// that name both again, so its public key is asked for once. Locked while it is set up,
    /// so callers share that call.
    #[cfg(feature = "kms")]
    kms_key: tokio::sync::Mutex<KmsKeyState>,
}

#[derive(Clone)]
struct Cached {
    secret: Arc<LoadedSecret>,
    /// The number of the read that got it.
    read: u64,
    /// When to read the secret again.
    read_after: Instant,
}

impl fmt::Debug for SecretsManagerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsManagerCredentials")
            .field("secret_id", &self.inner.secret_id)
            .field("version_stage", &self.inner.stage)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SecretsManagerCredentials`].
#[derive(Debug)]
pub struct SecretsManagerCredentialsBuilder {
    secret_id: String,
    stage: String,
    format: SecretFormat,
    ttl: Duration,
    client: Option<Client>,
    sdk_config: Option<SdkConfig>,
    #[cfg(feature = "kms")]
    kms_client: Option<aws_sdk_kms::Client>,
}

impl SecretsManagerCredentialsBuilder {
    /// The version stage to read. Default `AWSCURRENT`.
    #[must_use]
    pub fn version_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = stage.into();
        self
    }

    /// The layout of the secret's value. Default [`SecretFormat::json`].
    #[must_use]
    pub fn format(mut self, format: SecretFormat) -> Self {
        self.format = format;
        self
    }

    /// How long a value is used before checking it is still current. Default 1 hour.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Use this AWS configuration instead of the default chain (for example one pointing at a
    /// local endpoint).
    #[must_use]
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// Use this Secrets Manager client.
    #[must_use]
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Use this KMS client for a secret that names its signing key in KMS
    /// (`signing_kms_key_id`). Default: one from the same AWS configuration as Secrets
    /// Manager, the [`sdk_config`](Self::sdk_config) or the default chain. A source built
    /// with a Secrets Manager [`client`](Self::client) (or
    /// [`build_with_client`](Self::build_with_client)) has none unless given one here: an
    /// SDK client does not hand out its credentials provider to make another.
    #[cfg(feature = "kms")]
    #[must_use]
    pub fn kms_client(mut self, client: aws_sdk_kms::Client) -> Self {
        self.kms_client = Some(client);
        self
    }

    /// Builds the source. Without a client or configuration, the AWS default chain is loaded
    /// (with 2 s attempt and 4.5 s operation timeouts, inside a token cache's default 5 s
    /// credentials timeout, so a slow Secrets Manager surfaces as this crate's
    /// [`VaultError::Timeout`] naming the secret, and the cache retries with backoff).
    /// Nothing is fetched yet. With the `kms` feature, the KMS client for a secret that
    /// names its signing key in KMS comes from the same configuration, unless
    /// [`kms_client`](Self::kms_client) gave one.
    ///
    /// # Errors
    ///
    /// [`VaultError::MissingRegion`] when the configuration has no region.
    #[cfg_attr(not(feature = "kms"), allow(unused_mut))]
    pub async fn build(mut self) -> Result<SecretsManagerCredentials, VaultError> {
        #[cfg(feature = "kms")]
        if let Some(config) = &self.sdk_config {
            self.kms_client
                .get_or_insert_with(|| aws_sdk_kms::Client::new(config));
        }
        let client = match (&self.client, &self.sdk_config) {
            (Some(client), _) => client.clone(),
            (None, Some(config)) => client_from(config)?,
            (None, None) => {
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_millis(4500))
                    .build();
                let config = aws_config::defaults(BehaviorVersion::latest())
                    .timeout_config(timeouts)
                    .load()
                    .await;
                #[cfg(feature = "kms")]
                self.kms_client
                    .get_or_insert_with(|| aws_sdk_kms::Client::new(&config));
                client_from(&config)?
            }
        };
        self.build_with_client(client)
    }

    /// Builds the source with this Secrets Manager client, without any I/O: for places that
    /// cannot `.await`, such as a [`KeyedTokenCache`](truelayer_auth::KeyedTokenCache)
    /// credentials resolver making one source per merchant with a shared client.
    ///
    /// # Errors
    ///
    /// [`VaultError::MissingRegion`] when the client's configuration has no region.
    pub fn build_with_client(
        self,
        client: Client,
    ) -> Result<SecretsManagerCredentials, VaultError> {
        if client.config().region().is_none() {
            return Err(VaultError::MissingRegion);
        }
        Ok(SecretsManagerCredentials {
            inner: Arc::new(Inner {
                client,
                secret_id: self.secret_id,
                stage: self.stage,
                format: self.format,
                ttl: self.ttl,
                cache: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                reads: AtomicU64::new(0),
                signer: Mutex::new(None),
                #[cfg(feature = "kms")]
                kms_client: self.kms_client,
                #[cfg(feature = "kms")]
                kms_key: tokio::sync::Mutex::new(KmsKeyState::default()),
            }),
        })
    }
}

fn client_from(config: &SdkConfig) -> Result<Client, VaultError> {
    if config.region().is_none() {
        return Err(VaultError::MissingRegion);
    }
    Ok(Client::new(config))
}

impl SecretsManagerCredentials {
    /// A builder for the secret `secret_id` (a name or an ARN).
    pub fn builder(secret_id: impl Into<String>) -> SecretsManagerCredentialsBuilder {
        SecretsManagerCredentialsBuilder {
            secret_id: secret_id.into(),
            stage: "AWSCURRENT".into(),
            format: SecretFormat::json(),
            ttl: Duration::from_secs(3600),
            client: None,
            sdk_config: None,
            #[cfg(feature = "kms")]
            kms_client: None,
        }
    }

    /// The secret id.
    pub fn secret_id(&self) -> &str {
        &self.inner.secret_id
    }

    /// The secret, from the cache while it is fresh.
    ///
    /// # Errors
    ///
    /// A [`VaultError`] when no secret has been read yet and this read failed. Once one is
    /// held, failures to read it again are logged and the held one is served.
    pub async fn secret(&self) -> Result<Arc<LoadedSecret>, VaultError> {
        if let Some(secret) = self.fresh() {
            return Ok(secret);
        }
        let _one_at_a_time = self.inner.fetching.lock().await;
        if let Some(secret) = self.fresh() {
            return Ok(secret);
        }
        match self.fetch().await {
            Ok(secret) => Ok(secret),
            Err(e) => match self.cached() {
                Some(cached) => {
                    warn!(
                        secret_id = %self.inner.secret_id,
                        error = %truelayer_auth::error_chain(&e),
                        "could not read the secret again; serving the one already loaded"
                    );
                    self.store(cached.secret.clone(), cached.read, STALE_RETRY);
                    Ok(cached.secret)
                }
                None => Err(e),
            },
        }
    }

    /// The secret, read from AWS after this call was made, whatever the cache holds. Callers
    /// that arrive together share one read.
    ///
    /// # Errors
    ///
    /// The [`VaultError`] of the read.
    pub async fn reload_secret(&self) -> Result<Arc<LoadedSecret>, VaultError> {
        // Any read that starts from now on is recent enough; one that started before is not
        // (it may have returned the very secret TrueLayer just rejected).
        let asked = self.inner.reads.load(Ordering::Acquire);
        let _one_at_a_time = self.inner.fetching.lock().await;
        if let Some(cached) = self.cached()
            && cached.read > asked
        {
            return Ok(cached.secret);
        }
        self.fetch().await
    }

    fn cached(&self) -> Option<Cached> {
        self.lock().clone()
    }

    fn fresh(&self) -> Option<Arc<LoadedSecret>> {
        let cache = self.lock();
        let cached = cache.as_ref()?;
        (Instant::now() < cached.read_after).then(|| cached.secret.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store(&self, secret: Arc<LoadedSecret>, read: u64, valid_for: Duration) {
        *self.lock() = Some(Cached {
            secret,
            read,
            read_after: Instant::now() + valid_for,
        });
    }

    async fn fetch(&self) -> Result<Arc<LoadedSecret>, VaultError> {
        let inner = &self.inner;
        debug!(secret_id = %inner.secret_id, stage = %inner.stage, "GetSecretValue");
        // Only called with `fetching` held, so reads are numbered in the order they start.
        let read = inner.reads.fetch_add(1, Ordering::AcqRel) + 1;
        let result = inner
            .client
            .get_secret_value()
            .secret_id(&inner.secret_id)
            .version_stage(&inner.stage)
            .send()
            .await;
        let mut out = result.map_err(|e| {
            use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError as E;
            // Modeled errors may come without an error code in their metadata.
            let modeled = match e.as_service_error() {
                Some(E::DecryptionFailure(_)) => Some("DecryptionFailure"),
                Some(E::ResourceNotFoundException(_)) => Some("ResourceNotFoundException"),
                Some(E::InternalServiceError(_)) => Some("InternalServiceError"),
                _ => None,
            };
            vault_error(
                sdk_error::classify(&e, modeled),
                &inner.secret_id,
                &inner.stage,
                "secretsmanager:GetSecretValue",
            )
        })?;
        let version_id = out.version_id.take();
        // Move the value into a secret at once: it is zeroized when dropped.
        let text = match (out.secret_string.take(), out.secret_binary.take()) {
            (Some(s), _) => SecretString::from(s),
            (None, Some(blob)) => {
                let mut bytes = blob.into_inner();
                let text = std::str::from_utf8(&bytes).map(SecretString::from);
                bytes.zeroize();
                text.map_err(|_| self.malformed(SecretProblem::NotUtf8))?
            }
            (None, None) => return Err(self.malformed(SecretProblem::NoValue)),
        };
        let secret =
            Arc::new(parse(&inner.format, &text, version_id).map_err(|p| self.malformed(p))?);
        info!(
            secret_id = %inner.secret_id,
            version_id = secret.version_id().unwrap_or(""),
            client_id = secret.credentials().client_id(),
            "loaded client credentials"
        );
        self.store(secret.clone(), read, inner.ttl);
        Ok(secret)
    }

    fn malformed(&self, problem: SecretProblem) -> VaultError {
        VaultError::Malformed {
            secret_id: self.inner.secret_id.clone(),
            problem,
        }
    }
}

/// How long a failure to set up a KMS key is answered from memory, to the requests that
/// queued behind the call that failed (each would otherwise make a call of its own, one
/// after another, each up to the call's timeout).
#[cfg(feature = "kms")]
const KMS_FAILURE_HELD: std::time::Duration = std::time::Duration::from_secs(2);

/// The KMS key a secret names, as last set up, and the last failure to set one up.
#[cfg(feature = "kms")]
#[derive(Default)]
struct KmsKeyState {
    /// The `kid` and the key.
    held: Option<(String, crate::KmsSigningKey)>,
    /// When, for which `kid` and KMS key id, and why.
    failed: Option<(tokio::time::Instant, String, String, crate::KmsError)>,
}

impl SecretsManagerCredentials {
    /// The signer for `secret`'s signing key, built once per secret version: from its
    /// private key, or (feature `kms`) with the key in KMS it names.
    async fn signer_for(&self, secret: &Arc<LoadedSecret>) -> Result<Signer, VaultError> {
        if let Some(signer) = self.held_signer(secret) {
            return Ok(signer);
        }
        #[cfg(feature = "kms")]
        if let Some((kid, kms_key_id)) = secret.kms_signing_key().map_err(|p| self.malformed(p))? {
            let key = match self.kms_key(kid, kms_key_id).await {
                Ok(key) => key,
                // KMS is throttled or slow while a new version is set up (a rotation): the
                // key held before still signs (Console keeps it until the rotation ends), and
                // the new one is asked for again by the next request.
                Err(error) if error.is_retryable() => match self.signers().as_ref() {
                    Some((_, held)) => {
                        tracing::warn!(
                            error = %truelayer_auth::error_chain(&error),
                            kid = held.kid(),
                            "the secret's new KMS key could not be set up yet; signing with the key held"
                        );
                        return Ok(held.clone());
                    }
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            };
            let signer = key
                .signer(kid)
                .map_err(|e| self.malformed(SecretProblem::SigningKey(e)))?;
            self.hold_signer(secret, &signer);
            return Ok(signer);
        }
        let signer = secret.signer().map_err(|p| self.malformed(p))?;
        self.hold_signer(secret, &signer);
        Ok(signer)
    }

    fn signers(&self) -> std::sync::MutexGuard<'_, Option<(Arc<LoadedSecret>, Signer)>> {
        self.inner
            .signer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held_signer(&self, secret: &Arc<LoadedSecret>) -> Option<Signer> {
        match self.signers().as_ref() {
            Some((from, signer)) if Arc::ptr_eq(from, secret) => Some(signer.clone()),
            _ => None,
        }
    }

    fn hold_signer(&self, secret: &Arc<LoadedSecret>, signer: &Signer) {
        *self.signers() = Some((secret.clone(), signer.clone()));
    }

    /// The KMS key `kms_key_id`, set up (its public key asked for) unless the last secret
    /// version named it with the same `kid`. A new kid with the same id is a rotation by
    /// alias: the alias is resolved again.
    #[cfg(feature = "kms")]
    async fn kms_key(
        &self,
        kid: &str,
        kms_key_id: &str,
    ) -> Result<crate::KmsSigningKey, VaultError> {
        let mut state = self.inner.kms_key.lock().await;
        if let Some((held_kid, key)) = state.held.as_ref()
            && held_kid == kid
            && key.key_id() == kms_key_id
        {
            return Ok(key.clone());
        }
        let secret_id = || self.inner.secret_id.clone();
        // Requests queued on this lock while KMS failed get that failure, not a call each.
        if let Some((at, failed_kid, failed_id, cause)) = &state.failed
            && at.elapsed() < KMS_FAILURE_HELD
            && failed_kid == kid
            && failed_id == kms_key_id
        {
            return Err(VaultError::KmsKey {
                secret_id: secret_id(),
                cause: cause.clone(),
            });
        }
        let client = self
            .inner
            .kms_client
            .clone()
            .ok_or_else(|| VaultError::NoKmsClient {
                secret_id: secret_id(),
            })?;
        let key = match crate::KmsSigningKey::new(client, kms_key_id).await {
            Ok(key) => key,
            Err(cause) => {
                state.failed = Some((
                    tokio::time::Instant::now(),
                    kid.to_owned(),
                    kms_key_id.to_owned(),
                    cause.clone(),
                ));
                return Err(VaultError::KmsKey {
                    secret_id: secret_id(),
                    cause,
                });
            }
        };
        state.failed = None;
        state.held = Some((kid.to_owned(), key.clone()));
        Ok(key)
    }
}

/// The request signer from the same secret as the client credentials (`signing_key_id` and
/// `signing_private_key`): one secret configures both the token cache and the signing layer,
/// and a rotated signing key is picked up after the TTL, or at once when TrueLayer rejects a
/// signature (the signing layer then reloads).
///
/// Signing sits on the request path, so a read already under way (the hourly one, or one
/// through an AWS outage, bounded by the SDK's timeouts) does not hold requests up while a
/// signer is held: they are signed with it, and the next request after the read uses what
/// it found.
impl SignerSource for SecretsManagerCredentials {
    fn signer(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        Box::pin(async move {
            if self.fresh().is_none()
                && self.inner.fetching.try_lock().is_err()
                && let Some(held) = self.cached()
            {
                return Ok(self.signer_for(&held.secret).await?);
            }
            let secret = self.secret().await?;
            Ok(self.signer_for(&secret).await?)
        })
    }

    fn reload(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        Box::pin(async move {
            let secret = self.reload_secret().await?;
            // A rejected signature may mean the KMS alias moved: ask KMS again, not the cache.
            #[cfg(feature = "kms")]
            {
                self.inner.kms_key.lock().await.held = None;
                *self.signers() = None;
            }
            Ok(self.signer_for(&secret).await?)
        })
    }
}

impl CredentialsSource for SecretsManagerCredentials {
    fn credentials(&self) -> CredentialsFuture<'_> {
        Box::pin(async move {
            let secret = self.secret().await?;
            Ok(secret.credentials().clone())
        })
    }

    fn reload(&self) -> CredentialsFuture<'_> {
        Box::pin(async move {
            let secret = self.reload_secret().await?;
            Ok(secret.credentials().clone())
        })
    }
}

/// What a failed Secrets Manager call means for the secret.
fn vault_error(
    failure: SdkFailure,
    secret_id: &str,
    stage: &str,
    action: &'static str,
) -> VaultError {
    let secret_id = secret_id.to_owned();
    match failure {
        SdkFailure::Timeout => VaultError::Timeout { secret_id },
        SdkFailure::Transport(cause) => VaultError::Transport { secret_id, cause },
        SdkFailure::MissingCredentials(cause) => VaultError::MissingCredentials { cause },
        SdkFailure::CredentialsUnavailable(cause) => {
            VaultError::AwsCredentialsUnavailable { cause }
        }
        SdkFailure::AccessDenied => VaultError::AccessDenied { secret_id, action },
        SdkFailure::Throttled => VaultError::Throttled { secret_id },
        SdkFailure::Service { code, server_error } => match code.as_str() {
            "ResourceNotFoundException" => VaultError::NotFound {
                secret_id,
                stage: stage.to_owned(),
            },
            "DecryptionFailure" => VaultError::Decryption { secret_id },
            _ => VaultError::Service {
                secret_id,
                retryable: code == "InternalServiceError" || (server_error && code == "Unknown"),
                code,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use secrecy::ExposeSecret;

    use super::*;

    fn value(secret: &str) -> GetSecretValueOutput {
        GetSecretValueOutput::builder()
            .secret_string(format!(r#"{{"client_id":"m","client_secret":"{secret}"}}"#))
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_under_way_when_a_reload_is_asked_for_does_not_answer_the_reload() {
        let get = mock!(Client::get_secret_value)
            .sequence()
            .output(|| value("rejected"))
            .output(|| value("rotated"))
            .build();
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get], |c| c
            .retry_config(RetryConfig::disabled()));
        let creds = SecretsManagerCredentials::builder("id")
            .client(client)
            .build()
            .await
            .unwrap();
        creds.secret().await.unwrap();
        // Another caller's read is under way (it holds the lock and has started)...
        let in_flight = creds.inner.fetching.lock().await;
        creds.inner.reads.fetch_add(1, Ordering::AcqRel);
        let reload = tokio::spawn({
            let creds = creds.clone();
            async move { creds.reload_secret().await.unwrap() }
        });
        tokio::task::yield_now().await;
        // ... and fails, leaving the old secret in the cache.
        drop(in_flight);
        let reloaded = reload.await.unwrap();
        assert_eq!(
            reloaded.credentials().client_secret().expose_secret(),
            "rotated",
            "the reload read the secret itself"
        );
        assert_eq!(get.num_calls(), 2);
    }

    /// Run with `cargo test -p truelayer-auth-vault --lib` (CI builds with every feature).
    #[cfg(not(feature = "kms"))]
    #[tokio::test]
    async fn without_the_kms_feature_a_secret_naming_a_kms_key_says_to_enable_it() {
        let get = mock!(Client::get_secret_value).then_output(|| {
            GetSecretValueOutput::builder()
                .secret_string(
                    r#"{"client_id":"m","client_secret":"s","signing_key_id":"kid","signing_kms_key_id":"alias/tl"}"#,
                )
                .build()
        });
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get]);
        let creds = SecretsManagerCredentials::builder("id")
            .client(client)
            .build()
            .await
            .unwrap();
        // The client credentials are served all the same.
        creds.secret().await.unwrap();
        let error = SignerSource::signer(&creds, &http::Extensions::new())
            .await
            .unwrap_err();
        let chain = truelayer_auth::error_chain(&*error).to_string();
        assert!(
            chain.contains("signing_kms_key_id") && chain.contains("enable the `kms` feature"),
            "{chain}"
        );
    }
}
