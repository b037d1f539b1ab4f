//! Internal plumbing of the `truelayer-auth` crates, not meant to be used directly: the
//! PostgreSQL set-up that `truelayer-auth-connections`' `PostgresStore` and
//! `truelayer-auth-webhooks`' `PostgresLedger` share. Its API follows theirs and may change
//! with any release.
//!
//! - [`TlsMode`], which both re-export, and the connection string's `sslmode` (in a URL's
//!   parameters or libpq's `key = value` form), read rather than searched for;
//! - [`Settings::read`]: the connection string read, TLS chosen (required off loopback
//!   unless plain text was asked for), the rustls client settings (aws-lc-rs, the system's
//!   trust store unless given), TCP keepalives and the sessions' options;
//! - [`Settings::pool`]: a `deadpool-postgres` pool over them;
//! - [`Schema::migrate`]: versioned schema migrations under an advisory lock.

mod sslmode;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    BuildError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long opening one database connection may take (and creating or recycling a pooled
/// one).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the database connections use TLS: the `sslmode` of a connection string
/// (`disable`; `allow` or `prefer`; `require`, `verify-ca` or `verify-full`).
///
/// The certificate is always verified, host name included (libpq's `verify-full`), against
/// the system's trust store or the roots of the builder's `tls_config`.
///
/// ```
/// use truelayer_auth_postgres::TlsMode;
///
/// // `?sslmode=require` in the URL does the same.
/// let mode = TlsMode::Require;
/// # let _ = mode;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP. The default for a server on loopback (or a Unix socket).
    Disable,
    /// TLS if the server offers it, plain otherwise; for a server off loopback, `Require`
    /// (else anyone on the path could answer "no TLS").
    Prefer,
    /// TLS or no connection. The default for any other server.
    Require,
}

/// A failure of this crate's functions, which each caller turns into its own error type.
#[derive(Debug)]
pub enum Error {
    /// A connection string that does not parse, or whose `sslmode` is not one.
    Config(String),
    /// The TLS client settings could not be made.
    Tls(rustls::Error),
    /// The database failed.
    Database(tokio_postgres::Error),
    /// The database holds tables of these names that are not ours, or ours in part.
    Corrupt(String),
    /// The schema was migrated by a newer library.
    NewerSchema {
        /// The database's schema version.
        found: u32,
        /// The newest this library knows.
        supported: u32,
    },
}

/// How a caller's sessions are kept: given to [`Settings::read`].
#[derive(Debug, Clone)]
pub struct Session {
    /// `application_name`, unless the connection string sets one.
    pub application_name: &'static str,
    /// How long a connection is idle before the first TCP keepalive probe.
    pub keepalives_idle: Duration,
    /// Between TCP keepalive probes (3 unanswered: the connection is dead).
    pub keepalives_interval: Duration,
    /// `TCP_USER_TIMEOUT`: how long sent data may go unacknowledged.
    pub tcp_user_timeout: Duration,
    /// Server settings added to the connection string's `options` (`-c name=value ...`).
    pub options: String,
}

