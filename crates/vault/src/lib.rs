//! TrueLayer client credentials from AWS Secrets Manager, held in `secrecy` types.
//!
//! [`SecretsManagerCredentials`] is a [`CredentialsSource`](truelayer_auth::CredentialsSource)
//! for the token cache of `truelayer-auth`: it reads the secret by stage (`GetSecretValue`, the
//! only IAM action it needs), reuses it for a TTL, keeps serving it through any failure to
//! read it again, and reloads it when TrueLayer answers `invalid_client`, so a rotated secret
//! is picked up without a restart.
//!
//! # Example
//!
//! ```no_run
//! use truelayer_auth::{Environment, Scopes, TokenCache};
//! use truelayer_auth_vault::{SecretFormat, SecretsManagerCredentials};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let creds = SecretsManagerCredentials::builder("prod/truelayer/merchant-a")
//!     .format(SecretFormat::json()) // {"client_id": "...", "client_secret": "..."}
//!     .build()
//!     .await?;
//! let tokens = TokenCache::builder(Environment::Production, creds)
//!     .scopes(Scopes::payments())
//!     .build()?;
//! let token = tokens.token().await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! The IAM policy, the secret format and rotation are described in `docs/operations.md`.

#![forbid(unsafe_code)]

mod error;
mod format;
mod sdk_error;
mod source;

pub use error::{AwsFailure, SecretProblem, VaultError};
pub use format::{LoadedSecret, SecretFormat};
pub use source::{SecretsManagerCredentials, SecretsManagerCredentialsBuilder};
