//! `PostgresStore` against a real PostgreSQL: the store contract (`support::contract`), and
//! what is PostgreSQL's own: the URL's password, the lock's pooled sessions, a holder's
//! session ended, SIGKILLed and SIGSTOPped, the schema's guard rails on a shared database,
//! replicas migrating at once, the `ConnectionManager` on it, and the advisory-lock
//! measurement.
//!
//! Each test gets a database of its own from `DATABASE_URL` (`cargo xtask ci` starts a
//! server; `cargo xtask postgres` runs one for you) and returns early, saying so, without it.
#![cfg(feature = "postgres")]

use std::process::Command;
use std::time::{Duration, Instant};

use truelayer_auth_connections::{ConnectionStore, EncryptionKeys, PostgresStore, StoreError};
use truelayer_auth_testkit::postgres::database;

mod support;

use support::contract::{self, Harness, HeldPastItsLease, LockHolder};
use support::world::World;
use support::{id, keys};

/// A database of its own on the test server.
struct Pg {
    url: String,
}

/// The test's database, or `None` (said) without `DATABASE_URL`.
async fn pg() -> Option<Pg> {
    database().await.map(|url| Pg { url })
}

impl Harness for Pg {
    type Store = PostgresStore;
    const TABLE: &'static str = "tlauth_connections";

    async fn try_open(&self, keys: EncryptionKeys) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(&self.url, keys).await
    }

    async fn open_with_lease(&self, keys: EncryptionKeys, lease: Duration) -> PostgresStore {
        PostgresStore::builder(&self.url, keys)
            .lease(lease)
            .connect()
            .await
            .unwrap()
    }

    async fn reencrypt_all(store: &PostgresStore) -> Result<usize, StoreError> {
        store.reencrypt_all().await
    }

    async fn execute(&self, sql: &str) {
        raw(&self.url).await.batch_execute(sql).await.unwrap();
    }

    async fn column(&self, sql: &str) -> Vec<String> {
        raw(&self.url)
            .await
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every row of our tables, as PostgreSQL writes it as text.
    async fn at_rest(&self) -> Vec<u8> {
        dump(&self.url).await.into_bytes()
    }

    async fn snapshot(&self) -> Vec<u8> {
        dump(&self.url).await.into_bytes()
    }
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
    let Some(h) = pg().await else { return };
    contract::a_connection_round_trips_and_list_is_by_id(&h).await;
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
    let Some(h) = pg().await else { return };
    contract::neither_token_is_ever_in_clear(&h).await;
}

#[tokio::test]
async fn an_update_from_a_stale_read_is_a_version_conflict() {
    let Some(h) = pg().await else { return };
    contract::an_update_from_a_stale_read_is_a_version_conflict(&h).await;
}

#[tokio::test]
async fn an_update_of_a_missing_row_is_not_found() {
    let Some(h) = pg().await else { return };
    contract::an_update_of_a_missing_row_is_not_found(&h).await;
}

#[tokio::test]
async fn an_insert_of_a_taken_id_is_already_exists_and_changes_nothing() {
    let Some(h) = pg().await else { return };
    contract::an_insert_of_a_taken_id_is_already_exists_and_changes_nothing(&h).await;
}

#[tokio::test]
async fn a_lock_excludes_a_second_holder_on_this_store_and_on_another() {
    let Some(h) = pg().await else { return };
    contract::a_lock_excludes_a_second_holder_on_this_store_and_on_another(&h).await;
}

#[tokio::test]
async fn a_dropped_lock_is_released_in_the_background() {
    let Some(h) = pg().await else { return };
    contract::a_dropped_lock_is_released_in_the_background(&h).await;
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
    let Some(h) = pg().await else { return };
    let HeldPastItsLease { other, held, .. } = contract::a_held_lock_outlives_its_lease(&h).await;
    held.release().await.unwrap();
    other
        .lock(&id("a"), Duration::ZERO)
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
    // Asked before it spends, the holder learns at once that it no longer holds the lock
    // (its last ping is too recent for `is_lost` to know).
    assert!(!held.confirm().await.unwrap());
    assert!(taken.confirm().await.unwrap());
    // And without asking, at its next ping, within a third of its lease.
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
    LockHolder::hold(
        PostgresStore::builder(&url, keys())
            .lease(Duration::from_secs(1))
            .connect()
            .await
            .unwrap(),
    )
    .await;
}

