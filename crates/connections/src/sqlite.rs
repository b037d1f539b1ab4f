//! [`SqliteStore`]: connections in one SQLite file, their tokens encrypted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use secrecy::SecretString;

use crate::crypto::EncryptionKeys;
use crate::store::{
    ConnectionId, ConnectionLock, ConnectionRecord, ConnectionStatus, ConnectionStore, StoreError,
    StoreFuture,
};

/// `PRAGMA application_id` of a connections store: "TLC1".
const APPLICATION_ID: i32 = 0x544C_4331;

/// The schema migrations, in order: migration `n` (from 0) takes the schema from version `n`
/// to `n + 1`. A released migration is never edited; a change is a new one.
const MIGRATIONS: &[&str] = &[
    // 1: one row per connection, with both tokens; one lease row per held lock.
    "CREATE TABLE connections (
        id TEXT PRIMARY KEY NOT NULL,
        client_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        provider_id TEXT,
        credentials_id TEXT,
        access_token_enc TEXT NOT NULL,
        access_expires_at INTEGER NOT NULL,
        refresh_token_enc TEXT,
        consented_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1)
    ) STRICT;
    CREATE TABLE connection_locks (
        connection_id TEXT PRIMARY KEY NOT NULL,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;",
];

/// The schema version this library writes and reads.
const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long SQLite waits for another process's write to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The lease of a lock when the builder is not told otherwise.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

const COLUMNS: &str = "id, client_id, scopes, provider_id, credentials_id, access_token_enc, \
    access_expires_at, refresh_token_enc, consented_at, updated_at, status, version";

const ACCESS_TOKEN: &str = "access_token";
const REFRESH_TOKEN: &str = "refresh_token";

/// A [`ConnectionStore`] in one SQLite file, for a single machine: every process that opens
/// the same file shares its connections and its locks.
///
/// - **Encrypted at rest**: both the access token and the refresh token are encrypted with
///   [`EncryptionKeys`] (AES-256-GCM, bound to the row and the field); ids, scopes, times and
///   statuses are not.
/// - **Durable**: WAL journal, `synchronous=FULL`: a write that returned survives a power
///   cut, which matters because a rotated refresh token that is lost cannot be had again.
///   The file is created with mode `0600` on Unix (SQLite gives its `-wal` and `-shm` files
///   the same mode); its directory must exist.
/// - **Versioned schema**: `PRAGMA application_id` marks the file as a connections store and
///   `PRAGMA user_version` holds its schema version; migrations run in one transaction when
///   the store is opened. A store written by a newer library is refused
///   ([`StoreError::NewerSchema`]), as is a file that is not a connections store
///   ([`StoreError::Corrupt`]), and neither is changed.
/// - **Locks are leases**: a row in `connection_locks` with a holder (a random 128-bit id)
///   and an expiry by the wall clock, which the processes of a machine share. While the
///   guard lives a task renews it every third of the lease; a process killed outright holds
///   others up for one lease at most.
///
/// Why `rusqlite` rather than `sqlx`: it is mature, builds SQLite in (no system library to
/// match), and its synchronous calls are short on a local file (a read takes tens of
/// microseconds; a write is bounded by its one `fsync`, about 0.3 ms on a test VM's disk).
/// They run on `spawn_blocking` behind one connection's mutex, which is plenty for a token
/// store whose writes are about one refresh an hour per connection; an async driver would
/// add a dependency tree and no speed.
///
/// `Debug` shows the path only.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth_connections::{EncryptionKeys, SqliteStore};
/// use std::time::Duration;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = EncryptionKeys::load_or_create_file("/var/lib/app/connections.key")?;
/// let store = SqliteStore::builder("/var/lib/app/connections.db", keys)
///     .lease(Duration::from_secs(20))
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    keys: EncryptionKeys,
    lease: Duration,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Opens a [`SqliteStore`] with settings: from [`SqliteStore::builder`].
