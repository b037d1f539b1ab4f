//! `SqliteStore`: rows, encryption at rest, fenced writes, the schema's guard rails and the
//! cross-process lease (one test kills a real second process holding it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use truelayer_auth_connections::{
    ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore, EncryptionKeys, SqliteStore,
    StoreError,
};

const ACCESS: &str = "ACCESS-MARKER-7f3a9c";
const REFRESH: &str = "REFRESH-MARKER-91bd2e";

fn keys() -> EncryptionKeys {
    EncryptionKeys::new("k1", [1; 32]).unwrap()
}

fn id(s: &str) -> ConnectionId {
    s.parse().unwrap()
}

/// A time to the millisecond, as the store keeps it.
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn record(name: &str) -> ConnectionRecord {
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

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("connections.db")
}

fn assert_same(a: &ConnectionRecord, b: &ConnectionRecord) {
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

/// Runs SQL on the file with a connection of its own, as an attacker or a bug would.
fn raw(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn a_connection_round_trips_and_list_is_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(db(&dir), keys()).await.unwrap();
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
    assert_eq!(
        format!("{store:?}"),
        format!("SqliteStore {{ path: {:?}, .. }}", db(&dir))
    );

    // A second store on the file sees the same rows.
    drop(store);
    let again = SqliteStore::open(db(&dir), keys()).await.unwrap();
    assert_same(&again.get(&id("b")).await.unwrap().unwrap(), &next);
}

#[tokio::test]
async fn neither_token_is_ever_in_the_files_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = SqliteStore::open(&path, keys()).await.unwrap();
    for name in ["a", "b", "c"] {
        store.insert(&record(name)).await.unwrap();
    }
    let mut r = store.get(&id("b")).await.unwrap().unwrap();
    r.access_token = SecretString::from(format!("{ACCESS}-rotated"));
    r.refresh_token = Some(SecretString::from(format!("{REFRESH}-rotated")));
    store.update(&r).await.unwrap();

    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        if let Ok(b) = std::fs::read(&file) {
            bytes.extend(b);
        }
    }
    assert!(bytes.len() > 4096, "nothing read");
    let haystack = String::from_utf8_lossy(&bytes);
    // The ids are in clear; the markers prove the search would see a token.
    assert!(haystack.contains("ob-barclays"));
    for marker in [ACCESS, REFRESH] {
        assert!(
            !haystack.contains(marker),
            "{marker} is in the file in clear"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_file_and_its_wal_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = SqliteStore::open(&path, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    for suffix in ["", "-wal"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file:?}");
    }
}

#[tokio::test]
async fn a_missing_directory_is_an_error_not_a_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("c.db");
    let err = SqliteStore::open(&path, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!dir.path().join("no-such-dir").exists());
}

#[tokio::test]
async fn an_update_from_a_stale_read_is_a_version_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(db(&dir), keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    let read_by_one = store.get(&id("a")).await.unwrap().unwrap();
    let read_by_two = read_by_one.clone();
    assert_eq!(store.update(&read_by_one).await.unwrap(), 2);

    let mut late = read_by_two;
    late.access_token = SecretString::from("stale".to_owned());
    let err = store.update(&late).await.unwrap_err();
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
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_ne!(stored.access_token.expose_secret(), "stale");
}

#[tokio::test]
async fn an_update_of_a_missing_row_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(db(&dir), keys()).await.unwrap();
    let err = store.update(&record("ghost")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(i) if i.as_str() == "ghost"),
        "{err:?}"
    );
    assert!(store.get(&id("ghost")).await.unwrap().is_none());
}

#[tokio::test]
async fn an_insert_of_a_taken_id_is_already_exists_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(db(&dir), keys()).await.unwrap();
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

