//! `tlauth connect`: a user's bank account connected through TrueLayer's auth dialog, with
//! the redirect received on a loopback listener (or, for Console's redirect page, the code
//! passed back by hand), the code exchanged and the connection stored.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use truelayer_auth::{
    AuthLink, AuthorizationCode, CallbackError, DataScopes, Environment, PendingAuthorization,
    ResponseMode,
};
use truelayer_auth_connections::{ConnectionError, ConnectionId, ConnectionManager};
use url::Url;

use crate::Failure;
use crate::config::{ClientArgs, Fallback};
use crate::store::{self, StoreArgs};

/// How long a pending authorization saved for `--code` stays usable.
const PENDING_LIFETIME: Duration = Duration::from_secs(600);

/// The pending authorization's file, beside the store.
const PENDING_FILE: &str = "connect-pending.json";

/// Why `data` and `connections` do not start an embedded emulator.
pub(crate) const NO_EMBEDDED: &str = "a connection is used in the environment that made it, and an embedded \
     emulator lives only as long as one command: run `tlauth emulator` in another terminal and export \
     the settings it prints (or configure TrueLayer's)";

/// `tlauth connect`'s options.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// The Data API scopes to ask consent for, comma- or space-separated (info, accounts,
    /// balance, cards, transactions, direct_debits, standing_orders, offline_access).
    /// Default: all of them; without offline_access the connection lasts an hour.
    #[arg(long, value_name = "SCOPES")]
    scopes: Option<String>,
    /// A provider (or group, such as uk-ob-all) the dialog offers; repeat for several.
    /// Default: uk-cs-mock uk-ob-all uk-oauth-all in sandbox, uk-ob-all uk-oauth-all in
    /// production, every provider on an emulator.
    #[arg(long = "providers", value_name = "PROVIDER", num_args = 1..)]
    providers: Vec<String>,
    /// Preselect this provider in the dialog.
    #[arg(long, value_name = "ID")]
    provider_id: Option<String>,
    /// How the dialog returns the code: in the redirect's query, or in a form POSTed to
    /// the redirect URI (which keeps it out of the browser's history).
    #[arg(long, value_enum, default_value_t = Mode::Query)]
    response_mode: Mode,
    /// Open the link in the default browser (xdg-open, or open on macOS).
    #[arg(long)]
    open: bool,
    /// The redirect URI, exactly as allow-listed in TrueLayer Console. A loopback one
    /// (`http://127.0.0.1:PORT/callback`) is listened on; another (Console's redirect page,
    /// which shows the code) is not: finish with `tlauth connect --code CODE`. Default (for
    /// an emulator): `http://127.0.0.1:<free port>/callback`.
    #[arg(long, value_name = "URL", conflicts_with = "code")]
    redirect_uri: Option<String>,
    /// Finish a connection started with a non-loopback --redirect-uri: exchange this code
    /// (copied from the redirect page; `-` reads it from standard input) with what that
    /// `tlauth connect` saved beside the store.
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// Store the connection under this id (reconnecting replaces the one with that id).
    /// Default: a new random id.
    #[arg(long = "connection", value_name = "ID")]
    connection: Option<ConnectionId>,
    /// How long to wait for the redirect: seconds, or with a unit (`90s`, `10m`).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

/// `--response-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `?code=...&state=...` on the redirect.
    Query,
    /// A form POSTed to the redirect URI.
    #[value(name = "form_post")]
    FormPost,
}

