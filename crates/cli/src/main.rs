//! `tlauth`: TrueLayer payments access tokens from the command line.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use truelayer_auth::{ClientCredentials, Environment, Scope, Scopes, TokenClient};
use truelayer_auth_emulator::Emulator;

/// Get TrueLayer payments access tokens, or run a local TrueLayer auth emulator.
#[derive(Debug, Parser)]
#[command(name = "tlauth", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Request a payments access token and print the token endpoint's JSON response.
    ///
    /// With no credentials and no environment configured, a token is requested from an
    /// embedded emulator, so this works offline.
    Token(TokenArgs),
    /// Run the TrueLayer auth emulator (token endpoint and Payments API stand-in) on 127.0.0.1.
    Emulator {
        /// The port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// `sandbox`, `production`, or a base URL such as http://127.0.0.1:8080.
    #[arg(long = "env", env = "TRUELAYER_ENV", value_name = "ENV")]
    environment: Option<String>,
    /// The client_id from TrueLayer Console.
    #[arg(long, env = "TRUELAYER_CLIENT_ID")]
    client_id: Option<String>,
    /// Read the client secret from the first line of standard input. Otherwise it is read
    /// from TRUELAYER_CLIENT_SECRET; it is never taken as a flag, which would land in shell
    /// history.
    #[arg(long)]
    client_secret_stdin: bool,
    /// A scope to request; repeat for several. Default: payments.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Allow a scope set without `payments` (for tokens not used with the Payments API).
    #[arg(long)]
    without_payments: bool,
}

/// A failure with its exit code: 2 for usage and configuration, 1 for the token request.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            Command::Emulator { port } => emulator(port).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tlauth: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn token(args: TokenArgs) -> Result<(), Failure> {
    let secret = read_secret(args.client_secret_stdin)?;
    let scopes = scopes(&args.scopes, args.without_payments)?;
    let mut _embedded = None;
    let (environment, credentials) = match (args.environment, args.client_id, secret) {
        (None, None, None) => {
            let emulator = Emulator::start().await.map_err(|e| {
                Failure::usage(format!("could not start the embedded emulator: {e}"))
            })?;
            eprintln!(
                "tlauth: no credentials configured (TRUELAYER_CLIENT_ID, TRUELAYER_CLIENT_SECRET); \
                 using the embedded emulator at {}",
                emulator.url()
            );
            let env = parse_env(&emulator.url())?;
            let creds = credentials(emulator.client_id(), emulator.client_secret().into())?;
            _embedded = Some(emulator);
            (env, creds)
        }
        (None, Some(_), _) | (None, _, Some(_)) => {
            return Err(Failure::usage(
                "credentials are configured but no environment: pass --env sandbox|production|<URL> \
                 or set TRUELAYER_ENV (production is never chosen by default)",
            ));
        }
        (Some(_), None, _) => {
            return Err(Failure::usage(
                "no client_id: pass --client-id or set TRUELAYER_CLIENT_ID",
            ));
        }
        (Some(_), Some(_), None) => {
            return Err(Failure::usage(
                "no client secret: set TRUELAYER_CLIENT_SECRET or pipe it with --client-secret-stdin",
            ));
        }
        (Some(env), Some(id), Some(secret)) => (parse_env(&env)?, credentials(&id, secret)?),
    };
    let client = TokenClient::new().map_err(|e| Failure::usage(e.to_string()))?;
    let token = client
        .request_token(&environment, &credentials, &scopes)
        .await
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
    let json = serde_json::json!({
        "access_token": token.secret().expose_secret(),
        "expires_in": token.lifetime().as_secs(),
        "token_type": "Bearer",
        "scope": token.granted_scope(),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json:#}").map_err(|e| Failure::usage(format!("writing the token: {e}")))
}

async fn emulator(port: u16) -> Result<(), Failure> {
    let emulator = Emulator::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| Failure::usage(format!("could not listen on 127.0.0.1:{port}: {e}")))?;
    eprintln!(
        "tlauth: TrueLayer auth emulator on {}; Payments API stand-in at {}/v3/payments (Ctrl-C stops it)",
        emulator.url(),
        emulator.url()
    );
    std::io::stdout()
        .write_all(emulator.env_lines().as_bytes())
        .map_err(|e| Failure::usage(e.to_string()))?;
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::usage(e.to_string()))
}

fn read_secret(from_stdin: bool) -> Result<Option<SecretString>, Failure> {
    if from_stdin {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("tlauth: paste the client secret and press Enter:");
        }
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("reading the secret from standard input: {e}")))?;
        let secret = SecretString::from(line.trim_end_matches(['\r', '\n']));
        secrecy::zeroize::Zeroize::zeroize(&mut line);
        return Ok(Some(secret));
    }
    match std::env::var("TRUELAYER_CLIENT_SECRET") {
        Ok(s) => Ok(Some(SecretString::from(s))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Failure::usage(
            "TRUELAYER_CLIENT_SECRET is not valid Unicode",
        )),
    }
}

fn scopes(given: &[String], without_payments: bool) -> Result<Scopes, Failure> {
    if given.is_empty() {
        return Ok(Scopes::payments());
    }
    let parsed = given
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let result = if without_payments {
        Scopes::without_payments(parsed)
    } else {
        Scopes::new(parsed)
    };
    result.map_err(|e| Failure::usage(e.to_string()))
}

fn parse_env(s: &str) -> Result<Environment, Failure> {
    s.parse()
        .map_err(|e: truelayer_auth::ConfigError| Failure::usage(e.to_string()))
}

fn credentials(id: &str, secret: SecretString) -> Result<ClientCredentials, Failure> {
    ClientCredentials::new(id, secret).map_err(|e| Failure::usage(e.to_string()))
}
