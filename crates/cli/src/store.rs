//! Where `tlauth` keeps Data API connections: `--store` (a SQLite file, or a PostgreSQL
//! database given as a `postgres://` URL; tokens encrypted either way), its key, and the
//! manager over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use truelayer_auth_connections::{
    ConnectionId, ConnectionLock, ConnectionManager, ConnectionRecord, ConnectionStore,
    EncryptionKeys, PostgresStore, SqliteStore, StoreFuture,
};

use crate::Failure;
use crate::config::Client;

/// The variable that holds the store's key instead of the file beside it.
const KEY_ENV: &str = "TRUELAYER_CONNECTIONS_KEY";

/// The connections store's location.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The connections database: a SQLite file, or a PostgreSQL database as a
    /// `postgres://user@host/db` URL (a fleet's shared store); tokens encrypted with
    /// AES-256-GCM either way. Default: $XDG_DATA_HOME/truelayer-auth/connections.db, else
    /// ~/.local/share/truelayer-auth/connections.db. Its key is TRUELAYER_CONNECTIONS_KEY
    /// when set, else --key-file, else (SQLite only) the file `<store>.key` beside it, made
    /// (0600) on first use.
    #[arg(long = "store", env = "TLAUTH_STORE", value_name = "PATH|URL")]
    store: Option<PathBuf>,
    /// The store's key file (`<key-id>:<base64 of 32 bytes>`), when TRUELAYER_CONNECTIONS_KEY
    /// is not set. Made (0600) if missing and the store holds no connection yet. Required
    /// for a PostgreSQL store unless TRUELAYER_CONNECTIONS_KEY is set.
    #[arg(long = "key-file", value_name = "PATH")]
    key_file: Option<PathBuf>,
}

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database: its URL (which may hold a password: never printed).
    Postgres(String),
}

/// An open store: SQLite or PostgreSQL.
#[derive(Debug)]
pub(crate) enum OpenStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl OpenStore {
    /// Where it is, for messages: the file, or the server and database (never a password).
    pub(crate) fn describe(&self) -> String {
        match self {
            OpenStore::Sqlite(s) => s.path().display().to_string(),
            OpenStore::Postgres(p) => postgres_target(p),
        }
    }
}

/// `host:port/db` of a PostgreSQL store, from its `Debug` (which never shows a password).
fn postgres_target(store: &PostgresStore) -> String {
    let debug = format!("{store:?}");
    match debug.split_once("target: \"") {
        Some((_, rest)) => format!("PostgreSQL {}", rest.split('"').next().unwrap_or_default()),
        None => "the PostgreSQL store".to_owned(),
    }
}

impl ConnectionStore for OpenStore {
    fn insert(&self, record: &ConnectionRecord) -> StoreFuture<'_, ()> {
        match self {
            OpenStore::Sqlite(s) => s.insert(record),
            OpenStore::Postgres(p) => p.insert(record),
        }
    }
    fn get(&self, id: &ConnectionId) -> StoreFuture<'_, Option<ConnectionRecord>> {
        match self {
            OpenStore::Sqlite(s) => s.get(id),
            OpenStore::Postgres(p) => p.get(id),
        }
    }
    fn list(&self) -> StoreFuture<'_, Vec<ConnectionRecord>> {
        match self {
            OpenStore::Sqlite(s) => s.list(),
            OpenStore::Postgres(p) => p.list(),
        }
    }
    fn update(&self, record: &ConnectionRecord) -> StoreFuture<'_, u64> {
        match self {
            OpenStore::Sqlite(s) => s.update(record),
            OpenStore::Postgres(p) => p.update(record),
        }
    }
    fn lock(&self, id: &ConnectionId, wait: Duration) -> StoreFuture<'_, Box<dyn ConnectionLock>> {
        match self {
            OpenStore::Sqlite(s) => s.lock(id, wait),
            OpenStore::Postgres(p) => p.lock(id, wait),
        }
    }
    fn lease(&self) -> Duration {
        match self {
            OpenStore::Sqlite(s) => s.lease(),
            OpenStore::Postgres(p) => p.lease(),
        }
    }
}