/// `90`, `90s`, `10m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90, 90s or 10m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("`{s}`: the unit is s, m or h")),
    };
    if secs == 0 {
        return Err("the timeout must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Where the redirect goes.
enum Redirect {
    /// A loopback URI this process listens on.
    Loopback { uri: String, addr: SocketAddr },
    /// A page elsewhere (Console's), which shows the code to the user.
    Elsewhere(String),
}

/// `tlauth connect`.
pub(crate) async fn run(args: ConnectArgs) -> Result<(), Failure> {
    if let Some(code) = &args.code {
        let code = read_code(code)?;
        return finish_by_hand(args, code).await;
    }
    let client = args.client.resolve(Fallback::EmbeddedEmulator).await?;
    let embedded = client.embedded.is_some();
    let redirect = redirect(args.redirect_uri.as_deref(), &client.environment)?;
    if embedded && matches!(redirect, Redirect::Elsewhere(_)) {
        return Err(Failure::usage(format!(
            "--redirect-uri to a page that is not loopback needs `tlauth connect --code` later, \
             and {NO_EMBEDDED}"
        )));
    }
    let creds = client.source.credentials().await.map_err(|e| {
        Failure::failed(format!(
            "the client credentials could not be loaded: {}",
            truelayer_auth::error_chain(&e)
        ))
    })?;
    let scopes = match &args.scopes {
        Some(s) => s
            .parse::<DataScopes>()
            .map_err(|e| Failure::usage(format!("--scopes: {e}")))?,
        None => DataScopes::default(),
    };
    let providers = if args.providers.is_empty() {
        default_providers(&client.environment)
    } else {
        args.providers
            .iter()
            .flat_map(|p| p.split([' ', ',']))
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    // The listener first, so the link names the port the system chose.
    let (redirect_uri, listener) = match redirect {
        Redirect::Elsewhere(uri) => (uri, None),
        Redirect::Loopback { uri, addr } => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    ": another process listens there (a `tlauth connect` still waiting?)"
                } else {
                    ""
                };
                Failure::usage(format!(
                    "could not listen on {addr} for the redirect: {e}{hint}"
                ))
            })?;
            let uri = if addr.port() == 0 {
                let port = listener
                    .local_addr()
                    .map_err(|e| Failure::failed(e.to_string()))?
                    .port();
                format!("http://127.0.0.1:{port}/callback")
            } else {
                uri
            };
            (uri, Some(listener))
        }
    };
    let mut link = AuthLink::builder(client.environment.clone(), creds.client_id(), &redirect_uri)
        .scopes(scopes)
        .providers(providers)
        .response_mode(match args.response_mode {
            Mode::Query => ResponseMode::Query,
            Mode::FormPost => ResponseMode::FormPost,
        });
    if let Some(p) = &args.provider_id {
        link = link.provider_id(p);
    }
    let (url, pending) = link
        .build()
        .map_err(|e| Failure::usage(format!("the auth link: {e}")))?
        .into_parts();

    let Some(listener) = listener else {
        let path = pending_path(&args.store)?;
        save_pending(&path, &client.environment, &pending)?;
        eprintln!(
            "tlauth: open this link in a browser and connect a bank account; the redirect \
             page shows a code: finish within {} minutes with `tlauth connect --code CODE` \
             (the link's state and PKCE verifier are kept in {}, 0600):",
            PENDING_LIFETIME.as_secs() / 60,
            path.display()
        );
        println!("{url}");
        if args.open {
            open_browser(&url);
        }
        return Ok(());
    };
    let sqlite = args
        .store
        .open(true)
        .await?
        .expect("open(true) makes the store");
    let store_path = sqlite.describe();
    let manager = store::manager(&client, sqlite)?;
    eprintln!("tlauth: open this link in a browser and connect a bank account:");
    eprintln!("{url}");
    if args.open {
        open_browser(&url);
    }
    eprintln!(
        "tlauth: waiting for the redirect to {redirect_uri} (up to {}; Ctrl-C stops)",
        humane(args.timeout)
    );
    let id = listen(
        listener,
        &redirect_uri,
        pending,
        manager,
        args.connection,
        args.timeout,
    )
    .await?;
    eprintln!("tlauth: connected; the connection is stored in {store_path} as:");
    println!("{id}");
    if embedded {
        eprintln!(
            "tlauth: note: it was made on the embedded emulator, which stops with this command, \
             so it cannot be used afterwards; for `tlauth data`, run `tlauth emulator` in another \
             terminal, export its settings, and connect again"
        );
    }
    Ok(())
}

fn default_providers(environment: &Environment) -> Vec<String> {
    let list: &[&str] = match environment {
        Environment::Sandbox => &["uk-cs-mock", "uk-ob-all", "uk-oauth-all"],
        Environment::Production => &["uk-ob-all", "uk-oauth-all"],
        _ => &[],
    };
    list.iter().map(|p| (*p).to_owned()).collect()
}

