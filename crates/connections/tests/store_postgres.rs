//! `PostgresStore` against a real PostgreSQL: rows, encryption at rest, fenced writes, the
//! schema's guard rails, the advisory lock (a second process holding it is SIGKILLed, and
//! SIGSTOPped), and the `ConnectionManager` on it.
//!
//! Each test gets a database of its own from `DATABASE_URL` (`cargo xtask ci` starts a
//! server; `cargo xtask postgres` runs one for you) and returns early, saying so, without it.
#![cfg(feature = "postgres")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{AuthLink, DataScopes};
use truelayer_auth_connections::{
    ConnectionId, ConnectionManager, ConnectionRecord, ConnectionStatus, ConnectionStore,
    EncryptionKeys, PostgresStore, StoreError,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::{self as emu, Choice};
use truelayer_auth_testkit::postgres::database;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

const ACCESS: &str = "ACCESS-MARKER-7f3a9c";
const REFRESH: &str = "REFRESH-MARKER-91bd2e";

fn keys() -> EncryptionKeys {
    EncryptionKeys::new("k1", [1; 32]).unwrap()
}

fn id(s: &str) -> ConnectionId {
    s.parse().unwrap()
}

/// A time to the millisecond (PostgreSQL keeps microseconds).
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

/// A client of its own on the database, as an operator, an attacker or a bug would use.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Everything in the database's tables of ours, as text, in a stable order.
async fn dump(url: &str) -> String {
    let client = raw(url).await;
    let mut out = String::new();
    for table in ["tlauth_schema_migrations", "tlauth_connections"] {
        let exists: bool = client
            .query_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[])
            .await
            .unwrap()
            .get(0);
        if !exists {
            continue;
        }
        for row in client
            .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
            .await
            .unwrap()
        {
            out.push_str(row.get(0));
            out.push('\n');
        }
    }
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.push_str(&tables.join(","));
    out
}

#[tokio::test]
async fn a_connection_round_trips_and_list_is_by_id() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
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

    // A second store on the database sees the same rows.
    let again = PostgresStore::connect(&url, keys()).await.unwrap();
    assert_same(&again.get(&id("b")).await.unwrap().unwrap(), &next);
}

#[tokio::test]
async fn debug_shows_the_host_and_database_never_the_password() {
    let Some(url) = database().await else { return };
    let mut with_password = url::Url::parse(&url).unwrap();
    // The test server trusts loopback, so any password connects.
    with_password
        .set_password(Some("hunter2-PASSWORD"))
        .unwrap();
    let store = PostgresStore::builder(with_password.as_str(), keys())
        .pool_size(2)
        .connect()
        .await
        .unwrap();
    let debug = format!("{store:?}");
    let db = with_password.path().trim_start_matches('/');
    let host = format!(
        "{}:{}",
        with_password.host_str().unwrap(),
        with_password.port().unwrap_or(5432)
    );
    assert!(debug.contains(&format!("{host}/{db}")), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("postgres@"), "{debug}");
    let builder = PostgresStore::builder(with_password.as_str(), keys());
    assert!(!format!("{builder:?}").contains("hunter2"));
}

#[tokio::test]
async fn neither_token_is_ever_in_the_table_in_clear() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
    for name in ["a", "b", "c"] {
        store.insert(&record(name)).await.unwrap();
    }
    let mut r = store.get(&id("b")).await.unwrap().unwrap();
    r.access_token = SecretString::from(format!("{ACCESS}-rotated"));
    r.refresh_token = Some(SecretString::from(format!("{REFRESH}-rotated")));
    store.update(&r).await.unwrap();

    let client = raw(&url).await;
    let rows = client
        .query(
            "SELECT access_token_enc, refresh_token_enc, t::text FROM tlauth_connections t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let (access, refresh, whole): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        assert!(access.starts_with("tlc1.k1."), "{access}");
        assert!(refresh.starts_with("tlc1.k1."), "{refresh}");
        // The provider is in clear; the markers prove the search would see a token.
        assert!(whole.contains("ob-barclays"));
        for marker in [ACCESS, REFRESH] {
            assert!(!whole.contains(marker), "{marker} is in the table in clear");
        }
    }
}

