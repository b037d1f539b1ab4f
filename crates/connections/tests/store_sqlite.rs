//! `SqliteStore`: the store contract (`support::contract`), and what is SQLite's own: file
//! modes, a missing directory, the lease in a lock table (one test kills a real second
//! process holding it), and the schema's guard rails on files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use truelayer_auth_connections::{ConnectionStore, EncryptionKeys, SqliteStore, StoreError};

mod support;

use support::contract::{self, Harness, HeldPastItsLease, LockHolder};
use support::{id, keys, record};

/// A store file in a temporary directory of its own.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        db(&self.dir)
    }
}

impl Harness for Sqlite {
    type Store = SqliteStore;
    const TABLE: &'static str = "connections";

    async fn try_open(&self, keys: EncryptionKeys) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(self.path(), keys).await
    }

    async fn open_with_lease(&self, keys: EncryptionKeys, lease: Duration) -> SqliteStore {
        SqliteStore::builder(self.path(), keys)
            .lease(lease)
            .open()
            .await
            .unwrap()
    }

    async fn reencrypt_all(store: &SqliteStore) -> Result<usize, StoreError> {
        store.reencrypt_all().await
    }

    async fn execute(&self, sql: &str) {
        raw(&self.path(), sql);
    }

    async fn column(&self, sql: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The file, its WAL and its shared memory, byte for byte.
    async fn at_rest(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.path().into_os_string();
            file.push(suffix);
            if let Ok(b) = std::fs::read(&file) {
                bytes.extend(b);
            }
        }
        assert!(bytes.len() > 4096, "nothing read");
        bytes
    }

    async fn snapshot(&self) -> Vec<u8> {
        read_files(&self.path())
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("connections.db")
}

/// Runs SQL on the file with a connection of its own, as an attacker or a bug would.
fn raw(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn read_files(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_connection_round_trips_and_list_is_by_id() {
    let h = Sqlite::new();
    contract::a_connection_round_trips_and_list_is_by_id(&h).await;
    let store = h.open(keys()).await;
    assert_eq!(
        format!("{store:?}"),
        format!("SqliteStore {{ path: {:?}, .. }}", h.path())
    );
}

#[tokio::test]
async fn neither_token_is_ever_in_the_files_in_clear() {
    contract::neither_token_is_ever_in_clear(&Sqlite::new()).await;
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
    contract::an_update_from_a_stale_read_is_a_version_conflict(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_update_of_a_missing_row_is_not_found() {
    contract::an_update_of_a_missing_row_is_not_found(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_insert_of_a_taken_id_is_already_exists_and_changes_nothing() {
    contract::an_insert_of_a_taken_id_is_already_exists_and_changes_nothing(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_lock_excludes_a_second_holder_in_this_process_and_on_another_store() {
    contract::a_lock_excludes_a_second_holder_on_this_store_and_on_another(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_dropped_lock_is_released_in_the_background() {
    contract::a_dropped_lock_is_released_in_the_background(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_held_lease_is_renewed_and_a_lapsed_one_is_taken_over() {
    let h = Sqlite::new();
    // Renewed: still held after three leases.
    let HeldPastItsLease {
        holder,
        other,
        held,
        lease,
    } = contract::a_held_lock_outlives_its_lease(&h).await;

    // The lease lapses (as if this process had been paused past it); another takes it.
    h.execute("UPDATE connection_locks SET expires_at = 0")
        .await;
    let taken = other.lock(&id("a"), Duration::ZERO).await.unwrap();
    // Asked before it spends, the first holder learns at once that it lost the lease.
    assert!(!held.confirm().await.unwrap());
    assert!(taken.confirm().await.unwrap());
    // Without asking, it finds out at its next renewal (within a third of the lease), before
    // its own idea of the lease's end (at least two thirds away), and cannot release the
    // new holder's lock.
    tokio::time::sleep(lease / 2).await;
    assert!(held.is_lost());
    held.release().await.unwrap();
    let err = holder
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
    LockHolder::hold(
        SqliteStore::builder(PathBuf::from(path), keys())
            .lease(Duration::from_secs(1))
            .open()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn a_lock_held_by_a_killed_process_lapses_within_its_lease() {
    let h = Sqlite::new();
    let lease = Duration::from_secs(1);
    let store = h.open_with_lease(keys(), lease).await;
    let child = LockHolder::start(
        "lock_holder_child",
        "TLC_LOCK_CHILD_DB",
        h.path().as_os_str(),
    )
    .await;
    // It renews its lease; killed, it renews no more and the lease lapses.
    let waited = child.kill_and_time(&store).await;
    assert!(waited <= lease + Duration::from_millis(300), "{waited:?}");
}

#[tokio::test]
async fn a_store_of_a_newer_schema_is_refused_and_left_unchanged() {
    contract::a_newer_schema_is_refused_and_left_unchanged(
        &Sqlite::new(),
        "PRAGMA user_version = 99",
    )
    .await;
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
    contract::a_store_opened_with_another_key_is_wrong_key_or_unknown_key(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_or_field_does_not_decrypt() {
    contract::a_ciphertext_moved_to_another_row_or_field_does_not_decrypt(&Sqlite::new()).await;
}

#[tokio::test]
async fn keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key() {
    contract::keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key(&Sqlite::new()).await;
}
