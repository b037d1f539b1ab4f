//! `tlauth`: TrueLayer payments access tokens from the command line, a local emulator, an
//! authenticating proxy, and Data API connections (`connect`, `data`, `connections`).

mod config;
mod connect;
mod data;
mod proxy;
mod sign;
mod store;
mod suggest;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use truelayer_auth::{RetryPolicy, TokenClient};
use truelayer_auth_emulator::{ADMIN_ROUTES, DEFAULT_ADDR, DEFAULT_PAYMENT_STEP, Emulator};

use crate::config::AuthArgs;

/// Get TrueLayer payments access tokens, run a local TrueLayer auth emulator, run an
/// authenticating proxy in front of the TrueLayer API, or connect users' bank accounts and
/// call the Data API with them.
#[derive(Debug, Parser)]
#[command(name = "tlauth", version)]
struct Cli {
    /// How log lines on standard error look: `text` (coloured only on a terminal) or `json`
    /// (one object a line, for log shippers). The level comes from RUST_LOG (default warn).
    // Under its own heading, so it follows each command's own options instead of sitting
    // among them.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Request a payments access token and print the token endpoint's JSON response.
    ///
    /// With no credentials and no environment configured, a token is requested from an
    /// embedded emulator, so this works offline.
    Token(AuthArgs),
    /// Run the TrueLayer auth emulator (token endpoint and Payments API stand-in) on 127.0.0.1.
    ///
    /// With --webhook-url, payments send TrueLayer's webhooks (`payment_authorized`,
    /// `payment_executed`, `payment_settled`, `payment_failed`) to that URL as they move,
    /// signed with a `Tl-Signature` whose `jku` names the emulator's webhook JWKS.
    ///
    /// Prints TRUELAYER_ENV, TRUELAYER_CLIENT_ID, TRUELAYER_CLIENT_SECRET,
    /// TRUELAYER_SIGNING_KEY_FILE (the client's request-signing key, written to a 0600 file
    /// removed at exit) and TRUELAYER_SIGNING_KEY_ID on standard output, and an `export`
    /// line of them on standard error; runs until interrupted (Ctrl-C or SIGTERM).
    #[command(after_help = ADMIN_ROUTES)]
    Emulator {
        /// The port to listen on (0 picks a free one).
        #[arg(long, default_value_t = DEFAULT_ADDR.port())]
        port: u16,
        /// POST payment webhooks to this http:// URL (the emulator has no TLS client).
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
        #[arg(long = "payment-step-ms", value_name = "MILLIS", help = payment_step_help())]
        payment_step: Option<u64>,
    },
    /// Listen on a loopback address and forward every request to the TrueLayer API with
    /// `Authorization: Bearer <token>` added.
    ///
    /// With no credentials configured it forwards to the embedded emulator's Payments
    /// stand-in (signing with the emulator's key), so it can be tried offline.
    Proxy(proxy::ProxyArgs),
    /// Print the `Tl-Signature` value for a request (for curl, Postman or Insomnia).
    Sign(sign::SignArgs),
    /// Check a `Tl-Signature` value against a request: exit 0 when valid, 1 with the reason.
    Verify(sign::VerifyArgs),
    /// Connect a user's bank account (Data API): print the auth link, receive the redirect
    /// on a loopback listener, exchange the code, store the connection and print its id.
    ///
    /// With no credentials configured it uses an embedded emulator, whose connections end
    /// with this command; run `tlauth emulator` in another terminal for ones that last.
    Connect(Box<connect::ConnectArgs>),
    /// Call the Data API with a stored connection's token (refreshed as needed) and print
    /// the JSON answer.
    Data(data::DataArgs),
    /// List, show, delete or extend the stored connections.
    #[command(subcommand)]
    Connections(data::ConnectionsCommand),
}

