//! `tlauth proxy`: the arguments, and where the signing key comes from. The proxy itself is
//! the `truelayer-auth-proxy` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use truelayer_auth::{Environment, TokenCache};
use truelayer_auth_proxy::Proxy;
use truelayer_auth_signing::{Signer, SignerFuture, SignerSource};
use truelayer_auth_vault::SecretsManagerCredentials;

use crate::Failure;
use crate::config::{AuthArgs, CredentialsKind, Resolved};

/// Options of `tlauth proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The address to listen on. Port 0 picks a free one (printed on standard error).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = listen_address)]
    listen: SocketAddr,
    /// Listen on an address that is not loopback. Anything that can reach it can then
    /// spend the merchant's token.
    #[arg(long)]
    allow_remote: bool,
    /// A `Host` (name or name:port) clients may use besides the listen address and
    /// localhost; repeat for several. Other hosts are refused (DNS rebinding protection).
    #[arg(long = "allow-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// A browser `Origin` allowed to use the proxy; repeat for several. Requests from other
    /// origins, and cross-site browser requests, are refused.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// The API base URL to forward to. Default: the environment's Payments API
    /// (`https://api.truelayer-sandbox.com` for sandbox), or the emulator for a loopback
    /// environment.
    #[arg(long)]
    upstream: Option<String>,
    /// Request bodies up to this many bytes (chunked ones too) are held so the request can be
    /// replayed after a 401; larger ones are streamed and their 401 is returned as is.
    #[arg(long, default_value_t = 64 * 1024)]
    replay_limit: u64,
    /// The proxy's own endpoints: `<PATH>/healthz` and `<PATH>/metrics`.
    #[arg(long, default_value = "/.tlauth", value_name = "PATH")]
    admin_path: String,
    /// Seconds a client may take to send request headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client may take to send a request body (whoever reads it: the proxy, the
    /// signing, the upstream); then 408.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Seconds a client may pause between two parts of a request body; then 408.
    #[arg(long, default_value_t = 10)]
    body_idle_timeout: u64,
    /// MiB that the request bodies held at once (for a replay, or for signing) may take,
    /// across every connection; a request that finds no room gets 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    body_memory_mib: u64,
    /// One line per request at info (method, path without query, status, upstream and total
    /// time, signed, replayed, bytes; never a header value or body), in the --log-format.
    #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off")]
    pub(crate) access_log: Switch,
    /// The most client connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Threads serving requests, each with its own runtime and upstream connection pool,
    /// accepting from the one listening socket (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Seconds in-flight requests get to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// The P-521 private key (PEM) to sign POST, PUT, PATCH and DELETE requests with.
    #[arg(long, env = "TRUELAYER_SIGNING_KEY_FILE", value_name = "PATH")]
    signing_key_file: Option<PathBuf>,
    /// Sign with this AWS KMS key instead (an `ECC_NIST_P521` `SIGN_VERIFY` key: its id,
    /// ARN or alias); the private key never leaves KMS: one `kms:Sign` per signed request.
    /// AWS region and credentials come from the default chain.
    #[arg(
        long,
        env = "TRUELAYER_SIGNING_KMS_KEY_ID",
        value_name = "KMS_KEY_ID",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
        conflicts_with = "signing_key_file"
    )]
    signing_kms_key_id: Option<String>,
    /// The id TrueLayer Console shows for the signing key's public half.
    #[arg(long, env = "TRUELAYER_SIGNING_KEY_ID", value_name = "KID")]
    signing_key_id: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

/// Where the proxy's signer comes from: a key file, or the Secrets Manager secret.
#[derive(Clone)]
enum Keys {
    Fixed(Signer),
    Vault(SecretsManagerCredentials),
}