pub struct SqliteStoreBuilder {
    path: PathBuf,
    keys: EncryptionKeys,
    lease: Duration,
}

impl fmt::Debug for SqliteStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStoreBuilder")
            .field("path", &self.path)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl SqliteStoreBuilder {
    /// How long a lock lasts without renewal (30 s unless set): how long a process that
    /// died holding a lock keeps others waiting. The guard renews it every third of this.
    /// At least 100 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Opens the store, creating the file and its schema if there is none.
    ///
    /// # Errors
    ///
    /// [`StoreError::NewerSchema`], [`StoreError::Corrupt`] (not a connections store), or
    /// [`StoreError::Backend`] (the directory does not exist, the file cannot be opened).
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        let SqliteStoreBuilder { path, keys, lease } = self;
        let (path, conn) = tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            Ok::<_, StoreError>((path, conn))
        })
        .await
        .map_err(join_error)??;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                keys,
                lease,
            }),
        })
    }
}

impl SqliteStore {
    /// Opens the store at `path` with a 30 s lease; see [`SqliteStoreBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`SqliteStoreBuilder::open`].
    pub async fn open(path: impl AsRef<Path>, keys: EncryptionKeys) -> Result<Self, StoreError> {
        Self::builder(path, keys).open().await
    }

    /// A builder for the store at `path`, its tokens encrypted with `keys`.
    pub fn builder(path: impl AsRef<Path>, keys: EncryptionKeys) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_owned(),
            keys,
            lease: DEFAULT_LEASE,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Re-encrypts with the current key every token that another key wrote, so an old key
    /// can be retired; returns how many connections were rewritten. Their versions do not
    /// change (their content does not), and a row written meanwhile is left to its writer,
    /// which encrypts with its own current key.
    ///
    /// # Errors
    ///
    /// Those of [`ConnectionStore::get`], for a token no key given decrypts.
    pub async fn reencrypt_all(&self) -> Result<usize, StoreError> {
        self.run(|conn, inner| {
            let current = format!("tlc1.{}.", inner.keys.current_key_id());
            let rows = {
                let mut stmt = conn.prepare(
                    "SELECT id, access_token_enc, refresh_token_enc, version FROM connections \
                     ORDER BY id",
                )?;
                stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            let mut rewritten = 0;
            for (id, access, refresh, version) in rows {
                let stale = !access.starts_with(&current)
                    || refresh.as_ref().is_some_and(|r| !r.starts_with(&current));
                if !stale {
                    continue;
                }
                let cid = parse_id(&id)?;
                let keys = &inner.keys;
                let access = keys.encrypt(
                    &cid,
                    ACCESS_TOKEN,
                    &keys.decrypt(&cid, ACCESS_TOKEN, &access)?,
                )?;
                let refresh = refresh
                    .map(|r| {
                        keys.encrypt(&cid, REFRESH_TOKEN, &keys.decrypt(&cid, REFRESH_TOKEN, &r)?)
                    })
                    .transpose()?;
                rewritten += conn.execute(
                    "UPDATE connections SET access_token_enc = ?1, refresh_token_enc = ?2 \
                     WHERE id = ?3 AND version = ?4",
                    params![access, refresh, id, version],
                )?;
            }
            Ok(rewritten)
        })
        .await
    }

    /// Runs `f` on the connection, on a blocking thread.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Inner) -> Result<T, StoreError> + Send + 'static,
    {
        run(Arc::clone(&self.inner), f).await
    }
}

async fn run<T, F>(inner: Arc<Inner>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection, &Inner) -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn, &inner)
    })
    .await
    .map_err(join_error)?
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(e) => StoreError::Backend(Box::new(e)),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt(Box::new(e))
            }
            _ => StoreError::Backend(Box::new(e)),
        }
    }
}

/// A failure opening the store that is not SQLite's own.
#[derive(Debug)]
struct OpenProblem(String);

