//! TrueLayer Data API connections: a user's consent at a bank, its rotating tokens, a
//! durable store, and a refresh that happens once across every process.
//!
//! TrueLayer rotates Data API refresh tokens: each refresh spends the old one. Two refreshes
//! at once, an answer that is never written down, or a restart that forgets the new token
//! loses the user's bank connection until they consent again. This crate keeps it:
//!
//! - [`ConnectionManager`] exchanges the code of a checked callback
//!   ([`truelayer_auth::AuthLink`], [`truelayer_auth::PendingAuthorization::callback`]),
//!   stores the connection, and hands out its access token through the payments cache's
//!   refresh engine ([`truelayer_auth::Refresher`]): served lock-free while valid, refreshed
//!   ahead of expiry, once at a time in the process.
//! - Each refresh takes the store's lock for that connection, **re-reads** the row, uses
//!   tokens another process already refreshed, and otherwise spends the refresh token and
//!   **writes the new pair before anything else can fail**, fenced on the row's version. On
//!   `invalid_grant` it re-reads before marking the connection
//!   [`NeedsReconnect`](ConnectionStatus::NeedsReconnect). The steps, and what happens if
//!   the process dies at each, are in `docs/architecture.md`.
//! - [`ConnectionStore`] is the durable home: one row per connection with both tokens
//!   together, fenced writes, and a cross-process lease. [`SqliteStore`] is the embedded
//!   default: one file, WAL, `synchronous=FULL`, versioned migrations, both tokens encrypted
//!   at rest with AES-256-GCM ([`EncryptionKeys`]: a key id in each ciphertext, so keys
//!   rotate). `PostgresStore` (feature `postgres`) is the same store for a fleet: the lock is
//!   a transaction-scoped advisory lock, released when its holder's connection dies.
//! - [`ConnectionManager`] is a [`truelayer_auth::TokenSource`] for requests that carry a
//!   [`ConnectionId`] extension, so `truelayer-auth-tower`'s `BearerAuthLayer` authorizes
//!   each user's Data API calls; a 401 refreshes that connection once and replays.
//!
//! # Example
//!
//! ```no_run
//! use truelayer_auth::{AuthLink, EnvCredentials, Environment};
//! use truelayer_auth_connections::{ConnectionManager, EncryptionKeys, SqliteStore};
//!
//! # async fn run(callback_query: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let keys = EncryptionKeys::from_env()?.ok_or("set TRUELAYER_CONNECTIONS_KEY")?;
//! let store = SqliteStore::open("/var/lib/acme/connections.db", keys).await?;
//! let connections =
//!     ConnectionManager::builder(Environment::Sandbox, EnvCredentials::new(), store).build()?;
//!
//! // 1. Send the user to the auth link; keep `pending` under its state until they return.
//! let link = AuthLink::builder(Environment::Sandbox, "sandbox-acme-1a2b3c", "https://acme.example/callback")
//!     .providers(["uk-ob-all", "uk-oauth-all"])
//!     .build()?;
//! let (url, pending) = link.into_parts();
//! # let _ = url;
//! // 2. On /callback: check it, exchange the code, store the connection.
//! let id = connections.connect(&pending.callback(callback_query)?).await?;
//! // 3. Whenever: a usable token, refreshed when needed, once across every process.
//! let token = connections.token(&id).await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! `examples/data_api.rs` is a whole axum app: `/connect`, `/callback`, and a handler that
//! lists a user's accounts through the bearer layer.
//!
//! # Why SQLite through rusqlite
//!
//! The embedded store needs nothing to run: the CLI and single-machine services keep one file.
//! `rusqlite` with SQLite bundled is the field's long-kept binding, with no system library to
//! match; its synchronous calls take tens of microseconds to read and one fsync to write, so
//! they run on tokio's blocking pool rather than through an async driver. `sqlx` would add a
//! second runtime layer and a larger build for the same SQLite.

#![forbid(unsafe_code)]

mod crypto;
mod error;
mod manager;
#[cfg(feature = "postgres")]
mod postgres;
mod refresh;
mod sqlite;
mod store;

pub use crypto::{EncryptionKeys, KeyError, KeyOrigin};
pub use error::ConnectionError;
pub use manager::{
    CONSENT_LIFETIME, Connection, ConnectionManager, ConnectionManagerBuilder, Extension,
};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder, TlsMode};
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
pub use store::{
    ConnectionId, ConnectionLock, ConnectionRecord, ConnectionStatus, ConnectionStore,
    InvalidConnectionId, StoreError, StoreFuture,
};