#[tokio::test]
async fn an_update_from_a_stale_read_is_a_version_conflict() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
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
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
    let err = store.update(&record("ghost")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(i) if i.as_str() == "ghost"),
        "{err:?}"
    );
    assert!(store.get(&id("ghost")).await.unwrap().is_none());
}

#[tokio::test]
async fn an_insert_of_a_taken_id_is_already_exists_and_changes_nothing() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
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
async fn a_lock_excludes_a_second_holder_on_this_store_and_on_another() {
    let Some(url) = database().await else { return };
    let one = PostgresStore::connect(&url, keys()).await.unwrap();
    let two = PostgresStore::connect(&url, keys()).await.unwrap();
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

    // A waiter gets it as soon as it is released: it waits in the server, not by polling.
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

#[tokio::test]
async fn a_dropped_lock_is_released_and_never_handed_back_to_the_pool_held() {
    let Some(url) = database().await else { return };
    // One database connection for locks: a leaked one would block every later lock.
    let store = PostgresStore::builder(&url, keys())
        .lock_pool_size(1)
        .connect()
        .await
        .unwrap();
    let other = PostgresStore::connect(&url, keys()).await.unwrap();
    for _ in 0..5 {
        let held = store.lock(&id("a"), Duration::from_secs(2)).await.unwrap();
        drop(held);
    }
    let again = other.lock(&id("a"), Duration::from_secs(2)).await.unwrap();
    again.release().await.unwrap();
    let again = store.lock(&id("b"), Duration::from_secs(2)).await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_wait_given_up_half_way_leaves_nothing_held() {
    let Some(url) = database().await else { return };
    let one = PostgresStore::connect(&url, keys()).await.unwrap();
    let two = PostgresStore::builder(&url, keys())
        .lock_pool_size(1)
        .connect()
        .await
        .unwrap();
    let held = one.lock(&id("a"), Duration::ZERO).await.unwrap();
    // The caller gives up while its wait is in the server.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        two.lock(&id("a"), Duration::from_millis(600)),
    )
    .await;
    assert!(gave_up.is_err());
    held.release().await.unwrap();
    // The abandoned wait may still take the lock in the server, but its session is closed
    // (never pooled), so it is let go at once or when its wait ends.
    let started = Instant::now();
    let lock = one.lock(&id("a"), Duration::from_secs(3)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1500));
    lock.release().await.unwrap();
    let lock = two.lock(&id("c"), Duration::from_secs(3)).await.unwrap();
    lock.release().await.unwrap();
}

#[tokio::test]
async fn a_held_lock_outlives_its_lease_while_its_holder_lives() {
    let Some(url) = database().await else { return };
    let lease = Duration::from_millis(600);
    let one = PostgresStore::builder(&url, keys())
        .lease(lease)
        .connect()
        .await
        .unwrap();
    let two = PostgresStore::connect(&url, keys()).await.unwrap();
    let held = one.lock(&id("a"), Duration::ZERO).await.unwrap();
    let err = two.lock(&id("a"), lease * 3).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");
    assert!(!held.is_lost());
    assert_eq!(one.lease(), lease);
    held.release().await.unwrap();
    two.lock(&id("a"), Duration::ZERO)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lock_whose_session_is_ended_is_lost_and_taken_over() {
    let Some(url) = database().await else { return };
    let one = PostgresStore::builder(&url, keys())
        .lease(Duration::from_millis(600))
        .connect()
        .await
        .unwrap();
    let two = PostgresStore::connect(&url, keys()).await.unwrap();
    let held = one.lock(&id("a"), Duration::ZERO).await.unwrap();
    // An operator (or a failover) ends the holder's session.
    raw(&url)
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'idle in transaction'",
            &[],
        )
        .await
        .unwrap();
    let taken = two.lock(&id("a"), Duration::from_secs(2)).await.unwrap();
    // The holder finds out at its next ping, within a third of its lease.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(held.is_lost());
    held.release().await.unwrap();
    assert!(!taken.is_lost());
    taken.release().await.unwrap();
}