impl SignerSource for Keys {
    fn signer(&self, request: &http::Extensions) -> SignerFuture<'_> {
        match self {
            Keys::Fixed(signer) => signer.signer(request),
            Keys::Vault(vault) => vault.signer(request),
        }
    }
    fn reload(&self, request: &http::Extensions) -> SignerFuture<'_> {
        match self {
            Keys::Fixed(signer) => signer.reload(request),
            Keys::Vault(vault) => SignerSource::reload(vault, request),
        }
    }
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(Failure::usage(format!(
            "refusing to listen on {}: it is not a loopback address, and anything that can reach it \
             could spend the merchant's token; pass --allow-remote if that is really wanted",
            args.listen
        )));
    }
    // Both or neither, said before anything else is looked at.
    let signing_key = crate::sign::signing_key(
        args.signing_key_file.as_deref(),
        args.signing_kms_key_id.as_deref(),
        args.signing_key_id.as_deref(),
    )?;
    let resolved = args.auth.resolve().await?;
    let Upstream {
        url: upstream,
        emulator,
    } = upstream(args.upstream.as_deref(), &resolved)?;
    let keys = keys(signing_key, &resolved).await?;
    let tokens = TokenCache::builder(resolved.environment.clone(), resolved.source.clone())
        .scopes(resolved.scopes.clone())
        .build()
        .map_err(|e| Failure::usage(e.to_string()))?;
    // Fetch the first token now: a configuration error shows at start, not on the first call.
    // (The cache has logged the failure with its cause: not repeated here.)
    if let Err(e) = tokens.token().await {
        tracing::error!(
            kind = e.kind_name(),
            "no token at start; requests get 502 until one can be had"
        );
    }
    let mut builder = Proxy::builder(upstream.clone(), tokens)
        .listen(args.listen)
        .allow_remote(args.allow_remote)
        .admin_path(args.admin_path.clone())
        .replay_limit(args.replay_limit)
        .header_read_timeout(Duration::from_secs(args.header_timeout.max(1)))
        .body_timeout(Duration::from_secs(args.body_timeout.max(1)))
        .body_idle_timeout(Duration::from_secs(args.body_idle_timeout.max(1)))
        .body_memory(args.body_memory_mib.saturating_mul(1 << 20))
        .access_log(args.access_log == Switch::On)
        .max_connections(args.max_connections)
        .workers(match args.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        })
        .drain_timeout(Duration::from_secs(args.shutdown_timeout));
    if emulator {
        // Its admin routes (`ADMIN_ROUTES`: rotate a client's secret, revoke tokens, inject
        // faults) are for whoever runs it, not for whoever can reach the proxy.
        builder = builder.refuse_path(EMULATOR_ADMIN);
    }
    for host in args.allowed_hosts {
        builder = builder.allow_host(host);
    }
    for origin in args.allowed_origins {
        builder = builder.allow_origin(origin);
    }
    match keys {
        Some(keys) => {
            let running = builder.signer(keys).build().map_err(usage)?.bind().await;
            serve(
                running.map_err(usage)?,
                &upstream,
                true,
                &args.admin_path,
                resolved,
            )
            .await
        }
        None => {
            let running = builder.build().map_err(usage)?.bind().await;
            serve(
                running.map_err(usage)?,
                &upstream,
                false,
                &args.admin_path,
                resolved,
            )
            .await
        }
    }
}

async fn serve<K: SignerSource>(
    running: truelayer_auth_proxy::RunningProxy<K>,
    upstream: &str,
    signing: bool,
    admin: &str,
    resolved: Resolved,
) -> Result<(), Failure> {
    let local = running.local_addr();
    eprintln!(
        "tlauth: proxy listening on http://{local} -> {upstream}{} (health at http://{local}{admin}/healthz)",
        if signing { ", signing requests" } else { "" }
    );
    if !signing {
        // TrueLayer refuses unsigned POSTs to the Payments API (401, Invalid request
        // signature): say so now, not on the first payment.
        eprintln!(
            "tlauth: WARNING: no signing key, so POST, PUT, PATCH and DELETE requests are forwarded unsigned,              and the Payments API refuses them; give --signing-key-file and --signing-key-id              (TRUELAYER_SIGNING_KEY_FILE and TRUELAYER_SIGNING_KEY_ID, which `tlauth emulator` prints)"
        );
    }
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        // An error installing the handlers leaves Ctrl-C's default: the process ends.
        if crate::shutdown_signal().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("tlauth: shutting down; in-flight requests may finish");
        stop.shutdown();
    });
    running.serve().await;
    eprintln!("tlauth: stopped");
    drop(resolved.embedded);
    Ok(())
}

/// `--listen`'s value: an IP address and a port, with a message that says so.
fn listen_address(given: &str) -> Result<SocketAddr, String> {
    given.parse().map_err(|_| {
        format!(
            "`{given}` is not an IP address and port: give one such as 127.0.0.1:9000 \
             (a name such as localhost is not looked up; port 0 picks a free one)"
        )
    })
}

