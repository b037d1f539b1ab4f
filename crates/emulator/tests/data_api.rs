//! The Data API side of the emulator over HTTP: the auth dialog, the authorization_code and
//! refresh_token grants (rotation, reuse detection), the Data API v1, extend and delete.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use truelayer_auth_emulator::{
    ConnectionStatus, Emulator, ExtendAction, REFRESH_TOKEN_LIFETIME, RevocationReason,
};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const ALL_SCOPES: &str =
    "info accounts balance cards transactions direct_debits standing_orders offline_access";

/// An emulator whose default client has [`REDIRECT`] allow-listed (loopback redirect URIs
/// are not allowed by default).
async fn start() -> Emulator {
    let emulator = Emulator::start().await.unwrap();
    assert!(emulator.allow_redirect_uri(emulator.client_id(), REDIRECT));
    emulator
}

/// A client that does not follow redirects: the tests look at them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn link(emulator: &Emulator, params: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap();
    format!("{}?{query}", emulator.auth_dialog_url())
}

fn basic_link<'a>(emulator: &'a Emulator, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", emulator.client_id()),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("nonce", "n-1"),
        ("providers", "uk-ob-all uk-oauth-all"),
    ]
}

/// The opaque request id in a rendered dialog.
fn request_id(page: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = page.find(marker).expect("the page has a request id") + marker.len();
    let end = start + page[start..].find('"').unwrap();
    page[start..end].to_owned()
}

