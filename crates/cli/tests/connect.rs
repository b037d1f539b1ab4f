//! `tlauth connect`, `tlauth data` and `tlauth connections` as a user runs them (issue #17):
//! the real binary against an in-process emulator, with the test playing the user in the
//! auth dialog over HTTP and delivering the redirect to the CLI's loopback listener.

mod support;

use secrecy::ExposeSecret;
use support::connect::{Finished, RunningConnect, StoreDir, emulator_env, mode, run};
use truelayer_auth_connections::{ConnectionStore, EncryptionKeys, SqliteStore};
use truelayer_auth_emulator::Emulator;

/// What the user does in the dialog.
#[derive(Clone, Copy)]
enum Choice {
    Approve,
    Deny,
}

/// Plays the user: opens `link`, chooses, and delivers the dialog's answer to wherever it
/// sends the browser (the CLI's listener), as a browser would: follows the redirect, or
/// POSTs the auto-submitting form. Returns the CLI's page (status and HTML) and the
/// callback's parameters.
async fn consent(link: &url::Url, choice: Choice) -> (u16, String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http.get(link.clone()).send().await.unwrap();
    assert_eq!(page.status(), 200, "the dialog refused the link");
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"consent\""), "{page}");
    let request = field(&page, "request").expect("the dialog's request id");
    let mut form = vec![("request", request)];
    match choice {
        Choice::Approve => {
            form.push(("provider", "mock".into()));
            form.push(("decision", "approve".into()));
        }
        Choice::Deny => form.push(("decision", "deny".into())),
    }
    let mut decision = link.clone();
    decision.set_path("/dialog/decision");
    decision.set_query(None);
    let answer = http.post(decision).form(&form).send().await.unwrap();
    let delivered = if answer.status().is_redirection() {
        let location = answer.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let params = url::Url::parse(&location)
            .unwrap()
            .query()
            .unwrap_or_default()
            .to_owned();
        (http.get(&location).send().await.unwrap(), params)
    } else {
        // form_post: the page's form, POSTed where it says.
        let page = answer.text().await.unwrap();
        let action = attribute(&page, "action").expect("the form's action");
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for name in ["code", "state", "error", "error_description", "scope"] {
            if let Some(value) = field(&page, name) {
                pairs.append_pair(name, &value);
            }
        }
        let params = pairs.finish();
        let sent = http
            .post(&action)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(params.clone())
            .send()
            .await
            .unwrap();
        (sent, params)
    };
    let (response, params) = delivered;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap(), params)
}

/// The value of the input named `name`.
fn field(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = start + page[start..].find('"')?;
    Some(unescape(&page[start..end]))
}