async fn lock_holder(h: &Pg) -> LockHolder {
    LockHolder::start("lock_holder_child", "TLC_LOCK_CHILD_PG", h.url.as_ref()).await
}

#[tokio::test]
async fn a_lock_held_by_a_killed_process_is_released_when_its_socket_closes() {
    let Some(h) = pg().await else { return };
    let lease = Duration::from_secs(1);
    let store = h.open_with_lease(keys(), lease).await;
    // The child keeps its session alive past twice the lease; SIGKILLed, the kernel closes
    // its socket, the server ends the session and the lock.
    let waited = lock_holder(&h).await.kill_and_time(&store).await;
    assert!(waited <= lease, "{waited:?}");
}

#[tokio::test]
async fn a_lock_held_by_a_stopped_process_is_released_within_the_lease() {
    let Some(h) = pg().await else { return };
    let lease = Duration::from_secs(1);
    let store = h.open_with_lease(keys(), lease).await;
    let child = lock_holder(&h).await;

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
    let Some(h) = pg().await else { return };
    contract::a_newer_schema_is_refused_and_left_unchanged(
        &h,
        "INSERT INTO tlauth_schema_migrations (version) VALUES (99)",
    )
    .await;
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
    let Some(h) = pg().await else { return };
    contract::a_store_opened_with_another_key_is_wrong_key_or_unknown_key(&h).await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_or_field_does_not_decrypt() {
    let Some(h) = pg().await else { return };
    contract::a_ciphertext_moved_to_another_row_or_field_does_not_decrypt(&h).await;
}

#[tokio::test]
async fn keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key() {
    let Some(h) = pg().await else { return };
    contract::keys_rotate_old_rows_read_and_are_rewritten_with_the_new_key(&h).await;
}

/// The manager, unchanged, on the test's database.
async fn world(h: Pg) -> World<PostgresStore> {
    World::new(Box::new(move || {
        let url = h.url.clone();
        Box::pin(async move {
            PostgresStore::builder(&url, keys())
                .pool_size(4)
                .lock_pool_size(2)
                .connect()
                .await
                .unwrap()
        })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_on_postgres_two_hundred_callers_across_two_replicas_cause_one_refresh() {
    let Some(h) = pg().await else { return };
    world(h)
        .await
        .many_callers_of_an_expired_connection_cause_one_refresh(2)
        .await;
}

#[tokio::test]
async fn the_manager_on_postgres_replays_a_superseded_401_with_the_stored_pair() {
    let Some(h) = pg().await else { return };
    world(h)
        .await
        .a_superseded_401_replays_with_the_stored_pair()
        .await;
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

#[tokio::test]
async fn sslmode_verify_full_is_read_as_tls_required_not_a_bad_url() {
    let Some(pg) = pg().await else { return };
    let with = |mode: &str| {
        let mut url = url::Url::parse(&pg.url).unwrap();
        url.query_pairs_mut().append_pair("sslmode", mode);
        url.to_string()
    };
    // tokio-postgres alone refuses the URL; the store reads it as "TLS, verified": the
    // test server offers no TLS, so the connection fails at TLS, not at parsing.
    for mode in ["verify-full", "verify-ca"] {
        let error = PostgresStore::connect(&with(mode), keys())
            .await
            .unwrap_err();
        let chain = format!("{error:?}");
        assert!(!chain.contains("could not be parsed"), "{mode}: {chain}");
    }
    // Prefer on loopback stays prefer: plain, as the server offers no TLS.
    PostgresStore::connect(&with("prefer"), keys())
        .await
        .unwrap();
    assert!(
        PostgresStore::connect(&with("bogus"), keys())
            .await
            .is_err()
    );
}
