//! Client credentials: a `client_id` and its `client_secret`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;

/// A TrueLayer `client_id` and its `client_secret`.
///
/// The secret is held in a [`SecretString`] (zeroized on drop) and never printed: `Debug`
/// shows the client_id only.
///
/// # Example
///
/// ```
/// use truelayer_auth::ClientCredentials;
///
/// let creds = ClientCredentials::new("sandbox-acme-1a2b3c", "s3cr3t".into())?;
/// assert_eq!(creds.client_id(), "sandbox-acme-1a2b3c");
/// assert!(!format!("{creds:?}").contains("s3cr3t"));
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    client_id: String,
    client_secret: SecretString,
}

impl ClientCredentials {
    /// Credentials from a client_id and its secret.
    ///
    /// Surrounding whitespace (a trailing newline from a file or a paste) is trimmed from both.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyClientId`] or [`ConfigError::EmptyClientSecret`] when either is empty.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Result<Self, ConfigError> {
        let client_id: String = client_id.into();
        let client_id = client_id.trim();
        if client_id.is_empty() {
            return Err(ConfigError::EmptyClientId);
        }
        let exposed = client_secret.expose_secret();
        let client_secret = if exposed.trim().len() == exposed.len() {
            client_secret
        } else {
            SecretString::from(exposed.trim())
        };
        if client_secret.expose_secret().is_empty() {
            return Err(ConfigError::EmptyClientSecret);
        }
        Ok(ClientCredentials {
            client_id: client_id.to_owned(),
            client_secret,
        })
    }

    /// The client_id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret; use [`ExposeSecret::expose_secret`] only where it is sent.
    pub fn client_secret(&self) -> &SecretString {
        &self.client_secret
    }

    /// Whether `other` is the same client_id with the same secret.
    pub(crate) fn same_as(&self, other: &ClientCredentials) -> bool {
        self.client_id == other.client_id
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}