impl fmt::Display for OpenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenProblem {}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(Box::new(OpenProblem(what.into())))
}

/// Opens (creating if needed) and checks the file, then migrates it. Nothing is written
/// until the file is known to be a connections store at a schema this library knows, or
/// an empty database.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    create_private_file(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Read-only checks first: a file that is not ours is left exactly as it was.
    if check_schema(&conn)? != SCHEMA_VERSION {
        // Journal mode changes the header, so it waits until the file is known to be ours
        // or empty.
        set_wal(&conn)?;
        migrate(&conn)?;
    } else {
        set_wal(&conn)?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

fn set_wal(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(Box::new(OpenProblem(format!(
            "SQLite would not use a WAL journal (it uses `{mode}`)"
        )))));
    }
    Ok(())
}

/// Creates the file with mode 0600 if it does not exist, so SQLite never creates it with
/// the umask's mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StoreError::Backend(Box::new(OpenProblem(format!(
                "cannot create the store {}: its directory does not exist",
                path.display()
            )))))
        }
        Err(e) => Err(StoreError::Backend(Box::new(e))),
    }
}

/// The schema version of a connections store, 0 for an empty database.
///
/// # Errors
///
/// [`StoreError::Corrupt`] when the file is not SQLite, or is a database other than a
/// connections store; [`StoreError::NewerSchema`].
fn check_schema(conn: &Connection) -> Result<u32, StoreError> {
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(0);
    }
    if app_id != APPLICATION_ID {
        return Err(corrupt(format!(
            "the file is an SQLite database of another application (application_id {app_id:#x}), not a connections store"
        )));
    }
    let version = u32::try_from(version)
        .map_err(|_| corrupt(format!("the schema version {version} is not a version")))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == SCHEMA_VERSION {
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' \
             AND name IN ('connections', 'connection_locks')",
            [],
            |r| r.get(0),
        )?;
        if tables != 2 {
            return Err(corrupt("the connections store's tables are missing"));
        }
    }
    Ok(version)
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, checking it again inside
/// (another process may have migrated it since).
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let from = check_schema(&tx)?;
    if from == SCHEMA_VERSION {
        return Ok(());
    }
    if from == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    for migration in &MIGRATIONS[from as usize..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

fn parse_id(id: &str) -> Result<ConnectionId, StoreError> {
    id.parse().map_err(|e| StoreError::Corrupt(Box::new(e)))
}

fn version_to_sql(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// A row as stored, before decryption.
struct Row {
    id: String,
    client_id: String,
    scopes: String,
    provider_id: Option<String>,
    credentials_id: Option<String>,
    access_token_enc: String,
    access_expires_at: i64,
    refresh_token_enc: Option<String>,
    consented_at: i64,
    updated_at: i64,
    status: String,
    version: i64,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            id: r.get(0)?,
            client_id: r.get(1)?,
            scopes: r.get(2)?,
            provider_id: r.get(3)?,
            credentials_id: r.get(4)?,
            access_token_enc: r.get(5)?,
            access_expires_at: r.get(6)?,
            refresh_token_enc: r.get(7)?,
            consented_at: r.get(8)?,
            updated_at: r.get(9)?,
            status: r.get(10)?,
            version: r.get(11)?,
        })
    }

    fn decrypt(self, keys: &EncryptionKeys) -> Result<ConnectionRecord, StoreError> {
        let id = parse_id(&self.id)?;
        let access_token = keys.decrypt(&id, ACCESS_TOKEN, &self.access_token_enc)?;
        let refresh_token = self
            .refresh_token_enc
            .map(|t| keys.decrypt(&id, REFRESH_TOKEN, &t))
            .transpose()?;
        let status = ConnectionStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("unknown connection status `{}`", self.status)))?;
        let version = u64::try_from(self.version)
            .map_err(|_| corrupt(format!("version {} is not a version", self.version)))?;
        let mut record = ConnectionRecord::new(
            id,
            self.client_id,
            self.scopes,
            access_token,
            from_ms(self.access_expires_at),
            refresh_token,
            from_ms(self.consented_at),
        );
        record.provider_id = self.provider_id;
        record.credentials_id = self.credentials_id;
        record.updated_at = from_ms(self.updated_at);
        record.status = status;
        record.version = version;
        Ok(record)
    }
}

