//! The contract every [`ConnectionStore`] keeps, once: each store's test file implements
//! [`Harness`] (how to open it, and how to reach under it to its raw data) and calls each
//! function here from a `#[tokio::test]` of its own. A new store gets the whole contract by
//! doing the same.
//!
//! What is the store's own (file modes, the schema's tables, how its lock dies with its
//! holder) stays in its file.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use truelayer_auth_connections::{
    ConnectionLock, ConnectionStatus, ConnectionStore, EncryptionKeys, StoreError,
};

use super::{ACCESS, REFRESH, assert_same, at, id, keys, record};

/// What differs between stores: how to open one, and how to reach its data as an operator,
/// an attacker or a bug would.
pub(crate) trait Harness {
    type Store: ConnectionStore + std::fmt::Debug;

    /// The table of connections, for SQL that tampers with rows; its columns
    /// `access_token_enc` and `refresh_token_enc` hold the ciphertexts as text.
    const TABLE: &'static str;

    /// Opens a store on this harness's data: a new handle each time, another process as far as
    /// the store can tell.
    async fn try_open(&self, keys: EncryptionKeys) -> Result<Self::Store, StoreError>;

    /// Opens a store whose locks have this lease.
    async fn open_with_lease(&self, keys: EncryptionKeys, lease: Duration) -> Self::Store;

    /// The store's `reencrypt_all`.
    async fn reencrypt_all(store: &Self::Store) -> Result<usize, StoreError>;

    /// Runs SQL on the data with a connection of its own.
    async fn execute(&self, sql: &str);

    /// The first column of each row `sql` selects, as text.
    async fn column(&self, sql: &str) -> Vec<String>;

    /// Everything the store keeps, as it lies at rest (files, rows), for a search.
    async fn at_rest(&self) -> Vec<u8>;

    /// The store's data, to compare before and after something that must change nothing.
    async fn snapshot(&self) -> Vec<u8>;

    async fn open(&self, keys: EncryptionKeys) -> Self::Store {
        self.try_open(keys).await.unwrap()
    }
}

pub(crate) async fn a_connection_round_trips_and_list_is_by_id<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    assert!(store.get(&id("b")).await.unwrap().is_none());
    assert!(store.list().await.unwrap().is_empty());

    let b = record("b");
    let mut a = record("a");
    a.refresh_token = None;
    a.credentials_id = Some("cred-1".into());
    store.insert(&b).await.unwrap();
    store.insert(&a).await.unwrap();
    assert_same(&store.get(&id("b")).await.unwrap().unwrap(), &b);
    let list = store.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_same(&list[0], &a);
    assert_same(&list[1], &b);

    let mut next = b.clone();
    next.access_token = SecretString::from("new-access".to_owned());
    next.refresh_token = Some(SecretString::from("new-refresh".to_owned()));
    next.status = ConnectionStatus::NeedsReconnect;
    next.updated_at = at(1_750_000_000_000);
    assert_eq!(store.update(&next).await.unwrap(), 2);
    next.version = 2;
    assert_same(&store.get(&id("b")).await.unwrap().unwrap(), &next);
    assert_eq!(store.lease(), Duration::from_secs(30));

    // A second store on the same data sees the same rows, the first one closed.
    drop(store);
    let again = h.open(keys()).await;
    assert_same(&again.get(&id("b")).await.unwrap().unwrap(), &next);
    assert_same(&again.list().await.unwrap()[0], &a);
}

pub(crate) async fn neither_token_is_ever_in_clear<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    for name in ["a", "b", "c"] {
        store.insert(&record(name)).await.unwrap();
    }
    let mut r = store.get(&id("b")).await.unwrap().unwrap();
    r.access_token = SecretString::from(format!("{ACCESS}-rotated"));
    r.refresh_token = Some(SecretString::from(format!("{REFRESH}-rotated")));
    store.update(&r).await.unwrap();

    for column in ["access_token_enc", "refresh_token_enc"] {
        let sealed = h
            .column(&format!("SELECT {column} FROM {} ORDER BY id", H::TABLE))
            .await;
        assert_eq!(sealed.len(), 3, "{column}");
        for text in sealed {
            assert!(text.starts_with("tlc1.k1."), "{column}: {text}");
        }
    }
    let bytes = h.at_rest().await;
    let haystack = String::from_utf8_lossy(&bytes);
    // The provider is in clear, once a row at least; the markers prove the search would see
    // a token.
    assert!(
        haystack.matches("ob-barclays").count() >= 3,
        "the rows are not in what was searched"
    );
    for marker in [ACCESS, REFRESH] {
        assert!(!haystack.contains(marker), "{marker} is at rest in clear");
    }
}

