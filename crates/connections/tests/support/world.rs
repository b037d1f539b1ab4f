//! The manager, unchanged, on any store: the emulator and a way to open the store, and the
//! manager tests every store runs.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::DataScopes;
use truelayer_auth_connections::{
    ConnectionId, ConnectionManager, ConnectionStatus, ConnectionStore,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator as emu;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

/// Opens a new handle on the world's store (another process's, as far as the store can
/// tell). It owns what the store lives in (a temporary directory, a database's URL).
pub(crate) type Open<S> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = S> + Send>> + Send + Sync>;

pub(crate) struct World<S> {
    pub(crate) emulator: Emulator,
    open: Open<S>,
}

impl<S: ConnectionStore> World<S> {
    pub(crate) async fn new(open: Open<S>) -> Self {
        World {
            emulator: Emulator::start().await.unwrap(),
            open,
        }
    }

    /// A store handle of its own.
    pub(crate) async fn store(&self) -> S {
        (self.open)().await
    }

    /// A manager of its own: another process, as far as the protocol can tell (its own
    /// store handle, its own refreshers).
    pub(crate) async fn manager(&self) -> ConnectionManager {
        ConnectionManager::builder(
            emu::environment(&self.emulator),
            emu::credentials(&self.emulator),
            self.store().await,
        )
        .build()
        .unwrap()
    }

    /// A user who consents through the dialog; the connection's id.
    pub(crate) async fn connect(
        &self,
        manager: &ConnectionManager,
        scopes: DataScopes,
    ) -> ConnectionId {
        let (code, _) = emu::authorization_code(&self.emulator, scopes).await;
        manager.connect(&code).await.unwrap()
    }

    /// Makes the stored access token expired, as if an hour had passed.
    pub(crate) async fn expire_stored_token(&self, id: &ConnectionId) {
        let store = self.store().await;
        let mut row = store.get(id).await.unwrap().unwrap();
        row.access_expires_at = SystemTime::now() - Duration::from_secs(1);
        row.updated_at = SystemTime::now() - Duration::from_secs(3600);
        store.update(&row).await.unwrap();
    }

    /// The emulator's id of its first connection.
    pub(crate) fn emulator_id(&self) -> String {
        self.emulator.connections()[0].id.clone()
    }

    pub(crate) async fn accounts(&self, token: &truelayer_auth::AccessToken) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}/accounts", self.emulator.data_url()))
            .header("authorization", token.authorization_header())
            .send()
            .await
            .unwrap()
    }

    /// Two hundred callers of an expired connection, spread over `replicas` managers of
    /// their own: one refresh, one new token for all, kept.
    pub(crate) async fn many_callers_of_an_expired_connection_cause_one_refresh(
        &self,
        replicas: usize,
    ) {
        let id = self
            .connect(&self.manager().await, DataScopes::default())
            .await;
        self.expire_stored_token(&id).await;

        let mut managers = Vec::new();
        for _ in 0..replicas {
            managers.push(self.manager().await);
        }
        let calls = (0..200).map(|i| {
            let (manager, id) = (managers[i % replicas].clone(), id.clone());
            tokio::spawn(async move { manager.token(&id).await })
        });
        let tokens: Vec<_> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();

        let stats = self.emulator.data_stats();
        assert_eq!(stats.refreshes_served, 1, "{stats:?}");
        assert_eq!(stats.refreshes_refused, 0, "{stats:?}");
        let first = tokens[0].secret().expose_secret().to_owned();
        // One fetch a manager: the callers of one manager share its token.
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(token.id(), tokens[i % replicas].id());
        }
        assert!(tokens.iter().all(|t| t.secret().expose_secret() == first));
        assert_eq!(self.accounts(&tokens[0]).await.status(), 200);
        let connection = self.emulator.connection(&self.emulator_id()).unwrap();
        assert_eq!(connection.refresh_generation, 1);
        for manager in &managers {
            assert_eq!(
                manager.get(&id).await.unwrap().status,
                ConnectionStatus::Active
            );
        }
    }

    /// A 401 for a token another manager superseded: the bearer layer replays with the
    /// stored pair, no second refresh.
    pub(crate) async fn a_superseded_401_replays_with_the_stored_pair(&self) {
        let (a, b) = (self.manager().await, self.manager().await);
        let id = self.connect(&a, DataScopes::default()).await;
        let held_by_b = b.token(&id).await.unwrap();

        self.expire_stored_token(&id).await;
        // Another refreshes (cold: it reads the expired row and spends the refresh token)...
        let new = self.manager().await.token(&id).await.unwrap();
        assert_eq!(self.emulator.data_stats().refreshes_served, 1);
        // ...so `b`'s token is superseded: TrueLayer answers 401. `b`'s bearer layer reports
        // it, `b` re-reads the row instead of spending the spent token, and replays.
        assert_eq!(self.accounts(&held_by_b).await.status(), 401);
        let client = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(b.clone()).replay_policy(CloneBodies))
            .service(ReqwestService::new(reqwest::Client::new()));
        let mut request = http::Request::get(format!("{}/accounts", self.emulator.data_url()))
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
        assert_eq!(self.emulator.data_stats().refreshes_served, 1);
        assert_eq!(self.emulator.data_stats().refreshes_refused, 0);
        assert_eq!(self.accounts(&replacement).await.status(), 200);
    }
}