/// The encrypted tokens of `record`.
fn encrypt_tokens(
    keys: &EncryptionKeys,
    record: &ConnectionRecord,
) -> Result<(String, Option<String>), StoreError> {
    let access = keys.encrypt(&record.id, ACCESS_TOKEN, &record.access_token)?;
    let refresh = record
        .refresh_token
        .as_ref()
        .map(|t: &SecretString| keys.encrypt(&record.id, REFRESH_TOKEN, t))
        .transpose()?;
    Ok((access, refresh))
}

impl ConnectionStore for SqliteStore {
    /// Stores a new connection; a record whose `version` is not 1 is refused with
    /// [`StoreError::VersionConflict`] `{ expected: its version, found: 0 }` (no row yet).
    /// `updated_at` is stored as given.
    fn insert(&self, record: &ConnectionRecord) -> StoreFuture<'_, ()> {
        let record = record.clone();
        Box::pin(self.run(move |conn, inner| {
            if record.version != 1 {
                return Err(StoreError::VersionConflict {
                    expected: record.version,
                    found: 0,
                });
            }
            let (access, refresh) = encrypt_tokens(&inner.keys, &record)?;
            let result = conn.execute(
                &format!(
                    "INSERT INTO connections ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)"
                ),
                params![
                    record.id.as_str(),
                    record.client_id,
                    record.scopes,
                    record.provider_id,
                    record.credentials_id,
                    access,
                    to_ms(record.access_expires_at),
                    refresh,
                    to_ms(record.consented_at),
                    to_ms(record.updated_at),
                    record.status.as_str(),
                ],
            );
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    Err(StoreError::AlreadyExists(record.id.clone()))
                }
                Err(e) => Err(e.into()),
            }
        }))
    }

    fn get(&self, id: &ConnectionId) -> StoreFuture<'_, Option<ConnectionRecord>> {
        let id = id.clone();
        Box::pin(self.run(move |conn, inner| {
            let row = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM connections WHERE id = ?1"),
                    [id.as_str()],
                    Row::read,
                )
                .optional()?;
            row.map(|row| row.decrypt(&inner.keys)).transpose()
        }))
    }

    fn list(&self) -> StoreFuture<'_, Vec<ConnectionRecord>> {
        Box::pin(self.run(move |conn, inner| {
            let mut stmt =
                conn.prepare(&format!("SELECT {COLUMNS} FROM connections ORDER BY id"))?;
            let rows = stmt
                .query_map([], Row::read)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|row| row.decrypt(&inner.keys))
                .collect()
        }))
    }

    /// Writes `record` fenced on its version; `updated_at` is stored as given.
    fn update(&self, record: &ConnectionRecord) -> StoreFuture<'_, u64> {
        let record = record.clone();
        Box::pin(self.run(move |conn, inner| {
            let (access, refresh) = encrypt_tokens(&inner.keys, &record)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE connections SET client_id = ?1, scopes = ?2, provider_id = ?3, \
                 credentials_id = ?4, access_token_enc = ?5, access_expires_at = ?6, \
                 refresh_token_enc = ?7, consented_at = ?8, updated_at = ?9, status = ?10, \
                 version = version + 1 \
                 WHERE id = ?11 AND version = ?12",
                params![
                    record.client_id,
                    record.scopes,
                    record.provider_id,
                    record.credentials_id,
                    access,
                    to_ms(record.access_expires_at),
                    refresh,
                    to_ms(record.consented_at),
                    to_ms(record.updated_at),
                    record.status.as_str(),
                    record.id.as_str(),
                    version_to_sql(record.version),
                ],
            )?;
            if changed == 1 {
                tx.commit()?;
                return Ok(record.version + 1);
            }
            let found: Option<i64> = tx
                .query_row(
                    "SELECT version FROM connections WHERE id = ?1",
                    [record.id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            match found {
                Some(found) => Err(StoreError::VersionConflict {
                    expected: record.version,
                    found: u64::try_from(found).unwrap_or(0),
                }),
                None => Err(StoreError::NotFound(record.id.clone())),
            }
        }))
    }

    fn lock(&self, id: &ConnectionId, wait: Duration) -> StoreFuture<'_, Box<dyn ConnectionLock>> {
        let id = id.clone();
        Box::pin(async move {
            let holder = new_holder()?;
            // If this future is dropped while an attempt runs on the blocking pool, the
            // attempt may still commit the lease row with no guard to renew or release it:
            // this releases `holder`'s row (if any) in the background instead.
            let mut orphan = OrphanRelease {
                inner: Some((Arc::clone(&self.inner), id.clone(), holder.clone())),
            };
            let started = Instant::now();
            let mut pause = Duration::from_millis(5);
            loop {
                let expires = {
                    let (id, holder) = (id.clone(), holder.clone());
                    self.run(move |conn, inner| try_acquire(conn, &id, &holder, inner.lease))
                        .await?
                };
                if let Some(expires_at) = expires {
                    orphan.inner = None;
                    return Ok(Box::new(SqliteLock::start(
                        Arc::clone(&self.inner),
                        id,
                        holder,
                        expires_at,
                    )) as Box<dyn ConnectionLock>);
                }
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(StoreError::LockTimeout { id, waited });
                }
                // Jittered, so that waiters do not poll in step.
                let jittered = pause.mul_f64(0.5 + fastrand::f64());
                tokio::time::sleep(jittered.min(wait - waited)).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        })
    }

    fn lease(&self) -> Duration {
        self.inner.lease
    }
}