/// The child half of the tests below: takes the lock and waits to be killed or stopped.
#[tokio::test]
async fn lock_holder_child() {
    let Ok(url) = std::env::var("TLC_LOCK_CHILD_PG") else {
        return;
    };
    let store = PostgresStore::builder(&url, keys())
        .lease(Duration::from_secs(1))
        .connect()
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

async fn lock_holder(url: &str) -> KillOnDrop {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lock_holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TLC_LOCK_CHILD_PG", url)
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

#[tokio::test]
async fn a_lock_held_by_a_killed_process_is_released_when_its_socket_closes() {
    let Some(url) = database().await else { return };
    let lease = Duration::from_secs(1);
    let store = PostgresStore::builder(&url, keys())
        .lease(lease)
        .connect()
        .await
        .unwrap();
    let mut child = lock_holder(&url).await;

    // The child keeps its session alive: it still holds the lock after twice the lease.
    let err = store.lock(&id("a"), lease * 2).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err:?}");

    // SIGKILL: the kernel closes its socket, the server ends the session and the lock.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    let lock = store.lock(&id("a"), lease * 3).await.unwrap();
    let waited = killed.elapsed();
    println!("lock taken {waited:?} after the holder was SIGKILLed (lease {lease:?})");
    assert!(waited <= lease, "{waited:?}");
    lock.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_held_by_a_stopped_process_is_released_within_the_lease() {
    let Some(url) = database().await else { return };
    let lease = Duration::from_secs(1);
    let store = PostgresStore::builder(&url, keys())
        .lease(lease)
        .connect()
        .await
        .unwrap();
    let child = lock_holder(&url).await;

    // SIGSTOP: alive, socket open, silent (a hung process, a long GC pause, a partition).
    let stopped = Command::new("kill")
        .args(["-STOP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let since = Instant::now();
    let lock = store.lock(&id("a"), lease * 3).await.unwrap();
    let waited = since.elapsed();
    println!("lock taken {waited:?} after the holder was SIGSTOPped (lease {lease:?})");
    // It last pinged up to a third of the lease before the stop.
    assert!(waited >= lease / 2, "{waited:?}");
    // Alone it is 0.99-1.0 s; a busy machine (the whole workspace's tests) adds some.
    assert!(waited <= lease + Duration::from_millis(600), "{waited:?}");
    lock.release().await.unwrap();
    let _ = Command::new("kill")
        .args(["-CONT", &child.0.id().to_string()])
        .status();
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_and_left_unchanged() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();
    drop(store);
    raw(&url)
        .await
        .batch_execute("INSERT INTO tlauth_schema_migrations (version) VALUES (99)")
        .await
        .unwrap();
    let before = dump(&url).await;

    let err = PostgresStore::connect(&url, keys()).await.unwrap_err();
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
    assert_eq!(dump(&url).await, before, "the database changed");
}

#[tokio::test]
async fn a_table_of_another_application_is_corrupt_and_left_unchanged() {
    let Some(url) = database().await else { return };
    raw(&url)
        .await
        .batch_execute(
            "CREATE TABLE tlauth_connections (note text); \
             INSERT INTO tlauth_connections VALUES ('x');",
        )
        .await
        .unwrap();
    let before = dump(&url).await;
    let err = PostgresStore::connect(&url, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(dump(&url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once() {
    let Some(url) = database().await else { return };
    let starts = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStore::builder(&url, keys())
                .pool_size(1)
                .lock_pool_size(1)
                .connect()
                .await
        })
    });
    for started in futures_util::future::join_all(starts).await {
        started.unwrap().unwrap();
    }
    let versions: Vec<i32> = raw(&url)
        .await
        .query("SELECT version FROM tlauth_schema_migrations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1]);
}

#[tokio::test]
async fn a_store_opened_with_another_key_is_wrong_key_or_unknown_key() {
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
    store.insert(&record("a")).await.unwrap();

    let same_id = PostgresStore::connect(&url, EncryptionKeys::new("k1", [9; 32]).unwrap())
        .await
        .unwrap();
    let err = same_id.get(&id("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
    let err = same_id.list().await.unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");

    let other_id = PostgresStore::connect(&url, EncryptionKeys::new("k9", [1; 32]).unwrap())
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
    let Some(url) = database().await else { return };
    let store = PostgresStore::connect(&url, keys()).await.unwrap();
    for name in ["a", "b", "c"] {
        store.insert(&record(name)).await.unwrap();
    }
    raw(&url)
        .await
        .batch_execute(
            "UPDATE tlauth_connections SET access_token_enc = \
             (SELECT access_token_enc FROM tlauth_connections WHERE id = 'a') WHERE id = 'b';
             UPDATE tlauth_connections SET access_token_enc = refresh_token_enc WHERE id = 'c';",
        )
        .await
        .unwrap();
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
    let Some(url) = database().await else { return };
    let old = PostgresStore::connect(&url, keys()).await.unwrap();
    old.insert(&record("a")).await.unwrap();
    old.insert(&record("b")).await.unwrap();

    let rotated_keys = || {
        EncryptionKeys::new("k2", [2; 32])
            .unwrap()
            .with_old_key("k1", [1; 32])
            .unwrap()
    };
    let rotated = PostgresStore::connect(&url, rotated_keys()).await.unwrap();
    let a = rotated.get(&id("a")).await.unwrap().unwrap();
    assert_same(&a, &record("a"));
    rotated.update(&a).await.unwrap();
    let only_new = PostgresStore::connect(&url, EncryptionKeys::new("k2", [2; 32]).unwrap())
        .await
        .unwrap();
    assert!(only_new.get(&id("a")).await.unwrap().is_some());
    let err = only_new.get(&id("b")).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err:?}");

    assert_eq!(rotated.reencrypt_all().await.unwrap(), 1);
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 0);
    let b = only_new.get(&id("b")).await.unwrap().unwrap();
    assert_same(&b, &record("b"));
    assert_eq!(only_new.list().await.unwrap().len(), 2);
}

/// The manager, unchanged, on any store: the emulator and a way to open the store.
struct World<F> {
    emulator: Emulator,
    open: F,
}

impl<S, F, Fut> World<F>
where
    S: ConnectionStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    async fn new(open: F) -> Self {
        World {
            emulator: Emulator::start().await.unwrap(),
            open,
        }
    }

    /// A manager of its own: another replica, as far as the protocol can tell.
    async fn manager(&self) -> ConnectionManager {
        ConnectionManager::builder(
            emu::environment(&self.emulator),
            emu::credentials(&self.emulator),
            (self.open)().await,
        )
        .build()
        .unwrap()
    }

    async fn connect(&self, manager: &ConnectionManager) -> ConnectionId {
        let link = AuthLink::builder(
            emu::environment(&self.emulator),
            self.emulator.client_id(),
            "http://127.0.0.1:9/callback",
        )
        .scopes(DataScopes::default())
        .providers(["mock", "ob-mock-2"])
        .build()
        .unwrap();
        let callback = emu::consent(link.url(), Choice::Approve("mock")).await;
        let code = link.pending().callback(&callback).unwrap();
        manager.connect(&code).await.unwrap()
    }

    async fn expire_stored_token(&self, id: &ConnectionId) {
        let store = (self.open)().await;
        let mut row = store.get(id).await.unwrap().unwrap();
        row.access_expires_at = SystemTime::now() - Duration::from_secs(1);
        row.updated_at = SystemTime::now() - Duration::from_secs(3600);
        store.update(&row).await.unwrap();
    }

    async fn accounts(&self, token: &truelayer_auth::AccessToken) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}/accounts", self.emulator.data_url()))
            .header("authorization", token.authorization_header())
            .send()
            .await
            .unwrap()
    }
}

fn pg_opener(
    url: String,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = PostgresStore> + Send>> {
    move || {
        let url = url.clone();
        Box::pin(async move {
            PostgresStore::builder(&url, keys())
                .pool_size(4)
                .lock_pool_size(2)
                .connect()
                .await
                .unwrap()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_on_postgres_two_hundred_callers_across_two_replicas_cause_one_refresh() {
    let Some(url) = database().await else { return };
    let world = World::new(pg_opener(url)).await;
    let id = world.connect(&world.manager().await).await;
    world.expire_stored_token(&id).await;

    let (a, b) = (world.manager().await, world.manager().await);
    let calls = (0..200).map(|i| {
        let manager = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tokio::spawn(async move { manager.token(&id).await })
    });
    let tokens: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();

    let stats = world.emulator.data_stats();
    assert_eq!(stats.refreshes_served, 1, "{stats:?}");
    assert_eq!(stats.refreshes_refused, 0, "{stats:?}");
    let first = tokens[0].secret().expose_secret().to_owned();
    assert!(tokens.iter().all(|t| t.secret().expose_secret() == first));
    assert_eq!(world.accounts(&tokens[0]).await.status(), 200);
    let at_emulator = &world.emulator.connections()[0];
    assert_eq!(at_emulator.refresh_generation, 1);
    assert_eq!(a.get(&id).await.unwrap().status, ConnectionStatus::Active);
}

#[tokio::test]
async fn the_manager_on_postgres_replays_a_superseded_401_with_the_stored_pair() {
    let Some(url) = database().await else { return };
    let world = World::new(pg_opener(url)).await;
    let (a, b) = (world.manager().await, world.manager().await);
    let id = world.connect(&a).await;
    let held_by_b = b.token(&id).await.unwrap();

    world.expire_stored_token(&id).await;
    let new = world.manager().await.token(&id).await.unwrap();
    assert_eq!(world.emulator.data_stats().refreshes_served, 1);
    assert_eq!(world.accounts(&held_by_b).await.status(), 401);
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(b.clone()).replay_policy(CloneBodies))
        .service(ReqwestService::new(reqwest::Client::new()));
    let mut request = http::Request::get(format!("{}/accounts", world.emulator.data_url()))
        .body(bytes::Bytes::new())
        .unwrap();
    request.extensions_mut().insert(id.clone());
    let answer = client.oneshot(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    let replacement = b.token(&id).await.unwrap();
    assert_eq!(
        replacement.secret().expose_secret(),
        new.secret().expose_secret()
    );
    assert_eq!(world.emulator.data_stats().refreshes_served, 1);
    assert_eq!(world.emulator.data_stats().refreshes_refused, 0);
}

/// The measurement behind the lock's design (docs/operations.md): a transaction-scoped
/// advisory lock against a row lock (`SELECT ... FOR UPDATE` on a lock row), each taken and
/// released in a transaction on a connection of its own: uncontended round trips, and how
/// soon a waiter has it after release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_kinds_measured_advisory_against_row_lock() {
    let Some(url) = database().await else { return };
    let setup = raw(&url).await;
    setup
        .batch_execute(
            "CREATE TABLE lock_rows (id text PRIMARY KEY); \
             INSERT INTO lock_rows SELECT 'c' || g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let kinds = [
        (
            "advisory",
            "BEGIN; SET LOCAL lock_timeout = '5s'; SELECT pg_advisory_xact_lock(hashtextextended('c7', 0))",
        ),
        (
            "row lock",
            "BEGIN; SET LOCAL lock_timeout = '5s'; SELECT 1 FROM lock_rows WHERE id = 'c7' FOR UPDATE",
        ),
    ];
    const ROUNDS: u32 = 300;
    for (name, take) in kinds {
        let (holder, waiter) = (raw(&url).await, raw(&url).await);
        // Warm up, then uncontended: take and release.
        for _ in 0..20 {
            holder.batch_execute(take).await.unwrap();
            holder.batch_execute("ROLLBACK").await.unwrap();
        }
        let wal_before = wal(&setup).await;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            holder.batch_execute(take).await.unwrap();
            holder.batch_execute("ROLLBACK").await.unwrap();
        }
        let cycle = started.elapsed() / ROUNDS;
        let wal_per_cycle = (wal(&setup).await - wal_before) / i64::from(ROUNDS);
        // Hand-off: the waiter blocks in the server; time from release to its lock.
        let mut handoffs = Vec::new();
        for _ in 0..30 {
            holder.batch_execute(take).await.unwrap();
            let waiting = {
                let take = take.to_owned();
                let waiter = &waiter;
                async move {
                    waiter.batch_execute(&take).await.unwrap();
                    Instant::now()
                }
            };
            let release = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let at = Instant::now();
                holder.batch_execute("ROLLBACK").await.unwrap();
                at
            };
            let (got, released) = tokio::join!(waiting, release);
            handoffs.push(got.saturating_duration_since(released));
            waiter.batch_execute("ROLLBACK").await.unwrap();
        }
        handoffs.sort();
        println!(
            "{name}: take+release {cycle:?} uncontended; hand-off median {:?}, max {:?}; {wal_per_cycle} WAL bytes a cycle",
            handoffs[handoffs.len() / 2],
            handoffs[handoffs.len() - 1]
        );
    }
}

/// The server's WAL position, in bytes.
async fn wal(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .unwrap()
        .get(0)
}