pub(crate) async fn an_update_from_a_stale_read_is_a_version_conflict<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    store.insert(&record("a")).await.unwrap();
    let read_by_one = store.get(&id("a")).await.unwrap().unwrap();
    let read_by_two = read_by_one.clone();
    assert_eq!(store.update(&read_by_one).await.unwrap(), 2);

    let mut late = read_by_two;
    late.access_token = SecretString::from("stale".to_owned());
    // Refused on this store, and on another one on the same data.
    let elsewhere = h.open(keys()).await;
    for err in [
        store.update(&late).await.unwrap_err(),
        elsewhere.update(&late).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                StoreError::VersionConflict {
                    expected: 1,
                    found: 2
                }
            ),
            "{err:?}"
        );
    }
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_ne!(stored.access_token.expose_secret(), "stale");
}

pub(crate) async fn an_update_of_a_missing_row_is_not_found<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    let err = store.update(&record("ghost")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(i) if i.as_str() == "ghost"),
        "{err:?}"
    );
    assert!(store.get(&id("ghost")).await.unwrap().is_none());
}

pub(crate) async fn an_insert_of_a_taken_id_is_already_exists_and_changes_nothing<H: Harness>(
    h: &H,
) {
    let store = h.open(keys()).await;
    let first = record("a");
    store.insert(&first).await.unwrap();
    let mut second = record("a");
    second.access_token = SecretString::from("other".to_owned());
    let err = store.insert(&second).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists(i) if i.as_str() == "a"),
        "{err:?}"
    );
    assert_same(&store.get(&id("a")).await.unwrap().unwrap(), &first);

    let mut v2 = record("b");
    v2.version = 2;
    let err = store.insert(&v2).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                expected: 2,
                found: 0
            }
        ),
        "{err:?}"
    );
    assert!(store.get(&id("b")).await.unwrap().is_none());
}

pub(crate) async fn a_lock_excludes_a_second_holder_on_this_store_and_on_another<H: Harness>(
    h: &H,
) {
    let one = h.open(keys()).await;
    let two = h.open(keys()).await;
    let held = one.lock(&id("a"), Duration::ZERO).await.unwrap();
    assert!(!held.is_lost());

    let started = Instant::now();
    let err = one
        .lock(&id("a"), Duration::from_millis(150))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::LockTimeout { id, waited } if id.as_str() == "a" && *waited >= Duration::from_millis(150)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = two.lock(&id("a"), Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    let err = two
        .lock(&id("a"), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    // Another connection's lock is another lock.
    let other = two.lock(&id("b"), Duration::ZERO).await.unwrap();
    // Reads and writes go on while locks are held.
    one.insert(&record("a")).await.unwrap();
    let row = two.get(&id("a")).await.unwrap().unwrap();
    two.update(&row).await.unwrap();

    // A waiter gets it soon after it is released.
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let lock = two.lock(&id("a"), Duration::from_secs(5)).await.unwrap();
        (started.elapsed(), lock)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (waited, lock) = waiter.await.unwrap();
    println!(
        "the waiter had the lock {:?} after release",
        released.elapsed()
    );
    assert!(waited >= Duration::from_millis(90), "{waited:?}");
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    lock.release().await.unwrap();
    other.release().await.unwrap();
}

pub(crate) async fn a_dropped_lock_is_released_in_the_background<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    let held = store.lock(&id("a"), Duration::ZERO).await.unwrap();
    drop(held);
    let again = store.lock(&id("a"), Duration::from_secs(1)).await.unwrap();
    drop(again);
    let elsewhere = h.open(keys()).await;
    let again = elsewhere
        .lock(&id("a"), Duration::from_secs(1))
        .await
        .unwrap();
    again.release().await.unwrap();
}

/// A lock held past its lease, by a holder that lives: what the store does after it is its
/// own (a lapse is taken over, or only a closed session lets it go).
pub(crate) struct HeldPastItsLease<S> {
    pub(crate) holder: S,
    pub(crate) other: S,
    pub(crate) held: Box<dyn ConnectionLock>,
    pub(crate) lease: Duration,
}

/// A living holder keeps its lock past three of its leases (it renews, or its session
/// holds it), and does not take it for lost.
pub(crate) async fn a_held_lock_outlives_its_lease<H: Harness>(
    h: &H,
) -> HeldPastItsLease<H::Store> {
    let lease = Duration::from_millis(600);
    let holder = h.open_with_lease(keys(), lease).await;
    let other = h.open_with_lease(keys(), lease).await;
    assert_eq!(holder.lease(), lease);
    let held = holder.lock(&id("a"), Duration::ZERO).await.unwrap();
    let err = other.lock(&id("a"), lease * 3).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    assert!(!held.is_lost());
    HeldPastItsLease {
        holder,
        other,
        held,
        lease,
    }
}

pub(crate) async fn a_store_opened_with_another_key_is_wrong_key_or_unknown_key<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    store.insert(&record("a")).await.unwrap();
    drop(store);

    let same_id = h.open(EncryptionKeys::new("k1", [9; 32]).unwrap()).await;
    let err = same_id.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
    let err = same_id.list().await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");
    drop(same_id);

    let other_id = h.open(EncryptionKeys::new("k9", [1; 32]).unwrap()).await;
    let err = other_id.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
    drop(other_id);
    // Neither overwrote anything.
    assert_same(
        &h.open(keys()).await.get(&id("a")).await.unwrap().unwrap(),
        &record("a"),
    );
}