/// `10m`, `90s`.
fn humane(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Where the redirect goes, and whether this process listens for it.
fn redirect(given: Option<&str>, environment: &Environment) -> Result<Redirect, Failure> {
    let Some(given) = given else {
        if matches!(environment, Environment::Sandbox | Environment::Production) {
            return Err(Failure::usage(
                "TrueLayer accepts only the redirect URIs allow-listed for the client in Console: \
                 pass one with --redirect-uri (a loopback one such as http://127.0.0.1:3000/callback \
                 is listened on; Console's own redirect page shows a code for `tlauth connect --code`)",
            ));
        }
        return Ok(Redirect::Loopback {
            uri: "http://127.0.0.1:0/callback".into(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        });
    };
    let url =
        Url::parse(given).map_err(|e| Failure::usage(format!("--redirect-uri `{given}`: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    let ip = match host {
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .filter(IpAddr::is_loopback),
    };
    match (url.scheme(), ip) {
        ("http", Some(ip)) => {
            let port = url.port_or_known_default().unwrap_or(80);
            if port == 0 {
                return Err(Failure::usage(
                    "--redirect-uri needs a fixed port (Console allow-lists exact URIs); leave it out to let an emulator's link use a free one",
                ));
            }
            Ok(Redirect::Loopback {
                uri: given.to_owned(),
                addr: SocketAddr::new(ip, port),
            })
        }
        _ => Ok(Redirect::Elsewhere(given.to_owned())),
    }
}

/// Opens `url` in the default browser, failing softly.
fn open_browser(url: &Url) {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(program)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // Reaped on a thread of its own; it is not waited for.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => eprintln!(
            "tlauth: could not open a browser with {program} ({e}): open the link yourself"
        ),
    }
}

/// What the callback brought.
type Outcome = Result<ConnectionId, Failure>;

/// What the listener's handler shares.
struct Callback {
    path: String,
    pending: PendingAuthorization,
    manager: ConnectionManager,
    connection: Option<ConnectionId>,
    /// Taken by the callback that ends the wait.
    outcome: Mutex<Option<oneshot::Sender<Outcome>>>,
    /// One callback is handled at a time.
    busy: tokio::sync::Mutex<()>,
}

/// Serves the redirect URI until one callback ends the wait (or the time is up), and
/// returns the stored connection's id.
async fn listen(
    listener: tokio::net::TcpListener,
    uri: &str,
    pending: PendingAuthorization,
    manager: ConnectionManager,
    connection: Option<ConnectionId>,
    timeout: Duration,
) -> Result<ConnectionId, Failure> {
    let path = Url::parse(uri)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".into());
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(Callback {
        path,
        pending,
        manager,
        connection,
        outcome: Mutex::new(Some(tx)),
        busy: tokio::sync::Mutex::new(()),
    });
    let app = Router::new().fallback(handle).with_state(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    let outcome = tokio::select! {
        outcome = rx => outcome.unwrap_or_else(|_| Err(Failure::failed("the redirect listener stopped"))),
        () = tokio::time::sleep(timeout) => Err(Failure::failed(format!(
            "no redirect came back to {uri} within {}: nothing was connected (run `tlauth connect` again, with --timeout for longer)",
            humane(timeout)
        ))),
        stopped = crate::shutdown_signal() => {
            stopped?;
            Err(Failure::failed("interrupted while waiting for the redirect: nothing was connected"))
        }
    };
    // The page of the callback that ended the wait is sent before the listener closes.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    outcome
}

/// Every request to the listener: the callback at the redirect URI's path, 404 elsewhere.
async fn handle(
    State(state): State<Arc<Callback>>,
    method: Method,
    uri: axum::http::Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() != state.path {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let params = match method {
        Method::GET => query.unwrap_or_default(),
        Method::POST => {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';').next().is_some_and(|t| {
                        t.trim()
                            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                    })
                });
            if !form {
                return page(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Page::Error("The callback must be a form (application/x-www-form-urlencoded)."),
                );
            }
            String::from_utf8_lossy(&body).into_owned()
        }
        _ => {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                Page::Error("The callback is a GET or a form POST."),
            );
        }
    };
    let _one_at_a_time = state.busy.lock().await;
    let Some(sender) = state
        .outcome
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return page(
            StatusCode::GONE,
            Page::Error("This sign-in has already finished; you can close this tab."),
        );
    };
    let (status, shown, outcome): (StatusCode, Page<'_>, Option<Outcome>) = match state
        .pending
        .callback(&params)
    {
        Ok(code) => {
            let result = match &state.connection {
                Some(id) => state
                    .manager
                    .connect_as(id, &code)
                    .await
                    .map(|()| id.clone()),
                None => state.manager.connect(&code).await,
            };
            match result {
                Ok(id) => (StatusCode::OK, Page::Connected, Some(Ok(id))),
                Err(e) => {
                    let failure = Failure::failed(format!(
                        "the authorization code could not be exchanged: {}",
                        connection_error(&e)
                    ));
                    (
                        StatusCode::BAD_GATEWAY,
                        Page::Error(
                            "The bank account could not be connected: the code exchange failed. See the terminal for why.",
                        ),
                        Some(Err(failure)),
                    )
                }
            }
        }
        Err(e) if e.is_access_denied() => (
            StatusCode::OK,
            Page::Error("You declined to connect a bank account: nothing was connected."),
            Some(Err(Failure::failed(
                "the user declined to connect a bank account (access_denied): nothing was connected",
            ))),
        ),
        Err(e @ CallbackError::Refused { .. }) => (
            StatusCode::OK,
            Page::ErrorOwned(format!("The bank account was not connected: {e}.")),
            Some(Err(Failure::failed(format!(
                "the auth dialog refused: {e}; nothing was connected"
            )))),
        ),
        Err(e @ CallbackError::MissingCode) => (
            StatusCode::BAD_REQUEST,
            Page::ErrorOwned(format!("The bank account was not connected: {e}.")),
            Some(Err(Failure::failed(format!(
                "the redirect was not usable: {e}; nothing was connected"
            )))),
        ),
        // Not this link's redirect (a forged one, an old tab): refused, and the real one
        // is still awaited.
        Err(e) => {
            eprintln!("tlauth: refused a redirect that is not this link's ({e}); still waiting");
            (
                StatusCode::BAD_REQUEST,
                Page::ErrorOwned(format!(
                    "This is not the redirect of the link `tlauth connect` printed: {e}."
                )),
                None,
            )
        }
    };
    match outcome {
        Some(outcome) => {
            let _ = sender.send(outcome);
        }
        None => {
            *state.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        }
    }
    page(status, shown)
}

