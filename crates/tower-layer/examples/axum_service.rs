//! An axum service whose handler calls the Payments API through the layered client: the
//! "used by axum services" case. The handler never sees a token.
//!
//! ```sh
//! cargo run -p truelayer-auth-tower --example axum_service
//! ```
//!
//! It serves `POST /checkout` on 127.0.0.1, calls it once itself, prints the answer and exits.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{ClientCredentials, Environment, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type PaymentsClient = BoxCloneSyncService<
    http::Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    BoxError,
>;

#[derive(Clone)]
struct AppState {
    payments: PaymentsClient,
    api_url: String,
}

async fn checkout(
    State(state): State<AppState>,
    Json(order): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let payment = json!({ "amount_in_minor": order["total_pence"], "currency": "GBP" });
    let request = http::Request::post(format!("{}/v3/payments", state.api_url))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payment.to_string())))
        .expect("a valid request");
    match state.payments.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let payment: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = if status.is_success() {
                StatusCode::CREATED
            } else {
                StatusCode::BAD_GATEWAY
            };
            (
                code,
                Json(json!({ "payment": payment, "upstream_status": status.as_u16() })),
            )
        }
        // The error names the cause (say, invalid_client) and never the secret or token.
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let emulator = Emulator::start().await?;
    let credentials =
        ClientCredentials::new(emulator.client_id(), emulator.client_secret().into())?;
    let tokens = TokenCache::builder(Environment::custom(&emulator.url())?, credentials).build()?;

    let hyper_client =
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(HttpConnector::new());
    let signer = Signer::from_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )?;
    let payments = ServiceBuilder::new()
        .map_err(BoxError::from)
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .layer(SigningLayer::new(signer))
        .service(hyper_client);
    let state = AppState {
        payments: BoxCloneSyncService::new(payments),
        api_url: emulator.url(),
    };

    let app = Router::new()
        .route("/checkout", post(checkout))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/checkout"))
        .json(&json!({ "total_pence": 1999 }))
        .send()
        .await?;
    let status = answer.status();
    println!("{status} {}", answer.text().await?);
    if status != StatusCode::CREATED {
        return Err(format!("expected 201 Created, got {status}").into());
    }
    Ok(())
}