/// The value of the first `name="..."` attribute.
fn attribute(page: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=\"");
    let start = page.find(&marker)? + marker.len();
    let end = start + page[start..].find('"')?;
    Some(unescape(&page[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `tlauth ARGS` with `env`, fed `stdin`.
fn run_with_stdin(args: &[&str], env: &[(String, String)], stdin: &str) -> Finished {
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let out = support::tlauth(args, &env, Some(stdin));
    Finished {
        status: out.status,
        stdout: support::text(&out.stdout),
        stderr: support::text(&out.stderr),
    }
}

/// Where `tlauth connect --redirect-uri` keeps its pending authorization: beside the store,
/// named after it.
fn pending_path(store: &StoreDir) -> std::path::PathBuf {
    let mut name = store.path.as_os_str().to_owned();
    name.push(".pending.json");
    std::path::PathBuf::from(name)
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The link's `redirect_uri`.
fn redirect_of(link: &url::Url) -> url::Url {
    let uri = link
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .expect("the link names its redirect URI");
    url::Url::parse(&uri).unwrap()
}

/// The `code` of callback parameters.
fn code_of(params: &str) -> Option<String> {
    url::form_urlencoded::parse(params.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
}

/// The stored tokens of every connection in `store`, to check no output shows one.
async fn stored_secrets(store: &StoreDir) -> Vec<String> {
    let keys = EncryptionKeys::from_file(store.key_path()).unwrap();
    let sqlite = SqliteStore::open(&store.path, keys).await.unwrap();
    let mut secrets = Vec::new();
    for row in sqlite.list().await.unwrap() {
        secrets.push(row.access_token.expose_secret().to_owned());
        if let Some(r) = &row.refresh_token {
            secrets.push(r.expose_secret().to_owned());
        }
    }
    secrets
}

fn assert_no_secret(outputs: &[&Finished], secrets: &[String]) {
    for out in outputs {
        for secret in secrets {
            assert!(
                !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
                "a secret was printed: {out:?}"
            );
        }
        assert!(
            !out.stderr.contains("eyJ") && !out.stdout.contains("eyJ"),
            "{out:?}"
        );
    }
}

/// Connects through the dialog in `mode`, returning the id and the run.
async fn connect(
    emulator: &Emulator,
    store: &StoreDir,
    extra: &[&str],
) -> (String, Finished, String) {
    let env = emulator_env(emulator);
    let mut args = vec!["--store", store.arg()];
    args.extend_from_slice(extra);
    let cli = RunningConnect::start(&args, &env);
    let link = cli.link();
    assert!(
        link.as_str().starts_with(&emulator.url()),
        "the link goes to the emulator's dialog: {link}"
    );
    let (status, page, params) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"connected\""), "{page}");
    assert!(page.contains("Connected, you can close this tab"), "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    let id = done.stdout.trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{done:?}"
    );
    let code = code_of(&params).expect("the redirect carried a code");
    assert!(
        !done.stderr.contains(&code) && !done.stdout.contains(&code),
        "the code was printed: {done:?}"
    );
    (id, done, code)
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_then_data_then_list_show_and_delete() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);

    let (id, connected, _) = connect(&emulator, &store, &[]).await;
    assert!(
        connected.stderr.contains("made a new encryption key"),
        "the new key is announced: {connected:?}"
    );
    // Store, its key and its directory are this user's alone.
    assert_eq!(mode(&store.path), 0o600);
    assert_eq!(mode(&store.key_path()), 0o600);
    assert_eq!(mode(store.path.parent().unwrap()), 0o700);
    assert_eq!(emulator.connections().len(), 1);

    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(data.status.success(), "{data:?}");
    let json: serde_json::Value = serde_json::from_str(&data.stdout).unwrap();
    assert_eq!(json["status"], "Succeeded", "{json}");
    let accounts = json["results"].as_array().unwrap();
    assert!(!accounts.is_empty(), "{json}");
    assert!(
        data.stdout.contains("\n  "),
        "pretty-printed: {}",
        data.stdout
    );
    assert!(
        !data.stderr.contains("made a new encryption key"),
        "the key is announced only when made: {data:?}"
    );
    // Without the /data/v1 prefix, to an account's balance.
    let account = accounts[0]["account_id"].as_str().unwrap();
    let balance = run(
        &[
            "data",
            "GET",
            &format!("/accounts/{account}/balance"),
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(balance.status.success(), "{balance:?}");
    assert!(balance.stdout.contains("\"current\""), "{balance:?}");

    let list = run(&["connections", "list", "--store", store.arg()], &env);
    assert!(list.status.success(), "{list:?}");
    let mut lines = list.stdout.lines();
    assert!(lines.next().unwrap().starts_with("ID"), "{list:?}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&id) && row.contains("active") && row.contains("mock"),
        "{list:?}"
    );
    let listed = run(
        &["connections", "list", "--json", "--store", store.arg()],
        &env,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["refreshable"], true);

    let show = run(&["connections", "show", &id, "--store", store.arg()], &env);
    assert!(show.status.success(), "{show:?}");
    for expected in [
        "status:             active",
        "provider:           mock",
        "consent expires at:",
        "refreshable:        yes",
    ] {
        assert!(show.stdout.contains(expected), "{expected}: {show:?}");
    }

    let secrets = stored_secrets(&store).await;
    assert_eq!(secrets.len(), 2);
    assert_no_secret(&[&connected, &data, &balance, &list, &show], &secrets);

    let deleted = run(
        &["connections", "delete", &id, "--store", store.arg()],
        &env,
    );
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(
        matches!(
            emulator.connections()[0].status,
            truelayer_auth_emulator::ConnectionStatus::Revoked(_)
        ),
        "revoked at the emulator"
    );
    let show = run(
        &["connections", "show", &id, "--json", "--store", store.arg()],
        &env,
    );
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["status"], "deleted");
    let after = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    assert!(after.stderr.contains("was deleted"), "{after:?}");
    assert_no_secret(&[&deleted, &show, &after], &secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn form_post_callbacks_connect_too_and_other_paths_get_404_while_waiting() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let cli = RunningConnect::start(
        &[
            "--store",
            store.arg(),
            "--response-mode",
            "form_post",
            "--scopes",
            "accounts,balance,offline_access",
        ],
        &env,
    );
    let link = cli.link();
    let query: std::collections::HashMap<_, _> = link.query_pairs().into_owned().collect();
    assert_eq!(query["response_mode"], "form_post");
    assert_eq!(query["scope"], "accounts balance offline_access");
    let redirect = url::Url::parse(&query["redirect_uri"]).unwrap();
    assert_eq!(redirect.host_str(), Some("127.0.0.1"));
    assert_eq!(redirect.path(), "/callback");

    // A browser asks for a favicon, a forged callback arrives: the CLI keeps waiting.
    let http = reqwest::Client::new();
    let mut favicon = redirect.clone();
    favicon.set_path("/favicon.ico");
    assert_eq!(http.get(favicon).send().await.unwrap().status(), 404);
    let answer = http
        .post(redirect.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("code=stolen&state=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let page = answer.text().await.unwrap();
    assert!(
        page.contains("id=\"error\"") && page.contains("state"),
        "{page}"
    );

    let (status, page, _) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"connected\""), "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    assert!(done.stderr.contains("still waiting"), "{done:?}");
    let id = done.stdout.trim();
    let info = &emulator.connections()[0];
    assert_eq!(info.scopes, ["accounts", "balance", "offline_access"]);
    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(data.status.success(), "{data:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn denying_exits_non_zero_with_a_clear_message_and_an_error_page() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let cli = RunningConnect::start(&["--store", store.arg()], &emulator_env(&emulator));
    let link = cli.link();
    let (status, page, _) = consent(&link, Choice::Deny).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"error\""), "{page}");
    assert!(page.contains("You declined"), "{page}");
    let done = cli.finish();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(
        done.stderr
            .contains("tlauth: the user declined to connect a bank account (access_denied)"),
        "{done:?}"
    );
    assert!(done.stdout.is_empty(), "{done:?}");
    assert!(emulator.connections().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_from_a_redirect_page_finishes_by_hand() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let redirect = "https://console.example/redirect-page";
    assert!(emulator.allow_redirect_uri(emulator.client_id(), redirect));
    let store = StoreDir::new();
    let env = emulator_env(&emulator);

    let started = run(
        &[
            "connect",
            "--redirect-uri",
            redirect,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(started.status.success(), "{started:?}");
    let link = url::Url::parse(started.stdout.trim()).unwrap();
    let pending = pending_path(&store);
    assert_eq!(mode(&pending), 0o600);
    assert!(started.stderr.contains("--code -"), "{started:?}");
    assert!(
        !store
            .path
            .parent()
            .unwrap()
            .join("connect-pending.json")
            .exists()
    );

    // The redirect page shows the code; the user copies it.
    let params = truelayer_auth_testkit::emulator::consent(
        &link,
        truelayer_auth_testkit::emulator::Choice::Approve("ob-mock-2"),
    )
    .await;
    let code = code_of(&params).unwrap();
    // From standard input, as the hint says: not in argv, where `ps` shows it.
    let finished = run_with_stdin(
        &["connect", "--code", "-", "--store", store.arg()],
        &env,
        &format!("{code}\n"),
    );
    assert!(finished.status.success(), "{finished:?}");
    assert!(
        !pending.exists(),
        "the pending authorization is removed once used"
    );
    assert!(!finished.stderr.contains(&code), "{finished:?}");
    let id = finished.stdout.trim();
    let show = run(&["connections", "show", id, "--store", store.arg()], &env);
    assert!(show.stdout.contains("ob-mock-2"), "{show:?}");

    // Once more: nothing is pending.
    let again = run(&["connect", "--code", &code, "--store", store.arg()], &env);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(
        again.stderr.contains("no pending authorization"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_emulator_connects_offline_and_says_the_connection_ends_with_it() {
    let store = StoreDir::new();
    let cli = RunningConnect::start(&["--store", store.arg()], &[]);
    let link = cli.link();
    let (status, page, _) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    assert!(done.stderr.contains("embedded emulator"), "{done:?}");
    assert!(done.stderr.contains("tlauth emulator"), "{done:?}");

    // Nothing configured: `data` does not pretend.
    let id = done.stdout.trim();
    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            id,
            "--store",
            store.arg(),
        ],
        &[],
    );
    assert_eq!(data.status.code(), Some(2), "{data:?}");
    assert!(
        data.stderr
            .contains("run `tlauth emulator` in another terminal"),
        "{data:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_emulator_is_named_as_the_likely_cause() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let (id, _, _) = connect(&emulator, &store, &[]).await;
    drop(emulator);
    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert_eq!(data.status.code(), Some(1), "{data:?}");
    assert!(
        data.stderr.contains("is `tlauth emulator` still running?"),
        "{data:?}"
    );
    // Deleting needs TrueLayer (the emulator) too, to revoke.
    let delete = run(
        &["connections", "delete", &id, "--store", store.arg()],
        &env,
    );
    assert_eq!(delete.status.code(), Some(1), "{delete:?}");
    assert!(
        delete
            .stderr
            .contains("is `tlauth emulator` still running?"),
        "{delete:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_refuses_other_methods_and_reports_api_errors() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let (id, _, _) = connect(
        &emulator,
        &store,
        &["--scopes", "info accounts offline_access"],
    )
    .await;
    let post = run(
        &[
            "data",
            "POST",
            "/data/v1/accounts",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert_eq!(post.status.code(), Some(2), "{post:?}");
    assert!(post.stderr.contains("only GET"), "{post:?}");

    let missing = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts/nope",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("GET /data/v1/accounts/nope answered 404"),
        "{missing:?}"
    );
    assert!(
        missing.stderr.contains("TrueLayer's error `"),
        "{missing:?}"
    );

    let unknown = run(
        &[
            "data",
            "GET",
            "/accounts",
            "--connection",
            "no-such",
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        unknown.stderr.contains("no connection with id no-such"),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_redirect_in_time_ends_the_wait() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let cli = RunningConnect::start(
        &["--store", store.arg(), "--timeout", "1s"],
        &emulator_env(&emulator),
    );
    let _ = cli.link();
    let waited = std::time::Instant::now();
    let done = cli.finish();
    assert!(
        waited.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        waited.elapsed()
    );
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(done.stderr.contains("no redirect came back"), "{done:?}");
}

#[test]
fn a_store_whose_key_is_gone_is_not_given_a_new_one() {
    let store = StoreDir::new();
    std::fs::create_dir_all(store.path.parent().unwrap()).unwrap();
    std::fs::write(&store.path, b"").unwrap();
    let list = run(&["connections", "list", "--store", store.arg()], &[]);
    assert_eq!(list.status.code(), Some(2), "{list:?}");
    assert!(list.stderr.contains("exists but its key"), "{list:?}");
    assert!(!store.key_path().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_renews_consent_or_prints_the_link_the_bank_wants_and_reconnect_keeps_the_id() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let (id, _, _) = connect(&emulator, &store, &[]).await;

    let extended = run(
        &["connections", "extend", &id, "--store", store.arg()],
        &env,
    );
    assert!(extended.status.success(), "{extended:?}");
    assert_eq!(extended.stdout.trim(), "Extended");
    assert_eq!(emulator.connections()[0].extensions_served, 1);

    emulator.set_extend_action(truelayer_auth_emulator::ExtendAction::AuthenticationNeeded);
    let needed = run(
        &["connections", "extend", &id, "--store", store.arg()],
        &env,
    );
    assert!(needed.status.success(), "{needed:?}");
    assert!(needed.stdout.trim().starts_with("http"), "{needed:?}");
    assert!(needed.stderr.contains("authenticate again"), "{needed:?}");

    // Reconnecting under the same id replaces the connection.
    let (again, _, _) = connect(&emulator, &store, &["--connection", &id]).await;
    assert_eq!(again, id);
    let listed = run(
        &["connections", "list", "--json", "--store", store.arg()],
        &env,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/me",
            "--connection",
            &id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(data.status.success(), "{data:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_store_needs_a_key_and_is_shared_by_connect_data_and_connections() {
    let Some(url) = truelayer_auth_testkit::postgres::database().await else {
        return;
    };
    // A password in the URL (the test server trusts loopback): no output may show it.
    let mut url = url::Url::parse(&url).unwrap();
    url.set_password(Some("hunter2-PASSWORD")).unwrap();
    let url = url.to_string();
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    emulator.set_loopback_redirects(true);
    let env = emulator_env(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    let key_arg = key.to_str().unwrap();

    // No key: there is no file beside a database to keep one in; it says what to give.
    let keyless = run(&["connections", "list", "--store", &url], &env);
    assert!(!keyless.status.success(), "{keyless:?}");
    assert!(
        keyless.stderr.contains("TRUELAYER_CONNECTIONS_KEY")
            && keyless.stderr.contains("--key-file")
            && keyless.stderr.contains("PostgreSQL"),
        "{keyless:?}"
    );

    // connect --store postgres://... --key-file: a new key for a new store, the row in
    // PostgreSQL.
    let cli = RunningConnect::start(&["--store", &url, "--key-file", key_arg], &env);
    let (status, page, _) = consent(&cli.link(), Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    let connected = cli.finish();
    assert!(connected.status.success(), "{connected:?}");
    assert!(
        connected.stderr.contains("made a new encryption key"),
        "{connected:?}"
    );
    assert!(connected.stderr.contains("PostgreSQL"), "{connected:?}");
    let id = connected.stdout.trim().to_owned();
    assert_eq!(mode(&key), 0o600);
    let keys = EncryptionKeys::from_file(&key).unwrap();
    let rows = truelayer_auth_connections::PostgresStore::connect(&url, keys)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id.as_str(), id);

    // Another process, by TLAUTH_STORE and TRUELAYER_CONNECTIONS_KEY, uses it.
    let mut shared = env.clone();
    shared.push(("TLAUTH_STORE".into(), url.clone()));
    shared.push((
        "TRUELAYER_CONNECTIONS_KEY".into(),
        std::fs::read_to_string(&key).unwrap().trim().to_owned(),
    ));
    let data = run(
        &["data", "GET", "/data/v1/accounts", "--connection", &id],
        &shared,
    );
    assert!(data.status.success(), "{data:?}");
    assert!(data.stdout.contains("\"results\""), "{data:?}");
    let list = run(&["connections", "list"], &shared);
    assert!(list.status.success(), "{list:?}");
    assert!(list.stdout.contains(&id), "{list:?}");

    // A new key file for a store that holds connections is refused, and not left behind.
    let other = dir.path().join("other.key");
    let wrong = run(
        &[
            "connections",
            "list",
            "--store",
            &url,
            "--key-file",
            other.to_str().unwrap(),
        ],
        &env,
    );
    assert!(!wrong.status.success(), "{wrong:?}");
    assert!(wrong.stderr.contains("already holds"), "{wrong:?}");
    assert!(!other.exists());

    for out in [&keyless, &connected, &data, &list, &wrong] {
        assert!(
            !out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"),
            "the password was printed: {out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_error_callback_does_not_end_the_wait() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let cli = RunningConnect::start(&["--store", store.arg()], &emulator_env(&emulator));
    let link = cli.link();
    let redirect = redirect_of(&link);
    let http = reqwest::Client::new();
    // Any page can make the browser load these: without a state, with another link's.
    for forged in [
        "error=access_denied",
        "error=access_denied&state=not-this-links",
        "error=access_denied&error_description=x&state=",
    ] {
        let mut url = redirect.clone();
        url.set_query(Some(forged));
        let answer = http.get(url).send().await.unwrap();
        assert_eq!(answer.status(), 400, "{forged}");
        let page = answer.text().await.unwrap();
        assert!(page.contains("id=\"error\""), "{page}");
    }
    // The real redirect still connects.
    let (status, page, _) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"connected\""), "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    assert!(!done.stderr.contains("declined"), "{done:?}");
    assert_eq!(emulator.connections().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_that_disconnects_during_the_exchange_still_connects() {
    use tokio::io::AsyncWriteExt as _;
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let cli = RunningConnect::start(&["--store", store.arg()], &env);
    let link = cli.link();
    let redirect = redirect_of(&link);
    let params = truelayer_auth_testkit::emulator::consent(
        &link,
        truelayer_auth_testkit::emulator::Choice::Approve("mock"),
    )
    .await;
    // The exchange takes a while; the browser (a tab closed) goes before it ends.
    emulator.set_latency(std::time::Duration::from_millis(1500));
    let mut socket =
        tokio::net::TcpStream::connect((redirect.host_str().unwrap(), redirect.port().unwrap()))
            .await
            .unwrap();
    let request = format!(
        "GET {}?{params} HTTP/1.1\r\nHost: {}\r\n\r\n",
        redirect.path(),
        redirect.authority()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(socket);
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    let id = done.stdout.trim();
    assert!(!id.is_empty(), "{done:?}");
    let listed = run(
        &["connections", "list", "--json", "--store", store.arg()],
        &env,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], id, "{listed}");
    assert_eq!(listed[0]["status"], "active", "{listed}");
    assert_eq!(emulator.connections().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pending_authorization_is_per_store_not_replaced_and_checked_before_use() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let redirect = "https://console.example/redirect-page";
    assert!(emulator.allow_redirect_uri(emulator.client_id(), redirect));
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let start = |store: &StoreDir| {
        run(
            &[
                "connect",
                "--redirect-uri",
                redirect,
                "--store",
                store.arg(),
            ],
            &env,
        )
    };
    let first = start(&store);
    assert!(first.status.success(), "{first:?}");
    let pending = pending_path(&store);
    let saved = std::fs::read(&pending).unwrap();

    // A second link while the first is pending: refused, the first kept.
    let second = start(&store);
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    assert!(second.stderr.contains("already pending"), "{second:?}");
    assert_eq!(std::fs::read(&pending).unwrap(), saved);

    // Another store in the same directory has its own.
    let other = StoreDir {
        path: store.path.with_file_name("other.db"),
        dir: tempfile::tempdir().unwrap(),
    };
    let beside = start(&other);
    assert!(beside.status.success(), "{beside:?}");
    assert!(pending_path(&other).exists());

    // The code on standard input and the secret too: refused, clearly.
    let both = run_with_stdin(
        &[
            "connect",
            "--code",
            "-",
            "--client-secret-stdin",
            "--client-id",
            emulator.client_id(),
            "--env",
            &emulator.url(),
            "--store",
            store.arg(),
        ],
        &[],
        "code\nsecret\n",
    );
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(
        both.stderr.contains("--code -") && both.stderr.contains("--client-secret-stdin"),
        "{both:?}"
    );

    // Not this user's file's mode: refused.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = run_with_stdin(
        &["connect", "--code", "-", "--store", store.arg()],
        &env,
        "somecode\n",
    );
    assert_eq!(loose.status.code(), Some(1), "{loose:?}");
    assert!(loose.stderr.contains("0600"), "{loose:?}");
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A link in its place: refused, not followed.
    let elsewhere = store.dir.path().join("elsewhere.json");
    std::fs::rename(&pending, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &pending).unwrap();
    let linked = run_with_stdin(
        &["connect", "--code", "-", "--store", store.arg()],
        &env,
        "somecode\n",
    );
    assert_eq!(linked.status.code(), Some(1), "{linked:?}");
    assert!(linked.stderr.contains("symbolic link"), "{linked:?}");
    std::fs::remove_file(&pending).unwrap();

    // A file without a PKCE verifier: refused.
    let mut json: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    json["code_verifier"] = serde_json::Value::Null;
    std::fs::write(&pending, json.to_string()).unwrap();
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o600)).unwrap();
    let unverified = run_with_stdin(
        &["connect", "--code", "-", "--store", store.arg()],
        &env,
        "somecode\n",
    );
    assert_eq!(unverified.status.code(), Some(1), "{unverified:?}");
    assert!(
        unverified.stderr.contains("PKCE verifier"),
        "{unverified:?}"
    );
    assert!(emulator.connections().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn data_refuses_paths_that_leave_the_data_api_however_encoded() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let (id, _, _) = connect(&emulator, &store, &[]).await;
    for path in [
        "/data/v1/%2e%2e/%2e%2e/admin",
        "/data/v1/%2E%2E/x",
        "/data/v1/.%2e/x",
        "/data/v1/%2e./x",
        "/accounts/..\\..\\..\\x",
        "\\..\\x",
        "/data/v1/a\\..\\..\\..\\x",
    ] {
        let out = run(
            &[
                "data",
                "GET",
                path,
                "--connection",
                &id,
                "--store",
                store.arg(),
            ],
            &env,
        );
        assert_eq!(out.status.code(), Some(2), "{path}: {out:?}");
        assert!(out.stderr.contains("refused"), "{path}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_takes_the_callback_only_as_the_link_asked() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let http = reqwest::Client::new();
    for (mode, wrong_is_post) in [("form_post", false), ("query", true)] {
        let cli = RunningConnect::start(&["--store", store.arg(), "--response-mode", mode], &env);
        let link = cli.link();
        let redirect = redirect_of(&link);
        let params = truelayer_auth_testkit::emulator::consent(
            &link,
            truelayer_auth_testkit::emulator::Choice::Approve("mock"),
        )
        .await;
        let get = |params: &str| {
            let mut url = redirect.clone();
            url.set_query(Some(params));
            http.get(url).send()
        };
        let post = |params: &str| {
            http.post(redirect.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(params.to_owned())
                .send()
        };
        // The real code and state, the wrong way: refused, the code not spent.
        let wrong = if wrong_is_post {
            post(&params).await.unwrap()
        } else {
            get(&params).await.unwrap()
        };
        assert_eq!(wrong.status(), 405, "{mode}");
        assert!(
            wrong.text().await.unwrap().contains("id=\"error\""),
            "{mode}"
        );
        let right = if wrong_is_post {
            get(&params).await.unwrap()
        } else {
            post(&params).await.unwrap()
        };
        assert_eq!(right.status(), 200, "{mode}");
        assert!(
            right.text().await.unwrap().contains("id=\"connected\""),
            "{mode}"
        );
        let done = cli.finish();
        assert!(done.status.success(), "{mode}: {done:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_localhost_redirect_is_listened_on_for_ipv4_and_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this system has no IPv6 loopback");
        return;
    }
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let port = free_port();
    let uri = format!("http://localhost:{port}/callback");
    let cli = RunningConnect::start(&["--store", store.arg(), "--redirect-uri", &uri], &env);
    let link = cli.link();
    assert_eq!(redirect_of(&link).as_str(), uri);
    let http = reqwest::Client::new();
    for host in ["127.0.0.1", "[::1]"] {
        let answer = http
            .get(format!("http://{host}:{port}/callback?code=x&state=forged"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(answer.status(), 400, "{host}");
    }
    let (status, page, _) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");

    // One of the two taken: said, not half-listened.
    let taken = std::net::TcpListener::bind(("::1", port)).unwrap();
    let refused = run(
        &["connect", "--store", store.arg(), "--redirect-uri", &uri],
        &env,
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("[::1]") && refused.stderr.contains("another process"),
        "{refused:?}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_with_a_redirect_uri_receives_the_banks_code_and_renews_the_same_connection() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let (id, _, _) = connect(&emulator, &store, &[]).await;
    let at_emulator = emulator.connections()[0].clone();
    assert!(emulator.expire_consent(&at_emulator.id));
    let data_args = [
        "data",
        "GET",
        "/data/v1/accounts",
        "--connection",
        &id,
        "--store",
        store.arg(),
    ];
    let expired = run(&data_args, &env);
    assert_eq!(expired.status.code(), Some(1), "{expired:?}");

    // Without a redirect URI: the link, and no promise that anything will receive its code.
    let plain = run(
        &["connections", "extend", &id, "--store", store.arg()],
        &env,
    );
    assert!(plain.status.success(), "{plain:?}");
    assert!(plain.stdout.trim().starts_with("http"), "{plain:?}");
    assert!(plain.stderr.contains("--redirect-uri"), "{plain:?}");

    let uri = format!("http://127.0.0.1:{}/callback", free_port());
    let cli = RunningConnect::start_command(
        &["connections", "extend", &id],
        &["--store", store.arg(), "--redirect-uri", &uri],
        &env,
    );
    let link = cli.link();
    assert!(link.as_str().starts_with(&emulator.url()), "{link}");
    assert_eq!(redirect_of(&link).as_str(), uri);
    // A forged code (no state) does not end the wait.
    let answer = reqwest::get(format!("{uri}?code=forged")).await.unwrap();
    assert_eq!(answer.status(), 400);
    let (status, page, _) = consent(&link, Choice::Approve).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"connected\""), "{page}");
    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    assert_eq!(done.stdout.trim(), "Extended", "{done:?}");

    // The same connection, renewed.
    let after = emulator.connections();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, at_emulator.id);
    assert_eq!(
        after[0].status,
        truelayer_auth_emulator::ConnectionStatus::Active
    );
    let data = run(&data_args, &env);
    assert!(data.status.success(), "{data:?}");
    let listed = run(
        &["connections", "list", "--json", "--store", store.arg()],
        &env,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
