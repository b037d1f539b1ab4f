//! The manager against the emulator: connect, refresh once however many ask, across two
//! managers on one store, invalid_grant, a lost answer, extend, delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use truelayer_auth::{AuthLink, DataScope, DataScopes};
use truelayer_auth_connections::{
    ConnectionError, ConnectionId, ConnectionLock, ConnectionManager, ConnectionRecord,
    ConnectionStatus, ConnectionStore, EncryptionKeys, Extension, SqliteStore, StoreError,
    StoreFuture,
};
use truelayer_auth_emulator::ExtendAction;
use truelayer_auth_testkit::emulator::{self as emu, Choice};

mod support;

use support::world::World;

/// The manager on a SQLite file of its own, in a directory that lives as long as the world.
async fn world() -> World<SqliteStore> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    World::new(Box::new(move || {
        let path = dir.path().join("connections.db");
        Box::pin(async move {
            SqliteStore::open(path, EncryptionKeys::new("k1", [7; 32]).unwrap())
                .await
                .unwrap()
        })
    }))
    .await
}

#[tokio::test]
async fn a_connected_user_s_token_reads_their_accounts_and_the_connection_knows_its_bank() {
    let world = world().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;

    let token = manager.token(&id).await.unwrap();
    let answer = world.accounts(&token).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(!body["results"].as_array().unwrap().is_empty());

    let connection = manager.get(&id).await.unwrap();
    let at_emulator = &world.emulator.connections()[0];
    assert_eq!(connection.provider_id.as_deref(), Some("mock"));
    assert_eq!(
        connection.credentials_id.as_deref(),
        Some(at_emulator.credentials_id.as_str())
    );
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert!(connection.refreshable);
    assert_eq!(manager.list().await.unwrap(), vec![connection]);
    assert_eq!(world.emulator.data_stats().refreshes_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_of_an_expired_connection_cause_one_refresh_and_keep_it() {
    world()
        .await
        .many_callers_of_an_expired_connection_cause_one_refresh(1)
        .await;
}

#[tokio::test]
async fn a_401_for_a_token_another_manager_superseded_replays_with_the_stored_pair_not_a_second_refresh()
 {
    world()
        .await
        .a_superseded_401_replays_with_the_stored_pair()
        .await;
}

#[tokio::test]
async fn a_revoked_connection_is_marked_for_reconnect_and_its_pair_is_kept() {
    let world = world().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    let before = world.store().await.get(&id).await.unwrap().unwrap();
    assert!(world.emulator.revoke_connection(&world.emulator_id()));
    world.expire_stored_token(&id).await;

    let error = world.manager().await.token(&id).await.unwrap_err();
    assert!(
        matches!(&error, ConnectionError::NeedsReconnect(i) if *i == id),
        "{error:?}"
    );
    assert!(error.needs_reconnect());
    let after = world.store().await.get(&id).await.unwrap().unwrap();
    assert_eq!(after.status, ConnectionStatus::NeedsReconnect);
    assert_eq!(
        after.refresh_token.unwrap().expose_secret(),
        before.refresh_token.unwrap().expose_secret()
    );
    // Asking again does not go back to TrueLayer.
    let refused = world.emulator.data_stats().refreshes_refused;
    assert!(manager.token(&id).await.unwrap_err().needs_reconnect());
    assert_eq!(world.emulator.data_stats().refreshes_refused, refused);
}

#[tokio::test]
async fn without_offline_access_an_expired_connection_says_so_and_asks_nothing() {
    let world = world().await;
    let manager = world.manager().await;
    let scopes = DataScopes::new([DataScope::Accounts]).unwrap();
    let id = world.connect(&manager, scopes).await;
    assert!(!manager.get(&id).await.unwrap().refreshable);
    world.expire_stored_token(&id).await;

    let error = world.manager().await.token(&id).await.unwrap_err();
    assert!(
        matches!(error, ConnectionError::NoRefreshToken(_)),
        "{error:?}"
    );
    assert_eq!(world.emulator.data_stats().refreshes_served, 0);
}

/// The one window no client can close: TrueLayer rotated, and the answer never arrived.
/// The next refresh presents the spent token; with reuse detection the connection is lost.
#[tokio::test]
async fn a_refresh_answer_lost_after_rotation_loses_the_connection_as_documented() {
    let world = world().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    world.expire_stored_token(&id).await;
    world.emulator.drop_next_refresh_answers(1);

    let error = world.manager().await.token(&id).await.unwrap_err();
    assert!(error.needs_reconnect(), "{error:?}");
    let at_emulator = world.emulator.connection(&world.emulator_id()).unwrap();
    assert_eq!(at_emulator.refreshes_refused_as_reuse, 1);
}

#[tokio::test]
async fn extend_stores_the_new_pair_or_hands_back_the_user_s_link() {
    let world = world().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    let old = manager.token(&id).await.unwrap();
    let before = manager.get(&id).await.unwrap();

    assert_eq!(manager.extend(&id).await.unwrap(), Extension::Extended);
    let after = manager.get(&id).await.unwrap();
    assert!(after.version > before.version);
    assert!(after.consented_at >= before.consented_at);
    let new = manager.token(&id).await.unwrap();
    assert_ne!(new.secret().expose_secret(), old.secret().expose_secret());
    assert_eq!(world.accounts(&new).await.status(), 200);

    world
        .emulator
        .set_extend_action(ExtendAction::AuthenticationNeeded);
    match manager.extend(&id).await.unwrap() {
        Extension::AuthenticationNeeded { user_input_link } => {
            assert!(user_input_link.starts_with(&world.emulator.url()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(manager.get(&id).await.unwrap().version, after.version);
}

#[tokio::test]
async fn delete_revokes_at_truelayer_then_marks_the_connection() {
    let world = world().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    let token = manager.token(&id).await.unwrap();

    manager.delete(&id).await.unwrap();
    assert_eq!(
        manager.get(&id).await.unwrap().status,
        ConnectionStatus::Deleted
    );
    assert_eq!(world.accounts(&token).await.status(), 401);
    assert!(matches!(
        manager.token(&id).await.unwrap_err(),
        ConnectionError::Deleted(_)
    ));
    // Deleting again is a no-op, not an error.
    manager.delete(&id).await.unwrap();
}

#[tokio::test]
async fn an_unknown_connection_is_not_found() {
    let world = world().await;
    let manager = world.manager().await;
    let id: ConnectionId = "nobody".parse().unwrap();
    assert!(matches!(
        manager.token(&id).await.unwrap_err(),
        ConnectionError::NotFound(_)
    ));
    assert!(matches!(
        manager.get(&id).await.unwrap_err(),
        ConnectionError::NotFound(_)
    ));
}

#[tokio::test]
async fn a_used_code_is_refused_and_stores_nothing() {
    let world = world().await;
    let manager = world.manager().await;
    let link = AuthLink::builder(
        emu::environment(&world.emulator),
        world.emulator.client_id(),
        "http://127.0.0.1:9/callback",
    )
    .build()
    .unwrap();
    let callback = emu::consent(link.url(), Choice::Approve("mock")).await;
    let code = link.pending().callback(&callback).unwrap();
    manager.connect(&code).await.unwrap();
    let error = manager.connect(&code).await.unwrap_err();
    assert!(
        matches!(&error, ConnectionError::Token { source, .. } if source.is_invalid_grant()),
        "{error:?}"
    );
    assert_eq!(manager.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_read_that_finds_a_usable_token_does_not_wait_for_a_lock_held_elsewhere() {
    let world = world().await;
    let id = world
        .connect(&world.manager().await, DataScopes::default())
        .await;
    // Another process holds the connection's lock (a refresh in progress, or a stuck one).
    let elsewhere = world.store().await;
    let held = elsewhere.lock(&id, Duration::from_secs(1)).await.unwrap();

    let cold = ConnectionManager::builder(
        emu::environment(&world.emulator),
        emu::credentials(&world.emulator),
        world.store().await,
    )
    .lock_wait(Duration::from_millis(200))
    .build()
    .unwrap();
    let token = cold.token(&id).await.unwrap();
    assert_eq!(world.accounts(&token).await.status(), 200);
    held.release().await.unwrap();
}

/// A store whose writes fail while `failing` is above zero (each failure counts down).
struct FlakyStore {
    inner: SqliteStore,
    failing: Arc<AtomicU32>,
}

impl ConnectionStore for FlakyStore {
    fn insert(&self, record: &ConnectionRecord) -> StoreFuture<'_, ()> {
        self.inner.insert(record)
    }
    fn get(&self, id: &ConnectionId) -> StoreFuture<'_, Option<ConnectionRecord>> {
        self.inner.get(id)
    }
    fn list(&self) -> StoreFuture<'_, Vec<ConnectionRecord>> {
        self.inner.list()
    }
    fn update(&self, record: &ConnectionRecord) -> StoreFuture<'_, u64> {
        let fail = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Box::pin(async {
                Err(StoreError::Backend(Box::new(std::io::Error::other(
                    "disk full",
                ))))
            });
        }
        self.inner.update(record)
    }
    fn lock(&self, id: &ConnectionId, wait: Duration) -> StoreFuture<'_, Box<dyn ConnectionLock>> {
        self.inner.lock(id, wait)
    }
    fn lease(&self) -> Duration {
        self.inner.lease()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_pair_the_store_will_not_take_is_kept_locked_and_written_when_it_can_be() {
    let world = world().await;
    let id = world
        .connect(&world.manager().await, DataScopes::default())
        .await;
    world.expire_stored_token(&id).await;

    // This process's store fails its next 5 writes (about 3 s of retries).
    let failing = Arc::new(AtomicU32::new(5));
    let flaky = ConnectionManager::builder(
        emu::environment(&world.emulator),
        emu::credentials(&world.emulator),
        FlakyStore {
            inner: world.store().await,
            failing: failing.clone(),
        },
    )
    .build()
    .unwrap();
    let first = {
        let (flaky, id) = (flaky.clone(), id.clone());
        tokio::spawn(async move { flaky.token(&id).await })
    };
    // Wait until TrueLayer has rotated: the new pair exists only in that process's memory.
    while world.emulator.data_stats().refreshes_served == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another process wants the connection meanwhile: it must not spend the old refresh
    // token (the row still holds it). Its lock waits time out and its engine retries until
    // the pair is written, then it reads the new pair.
    let other = ConnectionManager::builder(
        emu::environment(&world.emulator),
        emu::credentials(&world.emulator),
        world.store().await,
    )
    .lock_wait(Duration::from_millis(300))
    .build()
    .unwrap();
    let seen_by_other = other.token(&id).await.unwrap();

    let token = first.await.unwrap().unwrap();
    assert_eq!(
        seen_by_other.secret().expose_secret(),
        token.secret().expose_secret()
    );
    assert_eq!(failing.load(Ordering::SeqCst), 0);
    let stored = world.store().await.get(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.access_token.expose_secret(),
        token.secret().expose_secret()
    );
    let stats = world.emulator.data_stats();
    assert_eq!((stats.refreshes_served, stats.refreshes_refused), (1, 0));
    assert_eq!(world.accounts(&token).await.status(), 200);
}

#[tokio::test]
async fn a_connection_of_another_client_is_not_refreshed_nor_marked() {
    let world = world().await;
    let id = world
        .connect(&world.manager().await, DataScopes::default())
        .await;
    world.expire_stored_token(&id).await;
    world
        .emulator
        .add_client("other-client", "other-secret", ["payments"]);
    let other = ConnectionManager::builder(
        emu::environment(&world.emulator),
        truelayer_auth::ClientCredentials::new("other-client", "other-secret".into()).unwrap(),
        world.store().await,
    )
    .build()
    .unwrap();

    let error = other.token(&id).await.unwrap_err();
    assert!(
        matches!(&error, ConnectionError::OtherClient { stored, .. } if stored == world.emulator.client_id()),
        "{error:?}"
    );
    assert_eq!(
        other.get(&id).await.unwrap().status,
        ConnectionStatus::Active
    );
    assert_eq!(world.emulator.data_stats().refreshes_served, 0);
    assert_eq!(world.emulator.data_stats().refreshes_refused, 0);
}
