//! `tlauth connect`: a user's bank account connected through TrueLayer's auth dialog, with
//! the redirect received on a loopback listener (or, for Console's redirect page, the code
//! passed back by hand), the code exchanged and the connection stored.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
use crate::store::{self, Location, StoreArgs};

/// How long a pending authorization saved for `--code` stays usable.
const PENDING_LIFETIME: Duration = Duration::from_secs(600);

/// The pending authorization's file, beside the store and named after it:
/// `<store>.pending.json`.
const PENDING_SUFFIX: &str = ".pending.json";

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
    /// (`http://127.0.0.1:PORT/callback`, `http://[::1]:PORT/...`, or
    /// `http://localhost:PORT/...`, which is listened on at both 127.0.0.1 and ::1) is
    /// listened on; another (Console's redirect page, which shows the code) is not: finish
    /// with `tlauth connect --code -`. Default (for an emulator):
    /// `http://127.0.0.1:<free port>/callback`.
    #[arg(long, value_name = "URL", conflicts_with = "code")]
    redirect_uri: Option<String>,
    /// Finish a connection started with a non-loopback --redirect-uri: exchange this code
    /// (copied from the redirect page) with what that `tlauth connect` saved beside the
    /// store. `-` reads it from standard input, which keeps it out of shell history and
    /// `ps`.
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
pub(crate) enum Mode {
    /// `?code=...&state=...` on the redirect.
    Query,
    /// A form POSTed to the redirect URI.
    #[value(name = "form_post")]
    FormPost,
}

/// `90`, `90s`, `10m`, `1h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(crate) enum Redirect {
    /// A loopback URI this process listens on, at these addresses (two for `localhost`).
    Loopback { uri: String, addrs: Vec<SocketAddr> },
    /// A page elsewhere (Console's), which shows the code to the user.
    Elsewhere(String),
}