/// The query parameters of a redirect's `Location`.
fn location_params(response: &reqwest::Response) -> Vec<(String, String)> {
    let location = response.headers()["location"].to_str().unwrap();
    let query = location.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str(query).unwrap()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn decide(
    emulator: &Emulator,
    page: &str,
    provider: &str,
    decision: &str,
) -> reqwest::Response {
    http()
        .post(format!("{}/dialog/decision", emulator.url()))
        .form(&[
            ("request", request_id(page).as_str()),
            ("provider", provider),
            ("decision", decision),
        ])
        .send()
        .await
        .unwrap()
}

/// Runs the dialog with `params` and approves with the mock bank: the code.
async fn code_for(emulator: &Emulator, params: &[(&str, &str)]) -> String {
    let page = http().get(link(emulator, params)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let answer = decide(emulator, &page, "mock", "approve").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let params = location_params(&answer);
    param(&params, "code").unwrap().to_owned()
}

async fn exchange(
    emulator: &Emulator,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", emulator.client_id()),
        ("client_secret", emulator.client_secret()),
        ("redirect_uri", redirect_uri),
        ("code", code),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    http()
        .post(emulator.token_url())
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn refresh(emulator: &Emulator, refresh_token: &str) -> reqwest::Response {
    http()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", emulator.client_id()),
            ("client_secret", emulator.client_secret()),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap()
}

/// A connection with every scope: its token answer.
async fn connect(emulator: &Emulator) -> Value {
    let code = code_for(emulator, &basic_link(emulator, ALL_SCOPES)).await;
    let answer = exchange(emulator, &code, REDIRECT, None).await;
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

async fn get(emulator: &Emulator, path: &str, bearer: &str) -> reqwest::Response {
    http()
        .get(format!("{}{path}", emulator.data_url()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn assert_invalid_grant(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    body["error_description"].as_str().unwrap().to_owned()
}

async fn assert_unauthorized(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
}

fn s(value: &Value) -> &str {
    value.as_str().unwrap()
}

#[tokio::test]
async fn dialog_code_exchange_refresh_rotation_and_reuse_revokes_the_connection() {
    let emulator = start().await;
    let params = [
        basic_link(&emulator, ALL_SCOPES),
        vec![("provider_id", "ob-mock-2")],
    ]
    .concat();
    let page = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = page.text().await.unwrap();
    for id in [
        "<h1>",
        "id=\"consent\"",
        "action=\"/dialog/decision\"",
        "id=\"provider-mock\"",
        "id=\"provider-ob-mock-2\"",
        "id=\"approve\"",
        "id=\"deny\"",
    ] {
        assert!(page.contains(id), "{id} in {page}");
    }
    assert!(
        page.contains("value=\"ob-mock-2\" required checked"),
        "{page}"
    );
    // Nothing the client sent is in the form: only the opaque request id.
    assert!(
        !page.contains(REDIRECT) && !page.contains("st-123"),
        "{page}"
    );

    let answer = decide(&emulator, &page, "ob-mock-2", "approve").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(
        answer.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(REDIRECT)
    );
    let redirect = location_params(&answer);
    assert_eq!(param(&redirect, "state"), Some("st-123"));
    let code = param(&redirect, "code").unwrap();
    // The request is single-use.
    assert_eq!(
        decide(&emulator, &page, "mock", "approve").await.status(),
        400
    );

    let answer = exchange(&emulator, code, REDIRECT, None).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let first: Value = answer.json().await.unwrap();
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 3600);
    assert_eq!(first["scope"], ALL_SCOPES);
    let (access1, refresh1) = (s(&first["access_token"]), s(&first["refresh_token"]));
    assert_eq!(access1.split('.').count(), 3);

    let me: Value = get(&emulator, "/me", access1).await.json().await.unwrap();
    assert_eq!(me["status"], "Succeeded");
    assert_eq!(me["results"][0]["client_id"], emulator.client_id());
    assert_eq!(me["results"][0]["provider"]["provider_id"], "ob-mock-2");
    let credentials_id = s(&me["results"][0]["credentials_id"]).to_owned();

    let connections = emulator.connections();
    assert_eq!(connections.len(), 1);
    let connection = &connections[0];
    assert_eq!(connection.status, ConnectionStatus::Active);
    assert_eq!(connection.refresh_generation, 0);
    assert_eq!(connection.credentials_id, credentials_id);

    // Rotation: a new pair; the old access token is superseded.
    let answer = refresh(&emulator, refresh1).await;
    assert_eq!(answer.status(), 200);
    let second: Value = answer.json().await.unwrap();
    let (access2, refresh2) = (s(&second["access_token"]), s(&second["refresh_token"]));
    assert_ne!(refresh1, refresh2);
    assert_ne!(access1, access2);
    assert_unauthorized(get(&emulator, "/me", access1).await).await;
    assert_eq!(get(&emulator, "/me", access2).await.status(), 200);
    let connection = emulator.connection(&connection.id).unwrap();
    assert_eq!(connection.refresh_generation, 1);
    assert_eq!(connection.refreshes_served, 1);

    // The spent refresh token again: the whole connection is revoked.
    let why = assert_invalid_grant(refresh(&emulator, refresh1).await).await;
    assert!(why.contains("already been used"), "{why}");
    let connection = emulator.connection(&connection.id).unwrap();
    assert_eq!(
        connection.status,
        ConnectionStatus::Revoked(RevocationReason::RefreshTokenReuse)
    );
    assert_eq!(connection.refreshes_refused_as_reuse, 1);
    assert_unauthorized(get(&emulator, "/me", access2).await).await;
    assert_invalid_grant(refresh(&emulator, refresh2).await).await;

    let stats = emulator.data_stats();
    assert_eq!(stats.codes_exchanged, 1);
    assert_eq!(stats.refreshes_served, 1);
    assert_eq!(stats.refreshes_refused_as_reuse, 1);
}

#[tokio::test]
async fn a_superseded_access_token_gets_401_and_the_latest_works() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let second: Value = refresh(&emulator, s(&first["refresh_token"]))
        .await
        .json()
        .await
        .unwrap();
    let third: Value = refresh(&emulator, s(&second["refresh_token"]))
        .await
        .json()
        .await
        .unwrap();
    for old in [&first, &second] {
        assert_unauthorized(get(&emulator, "/accounts", s(&old["access_token"])).await).await;
    }
    assert_eq!(
        get(&emulator, "/accounts", s(&third["access_token"]))
            .await
            .status(),
        200
    );
    assert_eq!(emulator.connections()[0].refresh_generation, 2);
    // A token past its expiry is refused too.
    emulator.advance_clock(Duration::from_secs(3601));
    assert_unauthorized(get(&emulator, "/accounts", s(&third["access_token"])).await).await;
    assert_unauthorized(get(&emulator, "/accounts", "not-a-jwt").await).await;
    let response = http()
        .get(format!("{}/accounts", emulator.data_url()))
        .send()
        .await
        .unwrap();
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn form_post_answers_with_an_auto_submitting_form() {
    let emulator = start().await;
    let params = [
        basic_link(&emulator, "accounts"),
        vec![("response_mode", "form_post"), ("provider_id", "mock")],
    ]
    .concat();
    let page = http().get(link(&emulator, &params)).send().await.unwrap();
    let page = page.text().await.unwrap();
    let answer = decide(&emulator, &page, "mock", "approve").await;
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("location").is_none());
    let html = answer.text().await.unwrap();
    assert!(
        html.contains(&format!("<form method=\"post\" action=\"{REDIRECT}\">")),
        "{html}"
    );
    assert!(
        html.contains("<input type=\"hidden\" name=\"code\" value=\""),
        "{html}"
    );
    assert!(
        html.contains("<input type=\"hidden\" name=\"state\" value=\"st-123\">"),
        "{html}"
    );
    assert!(
        html.contains("<script>document.forms[0].submit()</script>"),
        "{html}"
    );
    assert!(html.contains("<noscript><button"), "{html}");
    let start = html.find("name=\"code\" value=\"").unwrap() + 19;
    let code = &html[start..start + html[start..].find('"').unwrap()];
    assert_eq!(
        exchange(&emulator, code, REDIRECT, None).await.status(),
        200
    );
}

#[tokio::test]
async fn deny_goes_back_with_access_denied_and_the_state() {
    let emulator = start().await;
    let page = http()
        .get(link(&emulator, &basic_link(&emulator, "accounts")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Deny needs no bank.
    let answer = http()
        .post(format!("{}/dialog/decision", emulator.url()))
        .form(&[
            ("request", request_id(&page).as_str()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let params = location_params(&answer);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "state"), Some("st-123"));
    assert_eq!(param(&params, "code"), None);
    assert_eq!(emulator.data_stats().codes_issued, 0);
}

#[tokio::test]
async fn codes_expire_after_five_minutes_and_a_reused_code_revokes_its_tokens() {
    let emulator = start().await;
    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    emulator.advance_clock(Duration::from_secs(301));
    let why = assert_invalid_grant(exchange(&emulator, &code, REDIRECT, None).await).await;
    assert!(why.contains("expired"), "{why}");

    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    emulator.advance_clock(Duration::from_secs(299));
    let answer: Value = exchange(&emulator, &code, REDIRECT, None)
        .await
        .json()
        .await
        .unwrap();
    let access = s(&answer["access_token"]);
    assert!(
        answer.get("refresh_token").is_none(),
        "no offline_access: {answer}"
    );
    assert_eq!(get(&emulator, "/accounts", access).await.status(), 200);
    let why = assert_invalid_grant(exchange(&emulator, &code, REDIRECT, None).await).await;
    assert!(why.contains("already been used"), "{why}");
    assert_unauthorized(get(&emulator, "/accounts", access).await).await;
    assert_eq!(
        emulator.connections()[0].status,
        ConnectionStatus::Revoked(RevocationReason::CodeReuse)
    );
}

#[tokio::test]
async fn a_code_is_bound_to_its_client_and_redirect_uri() {
    let emulator = start().await;
    emulator.add_client("other", "other-secret", ["payments"]);
    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    let response = http()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "other"),
            ("client_secret", "other-secret"),
            ("redirect_uri", REDIRECT),
            ("code", &code),
        ])
        .send()
        .await
        .unwrap();
    assert_invalid_grant(response).await;
    assert_invalid_grant(exchange(&emulator, &code, "http://127.0.0.1:9/other", None).await).await;
    assert_invalid_grant(exchange(&emulator, "no-such-code", REDIRECT, None).await).await;
    // A wrong secret is the client's problem, not the grant's.
    let response = http()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", emulator.client_id()),
            ("client_secret", "wrong"),
            ("redirect_uri", REDIRECT),
            ("code", &code),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // JSON bodies work as forms do.
    let response = http()
        .post(emulator.token_url())
        .json(&json!({
            "grant_type": "authorization_code",
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "redirect_uri": REDIRECT,
            "code": code,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn pkce_s256_verifiers_are_checked_and_plain_is_refused() {
    let emulator = start().await;
    // RFC 7636 appendix B.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let params = [
        basic_link(&emulator, "accounts"),
        vec![
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    ]
    .concat();
    let code = code_for(&emulator, &params).await;
    let wrong = "x".repeat(43);
    let why = assert_invalid_grant(exchange(&emulator, &code, REDIRECT, Some(&wrong)).await).await;
    assert!(why.contains("code_verifier"), "{why}");
    let why = assert_invalid_grant(exchange(&emulator, &code, REDIRECT, None).await).await;
    assert!(why.contains("missing"), "{why}");
    assert_eq!(
        exchange(&emulator, &code, REDIRECT, Some(verifier))
            .await
            .status(),
        200
    );
    // A verifier without a challenge.
    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    assert_invalid_grant(exchange(&emulator, &code, REDIRECT, Some(verifier)).await).await;

    // plain, no method (plain by default), and a malformed challenge go back as errors.
    for extra in [
        vec![
            ("code_challenge", challenge),
            ("code_challenge_method", "plain"),
        ],
        vec![("code_challenge", challenge)],
        vec![
            ("code_challenge", "short"),
            ("code_challenge_method", "S256"),
        ],
    ] {
        let params = [basic_link(&emulator, "accounts"), extra].concat();
        let answer = http().get(link(&emulator, &params)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let redirect = location_params(&answer);
        assert_eq!(param(&redirect, "error"), Some("invalid_request"));
        assert_eq!(param(&redirect, "state"), Some("st-123"));
    }
}

#[tokio::test]
async fn an_untrusted_client_or_redirect_uri_gets_a_400_page_never_a_redirect() {
    let emulator = start().await;
    let elsewhere = "https://app.example/callback";
    let mut params = basic_link(&emulator, "accounts");
    params[2].1 = elsewhere;
    let answer = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());
    assert!(answer.text().await.unwrap().contains("redirect_uri"));

    assert!(emulator.allow_redirect_uri(emulator.client_id(), elsewhere));
    assert!(!emulator.allow_redirect_uri("nobody", elsewhere));
    let answer = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    // Another loopback URI is not allowed: loopback redirects are off by default.
    let mut params = basic_link(&emulator, "accounts");
    params[2].1 = "http://127.0.0.1:9/other";
    let answer = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());

    let mut params = basic_link(&emulator, "accounts");
    params[1].1 = "unknown-client";
    let answer = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());
}

#[tokio::test]
async fn errors_after_the_redirect_uri_is_trusted_go_back_to_the_client() {
    let emulator = start().await;
    for (scope, response_type, error) in [
        ("accounts telepathy", "code", "invalid_scope"),
        ("", "code", "invalid_scope"),
        ("accounts", "token", "unsupported_response_type"),
    ] {
        let mut params = basic_link(&emulator, scope);
        params[0].1 = response_type;
        let answer = http().get(link(&emulator, &params)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{scope}");
        let redirect = location_params(&answer);
        assert_eq!(param(&redirect, "error"), Some(error));
        assert_eq!(param(&redirect, "state"), Some("st-123"));
    }
}

#[tokio::test]
async fn a_dialog_request_expires_after_ten_minutes() {
    let emulator = start().await;
    let page = http()
        .get(link(&emulator, &basic_link(&emulator, "accounts")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    emulator.advance_clock(Duration::from_secs(601));
    let answer = decide(&emulator, &page, "mock", "approve").await;
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());
}

#[tokio::test]
async fn data_is_deterministic_per_connection_with_scopes_and_dates_checked() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let token = s(&first["access_token"]);
    let accounts: Value = get(&emulator, "/accounts", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(accounts["status"], "Succeeded");
    let account = &accounts["results"][0];
    for field in ["account_id", "account_type", "display_name", "currency"] {
        assert!(account[field].is_string(), "{field}: {account}");
    }
    for field in ["iban", "number", "sort_code"] {
        assert!(
            account["account_number"][field].is_string(),
            "{field}: {account}"
        );
    }
    assert_eq!(account["provider"]["provider_id"], "mock");
    let id = s(&account["account_id"]).to_owned();

    let range = "?from=2024-01-01&to=2024-01-31";
    let transactions: Value = get(
        &emulator,
        &format!("/accounts/{id}/transactions{range}"),
        token,
    )
    .await
    .json()
    .await
    .unwrap();
    let list = transactions["results"].as_array().unwrap();
    assert!(!list.is_empty());
    for field in [
        "transaction_id",
        "timestamp",
        "description",
        "currency",
        "transaction_type",
        "transaction_category",
    ] {
        assert!(list[0][field].is_string(), "{field}: {}", list[0]);
    }
    assert!(list[0]["amount"].is_number());

    // The same connection after a refresh: the same data.
    let second: Value = refresh(&emulator, s(&first["refresh_token"]))
        .await
        .json()
        .await
        .unwrap();
    let token = s(&second["access_token"]);
    let again: Value = get(&emulator, "/accounts", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["results"][0]["account_id"], account["account_id"]);
    assert_eq!(
        again["results"][0]["account_number"],
        account["account_number"]
    );
    let again: Value = get(
        &emulator,
        &format!("/accounts/{id}/transactions{range}"),
        token,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again, transactions);

    // Another connection: other accounts.
    let other = connect(&emulator).await;
    let theirs: Value = get(&emulator, "/accounts", s(&other["access_token"]))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["results"][0]["account_id"], account["account_id"]);

    for path in [
        format!("/accounts/{id}"),
        format!("/accounts/{id}/balance"),
        format!("/accounts/{id}/transactions/pending"),
        format!("/accounts/{id}/direct_debits"),
        format!("/accounts/{id}/standing_orders"),
        "/info".to_owned(),
        "/cards".to_owned(),
    ] {
        let response = get(&emulator, &path, token).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(!body["results"].as_array().unwrap().is_empty(), "{path}");
    }
    let balance: Value = get(&emulator, &format!("/accounts/{id}/balance"), token)
        .await
        .json()
        .await
        .unwrap();
    for field in ["currency", "update_timestamp"] {
        assert!(balance["results"][0][field].is_string(), "{balance}");
    }
    for field in ["available", "current"] {
        assert!(balance["results"][0][field].is_number(), "{balance}");
    }
    let cards: Value = get(&emulator, "/cards", token).await.json().await.unwrap();
    let card = s(&cards["results"][0]["account_id"]).to_owned();
    for path in ["", "/balance", "/transactions", "/transactions/pending"] {
        let response = get(&emulator, &format!("/cards/{card}{path}"), token).await;
        assert_eq!(response.status(), 200, "{path}");
    }

    assert_eq!(get(&emulator, "/accounts/nope", token).await.status(), 404);
    assert_eq!(
        get(&emulator, &format!("/cards/{id}"), token)
            .await
            .status(),
        404
    );
    for bad in [
        "?from=2024-13-01&to=2024-12-31",
        "?from=2024-02-01&to=2024-01-01",
        "?from=yesterday",
    ] {
        let response = get(
            &emulator,
            &format!("/accounts/{id}/transactions{bad}"),
            token,
        )
        .await;
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_scope_not_granted_is_403_access_denied() {
    let emulator = start().await;
    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    let answer: Value = exchange(&emulator, &code, REDIRECT, None)
        .await
        .json()
        .await
        .unwrap();
    let token = s(&answer["access_token"]);
    let accounts: Value = get(&emulator, "/accounts", token)
        .await
        .json()
        .await
        .unwrap();
    let id = s(&accounts["results"][0]["account_id"]).to_owned();
    for path in [
        "/info".to_owned(),
        "/cards".to_owned(),
        format!("/accounts/{id}/balance"),
        format!("/accounts/{id}/transactions"),
    ] {
        let response = get(&emulator, &path, token).await;
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "access_denied");
    }
}

#[tokio::test]
async fn consent_and_refresh_token_windows_end_in_invalid_grant() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    emulator.advance_clock(REFRESH_TOKEN_LIFETIME + Duration::from_secs(1));
    assert_invalid_grant(refresh(&emulator, s(&first["refresh_token"])).await).await;

    let second = connect(&emulator).await;
    let id = emulator.connections()[1].id.clone();
    assert!(emulator.expire_consent(&id));
    assert_eq!(
        emulator.connection(&id).unwrap().status,
        ConnectionStatus::ConsentExpired
    );
    let why = assert_invalid_grant(refresh(&emulator, s(&second["refresh_token"])).await).await;
    assert!(why.contains("consent"), "{why}");

    let third = connect(&emulator).await;
    let id = emulator.connections()[2].id.clone();
    assert!(emulator.revoke_connection(&id));
    assert_invalid_grant(refresh(&emulator, s(&third["refresh_token"])).await).await;
    assert_unauthorized(get(&emulator, "/me", s(&third["access_token"])).await).await;
}

#[tokio::test]
async fn without_reuse_detection_a_spent_token_is_refused_alone() {
    let emulator = start().await;
    emulator.set_refresh_reuse_detection(false);
    let first = connect(&emulator).await;
    let second: Value = refresh(&emulator, s(&first["refresh_token"]))
        .await
        .json()
        .await
        .unwrap();
    assert_invalid_grant(refresh(&emulator, s(&first["refresh_token"])).await).await;
    assert_eq!(emulator.connections()[0].status, ConnectionStatus::Active);
    assert_eq!(emulator.connections()[0].refreshes_refused_as_reuse, 1);
    assert_eq!(
        refresh(&emulator, s(&second["refresh_token"]))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn refresh_faults_fail_delay_and_drop_the_answer_after_rotating() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let refresh1 = s(&first["refresh_token"]);

    emulator.fail_next_refreshes(1, 503, None);
    emulator.fail_next_refreshes(1, 400, Some("invalid_grant"));
    assert_eq!(refresh(&emulator, refresh1).await.status(), 503);
    assert_invalid_grant(refresh(&emulator, refresh1).await).await;
    // The failures touched nothing: the token still works.
    let answer = refresh(&emulator, refresh1).await;
    assert_eq!(answer.status(), 200);
    let second: Value = answer.json().await.unwrap();
    let refresh2 = s(&second["refresh_token"]);

    emulator.delay_refreshes(Duration::from_millis(300), Some(1));
    let started = std::time::Instant::now();
    let answer = refresh(&emulator, refresh2).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let third: Value = answer.json().await.unwrap();
    let refresh3 = s(&third["refresh_token"]);

    // A lost answer: rotated, then the connection is closed.
    emulator.drop_next_refresh_answers(1);
    let lost = http()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", emulator.client_id()),
            ("client_secret", emulator.client_secret()),
            ("refresh_token", refresh3),
        ])
        .send()
        .await;
    assert!(lost.is_err(), "{lost:?}");
    let connection = &emulator.connections()[0];
    assert_eq!(connection.refresh_generation, 3);
    assert_unauthorized(get(&emulator, "/me", s(&third["access_token"])).await).await;
    // Retrying with the token it sent is a reuse: the connection is lost.
    assert_invalid_grant(refresh(&emulator, refresh3).await).await;
    assert_eq!(
        emulator.connections()[0].status,
        ConnectionStatus::Revoked(RevocationReason::RefreshTokenReuse)
    );
    assert_eq!(emulator.data_stats().refresh_faults_served, 3);
}

async fn extend(emulator: &Emulator, refresh_token: &str) -> reqwest::Response {
    extend_with(
        emulator,
        json!({
            "refresh_token": refresh_token,
            "user_has_reconfirmed_consent": true,
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
        }),
    )
    .await
}

async fn extend_with(emulator: &Emulator, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/connections/extend", emulator.data_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn extend_renews_the_consent_and_rotates_both_tokens() {
    let emulator = start().await;
    let mut first = connect(&emulator).await;
    // 80 days on, refreshing within each refresh token's 30 days.
    for _ in 0..4 {
        emulator.advance_clock(Duration::from_secs(20 * 24 * 3600));
        first = refresh(&emulator, s(&first["refresh_token"]))
            .await
            .json()
            .await
            .unwrap();
    }
    let before = emulator.connections()[0].consent_expires_at;
    let answer = extend(&emulator, s(&first["refresh_token"])).await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["action_needed"], "no_action_needed");
    assert!(body["expires_in"].is_number());
    let connection = &emulator.connections()[0];
    assert!(connection.consent_expires_at > before + 79 * 24 * 3600);
    assert_eq!(connection.extensions_served, 1);
    assert_eq!(
        get(&emulator, "/me", s(&body["access_token"]))
            .await
            .status(),
        200
    );
    assert_unauthorized(get(&emulator, "/me", s(&first["access_token"])).await).await;
    assert_eq!(
        refresh(&emulator, s(&body["refresh_token"])).await.status(),
        200
    );
    // The refresh token the extension spent is a reuse.
    let response = extend(&emulator, s(&first["refresh_token"])).await;
    assert_invalid_grant(response).await;
}

#[tokio::test]
async fn extend_can_ask_for_authentication_with_a_link_to_the_dialog() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    emulator.set_extend_action(ExtendAction::AuthenticationNeeded);
    let answer = extend(&emulator, s(&first["refresh_token"])).await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["action_needed"], "authentication_needed");
    assert!(body.get("access_token").is_none());
    let link = s(&body["user_input_link"]);
    assert!(link.starts_with(&emulator.auth_dialog_url()), "{link}");
    // The link is a working dialog, ending in a new code.
    let page = http().get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let answer = decide(&emulator, &page, "mock", "approve").await;
    let params = location_params(&answer);
    let code = param(&params, "code").unwrap();
    // Until the code is exchanged, nothing was rotated: the old access token still works.
    assert_eq!(emulator.connections()[0].refresh_generation, 0);
    assert_eq!(
        get(&emulator, "/me", s(&first["access_token"]))
            .await
            .status(),
        200
    );
    // The code renews that connection: the same one, with a new pair.
    let answer = exchange(&emulator, code, REDIRECT, None).await;
    assert_eq!(answer.status(), 200);
    let renewed: Value = answer.json().await.unwrap();
    assert_eq!(emulator.connections().len(), 1);
    assert_eq!(emulator.connections()[0].refresh_generation, 1);
    assert_unauthorized(get(&emulator, "/me", s(&first["access_token"])).await).await;
    assert_eq!(
        refresh(&emulator, s(&renewed["refresh_token"]))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn delete_revokes_the_connection() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let response = http()
        .delete(format!("{}/api/delete", emulator.url()))
        .bearer_auth(s(&first["access_token"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        emulator.connections()[0].status,
        ConnectionStatus::Revoked(RevocationReason::Deleted)
    );
    assert_invalid_grant(refresh(&emulator, s(&first["refresh_token"])).await).await;
    assert_unauthorized(get(&emulator, "/me", s(&first["access_token"])).await).await;
}

#[tokio::test]
async fn admin_routes_drive_the_data_side() {
    let emulator = start().await;
    let admin = |path: &str| format!("{}/emulator/{path}", emulator.url());
    let post = |path: String, body: Value| http().post(path).json(&body).send();

    let elsewhere = "https://app.example/cb";
    let response = post(
        admin(&format!("clients/{}/redirect-uris", emulator.client_id())),
        json!({ "uri": elsewhere }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let mut params = basic_link(&emulator, "accounts offline_access");
    params[2].1 = elsewhere;
    assert_eq!(
        http()
            .get(link(&emulator, &params))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let response = post(admin("data-token-lifetime"), json!({ "seconds": 60 }))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let first = connect(&emulator).await;
    assert_eq!(first["expires_in"], 60);

    let listed: Value = http()
        .get(admin("connections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = s(&listed["connections"][0]["id"]).to_owned();
    assert_eq!(listed["connections"][0]["status"]["status"], "active");
    assert!(
        listed
            .to_string()
            .find(s(&first["refresh_token"]))
            .is_none()
    );

    let response = post(
        admin("refresh-failures"),
        json!({ "count": 1, "status": 503 }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        refresh(&emulator, s(&first["refresh_token"]))
            .await
            .status(),
        503
    );
    post(admin("refresh-drops"), json!({ "count": 1 }))
        .await
        .unwrap();
    let response = http().delete(admin("refresh-faults")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        refresh(&emulator, s(&first["refresh_token"]))
            .await
            .status(),
        200
    );

    let response = post(
        admin("extend-action"),
        json!({ "action_needed": "authentication_needed" }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = post(
        admin(&format!("connections/{id}/expire-consent")),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = post(admin(&format!("connections/{id}/revoke")), json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = post(admin("connections/nope/revoke"), json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = post(
        admin("refresh-reuse-detection"),
        json!({ "enabled": false }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = post(admin("loopback-redirects"), json!({ "allow": false }))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let stats: Value = http()
        .get(admin("data-stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["codes_exchanged"], 1);
    assert_eq!(stats["refreshes_served"], 1);
}

#[tokio::test]
async fn nothing_secret_in_debug_output() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let debug = format!(
        "{emulator:?} {:?} {:?}",
        emulator.connections(),
        emulator.data_stats()
    );
    for secret in [
        s(&first["access_token"]),
        s(&first["refresh_token"]),
        emulator.client_secret(),
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[tokio::test]
async fn loopback_redirect_uris_are_refused_unless_turned_on() {
    let emulator = Emulator::start().await.unwrap();
    for uri in [REDIRECT, "http://localhost:5555/cb", "http://[::1]:1/cb"] {
        let mut params = basic_link(&emulator, "accounts");
        params[2].1 = uri;
        let answer = http().get(link(&emulator, &params)).send().await.unwrap();
        assert_eq!(answer.status(), 400, "{uri}");
        assert!(answer.headers().get("location").is_none());
        emulator.set_loopback_redirects(true);
        let answer = http().get(link(&emulator, &params)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{uri}");
        emulator.set_loopback_redirects(false);
    }
}

#[tokio::test]
async fn admin_posts_need_json_from_no_other_origin_and_redirect_uris_must_be_http() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let id = emulator.connections()[0].id.clone();
    let admin = |path: &str| format!("{}/emulator/{path}", emulator.url());
    let redirect_uris = admin(&format!("clients/{}/redirect-uris", emulator.client_id()));
    // What a `fetch(..., {mode: "no-cors"})` from any page can send: text/plain.
    for (path, body) in [
        (
            redirect_uris.clone(),
            r#"{"uri": "https://evil.example/cb"}"#,
        ),
        (admin("loopback-redirects"), r#"{"allow": true}"#),
        (admin("refresh-reuse-detection"), r#"{"enabled": false}"#),
    ] {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut request = http().post(&path).body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type:?}");
        }
    }
    let mut params = basic_link(&emulator, "accounts");
    params[2].1 = "https://evil.example/cb";
    let answer = http().get(link(&emulator, &params)).send().await.unwrap();
    assert_eq!(answer.status(), 400, "not allow-listed");
    // A browser's cross-origin POST carries its Origin: refused, body or not.
    for path in [admin(&format!("connections/{id}/revoke")), admin("revoke")] {
        let response = http()
            .post(&path)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
    }
    assert_eq!(emulator.connections()[0].status, ConnectionStatus::Active);
    assert_eq!(
        get(&emulator, "/me", s(&first["access_token"]))
            .await
            .status(),
        200
    );
    // Allow-listed redirect URIs are absolute http(s) URLs without a fragment.
    for uri in [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://app.example/cb#fragment",
        "/relative/cb",
        "https://",
        "ftp://app.example/cb",
        "https://app.example/a b",
    ] {
        let response = http()
            .post(&redirect_uris)
            .json(&json!({ "uri": uri }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{uri}");
        assert!(
            !emulator.allow_redirect_uri(emulator.client_id(), uri),
            "{uri}"
        );
    }
    let response = http()
        .post(&redirect_uris)
        .json(&json!({ "uri": "HTTPS://app.example/cb?x=1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // JSON with a charset is JSON.
    let response = http()
        .post(admin("loopback-redirects"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"allow": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn a_reused_code_revokes_only_once_its_redirect_uri_and_verifier_check() {
    let emulator = start().await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let params = [
        basic_link(&emulator, "accounts offline_access"),
        vec![
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    ]
    .concat();
    let code = code_for(&emulator, &params).await;
    let answer = exchange(&emulator, &code, REDIRECT, Some(verifier)).await;
    assert_eq!(answer.status(), 200);
    // Someone with the intercepted code but not the verifier (or the redirect URI).
    let wrong = "x".repeat(43);
    for (redirect_uri, verifier) in [
        (REDIRECT, None),
        (REDIRECT, Some(wrong.as_str())),
        ("http://127.0.0.1:9/other", Some(verifier)),
    ] {
        assert_invalid_grant(exchange(&emulator, &code, redirect_uri, verifier).await).await;
        assert_eq!(
            emulator.connections()[0].status,
            ConnectionStatus::Active,
            "{redirect_uri} {verifier:?}"
        );
    }
    let why =
        assert_invalid_grant(exchange(&emulator, &code, REDIRECT, Some(verifier)).await).await;
    assert!(why.contains("already been used"), "{why}");
    assert_eq!(
        emulator.connections()[0].status,
        ConnectionStatus::Revoked(RevocationReason::CodeReuse)
    );
}

#[tokio::test]
async fn revoking_on_code_reuse_can_be_turned_off() {
    let emulator = start().await;
    emulator.set_code_reuse_revocation(false);
    let code = code_for(&emulator, &basic_link(&emulator, "accounts")).await;
    assert_eq!(
        exchange(&emulator, &code, REDIRECT, None).await.status(),
        200
    );
    let why = assert_invalid_grant(exchange(&emulator, &code, REDIRECT, None).await).await;
    assert!(why.contains("already been used"), "{why}");
    assert_eq!(emulator.connections()[0].status, ConnectionStatus::Active);
}

#[tokio::test]
async fn the_decision_takes_only_a_provider_the_dialog_offered() {
    let emulator = start().await;
    let mut params = basic_link(&emulator, "accounts");
    params[6].1 = "mock";
    let page = http()
        .get(link(&emulator, &params))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("provider-ob-mock-2"), "{page}");
    let answer = decide(&emulator, &page, "ob-mock-2", "approve").await;
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());
    // The request is still pending: choosing an offered bank works.
    let answer = decide(&emulator, &page, "mock", "approve").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(param(&location_params(&answer), "code").is_some());
    // A preselected provider is offered too.
    let params = [params, vec![("provider_id", "ob-mock-2")]].concat();
    let page = http()
        .get(link(&emulator, &params))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer = decide(&emulator, &page, "ob-mock-2", "approve").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
}

/// Follows an `authentication_needed` answer's link, approves with the mock bank, and
/// returns where the code went and the code.
async fn reconsent(emulator: &Emulator, answer: reqwest::Response) -> (String, String) {
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["action_needed"], "authentication_needed", "{body}");
    let page = http()
        .get(s(&body["user_input_link"]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let answer = decide(emulator, &page, "mock", "approve").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    let code = param(&location_params(&answer), "code").unwrap().to_owned();
    (location, code)
}

#[tokio::test]
async fn extending_an_expired_consent_needs_authentication_that_renews_the_same_connection() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let before = emulator.connections()[0].clone();
    emulator.advance_clock(Duration::from_secs(3600));
    assert!(emulator.expire_consent(&before.id));
    let answer = extend(&emulator, s(&first["refresh_token"])).await;
    let (location, code) = reconsent(&emulator, answer).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    let answer = exchange(&emulator, &code, REDIRECT, None).await;
    assert_eq!(answer.status(), 200);
    let renewed: Value = answer.json().await.unwrap();
    let connections = emulator.connections();
    assert_eq!(connections.len(), 1, "no new connection");
    let after = &connections[0];
    assert_eq!(after.id, before.id);
    assert_eq!(after.credentials_id, before.credentials_id);
    assert_eq!(after.status, ConnectionStatus::Active);
    assert!(after.consent_expires_at >= before.consent_expires_at + 3600);
    assert_eq!(after.refresh_generation, 1);
    let me: Value = get(&emulator, "/me", s(&renewed["access_token"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["results"][0]["credentials_id"], before.credentials_id);
    assert_eq!(me["results"][0]["consent_status"], "Authorised");
    assert_eq!(
        refresh(&emulator, s(&renewed["refresh_token"]))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn extend_sends_the_code_to_the_redirect_uri_it_names_if_allowed() {
    let emulator = start().await;
    let renewed_uri = "https://app.example/renewed";
    assert!(emulator.allow_redirect_uri(emulator.client_id(), renewed_uri));
    emulator.set_extend_action(ExtendAction::AuthenticationNeeded);
    let first = connect(&emulator).await;
    let body = |redirect_uri: &str| {
        json!({
            "refresh_token": s(&first["refresh_token"]),
            "user_has_reconfirmed_consent": true,
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "redirect_uri": redirect_uri,
        })
    };
    let answer = extend_with(&emulator, body("https://evil.example/cb")).await;
    assert_eq!(answer.status(), 400);
    let error: Value = answer.json().await.unwrap();
    assert_eq!(error["error"], "invalid_request", "{error}");
    let answer = extend_with(&emulator, body(renewed_uri)).await;
    let (location, code) = reconsent(&emulator, answer).await;
    assert!(location.starts_with(renewed_uri), "{location}");
    assert_eq!(
        exchange(&emulator, &code, renewed_uri, None).await.status(),
        200
    );
    assert_eq!(emulator.connections().len(), 1);
    assert_eq!(emulator.connections()[0].reconsents_served, 1);
}

#[tokio::test]
async fn extend_needs_the_client_credentials_unless_told_otherwise() {
    let emulator = start().await;
    emulator.add_client("other", "other-secret", ["payments"]);
    let first = connect(&emulator).await;
    let token = s(&first["refresh_token"]);
    for body in [
        json!({ "refresh_token": token, "user_has_reconfirmed_consent": true }),
        json!({ "refresh_token": token, "user_has_reconfirmed_consent": true,
                "client_id": emulator.client_id() }),
        json!({ "refresh_token": token, "user_has_reconfirmed_consent": true,
                "client_id": emulator.client_id(), "client_secret": "wrong" }),
    ] {
        let answer = extend_with(&emulator, body.clone()).await;
        assert_eq!(answer.status(), 401, "{body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"], "invalid_client");
    }
    // Another client's credentials do not get a link to re-consent this connection.
    for action in [
        ExtendAction::AuthenticationNeeded,
        ExtendAction::NoActionNeeded,
    ] {
        emulator.set_extend_action(action);
        let answer = extend_with(
            &emulator,
            json!({ "refresh_token": token, "user_has_reconfirmed_consent": true,
                    "client_id": "other", "client_secret": "other-secret" }),
        )
        .await;
        assert_invalid_grant(answer).await;
    }
    assert_eq!(emulator.connections()[0].refresh_generation, 0);
    emulator.set_extend_client_authentication(false);
    let answer = extend_with(
        &emulator,
        json!({ "refresh_token": token, "user_has_reconfirmed_consent": true }),
    )
    .await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn access_tokens_stop_working_when_the_consent_ends() {
    let emulator = start().await;
    let first = connect(&emulator).await;
    let token = s(&first["access_token"]);
    let id = emulator.connections()[0].id.clone();
    assert!(emulator.expire_consent(&id));
    for path in ["/accounts", "/info", "/cards"] {
        let response = get(&emulator, path, token).await;
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "access_denied", "{body}");
        assert!(s(&body["error_description"]).contains("consent"), "{body}");
    }
    // The metadata says why.
    let me = get(&emulator, "/me", token).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["results"][0]["consent_status"], "Expired", "{me}");
}