/// A connection string read, with the TLS mode chosen: from [`Settings::read`].
///
/// `Debug` shows the hosts and the database name only, never a password.
pub struct Settings {
    config: tokio_postgres::Config,
    tls: rustls::ClientConfig,
    target: String,
    plain_off_loopback: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("plain_off_loopback", &self.plain_off_loopback)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads the connection string `url` (`postgres://user:password@host:port/db?...`, or
    /// libpq's `key=value` form) and chooses TLS: `tls_mode` if given, else the string's
    /// `sslmode`, else [`TlsMode::Disable`] on loopback (or a Unix socket) and
    /// [`TlsMode::Require`] off it; off loopback, `Prefer` is `Require`. The TLS client
    /// settings are `tls_config` if given, else the system's trust store with aws-lc-rs.
    /// Sets [`CONNECT_TIMEOUT`] and `session`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] (a bad `sslmode`, a string that does not parse) or [`Error::Tls`].
    pub fn read(
        url: &str,
        tls_mode: Option<TlsMode>,
        tls_config: Option<rustls::ClientConfig>,
        session: &Session,
    ) -> Result<Self, Error> {
        let (url, asked) = sslmode::take_sslmode(url).map_err(Error::Config)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| Error::Config("the PostgreSQL URL could not be parsed".to_owned()))?;
        drop(url);
        let target = describe(&config);
        let (mode, plain_off_loopback) = sslmode::choose_tls(tls_mode.or(asked), is_local(&config));
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
        });
        let tls = match (tls_config, mode) {
            (Some(config), _) => config,
            (None, TlsMode::Disable) => no_roots().map_err(Error::Tls)?,
            (None, _) => platform_roots().map_err(Error::Tls)?,
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(session.keepalives_idle)
            .keepalives_interval(session.keepalives_interval)
            .keepalives_retries(3)
            .tcp_user_timeout(session.tcp_user_timeout);
        if config.get_application_name().is_none() {
            config.application_name(session.application_name);
        }
        let options = format!(
            "{} {}",
            config.get_options().unwrap_or_default(),
            session.options
        );
        config.options(options.trim_start());
        Ok(Settings {
            config,
            tls,
            target,
            plain_off_loopback,
        })
    }

    /// "host:port/dbname" of each host, for `Debug` and messages: never the user or password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the connections are plain text to a server off loopback, as asked: for the
    /// caller to warn of.
    pub fn plain_off_loopback(&self) -> bool {
        self.plain_off_loopback
    }

    /// A pool of at most `size` connections, in which a connection is waited for at most
    /// `wait` (and made or recycled within [`CONNECT_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// As [`deadpool_postgres::PoolBuilder::build`].
    pub fn pool(&self, size: usize, wait: Duration) -> Result<Pool, BuildError> {
        let manager = Manager::from_config(
            self.config.clone(),
            MakeRustlsConnect::new(self.tls.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
    }
}

/// A versioned schema: the migrations that build it, the table that lists those applied,
/// and the advisory lock that serialises them.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// What the schema holds, in messages: "connections store", "webhook ledger".
    pub name: &'static str,
    /// The table of applied migrations, made by the first.
    pub migrations_table: &'static str,
    /// The table of migration 1, whose presence without `migrations_table` means it is not
    /// ours.
    pub table: &'static str,
    /// The advisory lock (one bigint key) that serialises migrations.
    pub lock: i64,
    /// The migrations, in order: migration `n` (from 0) takes the schema from version `n` to
    /// `n + 1`. A released migration is never edited; a change is a new one.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// The schema version this library writes and reads.
    pub fn version(&self) -> u32 {
        u32::try_from(self.migrations.len()).unwrap_or(u32::MAX)
    }

    /// Brings the schema to [`version`](Self::version) in one transaction under the
    /// migration lock, reading the version under it (another replica may have migrated
    /// meanwhile).
    ///
    /// # Errors
    ///
    /// [`Error::NewerSchema`], [`Error::Corrupt`] (the database unchanged), or
    /// [`Error::Database`].
    pub async fn migrate(&self, client: &mut Object) -> Result<(), Error> {
        let tx = client.transaction().await.map_err(Error::Database)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock])
            .await
            .map_err(Error::Database)?;
        let from = self.schema_version(&tx).await?;
        if from == self.version() {
            // Nothing to write; ending the transaction releases the lock.
            return tx.rollback().await.map_err(Error::Database);
        }
        if from == 0 {
            tx.batch_execute(&format!(
                "CREATE TABLE {} (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
                self.migrations_table
            ))
            .await
            .map_err(Error::Database)?;
        }
        let insert = format!(
            "INSERT INTO {} (version) VALUES ($1)",
            self.migrations_table
        );
        for (n, migration) in self.migrations.iter().enumerate().skip(from as usize) {
            tx.batch_execute(migration).await.map_err(Error::Database)?;
            let version = i32::try_from(n + 1).unwrap_or(i32::MAX);
            tx.execute(&insert, &[&version])
                .await
                .map_err(Error::Database)?;
        }
        tx.commit().await.map_err(Error::Database)
    }

    /// The schema version of the database: 0 when it has none of ours.
    async fn schema_version(
        &self,
        client: &impl deadpool_postgres::GenericClient,
    ) -> Result<u32, Error> {
        let (migrations_table, table, name) = (self.migrations_table, self.table, self.name);
        let row = client
            .query_one(
                &format!(
                    "SELECT to_regclass('{migrations_table}') IS NOT NULL, \
                            to_regclass('{table}') IS NOT NULL"
                ),
                &[],
            )
            .await
            .map_err(Error::Database)?;
        let (migrations, tables): (bool, bool) = (row.get(0), row.get(1));
        if !migrations {
            if tables {
                return Err(Error::Corrupt(format!(
                    "the table {table} exists without {migrations_table}: not a {name}"
                )));
            }
            return Ok(0);
        }
        let version: Option<i32> = client
            .query_one(&format!("SELECT max(version) FROM {migrations_table}"), &[])
            .await
            .map_err(Error::Database)?
            .get(0);
        let version = u32::try_from(version.unwrap_or(0))
            .map_err(|_| Error::Corrupt("a negative schema version".to_owned()))?;
        if version > self.version() {
            return Err(Error::NewerSchema {
                found: version,
                supported: self.version(),
            });
        }
        if version >= 1 && !tables {
            return Err(Error::Corrupt(format!("the {name}'s table is missing")));
        }
        Ok(version)
    }
}

/// "host:port/dbname" of each host, for `Debug` and messages: never the user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default)")
    )
}

/// Whether every host is on this machine: loopback or a Unix socket.
fn is_local(config: &tokio_postgres::Config) -> bool {
    let addrs_local = config.get_hostaddrs().iter().all(IpAddr::is_loopback);
    let hosts_local = config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    });
    addrs_local && hosts_local
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn platform_roots() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

/// TLS settings that are never used (plain TCP), but the pool wants one connector type.
fn no_roots() -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}