#[tokio::test]
async fn a_lock_excludes_a_second_holder_in_this_process_and_on_another_store() {
    let dir = tempfile::tempdir().unwrap();
    let one = SqliteStore::open(db(&dir), keys()).await.unwrap();
    let two = SqliteStore::open(db(&dir), keys()).await.unwrap();
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
    let err = two
        .lock(&id("a"), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    // Another connection's lock is another lock.
    let other = two.lock(&id("b"), Duration::ZERO).await.unwrap();

    // A waiter gets it soon after it is released.
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let lock = two.lock(&id("a"), Duration::from_secs(5)).await.unwrap();
        (started.elapsed(), lock)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.release().await.unwrap();
    let (waited, lock) = waiter.await.unwrap();
    assert!(waited >= Duration::from_millis(90), "{waited:?}");
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    lock.release().await.unwrap();
    other.release().await.unwrap();
}

#[tokio::test]
async fn a_dropped_lock_is_released_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(db(&dir), keys()).await.unwrap();
    let held = store.lock(&id("a"), Duration::ZERO).await.unwrap();
    drop(held);
    let again = store.lock(&id("a"), Duration::from_secs(1)).await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_held_lease_is_renewed_and_a_lapsed_one_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lease = Duration::from_millis(600);
    let one = SqliteStore::builder(&path, keys())
        .lease(lease)
        .open()
        .await
        .unwrap();
    let two = SqliteStore::builder(&path, keys())
        .lease(lease)
        .open()
        .await
        .unwrap();
    let held = one.lock(&id("a"), Duration::ZERO).await.unwrap();

    // Renewed: still held after three leases.
    let err = two.lock(&id("a"), lease * 3).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    assert!(!held.is_lost());

    // The lease lapses (as if this process had been paused past it); another takes it.
    raw(&path, "UPDATE connection_locks SET expires_at = 0");
    let taken = two.lock(&id("a"), Duration::ZERO).await.unwrap();
    // The first holder finds out at its next renewal (within a third of the lease), before
    // its own idea of the lease's end (at least two thirds away), and cannot release the
    // new holder's lock.
    tokio::time::sleep(lease / 2).await;
    assert!(held.is_lost());
    held.release().await.unwrap();
    let err = one
        .lock(&id("a"), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    assert!(!taken.is_lost());
    taken.release().await.unwrap();
}

/// The child half of [`a_lock_held_by_a_killed_process_lapses_within_its_lease`]: takes the
/// lock and waits to be killed.
#[tokio::test]
async fn lock_holder_child() {
    let Some(path) = std::env::var_os("TLC_LOCK_CHILD_DB") else {
        return;
    };
    let store = SqliteStore::builder(PathBuf::from(path), keys())
        .lease(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let _held = store.lock(&id("a"), Duration::from_secs(5)).await.unwrap();
    println!("\nLOCKED");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Kills the child if a test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_lock_held_by_a_killed_process_lapses_within_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lease = Duration::from_secs(1);
    let store = SqliteStore::builder(&path, keys())
        .lease(lease)
        .open()
        .await
        .unwrap();

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lock_holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TLC_LOCK_CHILD_DB", &path)
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

    // The child renews its lease: it still holds it after twice the lease.
    let err = store.lock(&id("a"), lease * 2).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");

    // SIGKILL: no release, no more renewals.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    let lock = store.lock(&id("a"), lease * 3).await.unwrap();
    let waited = killed.elapsed();
    println!("lock taken {waited:?} after the holder was killed (lease {lease:?})");
    assert!(waited <= lease + Duration::from_millis(300), "{waited:?}");
    lock.release().await.unwrap();
}

fn read_files(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_store_of_a_newer_schema_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = SqliteStore::open(&path, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    drop(store);
    raw(&path, "PRAGMA user_version = 99");
    let before = read_files(&path);

    let err = SqliteStore::open(&path, keys()).await.unwrap_err();
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
    assert_eq!(read_files(&path), before, "the file changed");
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_corrupt_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();

    let text = dir.path().join("notes.txt");
    let content =
        b"this is not a database, just some text that is long enough to have a header".repeat(20);
    std::fs::write(&text, &content).unwrap();
    let err = SqliteStore::open(&text, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(read_files(&text), content);

    // Another application's database.
    let other = dir.path().join("other.db");
    raw(
        &other,
        "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x');",
    );
    let before = read_files(&other);
    let err = SqliteStore::open(&other, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(read_files(&other), before);

    // Ours by its application id, but its tables are gone.
    let path = db(&dir);
    drop(SqliteStore::open(&path, keys()).await.unwrap());
    raw(&path, "DROP TABLE connections");
    let before = read_files(&path);
    let err = SqliteStore::open(&path, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(read_files(&path), before);
}

#[tokio::test]
async fn a_store_opened_with_another_key_is_wrong_key_or_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = SqliteStore::open(&path, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    drop(store);

    let same_id = SqliteStore::open(&path, EncryptionKeys::new("k1", [9; 32]).unwrap())
        .await
        .unwrap();
    let err = same_id.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
    let err = same_id.list().await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");
    drop(same_id);

    let other_id = SqliteStore::open(&path, EncryptionKeys::new("k9", [1; 32]).unwrap())
        .await
        .unwrap();
    let err = other_id.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_or_field_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = SqliteStore::open(&path, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    store.insert(&record("b")).await.unwrap();
    store.insert(&record("c")).await.unwrap();
    raw(
        &path,
        "UPDATE connections SET access_token_enc = \
         (SELECT access_token_enc FROM connections WHERE id = 'a') WHERE id = 'b';
         UPDATE connections SET access_token_enc = refresh_token_enc WHERE id = 'c';",
    );
    assert!(store.get(&id("a")).await.unwrap().is_some());
    for moved in ["b", "c"] {
        let err = store.get(&id(moved)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::WrongKey { .. }),
            "{moved}: {err:?}"
        );
    }
}

#[tokio::test]
async fn keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let old = SqliteStore::open(&path, keys()).await.unwrap();
    old.insert(&record("a")).await.unwrap();
    old.insert(&record("b")).await.unwrap();
    drop(old);

    let rotated_keys = || {
        EncryptionKeys::new("k2", [2; 32])
            .unwrap()
            .with_old_key("k1", [1; 32])
            .unwrap()
    };
    let rotated = SqliteStore::open(&path, rotated_keys()).await.unwrap();
    // Written by k1, read with k2 current and k1 old; a write re-encrypts with k2.
    let a = rotated.get(&id("a")).await.unwrap().unwrap();
    assert_same(&a, &record("a"));
    rotated.update(&a).await.unwrap();
    drop(rotated);

    let only_new = SqliteStore::open(&path, EncryptionKeys::new("k2", [2; 32]).unwrap())
        .await
        .unwrap();
    assert!(only_new.get(&id("a")).await.unwrap().is_some());
    let err = only_new.get(&id("b")).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err:?}");
    drop(only_new);

    // Re-encrypting every row lets the old key go.
    let rotated = SqliteStore::open(&path, rotated_keys()).await.unwrap();
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 1);
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 0);
    drop(rotated);
    let only_new = SqliteStore::open(&path, EncryptionKeys::new("k2", [2; 32]).unwrap())
        .await
        .unwrap();
    let b = only_new.get(&id("b")).await.unwrap().unwrap();
    assert_same(&b, &record("b"));
    assert_eq!(only_new.list().await.unwrap().len(), 2);
}
