//! The manager against the emulator: connect, refresh once however many ask, across two
//! managers on one store, invalid_grant, a lost answer, extend, delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{AuthLink, DataScope, DataScopes};
use truelayer_auth_connections::{
    ConnectionError, ConnectionId, ConnectionLock, ConnectionManager, ConnectionRecord,
    ConnectionStatus, ConnectionStore, EncryptionKeys, Extension, SqliteStore, StoreError,
    StoreFuture,
};
use truelayer_auth_emulator::{Emulator, ExtendAction};
use truelayer_auth_testkit::emulator::{self as emu, Choice};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

struct World {
    emulator: Emulator,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl World {
    async fn new() -> Self {
        let emulator = Emulator::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.db");
        World {
            emulator,
            _dir: dir,
            path,
        }
    }

    async fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path, EncryptionKeys::new("k1", [7; 32]).unwrap())
            .await
            .unwrap()
    }

    /// A manager of its own: another process, as far as the protocol can tell (its own
    /// store handle, its own refreshers).
    async fn manager(&self) -> ConnectionManager {
        ConnectionManager::builder(
            emu::environment(&self.emulator),
            emu::credentials(&self.emulator),
            self.store().await,
        )
        .build()
        .unwrap()
    }

    /// A user who consents through the dialog; the connection's id.
    async fn connect(&self, manager: &ConnectionManager, scopes: DataScopes) -> ConnectionId {
        let (code, _) = emu::authorization_code(&self.emulator, scopes).await;
        manager.connect(&code).await.unwrap()
    }

    /// Makes the stored access token expired, as if an hour had passed.
    async fn expire_stored_token(&self, id: &ConnectionId) {
        let store = self.store().await;
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

#[tokio::test]
async fn a_connected_user_s_token_reads_their_accounts_and_the_connection_knows_its_bank() {
    let world = World::new().await;
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
    let world = World::new().await;
    let id = world
        .connect(&world.manager().await, DataScopes::default())
        .await;
    world.expire_stored_token(&id).await;

    let manager = world.manager().await;
    let calls = (0..200).map(|_| {
        let (manager, id) = (manager.clone(), id.clone());
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
    assert!(tokens.iter().all(|t| t.id() == tokens[0].id()));
    assert_eq!(world.accounts(&tokens[0]).await.status(), 200);
    let connection = world.emulator.connection(&emulator_id(&world)).unwrap();
    assert_eq!(connection.refresh_generation, 1);
    assert_eq!(
        manager.get(&id).await.unwrap().status,
        ConnectionStatus::Active
    );
}

fn emulator_id(world: &World) -> String {
    world.emulator.connections()[0].id.clone()
}

#[tokio::test]
async fn a_401_for_a_token_another_manager_superseded_replays_with_the_stored_pair_not_a_second_refresh()
 {
    let world = World::new().await;
    let (a, b) = (world.manager().await, world.manager().await);
    let id = world.connect(&a, DataScopes::default()).await;
    let held_by_b = b.token(&id).await.unwrap();

    world.expire_stored_token(&id).await;
    // `a` refreshes (cold: it reads the expired row and spends the refresh token)...
    let new = world.manager().await.token(&id).await.unwrap();
    assert_eq!(world.emulator.data_stats().refreshes_served, 1);
    // ...so `b`'s token is superseded: TrueLayer answers 401. `b`'s bearer layer reports
    // it, `b` re-reads the row instead of spending the spent token, and replays.
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
    assert_eq!(world.accounts(&replacement).await.status(), 200);
}

#[tokio::test]
async fn a_revoked_connection_is_marked_for_reconnect_and_its_pair_is_kept() {
    let world = World::new().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    let before = world.store().await.get(&id).await.unwrap().unwrap();
    assert!(world.emulator.revoke_connection(&emulator_id(&world)));
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
    let world = World::new().await;
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
    let world = World::new().await;
    let manager = world.manager().await;
    let id = world.connect(&manager, DataScopes::default()).await;
    world.expire_stored_token(&id).await;
    world.emulator.drop_next_refresh_answers(1);

    let error = world.manager().await.token(&id).await.unwrap_err();
    assert!(error.needs_reconnect(), "{error:?}");
    let at_emulator = world.emulator.connection(&emulator_id(&world)).unwrap();
    assert_eq!(at_emulator.refreshes_refused_as_reuse, 1);
}

#[tokio::test]
async fn extend_stores_the_new_pair_or_hands_back_the_user_s_link() {
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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
