//! TrueLayer Data API connections: a user's consent at a bank, its rotating tokens, a
//! durable store, and a refresh that happens once across every process.
//!
//! (Crate documentation is completed with the manager.)

#![forbid(unsafe_code)]

mod crypto;
mod error;
mod manager;
mod refresh;
mod sqlite;
mod store;

pub use crypto::{EncryptionKeys, KeyError, KeyOrigin};
pub use error::ConnectionError;
pub use manager::{
    CONSENT_LIFETIME, Connection, ConnectionManager, ConnectionManagerBuilder, Extension,
};
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
pub use store::{
    ConnectionId, ConnectionLock, ConnectionRecord, ConnectionStatus, ConnectionStore,
    InvalidConnectionId, StoreError, StoreFuture,
};
