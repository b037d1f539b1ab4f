//! Where client credentials come from: a source that can be asked again when TrueLayer
//! rejects them (the secret may have been rotated).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::SecretString;

use crate::credentials::ClientCredentials;
use crate::error::CredentialsError;

/// The future a [`CredentialsSource`] returns.
pub type CredentialsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ClientCredentials, CredentialsError>> + Send + 'a>>;

/// A source of client credentials for a token cache.
///
/// [`credentials`](CredentialsSource::credentials) is called before each token request and may
/// answer from a cache. [`reload`](CredentialsSource::reload) is called when TrueLayer answers
/// `invalid_client`: it must bypass any cache, so a rotated secret is picked up without a
/// restart; the request is retried only if the reload returned different credentials.
///
/// A token cache time-boxes every call (5 s by default) and survives a source that panics:
/// both count as a failed, retryable fetch. Implementations: [`ClientCredentials`] itself (static), [`EnvCredentials`], and
/// the AWS Secrets Manager source of the `truelayer-auth-vault` crate.
///
/// # Example
///
/// ```
/// use truelayer_auth::{ClientCredentials, CredentialsError, CredentialsFuture, CredentialsSource};
///
/// /// Reads the secret from a file each time, so a rotated file is picked up.
/// #[derive(Debug)]
/// struct FileSecret { client_id: String, path: std::path::PathBuf }
///
/// impl CredentialsSource for FileSecret {
///     fn credentials(&self) -> CredentialsFuture<'_> {
///         Box::pin(async move {
///             let secret = std::fs::read_to_string(&self.path)
///                 .map_err(|e| CredentialsError::new("could not read the secret file").with_source(e))?;
///             ClientCredentials::new(&self.client_id, secret.into())
///                 .map_err(|e| CredentialsError::new("the secret file is empty").with_source(e))
///         })
///     }
/// }
/// ```
pub trait CredentialsSource: Send + Sync + fmt::Debug + 'static {
    /// The current credentials.
    fn credentials(&self) -> CredentialsFuture<'_>;

    /// Fresh credentials, bypassing any cache. Defaults to [`credentials`](Self::credentials).
    fn reload(&self) -> CredentialsFuture<'_> {
        self.credentials()
    }
}

impl CredentialsSource for ClientCredentials {
    fn credentials(&self) -> CredentialsFuture<'_> {
        let creds = self.clone();
        Box::pin(async move { Ok(creds) })
    }
}

impl<S: CredentialsSource + ?Sized> CredentialsSource for Arc<S> {
    fn credentials(&self) -> CredentialsFuture<'_> {
        (**self).credentials()
    }
    fn reload(&self) -> CredentialsFuture<'_> {
        (**self).reload()
    }
}

/// Credentials read from environment variables each time they are asked for.
///
/// Defaults to `TRUELAYER_CLIENT_ID` and `TRUELAYER_CLIENT_SECRET`.
///
/// # Example
///
/// ```
/// use truelayer_auth::EnvCredentials;
///
/// let source = EnvCredentials::new();
/// let custom = EnvCredentials::with_names("MERCHANT_A_ID", "MERCHANT_A_SECRET");
/// # let _ = (source, custom);
/// ```
#[derive(Debug, Clone)]
pub struct EnvCredentials {
    id_var: String,
    secret_var: String,
}

impl Default for EnvCredentials {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvCredentials {
    /// `TRUELAYER_CLIENT_ID` and `TRUELAYER_CLIENT_SECRET`.
    pub fn new() -> Self {
        Self::with_names("TRUELAYER_CLIENT_ID", "TRUELAYER_CLIENT_SECRET")
    }

    /// Other variable names.
    pub fn with_names(id_var: impl Into<String>, secret_var: impl Into<String>) -> Self {
        EnvCredentials {
            id_var: id_var.into(),
            secret_var: secret_var.into(),
        }
    }

    fn read(&self) -> Result<ClientCredentials, CredentialsError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                CredentialsError::new(format!("the environment variable {name} is not set"))
            })
        };
        let id = var(&self.id_var)?;
        let secret = SecretString::from(var(&self.secret_var)?);
        ClientCredentials::new(id, secret).map_err(|e| {
            CredentialsError::new(format!(
                "the environment variables {} and {} hold unusable credentials",
                self.id_var, self.secret_var
            ))
            .with_source(e)
        })
    }
}

impl CredentialsSource for EnvCredentials {
    fn credentials(&self) -> CredentialsFuture<'_> {
        let result = self.read();
        Box::pin(async move { result })
    }
}