pub(crate) async fn a_ciphertext_moved_to_another_row_or_field_does_not_decrypt<H: Harness>(h: &H) {
    let store = h.open(keys()).await;
    for name in ["a", "b", "c"] {
        store.insert(&record(name)).await.unwrap();
    }
    let table = H::TABLE;
    h.execute(&format!(
        "UPDATE {table} SET access_token_enc = \
         (SELECT access_token_enc FROM {table} WHERE id = 'a') WHERE id = 'b';
         UPDATE {table} SET access_token_enc = refresh_token_enc WHERE id = 'c';"
    ))
    .await;
    assert!(store.get(&id("a")).await.unwrap().is_some());
    for moved in ["b", "c"] {
        let err = store.get(&id(moved)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::WrongKey { .. }),
            "{moved}: {err:?}"
        );
    }
}

pub(crate) async fn keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key<H: Harness>(
    h: &H,
) {
    let old = h.open(keys()).await;
    old.insert(&record("a")).await.unwrap();
    old.insert(&record("b")).await.unwrap();
    drop(old);

    let rotated_keys = || {
        EncryptionKeys::new("k2", [2; 32])
            .unwrap()
            .with_old_key("k1", [1; 32])
            .unwrap()
    };
    let only_new_key = || EncryptionKeys::new("k2", [2; 32]).unwrap();
    let rotated = h.open(rotated_keys()).await;
    // Written by k1, read with k2 current and k1 old; a write re-encrypts with k2.
    let a = rotated.get(&id("a")).await.unwrap().unwrap();
    assert_same(&a, &record("a"));
    rotated.update(&a).await.unwrap();

    let only_new = h.open(only_new_key()).await;
    assert!(only_new.get(&id("a")).await.unwrap().is_some());
    let err = only_new.get(&id("b")).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err:?}");

    // Re-encrypting every row lets the old key go, for stores open meanwhile too.
    assert_eq!(H::reencrypt_all(&rotated).await.unwrap(), 1);
    assert_eq!(H::reencrypt_all(&rotated).await.unwrap(), 0);
    let b = only_new.get(&id("b")).await.unwrap().unwrap();
    assert_same(&b, &record("b"));
    drop((rotated, only_new));
    let only_new = h.open(only_new_key()).await;
    let b = only_new.get(&id("b")).await.unwrap().unwrap();
    assert_same(&b, &record("b"));
    assert_eq!(only_new.list().await.unwrap().len(), 2);
    for sealed in h
        .column(&format!("SELECT access_token_enc FROM {}", H::TABLE))
        .await
    {
        assert!(sealed.starts_with("tlc1.k2."), "{sealed}");
    }
}

/// A store whose data a newer schema wrote (`mark_newer` says version 99) is refused, and
/// nothing is written.
pub(crate) async fn a_newer_schema_is_refused_and_left_unchanged<H: Harness>(
    h: &H,
    mark_newer: &str,
) {
    let store = h.open(keys()).await;
    store.insert(&record("a")).await.unwrap();
    drop(store);
    h.execute(mark_newer).await;
    let before = h.snapshot().await;

    let err = h.try_open(keys()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert!(h.snapshot().await == before, "the store's data changed");
}

/// A second process holding a lock: this test binary run again, as `test` (a test that does
/// nothing unless `env` is set), with `env` set to `value`. Killed if a test fails first.
pub(crate) struct LockHolder(pub(crate) Child);

impl LockHolder {
    /// Starts the child and waits until it holds its lock.
    pub(crate) async fn start(test: &str, env: &str, value: &std::ffi::OsStr) -> Self {
        let mut child = LockHolder(
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(env, value)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let locked = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "LOCKED")
        })
        .await
        .unwrap();
        assert!(locked, "the child never took the lock");
        child
    }

    /// The child's half: takes connection `a`'s lock on `store`, says so, and waits to be
    /// killed or stopped.
    pub(crate) async fn hold(store: impl ConnectionStore) {
        let _held = store.lock(&id("a"), Duration::from_secs(5)).await.unwrap();
        println!("\nLOCKED");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    /// The holder keeps its lock past twice the `lease` of `store`; then it is SIGKILLed:
    /// how long until `store` has the lock.
    pub(crate) async fn kill_and_time(mut self, store: &impl ConnectionStore) -> Duration {
        let lease = store.lease();
        let err = store.lock(&id("a"), lease * 2).await.unwrap_err();
        assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");

        // SIGKILL: no release, nothing more from it.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
        let killed = Instant::now();
        let lock = store.lock(&id("a"), lease * 3).await.unwrap();
        let waited = killed.elapsed();
        lock.release().await.unwrap();
        println!("lock taken {waited:?} after the holder was SIGKILLed (lease {lease:?})");
        waited
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
