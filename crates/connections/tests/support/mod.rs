//! What the store tests and the manager tests share: the records they store, the store
//! contract every `ConnectionStore` passes ([`contract`]), and the manager's world on any
//! store ([`world`]).
//!
//! Each test file has `mod support;` and uses the part it needs.
#![allow(dead_code, reason = "each test binary uses a part of the support")]

pub(crate) mod contract;
pub(crate) mod world;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use truelayer_auth_connections::{ConnectionId, ConnectionRecord, EncryptionKeys};

/// In every stored access token: found in clear, it is a leak.
pub(crate) const ACCESS: &str = "ACCESS-MARKER-7f3a9c";
/// In every stored refresh token.
pub(crate) const REFRESH: &str = "REFRESH-MARKER-91bd2e";

/// The key the store tests write with (`k1`).
pub(crate) fn keys() -> EncryptionKeys {
    EncryptionKeys::new("k1", [1; 32]).unwrap()
}

pub(crate) fn id(s: &str) -> ConnectionId {
    s.parse().unwrap()
}

/// A time to the millisecond, as every store keeps it (PostgreSQL keeps microseconds).
pub(crate) fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A connection named `name`, with both tokens (each holds a marker and the name) and a
/// provider, at version 1.
pub(crate) fn record(name: &str) -> ConnectionRecord {
    let mut r = ConnectionRecord::new(
        id(name),
        "client-1",
        "info accounts offline_access",
        SecretString::from(format!("{ACCESS}-{name}")),
        at(1_800_000_000_123),
        Some(SecretString::from(format!("{REFRESH}-{name}"))),
        at(1_700_000_000_456),
    );
    r.provider_id = Some("ob-barclays".into());
    r
}

/// Every field of `a` and `b` is the same, tokens included.
pub(crate) fn assert_same(a: &ConnectionRecord, b: &ConnectionRecord) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.client_id, b.client_id);
    assert_eq!(a.scopes, b.scopes);
    assert_eq!(a.provider_id, b.provider_id);
    assert_eq!(a.credentials_id, b.credentials_id);
    assert_eq!(
        a.access_token.expose_secret(),
        b.access_token.expose_secret()
    );
    assert_eq!(a.access_expires_at, b.access_expires_at);
    assert_eq!(
        a.refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        b.refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
    );
    assert_eq!(a.consented_at, b.consented_at);
    assert_eq!(a.updated_at, b.updated_at);
    assert_eq!(a.status, b.status);
    assert_eq!(a.version, b.version);
}
