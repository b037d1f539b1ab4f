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
//! use truelayer_auth::{ClientCredentials, Environment, RetryPolicy, Scope, Scopes, TokenClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let creds = ClientCredentials::new(
//!     std::env::var("TRUELAYER_CLIENT_ID")?,
//!     std::env::var("TRUELAYER_CLIENT_SECRET")?.into(),
//! )?;
//! let scopes = Scopes::payments().with(Scope::RecurringPaymentsSweeping);
//! let token = TokenClient::new()?
//!     .request_token(&Environment::Sandbox, &creds, &scopes, &RetryPolicy::default())
//!     .await?;
//! assert!(!token.is_expired());
//! # Ok(()) }
//! ```
//!
//! Secrets and tokens are held in [`secrecy`] types; no `Debug`, `Display`, error or log line
//! of this crate contains either.

#![forbid(unsafe_code)]

mod authorization;
mod cache;
mod client;
mod clock;
mod credentials;
mod data_scope;
mod environment;
mod error;
#[cfg(test)]
mod properties;
mod response;
mod retry;
mod scope;
mod source;
mod token;
mod token_source;

pub use authorization::{
    AuthLink, AuthLinkBuilder, AuthorizationCode, CallbackError, PendingAuthorization, ResponseMode,
};
pub use cache::{
    CacheKey, CacheSettings, CacheStats, KeyedTokenCache, KeyedTokenCacheBuilder, Refresh,
    RefreshFuture, Refresher, TokenCache, TokenCacheBuilder,
};
pub use client::{TokenClient, TokenClientBuilder, UserTokens};
pub use credentials::ClientCredentials;
pub use data_scope::{DataScope, DataScopes};
pub use environment::{CustomEndpoint, Environment};
pub use error::{
    ConfigError, CredentialsError, Error, InvalidResponse, InvalidToken, OAuthError,
    OAuthErrorCode, RefreshError, TransportError,
};
pub use retry::RetryPolicy;
pub use scope::{CustomScope, Scope, Scopes};
pub use source::{CredentialsFuture, CredentialsSource, EnvCredentials};
pub use token::AccessToken;
pub use token_source::{TokenFuture, TokenSource};
#[doc(hidden)]
pub use token_source::{invalidate_issued, replacement_issued};
pub use truelayer_auth_http::LogicalRequest;
#[doc(hidden)]
pub use truelayer_auth_http::error_chain;

pub use secrecy;