fn usage(e: truelayer_auth_proxy::ProxyError) -> Failure {
    if let truelayer_auth_proxy::ProxyError::InvalidSetting { name, reason } = &e {
        // The flag, not the library's name for it.
        let flag = match *name {
            "admin_path" => "--admin-path",
            "max_connections" => "--max-connections",
            "workers" => "--workers",
            "body_memory" => "--body-memory-mib",
            "replay_limit" => "--replay-limit",
            _ => name,
        };
        return Failure::usage(format!("{flag}: {reason}"));
    }
    let hint = match &e {
        truelayer_auth_proxy::ProxyError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            " (another process listens there, perhaps `tlauth emulator`: choose another address with --listen, or --listen 127.0.0.1:0 for a free port)"
        }
        _ => "",
    };
    Failure::usage(format!("{}{hint}", truelayer_auth::error_chain(&e)))
}

/// Where the emulator's admin routes live ([`truelayer_auth_emulator::ADMIN_ROUTES`]).
const EMULATOR_ADMIN: &str = "/emulator";

/// The upstream the proxy forwards to.
struct Upstream {
    url: String,
    /// The proxy chose an emulator itself (the embedded one, or a loopback environment's):
    /// its admin routes are not forwarded.
    emulator: bool,
}

/// The upstream: `--upstream`, the embedded emulator, TrueLayer's API for the environment,
/// or (for a custom environment on loopback, the emulator) the same base URL.
fn upstream(given: Option<&str>, resolved: &Resolved) -> Result<Upstream, Failure> {
    let chosen = |url: String, emulator| Ok(Upstream { url, emulator });
    if let Some(url) = given {
        return chosen(url.to_owned(), false);
    }
    if let Some(emulator) = &resolved.embedded {
        return chosen(emulator.url(), true);
    }
    match (&resolved.environment, resolved.environment.api_url()) {
        (_, Some(api)) => chosen(api.as_str().trim_end_matches('/').to_owned(), false),
        (Environment::Custom(custom), None) => {
            let base = custom.base_url();
            let loopback = base.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if loopback {
                // The emulator serves the token endpoint and the Payments API on one base URL.
                chosen(base.as_str().trim_end_matches('/').to_owned(), true)
            } else {
                Err(Failure::usage(
                    "a custom environment needs --upstream: where its Payments API is cannot be guessed",
                ))
            }
        }
        (_, None) => Err(Failure::usage("no upstream: pass --upstream")),
    }
}

/// The signer: a key file or a KMS key, the embedded emulator's key, or the Secrets Manager
/// secret's signing key when it has one.
async fn keys(
    given: Option<(crate::sign::KeySource<'_>, &str)>,
    resolved: &Resolved,
) -> Result<Option<Keys>, Failure> {
    if let Some((source, kid)) = given {
        return Ok(Some(Keys::Fixed(
            crate::sign::load_signer(source, kid).await?,
        )));
    }
    if let Some(emulator) = &resolved.embedded {
        let signer = Signer::from_pem(
            emulator.signing_key_id(),
            emulator.signing_key_pem().as_bytes(),
        )
        .map_err(|e| Failure::failed(format!("the emulator's signing key is unusable: {e}")))?;
        return Ok(Some(Keys::Fixed(signer)));
    }
    if let CredentialsKind::Vault(vault) = &resolved.kind {
        return match vault.signer(&http::Extensions::new()).await {
            Ok(_) => Ok(Some(Keys::Vault(vault.clone()))),
            Err(e) => match e.downcast_ref::<truelayer_auth_vault::VaultError>() {
                // The secret has no signing key at all: unsigned, and the start line warns.
                Some(truelayer_auth_vault::VaultError::Malformed {
                    problem: truelayer_auth_vault::SecretProblem::MissingField(_),
                    ..
                }) => {
                    tracing::warn!(
                        error = %truelayer_auth::error_chain(&*e),
                        "the secret has no signing key: requests are not signed"
                    );
                    Ok(None)
                }
                // A passing failure (KMS or Secrets Manager throttled or slow): sign from the
                // secret anyway; each request asks again, and fails rather than go unsigned.
                Some(vault_error) if vault_error.is_retryable() => {
                    tracing::warn!(
                        error = %truelayer_auth::error_chain(&*e),
                        "the signing key could not be had at start; each request will ask again"
                    );
                    Ok(Some(Keys::Vault(vault.clone())))
                }
                // Denied, disabled, a wrong key: a mistake to fix, not to run without.
                _ => Err(Failure::usage(format!(
                    "the secret's signing key is unusable: {}",
                    truelayer_auth::error_chain(&*e)
                ))),
            },
        };
    }
    Ok(None)
}
