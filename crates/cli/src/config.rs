//! Where `tlauth` gets its environment and credentials from: flags, environment variables,
//! standard input, AWS Secrets Manager, or (with nothing configured) an embedded emulator.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use clap::Args;
use secrecy::SecretString;
use truelayer_auth::{
    ClientCredentials, ConfigError, CredentialsSource, Environment, Scope, Scopes,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_vault::SecretsManagerCredentials;

use crate::{Failure, suggest};

/// Environment and credentials, shared by every command that talks to TrueLayer.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// `sandbox`, `production`, or a base URL such as `http://127.0.0.1:8080` (a local
    /// emulator: `tlauth emulator` prints its TRUELAYER_ENV).
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
    /// Load the client_id and secret from this AWS Secrets Manager secret (JSON with
    /// client_id and client_secret), using the AWS default configuration chain.
    #[arg(long, env = "TRUELAYER_SECRET_ID", value_name = "SECRET_ID", conflicts_with_all = ["client_id", "client_secret_stdin"])]
    secret_id: Option<String>,
}

/// Environment, credentials and scopes, shared by `token` and `proxy`.
#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A scope to request; repeat for several. Default: payments.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Allow a scope set without `payments` (for tokens not used with the Payments API).
    #[arg(long)]
    without_payments: bool,
}

/// What the arguments resolved to.
pub(crate) struct Resolved {
    pub(crate) environment: Environment,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) kind: CredentialsKind,
    pub(crate) scopes: Scopes,
    /// The embedded emulator, when nothing was configured; dropping it stops it.
    pub(crate) embedded: Option<Emulator>,
}

/// The environment and client the arguments resolved to.
pub(crate) struct Client {
    pub(crate) environment: Environment,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) kind: CredentialsKind,
    /// The embedded emulator, when nothing was configured; dropping it stops it.
    pub(crate) embedded: Option<Emulator>,
}

/// Where the credentials came from, for what else that source can give (a signing key).
pub(crate) enum CredentialsKind {
    Given,
    Vault(SecretsManagerCredentials),
}

impl AuthArgs {
    pub(crate) async fn resolve(self) -> Result<Resolved, Failure> {
        let scopes = scopes(&self.scopes, self.without_payments)?;
        let client = self.client.resolve(Fallback::EmbeddedEmulator).await?;
        Ok(Resolved {
            environment: client.environment,
            source: client.source,
            kind: client.kind,
            scopes,
            embedded: client.embedded,
        })
    }
}

/// What to do when nothing at all is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Start an embedded emulator and use its default client.
    EmbeddedEmulator,
    /// Refuse, with this explanation of why an embedded emulator would not do.
    Refuse(&'static str),
}

impl ClientArgs {
    /// Whether the client secret is to be read from standard input.
    pub(crate) fn secret_from_stdin(&self) -> bool {
        self.client_secret_stdin
    }

    pub(crate) async fn resolve(self, fallback: Fallback) -> Result<Client, Failure> {
        // A mistake in the environment is named even when something else is missing too.
        let environment = self.environment.as_deref().map(parse_env).transpose()?;
        if let Some(secret_id) = self.secret_id {
            let environment = environment.ok_or_else(|| {
                Failure::usage("--secret-id needs an environment: pass --env sandbox|production|<URL> or set TRUELAYER_ENV")
            })?;
            let vault = SecretsManagerCredentials::builder(secret_id)
                .build()
                .await
                .map_err(|e| Failure::usage(truelayer_auth::error_chain(&e)))?;
            return Ok(Client {
                environment,
                source: Arc::new(vault.clone()),
                kind: CredentialsKind::Vault(vault),
                embedded: None,
            });
        }
        let secret = read_secret(self.client_secret_stdin)?;
        let (environment, credentials, embedded) = match (environment, self.client_id, secret) {
            (None, None, None) => {
                if let Fallback::Refuse(why) = fallback {
                    return Err(Failure::usage(format!(
                        "no environment or credentials configured (TRUELAYER_ENV, TRUELAYER_CLIENT_ID, \
                         TRUELAYER_CLIENT_SECRET); {why}"
                    )));
                }
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
                (env, creds, Some(emulator))
            }
            (None, Some(_), _) | (None, _, Some(_)) => {
                return Err(Failure::usage(
                    "credentials are configured but no environment: pass --env sandbox|production|<URL> \
                     or set TRUELAYER_ENV (production is never chosen by default)",
                ));
            }
            (Some(_), None, _) => {
                return Err(Failure::usage(
                    "no client_id: pass --client-id or set TRUELAYER_CLIENT_ID (or use --secret-id)",
                ));
            }
            (Some(_), Some(_), None) => {
                return Err(Failure::usage(
                    "no client secret: set TRUELAYER_CLIENT_SECRET or pipe it with --client-secret-stdin",
                ));
            }
            (Some(env), Some(id), Some(secret)) => (env, credentials(&id, secret)?, None),
        };
        Ok(Client {
            environment,
            source: Arc::new(credentials),
            kind: CredentialsKind::Given,
            embedded,
        })
    }
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
    result.map_err(|e| match e {
        // The library's text names its Rust API; here the way out is a flag.
        ConfigError::MissingPaymentsScope { requested } => {
            let known = Scope::KNOWN.iter().map(Scope::as_str);
            let next = match given
                .iter()
                .find_map(|s| suggest::closest(s, known.clone()))
            {
                Some(meant) => format!(": did you mean `{meant}`? Otherwise add"),
                None => "; add".to_owned(),
            };
            Failure::usage(format!(
                "the scopes `{requested}` lack `payments`, which every Payments API request \
                 needs{next} --scope payments, or pass --without-payments for a token that is \
                 not used with the Payments API"
            ))
        }
        e => Failure::usage(e.to_string()),
    })
}

/// The example base URL of `--env`'s help, repeated in its errors so the two agree.
const ENV_EXAMPLE: &str = "http://127.0.0.1:8080";

/// `sandbox` or `production` in any case, or a base URL; a host without its scheme and a
/// misspelt name are answered with what was likely meant.
fn parse_env(s: &str) -> Result<Environment, Failure> {
    let unknown = match s.parse() {
        Ok(env) => return Ok(env),
        Err(ConfigError::UnknownEnvironment(unknown)) => unknown,
        Err(e) => return Err(Failure::usage(format!("--env/TRUELAYER_ENV: {e}"))),
    };
    let what = format!("unknown environment `{unknown}` (--env or TRUELAYER_ENV)");
    if let Some(meant) = suggest::closest(&unknown, ["sandbox", "production"]) {
        return Err(Failure::usage(format!("{what}: did you mean `{meant}`?")));
    }
    if let Some(url) = with_scheme(&unknown) {
        return Err(Failure::usage(format!(
            "{what}: a base URL needs its scheme, as in `{url}`"
        )));
    }
    Err(Failure::usage(format!(
        "{what}: use `sandbox`, `production`, or a base URL such as `{ENV_EXAMPLE}`"
    )))
}

/// `host[:port][/path]` with the scheme it can use: `http` for loopback, `https` otherwise.
fn with_scheme(given: &str) -> Option<String> {
    let authority = given.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let looks_like_host = loopback || host.contains('.') || authority.contains(':');
    let scheme = if loopback { "http" } else { "https" };
    looks_like_host.then(|| format!("{scheme}://{given}"))
}

fn credentials(id: &str, secret: SecretString) -> Result<ClientCredentials, Failure> {
    ClientCredentials::new(id, secret).map_err(|e| Failure::usage(e.to_string()))
}