/// The page the browser is shown.
enum Page<'a> {
    Connected,
    Error(&'a str),
    ErrorOwned(String),
}

fn page(status: StatusCode, shown: Page<'_>) -> Response {
    let (title, body) = match shown {
        Page::Connected => (
            "Connected",
            "<h1 id=\"connected\">Connected, you can close this tab</h1>\n<p>Your bank account is connected; the terminal shows the connection's id.</p>".to_owned(),
        ),
        Page::Error(why) => ("Not connected", error_body(why)),
        Page::ErrorOwned(why) => ("Not connected", error_body(&why)),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tlauth: {title}</title></head>\n<body>\n{body}\n</body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ],
        html,
    )
        .into_response()
}

fn error_body(why: &str) -> String {
    format!(
        "<h1>Not connected</h1>\n<p id=\"error\">{}</p>",
        escape(why)
    )
}

/// `text` safe in HTML text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A connection error's whole chain, with what to do when the cause is known.
pub(crate) fn connection_error(e: &ConnectionError) -> String {
    truelayer_auth::error_chain(e)
}

/// What `tlauth connect` keeps for `--code`: the auth link's checks and what the exchange
/// repeats. Holds the PKCE verifier: written 0600, removed once used.
#[derive(Serialize, Deserialize)]
struct PendingFile {
    environment: String,
    client_id: String,
    redirect_uri: String,
    scopes: String,
    state: String,
    code_verifier: Option<String>,
    /// Seconds since the Unix epoch.
    expires_at: u64,
}

