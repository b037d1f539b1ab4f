//! Where `tlauth` keeps Data API connections: `--store` (a SQLite file, tokens encrypted),
//! its key, and the manager over it.

use std::path::{Path, PathBuf};

use clap::Args;
use truelayer_auth_connections::{ConnectionManager, EncryptionKeys, SqliteStore};

use crate::Failure;
use crate::config::Client;

/// The variable that holds the store's key instead of the file beside it.
const KEY_ENV: &str = "TRUELAYER_CONNECTIONS_KEY";

/// The connections store's location.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The connections database (SQLite; tokens encrypted with AES-256-GCM). Default:
    /// $XDG_DATA_HOME/truelayer-auth/connections.db, else
    /// ~/.local/share/truelayer-auth/connections.db. Its key is TRUELAYER_CONNECTIONS_KEY
    /// when set, else the file `<store>.key` beside it, made (0600) on first use.
    #[arg(long = "store", env = "TLAUTH_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
}

impl StoreArgs {
    /// The database's path: `--store`, `TLAUTH_STORE`, or the default in the user's data
    /// directory.
    pub(crate) fn path(&self) -> Result<PathBuf, Failure> {
        if let Some(path) = &self.store {
            return Ok(path.clone());
        }
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

    /// The store, or `None` when there is no database yet and `create` is false (a command
    /// that only reads has nothing to read).
    pub(crate) async fn open(&self, create: bool) -> Result<Option<SqliteStore>, Failure> {
        let path = self.path()?;
        let exists = path.exists();
        if !exists && !create {
            return Ok(None);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let keys = keys(&path, exists)?;
        let store = SqliteStore::open(&path, keys).await.map_err(|e| {
            Failure::failed(format!(
                "the connections store {} could not be opened: {}",
                path.display(),
                truelayer_auth::error_chain(&e)
            ))
        })?;
        Ok(Some(store))
    }
}

/// The store's keys: `TRUELAYER_CONNECTIONS_KEY`, else `<store>.key`, made when neither
/// exists and the store is new (a new key could not read an existing store's tokens).
fn keys(store: &Path, store_exists: bool) -> Result<EncryptionKeys, Failure> {
    let key_error = |e: truelayer_auth_connections::KeyError| {
        Failure::usage(format!(
            "the connections store's key: {}",
            truelayer_auth::error_chain(&e)
        ))
    };
    if let Some(keys) = EncryptionKeys::from_env().map_err(key_error)? {
        return Ok(keys);
    }
    let key_path = StoreArgs::key_path(store);
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
pub(crate) fn manager(client: &Client, store: SqliteStore) -> Result<ConnectionManager, Failure> {
    ConnectionManager::builder(client.environment.clone(), client.source.clone(), store)
        .build()
        .map_err(|e| Failure::usage(e.to_string()))
}
