//! TrueLayer payments access tokens.
//!
//! TrueLayer's Payments API needs `Authorization: Bearer <token>` on every request. The token
//! comes from `POST {auth}/connect/token` with the `client_credentials` grant and lasts
//! `expires_in` seconds (an hour today). This crate makes that request with typed inputs
//! ([`Environment`], [`Scopes`], [`ClientCredentials`]), typed errors ([`Error`]) and
//! retries ([`RetryPolicy`]).
//!
//! # Example
//!
//! ```no_run
//! use truelayer_auth::{ClientCredentials, Environment, Scope, Scopes, TokenClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let creds = ClientCredentials::new(
//!     std::env::var("TRUELAYER_CLIENT_ID")?,
//!     std::env::var("TRUELAYER_CLIENT_SECRET")?.into(),
//! )?;
//! let scopes = Scopes::payments().with(Scope::RecurringPaymentsSweeping);
//! let token = TokenClient::new()?
//!     .request_token(&Environment::Sandbox, &creds, &scopes)
//!     .await?;
//! assert!(!token.is_expired());
//! # Ok(()) }
//! ```
//!
//! Secrets and tokens are held in [`secrecy`] types; no `Debug`, `Display`, error or log line
//! of this crate contains either.

#![forbid(unsafe_code)]

mod cache;
mod client;
mod credentials;
mod environment;
mod error;
mod response;
mod retry;
mod scope;
mod source;
mod token;

pub use cache::{
    CacheKey, CacheStats, KeyedTokenCache, KeyedTokenCacheBuilder, TokenCache, TokenCacheBuilder,
};
pub use client::{TokenClient, TokenClientBuilder};
pub use credentials::ClientCredentials;
pub use environment::{CustomEndpoint, Environment};
pub use error::{ConfigError, Error, InvalidResponse, OAuthError, OAuthErrorCode};
pub use response::{MAX_LIFETIME, TokenResponse, parse_oauth_error, parse_token_response};
pub use retry::{MAX_RETRY_AFTER, RetryPolicy, parse_retry_after};
pub use scope::{CustomScope, Scope, Scopes};
pub use source::{CredentialsError, CredentialsFuture, CredentialsSource, EnvCredentials};
pub use token::AccessToken;

pub use secrecy;