impl StoreArgs {
    /// Where the store is: `--store` or `TLAUTH_STORE` (a `postgres://` or `postgresql://`
    /// URL is PostgreSQL, anything else a SQLite file), else the default file.
    pub(crate) fn location(&self) -> Result<Location, Failure> {
        if let Some(url) = self
            .store
            .as_ref()
            .and_then(|p| p.to_str())
            .filter(|s| is_postgres_url(s))
        {
            return Ok(Location::Postgres(url.to_owned()));
        }
        Ok(Location::Sqlite(self.path()?))
    }

    /// Where, for messages: the file, or the PostgreSQL server and database.
    pub(crate) fn describe(&self) -> String {
        match self.location() {
            Ok(Location::Sqlite(path)) => path.display().to_string(),
            Ok(Location::Postgres(url)) => redact(&url),
            Err(_) => "the connections store".to_owned(),
        }
    }

    /// The directory for files kept beside the store (a pending authorization): the SQLite
    /// file's, or for PostgreSQL the default store's directory.
    pub(crate) fn dir(&self) -> Result<PathBuf, Failure> {
        let path = match self.location()? {
            Location::Sqlite(path) => path,
            Location::Postgres(_) => Self::default_path()?,
        };
        Ok(path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")))
    }

    /// The SQLite database's path: `--store`, `TLAUTH_STORE`, or the default in the user's
    /// data directory.
    pub(crate) fn path(&self) -> Result<PathBuf, Failure> {
        if let Some(path) = &self.store {
            return Ok(path.clone());
        }
        Self::default_path()
    }

    fn default_path() -> Result<PathBuf, Failure> {
        let data_home = match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                Some(home) => PathBuf::from(home).join(".local").join("share"),
                None => {
                    return Err(Failure::usage(
                        "neither XDG_DATA_HOME nor HOME is set: choose the connections store with --store PATH or TLAUTH_STORE",
                    ));
                }
            },
        };
        Ok(data_home.join("truelayer-auth").join("connections.db"))
    }

    /// The key file beside the database: `<store>.key`.
    pub(crate) fn key_path(store: &Path) -> PathBuf {
        let mut name = store.as_os_str().to_owned();
        name.push(".key");
        PathBuf::from(name)
    }

    /// The store, or `None` when there is no SQLite database yet and `create` is false (a
    /// command that only reads has nothing to read). A PostgreSQL store is always opened
    /// (its schema made if the database has none).
    pub(crate) async fn open(&self, create: bool) -> Result<Option<OpenStore>, Failure> {
        let path = match self.location()? {
            Location::Postgres(url) => return self.open_postgres(&url).await.map(Some),
            Location::Sqlite(path) => path,
        };
        let exists = path.exists();
        if !exists && !create {
            return Ok(None);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let keys = keys(&path, exists, self.key_file.as_deref())?;
        let store = SqliteStore::open(&path, keys).await.map_err(|e| {
            Failure::failed(format!(
                "the connections store {} could not be opened: {}",
                path.display(),
                truelayer_auth::error_chain(&e)
            ))
        })?;
        Ok(Some(OpenStore::Sqlite(store)))
    }

    async fn open_postgres(&self, url: &str) -> Result<OpenStore, Failure> {
        let key_error = |e: truelayer_auth_connections::KeyError| {
            Failure::usage(format!(
                "the connections store's key: {}",
                truelayer_auth::error_chain(&e)
            ))
        };
        let (keys, made) = match (
            EncryptionKeys::from_env().map_err(key_error)?,
            &self.key_file,
        ) {
            (Some(keys), _) => (keys, None),
            (None, Some(file)) if file.exists() => {
                (EncryptionKeys::from_file(file).map_err(key_error)?, None)
            }
            (None, Some(file)) => (
                EncryptionKeys::create_file(file).map_err(key_error)?,
                Some(file.clone()),
            ),
            (None, None) => {
                return Err(Failure::usage(format!(
                    "a PostgreSQL store ({}) has no file beside it to keep its key: set \
                     {KEY_ENV} or give --key-file PATH (the key its tokens were written with; \
                     for a new store, --key-file makes one)",
                    redact(url)
                )));
            }
        };
        let opened = PostgresStore::connect(url, keys).await;
        let store = match opened {
            Ok(store) => store,
            Err(e) => {
                if let Some(file) = &made {
                    let _ = std::fs::remove_file(file);
                }
                return Err(Failure::failed(format!(
                    "the connections store {} could not be opened: {}",
                    redact(url),
                    truelayer_auth::error_chain(&e)
                )));
            }
        };
        if let Some(file) = made {
            // A new key can only be for a store with no tokens yet.
            let held = store.list().await.map(|l| l.len()).unwrap_or(1);
            if held > 0 {
                let _ = std::fs::remove_file(&file);
                return Err(Failure::usage(format!(
                    "the key file {} does not exist and the PostgreSQL store {} already holds \
                     connections: a new key could not read their tokens; give the key they were \
                     written with ({KEY_ENV} or --key-file)",
                    file.display(),
                    redact(url)
                )));
            }
            eprintln!(
                "tlauth: made a new encryption key for the connections store: {} (mode 0600). \
                 Every process that uses the store needs it",
                file.display()
            );
        }
        Ok(OpenStore::Postgres(store))
    }
}

