//! `tlauth data` (a Data API call with a stored connection's token) and `tlauth
//! connections` (list, show, delete, extend).

use std::io::Write as _;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::Environment;
use truelayer_auth_connections::{
    Connection, ConnectionError, ConnectionId, ConnectionManager, ConnectionStore, Extension,
};
use truelayer_auth_tower::{BearerAuthError, BearerAuthLayer, CloneBodies, ReqwestService};

use crate::Failure;
use crate::config::{Client, ClientArgs, Fallback};
use crate::connect::NO_EMBEDDED;
use crate::store::{self, StoreArgs};

/// `tlauth data`'s options.
#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    /// The method: GET (the Data API v1 is read-only).
    method: String,
    /// The path, with or without `/data/v1` (`/data/v1/accounts`, `/accounts/ID/balance`,
    /// `/accounts/ID/transactions?from=2024-01-01`), joined to the environment's Data API.
    path: String,
    /// The stored connection whose token authorizes the call (`tlauth connections list`).
    #[arg(long, value_name = "ID")]
    connection: ConnectionId,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// `tlauth connections`'s subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// List the stored connections (never their tokens).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one connection: status, provider, scopes, consent expiry, whether it can be
    /// refreshed (never its tokens).
    Show {
        /// The connection's id.
        id: ConnectionId,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a connection at TrueLayer and mark it deleted.
    Delete {
        /// The connection's id.
        id: ConnectionId,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Extend a connection's consent by 90 days (UK): done, or a link the user must follow.
    ///
    /// When the bank wants the user to authenticate again, the link's code goes to a
    /// redirect URI: with --redirect-uri (a loopback one allow-listed for the client), this
    /// command listens there, receives the code and renews the same connection with it.
    Extend {
        /// The connection's id.
        id: ConnectionId,
        /// Where the bank's new code is sent when the user must authenticate again: a
        /// loopback URI (`http://127.0.0.1:PORT/callback`) allow-listed for the client in
        /// Console, listened on until the code comes back.
        #[arg(long, value_name = "URL")]
        redirect_uri: Option<String>,
        /// Open the link in the default browser (with --redirect-uri).
        #[arg(long, requires = "redirect_uri")]
        open: bool,
        /// How long to wait for the redirect (with --redirect-uri): seconds, or with a
        /// unit (`90s`, `10m`).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::connect::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The store's manager, for commands that call TrueLayer with a stored connection.
async fn manager(
    client: ClientArgs,
    store: &StoreArgs,
) -> Result<(Client, ConnectionManager), Failure> {
    let client = client.resolve(Fallback::Refuse(NO_EMBEDDED)).await?;
    let manager = manager_for(&client, store).await?;
    Ok((client, manager))
}

/// The store's manager for a resolved client.
async fn manager_for(client: &Client, store: &StoreArgs) -> Result<ConnectionManager, Failure> {
    let Some(sqlite) = store.open(false).await? else {
        return Err(no_store(store));
    };
    store::manager(client, sqlite)
}

fn no_store(store: &StoreArgs) -> Failure {
    let path = store.describe();
    Failure::failed(format!(
        "no connections store at {path}: connect a bank account first with `tlauth connect` (or choose the store with --store)"
    ))
}

/// The stored connection `id`, checked to be usable with `client`.
async fn usable(
    manager: &ConnectionManager,
    client: &Client,
    id: &ConnectionId,
) -> Result<Connection, Failure> {
    let connection = manager
        .get(id)
        .await
        .map_err(|e| explain(&e, &client.environment))?;
    let configured = client
        .source
        .credentials()
        .await
        .map_err(|e| {
            Failure::failed(format!(
                "the client credentials could not be loaded: {}",
                truelayer_auth::error_chain(&e)
            ))
        })?
        .client_id()
        .to_owned();
    if connection.client_id != configured {
        return Err(Failure::usage(format!(
            "connection {id} belongs to the client {}, but the configured client is {configured}: \
             configure that client (TRUELAYER_CLIENT_ID and its secret)",
            connection.client_id
        )));
    }
    Ok(connection)
}

/// `tlauth data METHOD PATH --connection ID`.
pub(crate) async fn data(args: DataArgs) -> Result<(), Failure> {
    if !args.method.eq_ignore_ascii_case("GET") {
        return Err(Failure::usage(format!(
            "`{}`: only GET is supported (the Data API v1 is read-only; to remove a connection, \
             `tlauth connections delete ID`)",
            args.method
        )));
    }
    let client = args.client.resolve(Fallback::Refuse(NO_EMBEDDED)).await?;
    let url = data_url(&client.environment, &args.path)?;
    let manager = manager_for(&client, &args.store).await?;
    usable(&manager, &client, &args.connection).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("tlauth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::failed(format!("the HTTP client: {e}")))?;
    let service = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(manager.clone()).replay_policy(CloneBodies))
        .service(ReqwestService::new(http));
    let mut request = http::Request::get(url.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(bytes::Bytes::new())
        .map_err(|e| Failure::usage(format!("the request: {e}")))?;
    request.extensions_mut().insert(args.connection.clone());
    let shown = format!("GET {}", url.path());
    let response = service.oneshot(request).await.map_err(|e| match e {
        BearerAuthError::Token(e) => token_failure(&e, &args.connection, &client.environment),
        BearerAuthError::Service(e) => {
            let hint = unreachable_hint(e.is_connect(), &client.environment);
            Failure::failed(format!(
                "{shown}: {}{hint}",
                truelayer_auth::error_chain(&e.without_url())
            ))
        }
        e => Failure::failed(format!("{shown}: {e}")),
    })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::failed(format!("{shown}: reading the answer: {e}")))?
        .to_bytes();
    let value: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        let field = |name: &str| {
            value
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(serde_json::Value::as_str)
                .map(|s| {
                    s.chars()
                        .filter(|c| !c.is_control())
                        .take(300)
                        .collect::<String>()
                })
        };
        let error = match (field("error"), field("error_description")) {
            (Some(e), Some(d)) => format!(": TrueLayer's error `{e}` ({d})"),
            (Some(e), None) => format!(": TrueLayer's error `{e}`"),
            _ => String::new(),
        };
        let hint = match field("error").as_deref() {
            Some("access_denied" | "sca_exceeded") => format!(
                "; the user must connect again (`tlauth connect --connection {}`)",
                args.connection
            ),
            _ => String::new(),
        };
        return Err(Failure::failed(format!(
            "{shown} answered {status}{error}{hint}"
        )));
    }
    let mut stdout = std::io::stdout().lock();
    let written = match value {
        Some(v) => writeln!(stdout, "{v:#}"),
        None => stdout
            .write_all(&body)
            .and_then(|()| stdout.write_all(b"\n")),
    };
    written.map_err(|e| Failure::failed(format!("writing the answer: {e}")))
}

/// `path` joined to the environment's Data API base, `/data/v1` given or not.
fn data_url(environment: &Environment, path: &str) -> Result<url::Url, Failure> {
    if path.contains("://") || path.starts_with("//") {
        return Err(Failure::usage(format!(
            "`{path}`: give a path such as /data/v1/accounts; the host is the environment's"
        )));
    }
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let refused = || {
        Failure::usage(format!(
            "`{path}`: a path that leaves the Data API (`.` or `..` segments, encoded or not, \
             or `\\`) is refused"
        ))
    };
    // `\` is a `/` to a URL parser, and `%2e` a `.` in a segment.
    let dots = |segment: &str| {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    };
    if path_only.contains('\\') || path_only.split('/').any(dots) {
        return Err(refused());
    }
    let trimmed = path_only.trim_start_matches('/');
    let rest = trimmed
        .strip_prefix("data/v1")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(trimmed)
        .trim_start_matches('/');
    let mut url = environment.data_api_url();
    let origin = url.origin();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}/{rest}"));
    url.set_query(query);
    // Whatever the parser made of it, the request stays under the Data API.
    if url.origin() != origin || !url.path().starts_with(&format!("{base}/")) {
        return Err(refused());
    }
    Ok(url)
}

/// Why no token could be had for `id`, with what to do.
fn token_failure(e: &truelayer_auth::Error, id: &ConnectionId, env: &Environment) -> Failure {
    if let truelayer_auth::Error::Refresh(r) = e
        && let Some(ours) = r.get_ref().downcast_ref::<ConnectionError>()
    {
        return explain(ours, env);
    }
    Failure::failed(format!(
        "no access token for connection {id}: {}{}",
        truelayer_auth::error_chain(e),
        unreachable_hint(e.is_connect(), env)
    ))
}

/// A connection error with what to do about it.
fn explain(e: &ConnectionError, env: &Environment) -> Failure {
    let chain = truelayer_auth::error_chain(e);
    let hint = match e {
        ConnectionError::NotFound(_) => {
            " in the store (`tlauth connections list` shows those it holds)".to_owned()
        }
        ConnectionError::NeedsReconnect(id) | ConnectionError::NoRefreshToken(id) => {
            let emulator = if is_local(env) {
                " (a connection made on an emulator ends with that emulator)"
            } else {
                ""
            };
            format!("; reconnect with `tlauth connect --connection {id}`{emulator}")
        }
        _ => unreachable_hint(connect_failure(e), env).to_owned(),
    };
    Failure::failed(format!("{chain}{hint}"))
}

/// Whether a connection error's cause is a refused or failed connection.
fn connect_failure(e: &ConnectionError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<truelayer_auth::Error>()
            && t.is_connect()
        {
            return true;
        }
        if let Some(r) = s.downcast_ref::<reqwest::Error>()
            && r.is_connect()
        {
            return true;
        }
        // A source behind an `Arc` hides its own type: the system's answer still shows.
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn is_local(env: &Environment) -> bool {
    env.auth_url().host().is_some_and(|h| match h {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    })
}

/// What to say when `environment` could not be reached.
fn unreachable_hint(connect_failed: bool, environment: &Environment) -> &'static str {
    match (connect_failed, is_local(environment)) {
        (true, true) => {
            "; is `tlauth emulator` still running? (TRUELAYER_ENV names one that does not answer; a connection lives as long as the emulator that made it)"
        }
        (true, false) => "; check the network",
        _ => "",
    }
}

/// `tlauth connections ...`.
pub(crate) async fn connections(command: ConnectionsCommand) -> Result<(), Failure> {
    match command {
        ConnectionsCommand::List { json, store } => {
            let Some(sqlite) = store.open(false).await? else {
                if json {
                    println!("[]");
                } else {
                    eprintln!("tlauth: no connections (no store at {})", store.describe());
                }
                return Ok(());
            };
            let mut rows: Vec<Connection> = sqlite
                .list()
                .await
                .map_err(|e| store_failure(&e))?
                .iter()
                .map(Connection::from)
                .collect();
            rows.sort_by_key(|c| c.consented_at);
            if json {
                let list: Vec<_> = rows.iter().map(to_json).collect();
                println!("{:#}", serde_json::Value::Array(list));
            } else if rows.is_empty() {
                eprintln!("tlauth: no connections in {}", sqlite.describe());
            } else {
                print!("{}", table(&rows));
            }
            Ok(())
        }
        ConnectionsCommand::Show { id, json, store } => {
            let Some(sqlite) = store.open(false).await? else {
                return Err(no_store(&store));
            };
            let row = sqlite
                .get(&id)
                .await
                .map_err(|e| store_failure(&e))?
                .ok_or_else(|| {
                    Failure::failed(format!(
                        "no connection {id} in {} (`tlauth connections list` shows those it holds)",
                        sqlite.describe()
                    ))
                })?;
            let connection = Connection::from(&row);
            if json {
                println!("{:#}", to_json(&connection));
            } else {
                print!("{}", details(&connection));
            }
            Ok(())
        }
        ConnectionsCommand::Delete { id, client, store } => {
            let (client, manager) = manager(client, &store).await?;
            usable(&manager, &client, &id).await?;
            manager
                .delete(&id)
                .await
                .map_err(|e| explain(&e, &client.environment))?;
            eprintln!("tlauth: connection {id} revoked at TrueLayer and marked deleted");
            Ok(())
        }
        ConnectionsCommand::Extend {
            id,
            redirect_uri,
            open,
            timeout,
            client,
            store,
        } => {
            let (client, manager) = manager(client, &store).await?;
            let connection = usable(&manager, &client, &id).await?;
            if let Some(uri) = redirect_uri {
                return crate::connect::extend_listening(
                    &manager,
                    &client,
                    &connection,
                    &uri,
                    open,
                    timeout,
                )
                .await;
            }
            match manager
                .extend(&id)
                .await
                .map_err(|e| explain(&e, &client.environment))?
            {
                Extension::Extended => {
                    eprintln!(
                        "tlauth: connection {id} extended: its consent lasts 90 days from now"
                    );
                    println!("Extended");
                }
                Extension::AuthenticationNeeded { user_input_link } => {
                    eprintln!(
                        "tlauth: the bank needs the user to authenticate again. The link below \
                         sends its code to the redirect URI the connection was made with, where \
                         nothing of tlauth receives it now: to finish, run `tlauth connections \
                         extend {id} --redirect-uri http://127.0.0.1:PORT/callback` (a loopback \
                         URI allow-listed for the client), which listens for the code and renews \
                         this connection, or reconnect with `tlauth connect --connection {id}`"
                    );
                    println!("{user_input_link}");
                }
                other => {
                    return Err(Failure::failed(format!(
                        "an extension this tlauth does not know: {other:?}"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// A connection error with what to do about it (for `connect`'s extension).
pub(crate) fn explained(e: &ConnectionError, env: &Environment) -> Failure {
    explain(e, env)
}

fn store_failure(e: &truelayer_auth_connections::StoreError) -> Failure {
    Failure::failed(format!(
        "the connections store: {}",
        truelayer_auth::error_chain(e)
    ))
}

/// RFC 3339, to the second, UTC.
fn time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into())
}

fn to_json(c: &Connection) -> serde_json::Value {
    serde_json::json!({
        "id": c.id.as_str(),
        "status": c.status.as_str(),
        "client_id": c.client_id,
        "provider_id": c.provider_id,
        "credentials_id": c.credentials_id,
        "scopes": c.scopes,
        "consented_at": time(c.consented_at),
        "consent_expires_at": time(c.consent_expires_at),
        "access_expires_at": time(c.access_expires_at),
        "refreshable": c.refreshable,
        "version": c.version,
    })
}

fn table(rows: &[Connection]) -> String {
    let header = ["ID", "STATUS", "PROVIDER", "CONSENT EXPIRES", "REFRESHABLE"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|c| {
            [
                c.id.to_string(),
                c.status.as_str().to_owned(),
                c.provider_id.clone().unwrap_or_else(|| "-".into()),
                time(c.consent_expires_at),
                if c.refreshable { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn details(c: &Connection) -> String {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    format!(
        "id:                 {}\nstatus:             {}\nclient_id:          {}\nprovider:           {}\ncredentials_id:     {}\nscopes:             {}\nconsented at:       {}\nconsent expires at: {}\naccess token until: {}\nrefreshable:        {}\n",
        c.id,
        c.status.as_str(),
        c.client_id,
        or_unknown(&c.provider_id),
        or_unknown(&c.credentials_id),
        c.scopes,
        time(c.consented_at),
        time(c.consent_expires_at),
        time(c.access_expires_at),
        if c.refreshable {
            "yes"
        } else {
            "no (no offline_access)"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_the_data_api_with_or_without_its_prefix() {
        let env = Environment::custom("http://127.0.0.1:9").unwrap();
        for (given, want) in [
            ("/data/v1/accounts", "http://127.0.0.1:9/data/v1/accounts"),
            ("/accounts", "http://127.0.0.1:9/data/v1/accounts"),
            (
                "accounts/a1/balance",
                "http://127.0.0.1:9/data/v1/accounts/a1/balance",
            ),
            ("/data/v1", "http://127.0.0.1:9/data/v1/"),
            (
                "/data/v1/accounts/a/transactions?from=2024-01-01",
                "http://127.0.0.1:9/data/v1/accounts/a/transactions?from=2024-01-01",
            ),
            ("/data/v10/x", "http://127.0.0.1:9/data/v1/data/v10/x"),
        ] {
            assert_eq!(data_url(&env, given).unwrap().as_str(), want, "{given}");
        }
        assert_eq!(
            data_url(&Environment::Sandbox, "/data/v1/me")
                .unwrap()
                .as_str(),
            "https://api.truelayer-sandbox.com/data/v1/me"
        );
        for bad in [
            "https://evil.example/x",
            "//evil.example/x",
            "/data/v1/../../x",
            "/data/v1/%2e%2e/%2e%2e/x",
            "/data/v1/.%2e/x",
            "/data/v1/%2E./x",
            "/accounts/..\\..\\..\\x",
            "\\..\\x",
        ] {
            assert!(data_url(&env, bad).is_err(), "{bad}");
        }
    }
}