/// `tlauth connect`.
pub(crate) async fn run(args: ConnectArgs) -> Result<(), Failure> {
    if args.code.as_deref() == Some("-") && args.client.secret_from_stdin() {
        return Err(Failure::usage(
            "`--code -` and --client-secret-stdin both read standard input: give the secret in \
             TRUELAYER_CLIENT_SECRET (or --secret-id) and the code on standard input",
        ));
    }
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
    let (redirect_uri, listeners) = match redirect {
        Redirect::Elsewhere(uri) => (uri, None),
        Redirect::Loopback { uri, addrs } => {
            let (uri, listeners) = bind(&uri, &addrs).await?;
            (uri, Some(listeners))
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

    let Some(listeners) = listeners else {
        let path = pending_path(&args.store)?;
        save_pending(&path, &client.environment, &pending)?;
        eprintln!(
            "tlauth: open this link in a browser and connect a bank account; the redirect \
             page shows a code: finish within {} minutes with `tlauth connect --code -` and \
             paste the code on standard input (kept out of shell history and `ps`; the \
             link's state and PKCE verifier are kept in {}, 0600):",
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
    let check: Check = Box::new(move |params| pending.callback(params));
    let id = listen(
        listeners,
        &redirect_uri,
        check,
        args.response_mode,
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
pub(crate) fn humane(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Where the redirect goes, and whether this process listens for it.
pub(crate) fn redirect(
    given: Option<&str>,
    environment: &Environment,
) -> Result<Redirect, Failure> {
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
            addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        });
    };
    let url =
        Url::parse(given).map_err(|e| Failure::usage(format!("--redirect-uri `{given}`: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    // `localhost` resolves to 127.0.0.1 or ::1, as the browser's resolver decides: both
    // are listened on.
    let ips = match host {
        "localhost" => vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .filter(IpAddr::is_loopback)
            .into_iter()
            .collect(),
    };
    match (url.scheme(), ips.is_empty()) {
        ("http", false) => {
            let port = url.port_or_known_default().unwrap_or(80);
            if port == 0 {
                return Err(Failure::usage(
                    "--redirect-uri needs a fixed port (Console allow-lists exact URIs); leave it out to let an emulator's link use a free one",
                ));
            }
            Ok(Redirect::Loopback {
                uri: given.to_owned(),
                addrs: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
            })
        }
        _ => Ok(Redirect::Elsewhere(given.to_owned())),
    }
}

/// Listens on every address of a loopback redirect URI, and returns the URI with the port
/// the system chose (for port 0). Any address taken fails the whole: a browser sent to the
/// other would reach another program. For `localhost`, ::1 is left out only when this
/// system has no IPv6 loopback (then nothing can reach it there either).
pub(crate) async fn bind(
    uri: &str,
    addrs: &[SocketAddr],
) -> Result<(String, Vec<tokio::net::TcpListener>), Failure> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(e)
                if addr.is_ipv6()
                    && !listeners.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                    ) =>
            {
                eprintln!(
                    "tlauth: note: this system has no IPv6 loopback ({e}): listening on 127.0.0.1 only"
                );
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    ": another process listens there (a `tlauth connect` still waiting?)"
                } else {
                    ""
                };
                return Err(Failure::usage(format!(
                    "could not listen on {addr} for the redirect: {e}{hint}"
                )));
            }
        }
    }
    let port = addrs.first().map_or(0, SocketAddr::port);
    let uri = if port == 0 {
        let port = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .ok_or_else(|| Failure::failed("the redirect listener has no address"))?
            .port();
        format!("http://127.0.0.1:{port}/callback")
    } else {
        uri.to_owned()
    };
    Ok((uri, listeners))
}

/// Opens `url` in the default browser, failing softly.
pub(crate) fn open_browser(url: &Url) {
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

/// How a callback's parameters are checked: the link's `state` (first), then the code.
pub(crate) type Check = Box<dyn Fn(&str) -> Result<AuthorizationCode, CallbackError> + Send + Sync>;

/// What the listener's handler shares.
struct Callback {
    path: String,
    mode: Mode,
    check: Check,
    manager: ConnectionManager,
    connection: Option<ConnectionId>,
    /// Taken by the callback that ends the wait: one whose `state` is the link's. Held
    /// while a callback is checked, so one is decided at a time.
    outcome: Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// Serves the redirect URI until a callback with the link's `state` ends the wait (or the
/// time is up), and returns the stored connection's id.
///
/// The code exchange runs in a task of its own, which owns the answer: a browser that goes
/// away before it ends (a closed tab) does not cancel it.
pub(crate) async fn listen(
    listeners: Vec<tokio::net::TcpListener>,
    uri: &str,
    check: Check,
    mode: Mode,
    manager: ConnectionManager,
    connection: Option<ConnectionId>,
    timeout: Duration,
) -> Result<ConnectionId, Failure> {
    let path = Url::parse(uri)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".into());
    let (tx, mut rx) = oneshot::channel();
    let state = Arc::new(Callback {
        path,
        mode,
        check,
        manager,
        connection,
        outcome: Mutex::new(Some(tx)),
    });
    let app = Router::new().fallback(handle).with_state(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await
            })
        })
        .collect();
    let stopped = |_| Failure::failed("the redirect listener stopped");
    let outcome = tokio::select! {
        outcome = &mut rx => outcome.unwrap_or_else(|e| Err(stopped(e))),
        () = tokio::time::sleep(timeout) => {
            let waiting = state.outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
            if waiting.is_some() {
                Err(Failure::failed(format!(
                    "no redirect came back to {uri} within {}: nothing was connected (run the command again, with --timeout for longer)",
                    humane(timeout)
                )))
            } else {
                // The redirect came: its exchange is under way, and ends on its own.
                rx.await.unwrap_or_else(|e| Err(stopped(e)))
            }
        }
        stopped = crate::shutdown_signal() => {
            stopped?;
            Err(Failure::failed("interrupted while waiting for the redirect: nothing was connected"))
        }
    };
    // The page of the callback that ended the wait is sent before the listener closes.
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    outcome
}

/// What a callback decided.
enum Decision {
    /// Not this link's (or not the way it asked): an error page, and the wait goes on.
    Refused(StatusCode, String),
    /// This link's, with an error: the wait ends with it.
    Ended(StatusCode, String),
    /// This link's code: exchanged by a task that owns the answer.
    Exchange(AuthorizationCode, oneshot::Sender<Outcome>),
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
    let params = match (&method, state.mode) {
        (&Method::GET, Mode::Query) => query.unwrap_or_default(),
        (&Method::POST, Mode::FormPost) => {
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
                    Page::Error(
                        "The callback must be a form (application/x-www-form-urlencoded).".into(),
                    ),
                );
            }
            String::from_utf8_lossy(&body).into_owned()
        }
        (&Method::GET | &Method::POST, mode) => {
            let asked = match mode {
                Mode::Query => "in the redirect's query (a GET)",
                Mode::FormPost => "in a form POST (form_post)",
            };
            eprintln!(
                "tlauth: refused a {method} callback: the link asked for the code {asked}; still waiting"
            );
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                Page::Error(format!(
                    "The link asked for the code {asked}; this callback came another way and was refused."
                )),
            );
        }
        _ => {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                Page::Error("The callback is a GET or a form POST.".into()),
            );
        }
    };
    let decision = {
        let mut slot = state.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return page(
                StatusCode::GONE,
                Page::Error("This sign-in has already finished; you can close this tab.".into()),
            );
        }
        let end = |slot: &mut Option<oneshot::Sender<Outcome>>, failure: Failure| {
            if let Some(sender) = slot.take() {
                let _ = sender.send(Err(failure));
            }
        };
        match (state.check)(&params) {
            Ok(code) => match slot.take() {
                Some(sender) => Decision::Exchange(code, sender),
                None => Decision::Refused(
                    StatusCode::GONE,
                    "This sign-in has already finished.".into(),
                ),
            },
            // Not this link's redirect (a forged one, an old tab), whether it brings a code
            // or an error: refused, and the real one is still awaited.
            Err(
                e @ (CallbackError::MissingState
                | CallbackError::StateMismatch
                | CallbackError::DuplicateParameter(_)),
            ) => {
                eprintln!(
                    "tlauth: refused a redirect that is not this link's ({e}); still waiting"
                );
                Decision::Refused(
                    StatusCode::BAD_REQUEST,
                    format!("This is not the redirect of the link tlauth printed: {e}."),
                )
            }
            Err(e) if e.is_access_denied() => {
                end(
                    &mut slot,
                    Failure::failed(
                        "the user declined to connect a bank account (access_denied): nothing was connected",
                    ),
                );
                Decision::Ended(
                    StatusCode::OK,
                    "You declined to connect a bank account: nothing was connected.".into(),
                )
            }
            Err(e @ CallbackError::Refused { .. }) => {
                end(
                    &mut slot,
                    Failure::failed(format!(
                        "the auth dialog refused: {e}; nothing was connected"
                    )),
                );
                Decision::Ended(
                    StatusCode::OK,
                    format!("The bank account was not connected: {e}."),
                )
            }
            Err(e @ CallbackError::MissingCode) => {
                end(
                    &mut slot,
                    Failure::failed(format!(
                        "the redirect was not usable: {e}; nothing was connected"
                    )),
                );
                Decision::Ended(
                    StatusCode::BAD_REQUEST,
                    format!("The bank account was not connected: {e}."),
                )
            }
            Err(e) => {
                eprintln!("tlauth: refused a redirect ({e}); still waiting");
                Decision::Refused(
                    StatusCode::BAD_REQUEST,
                    format!("This redirect was refused: {e}."),
                )
            }
        }
    };
    let (code, sender) = match decision {
        Decision::Refused(status, why) | Decision::Ended(status, why) => {
            return page(status, Page::Error(why));
        }
        Decision::Exchange(code, sender) => (code, sender),
    };
    let (page_tx, page_rx) = oneshot::channel();
    let exchange = state.clone();
    tokio::spawn(async move {
        let result = match &exchange.connection {
            Some(id) => exchange
                .manager
                .connect_as(id, &code)
                .await
                .map(|()| id.clone()),
            None => exchange.manager.connect(&code).await,
        };
        drop(code);
        let (shown, outcome) = match result {
            Ok(id) => ((StatusCode::OK, Page::Connected), Ok(id)),
            Err(e) => (
                (
                    StatusCode::BAD_GATEWAY,
                    Page::Error(
                        "The bank account could not be connected: the code exchange failed. See the terminal for why.".into(),
                    ),
                ),
                Err(Failure::failed(format!(
                    "the authorization code could not be exchanged: {}",
                    connection_error(&e)
                ))),
            ),
        };
        // The page first: the listener closes once the outcome is in.
        let _ = page_tx.send(shown);
        let _ = sender.send(outcome);
    });
    match page_rx.await {
        Ok((status, shown)) => page(status, shown),
        Err(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Page::Error("See the terminal.".into()),
        ),
    }
}