/// A failure with its exit code: 2 for usage and configuration, 1 for the work itself.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `tlauth emulator` and the embedded emulator are for development: `tlauth connect`'s
    // redirect URI is a free loopback port, which no Console allow-list could name.
    Emulator::set_loopback_redirects_by_default(true);
    // Without RUST_LOG: warnings, and the proxy's access log unless it is turned off.
    let default_filter = match &cli.command {
        Command::Proxy(args) if args.access_log == proxy::Switch::On => "warn,tlauth::access=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Escape codes only where a terminal will read them, not in a piped log.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // The proxy runs a single-threaded runtime per worker (the first on this thread), so a
    // request never crosses threads; everything else gets the multi-threaded one.
    let runtime = match matches!(cli.command, Command::Proxy(_))
        .then(tokio::runtime::Builder::new_current_thread)
        .unwrap_or_else(tokio::runtime::Builder::new_multi_thread)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tlauth: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Token(args) => token(args).await,
            Command::Emulator {
                port,
                webhook_url,
                payment_step,
            } => emulator(port, webhook_url, payment_step).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Sign(args) => sign::sign(args).await,
            Command::Verify(args) => sign::verify(args),
            Command::Connect(args) => connect::run(*args).await,
            Command::Data(args) => data::data(args).await,
            Command::Connections(command) => data::connections(command).await,
        }
    });
    // The work is done: blocking threads left (a DNS lookup, a stdin read) are not waited
    // for, so SIGTERM ends an idle proxy or emulator at once, not a second later.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tlauth: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn token(args: AuthArgs) -> Result<(), Failure> {
    let resolved = args.resolve().await?;
    let credentials = resolved.source.credentials().await.map_err(|e| {
        Failure::failed(format!(
            "the client credentials could not be loaded: {}",
            truelayer_auth::error_chain(&e)
        ))
    })?;
    let client = TokenClient::new().map_err(|e| Failure::usage(e.to_string()))?;
    let token = client
        .request_token(
            &resolved.environment,
            &credentials,
            &resolved.scopes,
            &RetryPolicy::default(),
        )
        .await
        .map_err(|e| Failure::failed(truelayer_auth::error_chain(&e)))?;
    let json = serde_json::json!({
        "access_token": token.secret().expose_secret(),
        "expires_in": token.lifetime().as_secs(),
        "token_type": "Bearer",
        "scope": token.granted_scope(),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json:#}").map_err(|e| Failure::failed(format!("writing the token: {e}")))
}

/// `--payment-step-ms`'s help, naming the emulator library's default.
fn payment_step_help() -> String {
    format!(
        "Move each new payment one status forward every this many milliseconds until it is \
         settled; 0 never moves them (POST /emulator/payments/{{id}}/status does). Defaults to \
         {} with --webhook-url, to 0 without.",
        DEFAULT_PAYMENT_STEP.as_millis()
    )
}

async fn emulator(
    port: u16,
    webhook_url: Option<String>,
    payment_step: Option<u64>,
) -> Result<(), Failure> {
    let addr = SocketAddr::new(DEFAULT_ADDR.ip(), port);
    let emulator = Emulator::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process listens there: choose another port with --port, or --port 0 for a free one"
        } else {
            ""
        };
        Failure::usage(format!("could not listen on {addr}: {e}{hint}"))
    })?;
    // The client's request-signing key, in a file only this user can read, for tools that
    // sign (`tlauth proxy`, `tlauth sign`): the Payments stand-in refuses unsigned POSTs.
    let key_file = KeyFile::write(&emulator)?;
    emulator
        .set_webhook_url(webhook_url.as_deref())
        .map_err(|e| {
            Failure::usage(format!(
                "--webhook-url: {}",
                truelayer_auth::error_chain(&e)
            ))
        })?;
    let step = match payment_step {
        Some(ms) => Duration::from_millis(ms),
        None if webhook_url.is_some() => DEFAULT_PAYMENT_STEP,
        None => Duration::ZERO,
    };
    let step = (!step.is_zero()).then_some(step);
    emulator.set_payment_schedule(step);
    eprintln!(
        "tlauth: TrueLayer auth emulator on {}; Payments API stand-in at {}/v3/payments; webhooks signed with jku {} (Ctrl-C stops it)",
        emulator.url(),
        emulator.url(),
        emulator.webhook_jku()
    );
    if let Some(url) = &webhook_url {
        // Without its query or fragment, where a receiver's secret may be.
        let url = url.split(['?', '#']).next().unwrap_or_default();
        match step {
            Some(step) => eprintln!(
                "tlauth: webhooks to {url}; each new payment moves one status every {} ms until settled",
                step.as_millis()
            ),
            None => eprintln!(
                "tlauth: webhooks to {url}; payments move with POST {}/emulator/payments/{{id}}/status",
                emulator.url()
            ),
        }
    }
    let key_lines = format!(
        "TRUELAYER_SIGNING_KEY_FILE={}\nTRUELAYER_SIGNING_KEY_ID={}\n",
        key_file.path.display(),
        emulator.signing_key_id()
    );
    let settings = format!("{}{key_lines}", emulator.env_lines());
    eprintln!(
        "tlauth: to use it from another shell: export {}",
        settings.lines().collect::<Vec<_>>().join(" ")
    );
    std::io::stdout()
        .write_all(settings.as_bytes())
        .map_err(|e| Failure::failed(e.to_string()))?;
    let stopped = shutdown_signal().await;
    drop(key_file);
    stopped
}

/// The emulator's signing key, written to a 0600 file in a new directory of its own (0700,
/// with a random name, made by `tempfile`: nobody else can have made it first, or put a
/// link where the key goes) under the temporary directory; removed when dropped.
struct KeyFile {
    /// Removed (with the file) when dropped.
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl KeyFile {
    fn write(emulator: &Emulator) -> Result<KeyFile, Failure> {
        let failed = |e: std::io::Error| {
            Failure::failed(format!(
                "could not write the emulator's signing key under {}: {e}",
                std::env::temp_dir().display()
            ))
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix("tlauth-emulator-");
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = builder.tempdir().map_err(failed)?;
        let path = dir.path().join("signing-key.pem");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)
            .and_then(|mut file| file.write_all(emulator.signing_key_pem().as_bytes()))
            .map_err(failed)?;
        Ok(KeyFile { _dir: dir, path })
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() -> Result<(), Failure> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure::failed(e.to_string()))?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.map_err(|e| Failure::failed(e.to_string())),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| Failure::failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // Clap checks names, ids and conflicts only when asked to, or on first use.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