/// A random 128-bit holder id, as hex.
fn new_holder() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
        StoreError::Backend(Box::new(OpenProblem(
            "the CSPRNG failed to draw a lock holder id".into(),
        )))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One attempt at the lease row: `Some(expiry)` if `holder` has it now.
fn try_acquire(
    conn: &Connection,
    id: &ConnectionId,
    holder: &str,
    lease: Duration,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let expires_at = now.saturating_add(lease_ms(lease));
    let got: Option<String> = conn
        .query_row(
            "INSERT INTO connection_locks (connection_id, holder, expires_at) \
             VALUES (?1, ?2, ?3) \
             ON CONFLICT (connection_id) DO UPDATE \
             SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE connection_locks.expires_at <= ?4 \
             RETURNING holder",
            params![id.as_str(), holder, expires_at, now],
            |r| r.get(0),
        )
        .optional()?;
    Ok((got.as_deref() == Some(holder)).then_some(expires_at))
}

/// A held [`SqliteStore`] lock: its lease row, renewed by a task while it lives.
struct SqliteLock {
    inner: Arc<Inner>,
    id: ConnectionId,
    holder: String,
    state: Arc<LeaseState>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

struct LeaseState {
    /// A renewal found the row gone or taken, or failed for longer than the lease.
    lost: AtomicBool,
    /// The expiry last written (unix ms).
    expires_at: AtomicI64,
}

impl fmt::Debug for SqliteLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLock")
            .field("id", &self.id)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl SqliteLock {
    fn start(inner: Arc<Inner>, id: ConnectionId, holder: String, expires_at: i64) -> Self {
        let state = Arc::new(LeaseState {
            lost: AtomicBool::new(false),
            expires_at: AtomicI64::new(expires_at),
        });
        let renewal = tokio::spawn(renew(
            Arc::clone(&inner),
            id.clone(),
            holder.clone(),
            Arc::clone(&state),
        ));
        SqliteLock {
            inner,
            id,
            holder,
            state,
            renewal,
            released: false,
        }
    }
}

/// Extends the lease every third of it until aborted, or until it is lost.
async fn renew(inner: Arc<Inner>, id: ConnectionId, holder: String, state: Arc<LeaseState>) {
    let lease = inner.lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let (id, holder) = (id.clone(), holder.clone());
        let result = run(Arc::clone(&inner), move |conn, inner| {
            let expires_at = now_ms().saturating_add(lease_ms(inner.lease));
            let changed = conn.execute(
                "UPDATE connection_locks SET expires_at = ?1 \
                 WHERE connection_id = ?2 AND holder = ?3",
                params![expires_at, id.as_str(), holder],
            )?;
            Ok((changed == 1).then_some(expires_at))
        })
        .await;
        match result {
            Ok(Some(expires_at)) => state.expires_at.store(expires_at, Ordering::SeqCst),
            Ok(None) => {
                tracing::warn!("a connection lock's lease was taken over before it was renewed");
                state.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "a connection lock's lease could not be renewed"
                );
                if now_ms() >= state.expires_at.load(Ordering::SeqCst) {
                    state.lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

fn delete_lease(conn: &Connection, id: &ConnectionId, holder: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM connection_locks WHERE connection_id = ?1 AND holder = ?2",
        params![id.as_str(), holder],
    )?;
    Ok(())
}

impl ConnectionLock for SqliteLock {
    fn release(mut self: Box<Self>) -> StoreFuture<'static, ()> {
        self.renewal.abort();
        self.released = true;
        let (inner, id, holder) = (
            Arc::clone(&self.inner),
            self.id.clone(),
            self.holder.clone(),
        );
        Box::pin(run(inner, move |conn, _| delete_lease(conn, &id, &holder)))
    }

    fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::SeqCst)
            || now_ms() >= self.state.expires_at.load(Ordering::SeqCst)
    }

