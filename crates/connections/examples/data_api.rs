//! An axum app that connects its users' bank accounts through TrueLayer's Data API and lists
//! their accounts through the bearer layer.
//!
//! - `GET /connect?user=alice` sends the browser to TrueLayer's auth dialog;
//! - `GET /callback` checks the dialog's answer and stores the connection (as `alice`);
//! - `GET /users/alice/accounts` calls `/data/v1/accounts` with alice's token, refreshed
//!   when needed, once across every process that shares the store.
//!
//! Run: `cargo run -p truelayer-auth-connections --example data_api`. It starts the emulator
//! as TrueLayer and plays the user in the dialog itself, so it runs offline; in production
//! the environment is `Environment::Sandbox` or `Production`, the credentials come from
//! Secrets Manager, and the redirect URI is the one allow-listed in TrueLayer Console.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{AuthLink, Environment, PendingAuthorization};
use truelayer_auth_connections::{ConnectionId, ConnectionManager, EncryptionKeys, SqliteStore};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::{Choice, consent, credentials};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

type DataApi = BoxCloneSyncService<
    http::Request<bytes::Bytes>,
    http::Response<reqwest::Body>,
    Box<dyn std::error::Error + Send + Sync>,
>;

#[derive(Clone)]
struct App {
    environment: Environment,
    client_id: String,
    redirect_uri: String,
    connections: ConnectionManager,
    /// Links handed out and not yet answered, by their `state`, with the user they are for.
    pending: Arc<Mutex<HashMap<String, (String, PendingAuthorization)>>>,
    api: DataApi,
}

#[derive(serde::Deserialize)]
struct ConnectQuery {
    user: String,
}

async fn connect(State(app): State<App>, Query(q): Query<ConnectQuery>) -> Response {
    let link = match AuthLink::builder(
        app.environment.clone(),
        app.client_id.clone(),
        app.redirect_uri.clone(),
    )
    .providers(["mock", "ob-mock-2"])
    .build()
    {
        Ok(link) => link,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let (url, pending) = link.into_parts();
    app.pending
        .lock()
        .unwrap()
        .insert(pending.state().to_owned(), (q.user, pending));
    Redirect::to(url.as_str()).into_response()
}

async fn callback(State(app): State<App>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    // Find the link by the callback's state, then let `callback` check it in constant time.
    let state = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some((user, pending)) = app.pending.lock().unwrap().remove(&state) else {
        return (StatusCode::BAD_REQUEST, "unknown or used link").into_response();
    };
    let code = match pending.callback(&query) {
        Ok(code) => code,
        Err(e) if e.is_access_denied() => {
            return (StatusCode::OK, "You declined: nothing was connected.").into_response();
        }
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let id: ConnectionId = match user.parse() {
        Ok(id) => id,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match app.connections.connect_as(&id, &code).await {
        Ok(()) => (StatusCode::OK, format!("Connected {user}'s bank account.")).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            truelayer_auth::error_chain(&e).to_string(),
        )
            .into_response(),
    }
}

async fn accounts(State(app): State<App>, Path(user): Path<String>) -> Response {
    let Ok(id) = user.parse::<ConnectionId>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let url = format!(
        "{}/accounts",
        app.environment
            .data_api_url()
            .as_str()
            .trim_end_matches('/')
    );
    let mut request = http::Request::get(url).body(bytes::Bytes::new()).unwrap();
    // The bearer layer asks the manager for this connection's token.
    request.extensions_mut().insert(id);
    match app.api.oneshot(request).await {
        Ok(answer) if answer.status().is_success() => {
            let body = reqwest::Response::from(answer)
                .json::<serde_json::Value>()
                .await;
            match body {
                Ok(json) => Json(json).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Ok(answer) => (StatusCode::BAD_GATEWAY, answer.status().to_string()).into_response(),
        // A connection that needs the user again says so: send them to /connect.
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            truelayer_auth::error_chain(&*e).to_string(),
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // TrueLayer, played by the emulator.
    let truelayer = Emulator::start().await?;
    let environment = Environment::custom(&truelayer.url())?;

    // The store: SQLite in one file, tokens encrypted with a key from the environment
    // (TRUELAYER_CONNECTIONS_KEY) in production; a fresh one here.
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(
        dir.path().join("connections.db"),
        EncryptionKeys::generate("example")?,
    )
    .await?;
    let connections =
        ConnectionManager::builder(environment.clone(), credentials(&truelayer), store).build()?;

    let api = ServiceBuilder::new()
        .map_err(|e: truelayer_auth_tower::BearerAuthError<reqwest::Error>| {
            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
        })
        .layer(BearerAuthLayer::new(connections.clone()).replay_policy(CloneBodies))
        .service(ReqwestService::new(reqwest::Client::new()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = App {
        environment,
        client_id: truelayer.client_id().to_owned(),
        redirect_uri: format!("{base}/callback"),
        connections,
        pending: Arc::default(),
        api: BoxCloneSyncService::new(api),
    };
    let router = Router::new()
        .route("/connect", get(connect))
        .route("/callback", get(callback))
        .route("/users/{user}/accounts", get(accounts))
        .with_state(app);
    tokio::spawn(async move { axum::serve(listener, router).await });

    // Alice's browser: /connect, the dialog (she chooses Mock Bank and allows), /callback.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let to_dialog = browser
        .get(format!("{base}/connect?user=alice"))
        .send()
        .await?;
    let link = url::Url::parse(to_dialog.headers()["location"].to_str()?)?;
    let answer = consent(&link, Choice::Approve("mock")).await;
    let connected = browser
        .get(format!("{base}/callback?{answer}"))
        .send()
        .await?
        .text()
        .await?;
    println!("{connected}");

    let accounts: serde_json::Value = browser
        .get(format!("{base}/users/alice/accounts"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let names: Vec<&str> = accounts["results"]
        .as_array()
        .ok_or("no results")?
        .iter()
        .filter_map(|a| a["display_name"].as_str())
        .collect();
    println!("alice's accounts: {names:?}");
    assert!(!names.is_empty(), "the accounts are listed");
    Ok(())
}
