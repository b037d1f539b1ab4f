//! What a [`TokenCache`](crate::TokenCache) refreshes: a `client_credentials` fetch.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{debug, warn};

use super::refresher::{Refresh, RefreshFuture};
use crate::client::TokenClient;
use crate::credentials::ClientCredentials;
use crate::environment::Environment;
use crate::error::{CredentialsError, Error};
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::AccessToken;

/// Credentials from a source, the request, and on `invalid_client` one reload and one retry
/// if the reload brought different credentials.
#[derive(Debug)]
pub(crate) struct ClientCredentialsGrant {
    pub(crate) client: TokenClient,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) environment: Environment,
    pub(crate) scopes: Scopes,
    pub(crate) credentials_timeout: Duration,
}

impl Refresh for ClientCredentialsGrant {
    fn refresh(&self) -> RefreshFuture<'_> {
        Box::pin(self.fetch())
    }

    /// Two credentials loads and two requests (the `invalid_client` path), each time-boxed.
    fn time_limit(&self) -> Duration {
        self.credentials_timeout
            .saturating_add(self.client.timeout())
            .saturating_mul(2)
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "token_cache",
            environment = %self.environment,
            scope = self.scopes.as_str(),
            client_id = tracing::field::Empty,
        )
    }
}

impl ClientCredentialsGrant {
    async fn fetch(&self) -> Result<AccessToken, Error> {
        let creds = self.credentials(false).await?;
        tracing::Span::current().record("client_id", creds.client_id());
        let request = |creds| {
            self.client
                .request_token_once(&self.environment, creds, &self.scopes)
        };
        match request(&creds).await {
            Err(e) if e.is_invalid_client() => {
                let fresh = self.credentials(true).await?;
                if fresh.same_as(&creds) {
                    debug!(
                        "invalid_client, and reloading the credentials gave the same ones: not retrying"
                    );
                    return Err(e);
                }
                warn!(
                    "invalid_client: the credentials source had new credentials (a rotation?); retrying once with them"
                );
                request(&fresh).await
            }
            other => other,
        }
    }

    /// Asks the credentials source, time-boxed, and survives it panicking.
    async fn credentials(&self, reload: bool) -> Result<ClientCredentials, Error> {
        let panicked = || {
            Error::Credentials(CredentialsError::retryable(
                "the credentials source panicked (a bug in it); retrying with backoff",
            ))
        };
        let source = &self.source;
        let Ok(call) = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if reload {
                source.reload()
            } else {
                source.credentials()
            }
        })) else {
            return Err(panicked());
        };
        let limit = self.credentials_timeout;
        match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
            Err(_) => Err(Error::Credentials(CredentialsError::retryable(format!(
                "the credentials source did not answer within {} ms",
                limit.as_millis()
            )))),
            Ok(Err(_)) => Err(panicked()),
            Ok(Ok(result)) => result.map_err(Error::Credentials),
        }
    }
}