/// Whether `s` names a PostgreSQL database rather than a file.
fn is_postgres_url(s: &str) -> bool {
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "the PostgreSQL store (an unreadable URL)".to_owned(),
    }
}

/// The store's keys: `TRUELAYER_CONNECTIONS_KEY`, else `--key-file`, else `<store>.key`,
/// made when none exists and the store is new (a new key could not read an existing
/// store's tokens).
fn keys(
    store: &Path,
    store_exists: bool,
    key_file: Option<&Path>,
) -> Result<EncryptionKeys, Failure> {
    let key_error = |e: truelayer_auth_connections::KeyError| {
        Failure::usage(format!(
            "the connections store's key: {}",
            truelayer_auth::error_chain(&e)
        ))
    };
    if let Some(keys) = EncryptionKeys::from_env().map_err(key_error)? {
        return Ok(keys);
    }
    let key_path = key_file.map_or_else(|| StoreArgs::key_path(store), Path::to_path_buf);
    if key_path.exists() {
        return EncryptionKeys::from_file(&key_path).map_err(key_error);
    }
    if store_exists {
        return Err(Failure::usage(format!(
            "the connections store {} exists but its key {} does not, and {KEY_ENV} is not set: \
             restore the key file or set {KEY_ENV} to the key it was made with (a new key could \
             not read the stored tokens)",
            store.display(),
            key_path.display()
        )));
    }
    let keys = EncryptionKeys::load_or_create_file(&key_path).map_err(key_error)?;
    eprintln!(
        "tlauth: made a new encryption key for the connections store: {} (mode 0600). The \
         stored tokens can only be read with it: keep it beside the store, or move it into \
         {KEY_ENV}",
        key_path.display()
    );
    Ok(keys)
}

/// Creates `dir` (and its parents) readable by this user only, if it does not exist.
fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        Failure::failed(format!(
            "could not create the connections store's directory {}: {e}",
            dir.display()
        ))
    })
}

/// A manager of the connections in `store`, for `client`'s environment and credentials.
pub(crate) fn manager(client: &Client, store: OpenStore) -> Result<ConnectionManager, Failure> {
    ConnectionManager::builder(client.environment.clone(), client.source.clone(), store)
        .build()
        .map_err(|e| Failure::usage(e.to_string()))
}