    /// Renews the lease now, if the row is still ours and has not lapsed: held, and for a
    /// whole lease more.
    fn confirm(&self) -> StoreFuture<'_, bool> {
        let (id, holder, state) = (
            self.id.clone(),
            self.holder.clone(),
            Arc::clone(&self.state),
        );
        Box::pin(async move {
            if self.is_lost() {
                return Ok(false);
            }
            let renewed = run(Arc::clone(&self.inner), move |conn, inner| {
                let now = now_ms();
                let expires_at = now.saturating_add(lease_ms(inner.lease));
                let changed = conn.execute(
                    "UPDATE connection_locks SET expires_at = ?1 \
                     WHERE connection_id = ?2 AND holder = ?3 AND expires_at > ?4",
                    params![expires_at, id.as_str(), holder, now],
                )?;
                Ok((changed == 1).then_some(expires_at))
            })
            .await?;
            match renewed {
                Some(expires_at) => {
                    state.expires_at.fetch_max(expires_at, Ordering::SeqCst);
                    Ok(true)
                }
                None => {
                    state.lost.store(true, Ordering::SeqCst);
                    Ok(false)
                }
            }
        })
    }
}

/// Releases a lock attempt's lease row when the attempt is abandoned (see `lock`).
struct OrphanRelease {
    inner: Option<(Arc<Inner>, ConnectionId, String)>,
}

impl Drop for OrphanRelease {
    fn drop(&mut self) {
        if let Some((inner, id, holder)) = self.inner.take() {
            release_in_background(inner, id, holder);
        }
    }
}

fn release_in_background(inner: Arc<Inner>, id: ConnectionId, holder: String) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(move || {
            let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(error) = delete_lease(&conn, &id, &holder) {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "a dropped connection lock was not released; its lease will lapse"
                );
            }
        });
    }
}

impl Drop for SqliteLock {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.released {
            release_in_background(
                Arc::clone(&self.inner),
                self.id.clone(),
                self.holder.clone(),
            );
        }
    }
}