/// The page the browser is shown.
enum Page {
    Connected,
    Error(String),
}

fn page(status: StatusCode, shown: Page) -> Response {
    let (title, body) = match shown {
        Page::Connected => (
            "Connected",
            "<h1 id=\"connected\">Connected, you can close this tab</h1>\n<p>Your bank account is connected; the terminal shows the connection's id.</p>".to_owned(),
        ),
        Page::Error(why) => ("Not connected", error_body(&why)),
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
/// repeats. Holds the PKCE verifier: written 0600, removed once used, wiped from memory
/// when dropped.
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

impl Drop for PendingFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.state);
        if let Some(v) = &mut self.code_verifier {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

/// `<store>.pending.json` beside a SQLite store; for a PostgreSQL one, a file named after
/// its URL in the default store's directory. One per store: another link for the same
/// store is refused while one is pending.
fn pending_path(store: &StoreArgs) -> Result<PathBuf, Failure> {
    Ok(match store.location()? {
        Location::Sqlite(path) => {
            let mut name = path.into_os_string();
            name.push(PENDING_SUFFIX);
            PathBuf::from(name)
        }
        Location::Postgres(url) => {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            url.hash(&mut hasher);
            store
                .dir()?
                .join(format!("postgres-{:016x}{PENDING_SUFFIX}", hasher.finish()))
        }
    })
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
    let Some(verifier) = pending.code_verifier() else {
        return Err(Failure::failed(
            "the auth link has no PKCE verifier: a code typed by hand could be anyone's",
        ));
    };
    // One link per store at a time: a second would replace the first's verifier, and the
    // code of the first would then fail.
    match load_pending(path) {
        Ok(Some(existing)) if unix_now() < existing.expires_at => {
            return Err(Failure::usage(format!(
                "a connection is already pending for this store ({}, usable for {} more \
                 minutes): finish it with `tlauth connect --code -`, or remove that file to \
                 start again",
                path.display(),
                (existing.expires_at - unix_now()).div_ceil(60)
            )));
        }
        // Expired, or none.
        Ok(_) => {}
        Err(e) if path.symlink_metadata().is_ok() => {
            return Err(Failure::failed(format!(
                "{}; remove it to start again",
                e.message
            )));
        }
        Err(_) => {}
    }
    let file = PendingFile {
        environment: environment.name(),
        client_id: pending.client_id().to_owned(),
        redirect_uri: pending.redirect_uri().to_owned(),
        scopes: pending.scopes().as_str().to_owned(),
        state: pending.state().to_owned(),
        code_verifier: Some(verifier.expose_secret().to_owned()),
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
    // An expired one is replaced; a new file (O_EXCL: never through a link planted there),
    // readable by this user only.
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

/// The pending authorization at `path`, if any: a regular file (a symbolic link is not
/// followed), this user's, mode 0600.
fn load_pending(path: &Path) -> Result<Option<PendingFile>, Failure> {
    let refused = |why: String| Failure::failed(format!("{}: {why}: refused", path.display()));
    let before = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refused(e.to_string())),
    };
    if before.file_type().is_symlink() {
        return Err(refused("a symbolic link, not the file tlauth wrote".into()));
    }
    if !before.is_file() {
        return Err(refused("not a regular file".into()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        rustix::fs::OFlags::NOFOLLOW.bits() as i32,
    );
    let mut file = options.open(path).map_err(|e| refused(e.to_string()))?;
    let opened = file.metadata().map_err(|e| refused(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        // The file opened is the one looked at (not one swapped in between).
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
            return Err(refused("it changed while being opened".into()));
        }
        if Some(opened.uid()) != own_uid() {
            return Err(refused(format!(
                "owned by uid {}, not by this user",
                opened.uid()
            )));
        }
        let mode = opened.mode() & 0o777;
        if mode != 0o600 {
            return Err(refused(format!(
                "mode {mode:o}, not 0600 (the PKCE verifier must be this user's alone)"
            )));
        }
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|e| refused(e.to_string()))?;
    serde_json::from_str(&text).map(Some).map_err(|_| {
        Failure::failed(format!(
            "{} is not a pending authorization of `tlauth connect`: remove it and start again",
            path.display()
        ))
    })
}

/// This process's effective user id.
#[cfg(unix)]
fn own_uid() -> Option<u32> {
    Some(rustix::process::geteuid().as_raw())
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
    let Some(mut saved) = load_pending(&path)? else {
        return Err(Failure::usage(format!(
            "no pending authorization at {}: start with `tlauth connect --redirect-uri URL` \
             (Console's redirect page), then pass the code it shows to `tlauth connect --code -`",
            path.display()
        )));
    };
    let Some(verifier) = saved.code_verifier.take() else {
        return Err(Failure::failed(format!(
            "{} has no PKCE verifier: tlauth did not write it (a code exchanged without one \
             could be anyone's); remove it and start again",
            path.display()
        )));
    };
    let verifier = zeroize::Zeroizing::new(verifier);
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
        Some(SecretString::from(verifier.as_str())),
    );
    drop(verifier);
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

/// `tlauth connections extend ID --redirect-uri URI`: asks TrueLayer to extend the
/// connection, sending the user's new code (when the bank wants the user) to `uri`; listens
/// there for it and renews the same connection with it.
///
/// The bank's link is TrueLayer's, not one tlauth built: tlauth adds a random `state` to it
/// (the dialog returns it with the code) so that a page that loads the redirect URI with a
/// code of its own does not end the wait, as for `tlauth connect`.
pub(crate) async fn extend_listening(
    manager: &ConnectionManager,
    client: &crate::config::Client,
    connection: &truelayer_auth_connections::Connection,
    uri: &str,
    open: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let id = &connection.id;
    let Redirect::Loopback { uri, addrs } = redirect(Some(uri), &client.environment)? else {
        return Err(Failure::usage(format!(
            "--redirect-uri `{uri}`: tlauth can receive the bank's code only on a loopback URI \
             it listens on, such as http://127.0.0.1:3000/callback (allow-listed for the client \
             in Console)"
        )));
    };
    // The listener first: the URI is sent to TrueLayer, so the port must be ours.
    let (uri, listeners) = bind(&uri, &addrs).await?;
    let extension = manager
        .extend_with_redirect_uri(id, &uri)
        .await
        .map_err(|e| crate::data::explained(&e, &client.environment))?;
    let link = match extension {
        truelayer_auth_connections::Extension::Extended => {
            eprintln!("tlauth: connection {id} extended: its consent lasts 90 days from now");
            println!("Extended");
            return Ok(());
        }
        truelayer_auth_connections::Extension::AuthenticationNeeded { user_input_link } => {
            user_input_link
        }
        other => {
            return Err(Failure::failed(format!(
                "an extension this tlauth does not know: {other:?}"
            )));
        }
    };
    let mut link = Url::parse(link.as_ref()).map_err(|e| {
        Failure::failed(format!(
            "TrueLayer's re-authentication link is not a URL: {e}"
        ))
    })?;
    let given = link
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    let state = match given {
        Some(state) => state,
        None => {
            // 122 random bits from the system's generator.
            let state = ConnectionId::random().to_string();
            link.query_pairs_mut().append_pair("state", &state);
            state
        }
    };
    let scopes = connection
        .scopes
        .parse::<DataScopes>()
        .map_err(|e| Failure::failed(format!("connection {id}'s scopes: {e}")))?;
    let client_id = connection.client_id.clone();
    let redirect_uri = uri.clone();
    let check: Check = Box::new(move |params| {
        reconsent_callback(params, &state, &client_id, &redirect_uri, &scopes)
    });
    eprintln!(
        "tlauth: the bank needs the user to authenticate again: open this link in a browser \
         (it renews connection {id}):"
    );
    eprintln!("{link}");
    if open {
        open_browser(&link);
    }
    eprintln!(
        "tlauth: waiting for the redirect to {uri} (up to {}; Ctrl-C stops)",
        humane(timeout)
    );
    listen(
        listeners,
        &uri,
        check,
        Mode::Query,
        manager.clone(),
        Some(id.clone()),
        timeout,
    )
    .await?;
    eprintln!("tlauth: connection {id} renewed: its consent lasts 90 days from now");
    println!("Extended");
    Ok(())
}

/// A re-authentication link's callback, checked as
/// [`PendingAuthorization::callback`] checks a link's: `state` first (for an error as for
/// a code), then the error, then the code. No PKCE: TrueLayer built the link.
fn reconsent_callback(
    params: &str,
    expected: &str,
    client_id: &str,
    redirect_uri: &str,
    scopes: &DataScopes,
) -> Result<AuthorizationCode, CallbackError> {
    let params = params.strip_prefix('?').unwrap_or(params);
    let (mut code, mut state, mut error, mut description) = (None, None, None, None);
    for (name, value) in url::form_urlencoded::parse(params.as_bytes()) {
        let (slot, name) = match name.as_ref() {
            "code" => (&mut code, "code"),
            "state" => (&mut state, "state"),
            "error" => (&mut error, "error"),
            "error_description" => (&mut description, "error_description"),
            _ => continue,
        };
        if slot.is_some() {
            return Err(CallbackError::DuplicateParameter(name));
        }
        *slot = Some(value.into_owned());
    }
    let state = state.ok_or(CallbackError::MissingState)?;
    // Not secret from the user, but compared without an early exit all the same.
    let same = state.len() == expected.len()
        && state
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(CallbackError::StateMismatch);
    }
    if let Some(error) = error {
        let clean = |s: &str, n: usize| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(n)
                .collect::<String>()
        };
        return Err(CallbackError::Refused {
            error: clean(&error, 64),
            description: description.map(|d| clean(&d, 300)),
        });
    }
    match code {
        Some(c) if !c.is_empty() => Ok(AuthorizationCode::new(
            SecretString::from(c),
            client_id,
            redirect_uri,
            scopes.clone(),
            None,
        )),
        _ => Err(CallbackError::MissingCode),
    }
}