fn pending_path(store: &StoreArgs) -> Result<PathBuf, Failure> {
    Ok(store.dir()?.join(PENDING_FILE))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn save_pending(
    path: &Path,
    environment: &Environment,
    pending: &PendingAuthorization,
) -> Result<(), Failure> {
    // The verifier is not readable from a pending authorization; the code a callback
    // brings carries it, so a callback with the link's own state gives it.
    let verifier = pending
        .callback(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("code", "unused")
                .append_pair("state", pending.state())
                .finish(),
        )
        .ok()
        .and_then(|c| c.code_verifier().map(|v| v.expose_secret().to_owned()));
    let file = PendingFile {
        environment: environment.name(),
        client_id: pending.client_id().to_owned(),
        redirect_uri: pending.redirect_uri().to_owned(),
        scopes: pending.scopes().as_str().to_owned(),
        state: pending.state().to_owned(),
        code_verifier: verifier,
        expires_at: unix_now() + PENDING_LIFETIME.as_secs(),
    };
    let json = zeroize::Zeroizing::new(
        serde_json::to_string_pretty(&file).map_err(|e| Failure::failed(e.to_string()))?,
    );
    drop(file);
    let failed = |e: std::io::Error| {
        Failure::failed(format!(
            "could not save the pending authorization to {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(failed)?;
    }
    // A new file (an older pending authorization is replaced), readable by this user only.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(path).map_err(failed)?;
    out.write_all(json.as_bytes()).map_err(failed)?;
    out.sync_all().map_err(failed)
}

/// `--code`'s value, or standard input's first line for `-`.
fn read_code(given: &str) -> Result<SecretString, Failure> {
    if given != "-" {
        if given.trim().is_empty() {
            return Err(Failure::usage("--code is empty"));
        }
        return Ok(SecretString::from(given.trim()));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::usage(format!("reading the code from standard input: {e}")))?;
    let code = SecretString::from(line.trim());
    zeroize::Zeroize::zeroize(&mut line);
    if code.expose_secret().is_empty() {
        return Err(Failure::usage("no code on standard input"));
    }
    Ok(code)
}

/// `tlauth connect --code CODE`: the exchange, with what the first `tlauth connect` saved.
async fn finish_by_hand(args: ConnectArgs, code: SecretString) -> Result<(), Failure> {
    let path = pending_path(&args.store)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::usage(format!(
                "no pending authorization at {}: start with `tlauth connect --redirect-uri URL` \
                 (Console's redirect page), then pass the code it shows to `tlauth connect --code`",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Failure::failed(format!(
                "could not read {}: {e}",
                path.display()
            )));
        }
    };
    let saved: PendingFile = serde_json::from_str(&text).map_err(|_| {
        Failure::failed(format!(
            "{} is not a pending authorization of `tlauth connect`: remove it and start again",
            path.display()
        ))
    })?;
    if unix_now() >= saved.expires_at {
        let _ = std::fs::remove_file(&path);
        return Err(Failure::failed(format!(
            "the pending authorization expired ({} minutes after `tlauth connect` printed the link): \
             run `tlauth connect --redirect-uri ...` again",
            PENDING_LIFETIME.as_secs() / 60
        )));
    }
    let client = args.client.resolve(Fallback::Refuse(NO_EMBEDDED)).await?;
    if client.environment.name() != saved.environment {
        return Err(Failure::usage(format!(
            "the pending authorization is for the environment {}, not {}: configure that one",
            saved.environment,
            client.environment.name()
        )));
    }
    let configured = client.source.credentials().await.map_err(|e| {
        Failure::failed(format!(
            "the client credentials could not be loaded: {}",
            truelayer_auth::error_chain(&e)
        ))
    })?;
    if configured.client_id() != saved.client_id {
        return Err(Failure::usage(format!(
            "the pending authorization is for the client {}, not {}: configure that one",
            saved.client_id,
            configured.client_id()
        )));
    }
    let scopes = saved
        .scopes
        .parse::<DataScopes>()
        .map_err(|e| Failure::failed(format!("{}: its scopes: {e}", path.display())))?;
    let authorization = AuthorizationCode::new(
        code,
        saved.client_id.clone(),
        saved.redirect_uri.clone(),
        scopes,
        saved.code_verifier.clone().map(SecretString::from),
    );
    drop(saved);
    let sqlite = args
        .store
        .open(true)
        .await?
        .expect("open(true) makes the store");
    let store_path = sqlite.describe();
    let manager = store::manager(&client, sqlite)?;
    let result = match &args.connection {
        Some(id) => manager
            .connect_as(id, &authorization)
            .await
            .map(|()| id.clone()),
        None => manager.connect(&authorization).await,
    };
    match result {
        Ok(id) => {
            let _ = std::fs::remove_file(&path);
            eprintln!("tlauth: connected; the connection is stored in {store_path} as:");
            println!("{id}");
            Ok(())
        }
        Err(e) => {
            // A refused code is spent (or was never good): the saved link is of no more use.
            if !e.is_retryable() {
                let _ = std::fs::remove_file(&path);
            }
            Err(Failure::failed(format!(
                "the code could not be exchanged: {}{}",
                connection_error(&e),
                if e.is_retryable() {
                    "; try `tlauth connect --code` again"
                } else {
                    "; codes are single-use and live minutes: run `tlauth connect --redirect-uri ...` again"
                }
            )))
        }
    }
}
