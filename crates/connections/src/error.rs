//! The manager's errors.

use std::sync::Arc;

use http::StatusCode;
use truelayer_auth::{CallbackError, Error as TokenError};

use crate::store::{ConnectionId, StoreError};

/// Why a connection could not be made, used, extended or deleted.
///
/// `Display` says what failed and what to do; [`source`](std::error::Error::source) carries
/// the cause. No token, code or secret is ever in either.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// No connection with that id is stored.
    #[error("no connection with id {0}")]
    NotFound(ConnectionId),
    /// TrueLayer refused the connection's refresh token for good (`invalid_grant`: the 90-day
    /// consent passed, the user or a delete revoked it, or the token was spent elsewhere).
    /// The user must connect again through a new auth link.
    #[error(
        "connection {0} needs the user to connect again: TrueLayer no longer accepts its refresh token"
    )]
    NeedsReconnect(ConnectionId),
    /// The connection was deleted.
    #[error("connection {0} was deleted")]
    Deleted(ConnectionId),
    /// The access token expired and there is no refresh token: the consent did not include
    /// `offline_access`. The user must connect again.
    #[error(
        "connection {0}'s access token expired and it has no refresh token (its consent lacked offline_access); the user must connect again"
    )]
    NoRefreshToken(ConnectionId),
    /// A refreshed pair of this connection is being written, or the row changed while this
    /// process refreshed it: try again in a moment (the engine does). Retryable.
    #[error(
        "connection {0} is being written (a refreshed pair, or another process's change); try again"
    )]
    Writing(ConnectionId),
    /// The connection belongs to another TrueLayer client than the one configured: a
    /// refresh would be refused and is not sent, and the connection is left as it is.
    #[error(
        "connection {id} belongs to client `{stored}`, not the one configured; nothing was sent (check the environment and credentials)"
    )]
    OtherClient {
        /// The connection.
        id: ConnectionId,
        /// The client it was made for.
        stored: String,
    },
    /// The request carried no [`ConnectionId`] extension, so there is no connection to
    /// authorize it with.
    #[error(
        "the request names no connection: insert its ConnectionId into the request's extensions"
    )]
    MissingConnectionId,
    /// The callback brought no usable code.
    #[error("the auth dialog's callback was refused")]
    Callback(#[source] CallbackError),
    /// The code exchange or a refresh failed (the token endpoint's answer, or the refresh
    /// engine's wait).
    #[error("getting a token for connection {id} failed")]
    Token {
        /// The connection (for a code exchange: the id it would have had).
        id: ConnectionId,
        /// What failed.
        #[source]
        source: TokenError,
    },
    /// The store failed.
    #[error("reading or writing connection {id} failed")]
    Store {
        /// The connection.
        id: ConnectionId,
        /// What failed.
        #[source]
        source: Arc<StoreError>,
    },
    /// A Data API call the manager makes itself (`/me`, extend, delete) failed.
    #[error("TrueLayer's {call} failed for connection {id}{}", status.map(|s| format!(" with {s}")).unwrap_or_default())]
    Api {
        /// The connection.
        id: ConnectionId,
        /// The call: `/data/v1/me`, `connections/extend` or `api/delete`.
        call: &'static str,
        /// The status, if an answer came.
        status: Option<StatusCode>,
        /// What went wrong, if more is known (a transport error, TrueLayer's error body).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl ConnectionError {
    /// Whether trying again later may succeed (the connection itself is fine).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectionError::Token { source, .. } => source.is_retryable(),
            ConnectionError::Store { source, .. } => source.is_retryable(),
            ConnectionError::Api { status, .. } => {
                status.is_none_or(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS)
            }
            ConnectionError::Writing(_) => true,
            _ => false,
        }
    }

    /// Whether the user must consent again (reconnect) before this connection works.
    pub fn needs_reconnect(&self) -> bool {
        matches!(
            self,
            ConnectionError::NeedsReconnect(_) | ConnectionError::NoRefreshToken(_)
        )
    }

    pub(crate) fn store(id: &ConnectionId, e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ConnectionError::NotFound(id),
            e => ConnectionError::Store {
                id: id.clone(),
                source: Arc::new(e),
            },
        }
    }

    /// The error as the refresh engine carries it.
    pub(crate) fn into_token_error(self) -> TokenError {
        let retryable = self.is_retryable();
        TokenError::Refresh(truelayer_auth::RefreshError::new(self, retryable))
    }

    /// The engine's error for connection `id`, turned back into this type.
    pub(crate) fn from_token_error(id: &ConnectionId, e: TokenError) -> Self {
        if let TokenError::Refresh(r) = &e
            && let Some(ours) = r.get_ref().downcast_ref::<ConnectionError>()
        {
            return ours.clone();
        }
        ConnectionError::Token {
            id: id.clone(),
            source: e,
        }
    }
}
