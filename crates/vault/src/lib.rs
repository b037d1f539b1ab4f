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
//!
//! # Signing with a key in AWS KMS (feature `kms`)
//!
//! [`KmsSigningKey`] signs TrueLayer requests with a P-521 key that never leaves AWS KMS, as
//! a [`SigningBackend`](truelayer_auth_signing::SigningBackend). A secret can name such a key
//! in `signing_kms_key_id` instead of holding `signing_private_key`; the signer
//! [`SecretsManagerCredentials`] makes from it then signs with KMS. It is here, not in a crate
//! of its own, because this crate is where the workspace's AWS code lives: one AWS SDK
//! configuration (region, credentials chain, retries), one hyper/rustls client, and the
//! same classification of AWS errors for both services.

#![forbid(unsafe_code)]

mod error;
mod format;
#[cfg(feature = "kms")]
mod kms;
mod sdk_error;
mod source;

pub use error::{AwsFailure, SecretProblem, VaultError};
pub use format::{LoadedSecret, SecretFormat};
#[cfg(feature = "kms")]
pub use kms::{KmsError, KmsSigningKey};
pub use source::{SecretsManagerCredentials, SecretsManagerCredentialsBuilder};
