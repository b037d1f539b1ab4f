//! Encryption at rest of the tokens a store holds: [`EncryptionKeys`], AES-256-GCM with
//! keys that can rotate.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

use crate::store::{ConnectionId, StoreError};

/// The environment variable [`EncryptionKeys::from_env`] reads.
const KEY_ENV: &str = "TRUELAYER_CONNECTIONS_KEY";

/// The first part of every ciphertext this module writes: the format's name and version.
const FORMAT: &str = "tlc1";

/// The GCM tag's length.
const TAG_LEN: usize = 16;

/// An AES-256 key's length.
const KEY_LEN: usize = 32;

/// One key: its id and its AES-256-GCM context. The raw bytes are not kept: the context
/// lives in AWS-LC, whose `OPENSSL_free` overwrites the memory it frees, and every copy of
/// the bytes this module makes is [`Zeroizing`].
struct Key {
    id: String,
    aead: RandomizedNonceKey,
}

impl Key {
    fn new(id: &str, bytes: &[u8; KEY_LEN]) -> Result<Key, KeyError> {
        if !valid_key_id(id) {
            return Err(KeyError::InvalidKeyId);
        }
        let aead = RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Crypto)?;
        Ok(Key {
            id: id.to_owned(),
            aead,
        })
    }
}

/// Whether `id` is 1 to 32 characters of `A-Z a-z 0-9 _ -`.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// The keys that encrypt the tokens a store holds (AES-256-GCM): a **current** key that
/// encrypts every write, and older keys, by id, that only decrypt, so a key can rotate
/// without a migration: give the new key as current and the old one as old; rows are
/// re-encrypted with the current key as they are written.
///
/// Each ciphertext is text, `tlc1.<key-id>.<base64url(nonce ‖ ciphertext ‖ tag)>`: the
/// format's version, the id of the key that wrote it, then a random 96-bit nonce (new for
/// every encryption), the ciphertext and the GCM tag. The additional authenticated data binds
/// it to its key id, its connection id and its field (`access_token` or `refresh_token`), so
/// a ciphertext copied to another row or another field does not decrypt.
///
/// # Key text
///
/// [`from_env`](Self::from_env), [`from_file`](Self::from_file) and
/// [`from_secret_text`](Self::from_secret_text) read the same text:
/// `<key-id>:<base64 of 32 bytes>`, several separated by commas, the first being current, e.g.
/// `k2026:…,k2025:…`. A key id is 1 to 32 characters of `A-Z a-z 0-9 _ -`; the base64 is
/// standard or URL-safe, padded or not. `openssl rand -base64 32` makes a key.
///
/// # Secrets
///
/// Key bytes are never kept outside AWS-LC's key context, which overwrites its memory when
/// freed; every copy this type makes while parsing is zeroized on drop. No method returns
/// a key's bytes, and `Debug` shows the key ids only.
///
/// # Example
///
/// ```
/// use truelayer_auth_connections::EncryptionKeys;
///
/// let keys = EncryptionKeys::generate("k2")?.with_old_key("k1", [7; 32])?;
/// assert_eq!(keys.current_key_id(), "k2");
/// assert_eq!(format!("{keys:?}"), r#"EncryptionKeys { current: "k2", old: ["k1"] }"#);
/// # Ok::<(), truelayer_auth_connections::KeyError>(())
/// ```
pub struct EncryptionKeys {
    current: Key,
    old: Vec<Key>,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let old: Vec<&str> = self.old.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("EncryptionKeys")
            .field("current", &self.current.id)
            .field("old", &old)
            .finish()
    }
}

impl EncryptionKeys {
    /// Keys with `key` as the current key, named `key_id`. The array given is zeroized
    /// here; the caller's own copies are the caller's to clear (prefer
    /// [`from_secret`](Self::from_secret)).
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidKeyId`] if `key_id` is not 1 to 32 characters of
    /// `A-Z a-z 0-9 _ -`.
    pub fn new(key_id: &str, key: [u8; 32]) -> Result<Self, KeyError> {
        let key = Zeroizing::new(key);
        Ok(EncryptionKeys {
            current: Key::new(key_id, &key)?,
            old: Vec::new(),
        })
    }

    /// Keys with the secret `key` as the current key, named `key_id`.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_secret(key_id: &str, key: &SecretBox<[u8; 32]>) -> Result<Self, KeyError> {
        Ok(EncryptionKeys {
            current: Key::new(key_id, key.expose_secret())?,
            old: Vec::new(),
        })
    }

    /// Adds an older key, used only to decrypt what it wrote. The array given is zeroized
    /// here.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidKeyId`], or [`KeyError::DuplicateKeyId`] if a key has that id
    /// already.
    pub fn with_old_key(mut self, key_id: &str, key: [u8; 32]) -> Result<Self, KeyError> {
        let key = Zeroizing::new(key);
        let key = Key::new(key_id, &key)?;
        if self.key(key_id).is_some() {
            return Err(KeyError::DuplicateKeyId {
                key_id: key_id.to_owned(),
            });
        }
        self.old.push(key);
        Ok(self)
    }

    /// A new random current key (from the operating system's CSPRNG), named `key_id`.
    ///
    /// The key cannot be exported: what it encrypts is readable only by this value. Use
    /// [`create_file`](Self::create_file) to keep a new key.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidKeyId`], or [`KeyError::Crypto`] if the CSPRNG fails.
    pub fn generate(key_id: &str) -> Result<Self, KeyError> {
        let key = random_key()?;
        Ok(EncryptionKeys {
            current: Key::new(key_id, &key)?,
            old: Vec::new(),
        })
    }

    /// The keys in the environment variable `TRUELAYER_CONNECTIONS_KEY` (see
    /// [Key text](Self#key-text)), or `None` when it is not set.
    ///
    /// # Errors
    ///
    /// [`KeyError::Malformed`] if the variable is set but is not key text (or not UTF-8).
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        match std::env::var(KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                parse_key_text(&text, &KeyOrigin::Env).map(Some)
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Malformed {
                origin: KeyOrigin::Env,
                entry: 0,
                problem: "is not UTF-8",
            }),
        }
    }

    /// The keys in `text` (see [Key text](Self#key-text)): for keys kept elsewhere, such as
    /// a secret an application fetched from AWS Secrets Manager (the
    /// `truelayer-auth-vault` crate fetches secrets) whose value is
    /// `k2026:…,k2025:…`.
    ///
    /// # Errors
    ///
    /// [`KeyError::Malformed`], [`KeyError::InvalidKeyId`], [`KeyError::DuplicateKeyId`].
    pub fn from_secret_text(text: &SecretString) -> Result<Self, KeyError> {
        parse_key_text(text.expose_secret(), &KeyOrigin::Secret)
    }

    /// The keys in the file at `path` (see [Key text](Self#key-text); surrounding
    /// whitespace and a final newline are ignored).
    ///
    /// On Unix the file must not be readable or writable by its group or by others (mode
    /// `0600` or stricter), as `ssh` asks of a private key.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] if it cannot be read, [`KeyError::Permissions`] if others may read
    /// it, [`KeyError::Malformed`] if it is not key text.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            action: "read",
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io_err)?;
        parse_key_text(&text, &KeyOrigin::File(path.to_owned()))
    }

    /// Makes a new random key, writes it to a new file at `path` (mode `0600` on Unix,
    /// failing if the file exists) as `key-<random>:<base64>`, syncs the file and its
    /// directory to disk, and returns it: a key lost in a power cut would leave every token
    /// it encrypted unreadable.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] (an existing file is [`io::ErrorKind::AlreadyExists`]), or
    /// [`KeyError::Crypto`] if the CSPRNG fails.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            action: "create",
            source,
        };
        let key = random_key()?;
        let mut id_bytes = [0u8; 6];
        aws_lc_rs::rand::fill(&mut id_bytes).map_err(|_| KeyError::Crypto)?;
        let key_id = format!("key-{}", hex(&id_bytes));
        let keys = EncryptionKeys {
            current: Key::new(&key_id, &key)?,
            old: Vec::new(),
        };
        let mut text = Zeroizing::new(format!("{key_id}:"));
        STANDARD.encode_string(key.as_slice(), &mut text);
        text.push('\n');

        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io_err)?;
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Ok(keys)
    }

    /// The keys in the file at `path`, or, when there is no such file, a new key written
    /// there by [`create_file`](Self::create_file). When two processes start at once, one
    /// creates the file and the other reads it.
    ///
    /// # Errors
    ///
    /// As [`from_file`](Self::from_file) and [`create_file`](Self::create_file).
    pub fn load_or_create_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        match Self::from_file(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        match Self::create_file(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {}
            other => return other,
        }
        // Another process created it a moment ago and may still be writing it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match Self::from_file(path) {
                Err(KeyError::Malformed { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// The id of the key that encrypts.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    fn key(&self, key_id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)
    }

    /// Encrypts `plaintext`, the `field` (such as `access_token`) of connection
    /// `connection_id`, with the current key, into `tlc1.<key-id>.<base64url>`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if AWS-LC fails (its random nonce could not be drawn).
    pub fn encrypt(
        &self,
        connection_id: &ConnectionId,
        field: &str,
        plaintext: &SecretString,
    ) -> Result<String, StoreError> {
        let key = &self.current;
        let mut body = Zeroizing::new(plaintext.expose_secret().as_bytes().to_vec());
        body.reserve(TAG_LEN);
        let nonce = key
            .aead
            .seal_in_place_append_tag(Aad::from(aad(&key.id, connection_id, field)), &mut *body)
            .map_err(|_| StoreError::Backend(Box::new(CryptoFailure)))?;
        let mut buf = Vec::with_capacity(NONCE_LEN + body.len());
        buf.extend_from_slice(nonce.as_ref());
        buf.extend_from_slice(&body);
        let mut out = format!("{FORMAT}.{}.", key.id);
        URL_SAFE_NO_PAD.encode_string(&*buf, &mut out);
        Ok(out)
    }

    /// Decrypts what [`encrypt`](Self::encrypt) wrote for the same connection and field,
    /// with whichever of these keys its text names.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownKey`] if it names a key not given here,
    /// [`StoreError::WrongKey`] if it does not decrypt with the key of that id (another
    /// key under that id, altered data, or a ciphertext moved from another row or field),
    /// [`StoreError::Corrupt`] if it is not such a text at all.
    pub fn decrypt(
        &self,
        connection_id: &ConnectionId,
        field: &str,
        ciphertext: &str,
    ) -> Result<SecretString, StoreError> {
        let corrupt = |what: &'static str| StoreError::Corrupt(Box::new(BadCiphertext(what)));
        let mut parts = ciphertext.splitn(3, '.');
        let (Some(format), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt("it is not `tlc1.<key-id>.<data>`"));
        };
        if format != FORMAT {
            return Err(corrupt("its format is not `tlc1`"));
        }
        if !valid_key_id(key_id) {
            return Err(corrupt("its key id is not a key id"));
        }
        let mut data = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| corrupt("its data is not base64url"))?,
        );
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt("its data is too short"));
        }
        let key = self.key(key_id).ok_or_else(|| StoreError::UnknownKey {
            key_id: key_id.to_owned(),
        })?;
        let (nonce, sealed) = data.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce"))?;
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(aad(key_id, connection_id, field)), sealed)
            .map_err(|_| StoreError::WrongKey {
                key_id: key_id.to_owned(),
            })?;
        let text = std::str::from_utf8(plain).map_err(|_| corrupt("it decrypts to non-UTF-8"))?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// The additional authenticated data: the format, the key id, the connection and the field,
/// NUL separated (none of them can hold a NUL).
fn aad(key_id: &str, connection_id: &ConnectionId, field: &str) -> Vec<u8> {
    [FORMAT, key_id, connection_id.as_str(), field]
        .join("\0")
        .into_bytes()
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(&mut *key).map_err(|_| KeyError::Crypto)?;
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `<key-id>:<base64 of 32 bytes>[,<key-id>:<base64>]…`.
fn parse_key_text(text: &str, origin: &KeyOrigin) -> Result<EncryptionKeys, KeyError> {
    let malformed = |entry: usize, problem: &'static str| KeyError::Malformed {
        origin: origin.clone(),
        entry,
        problem,
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(malformed(0, "is empty"));
    }
    let mut keys: Option<EncryptionKeys> = None;
    for (i, entry) in text.split(',').enumerate() {
        let n = i + 1;
        let entry = entry.trim();
        let Some((id, b64)) = entry.split_once(':') else {
            return Err(malformed(n, "has no `:` between key id and key"));
        };
        if !valid_key_id(id) {
            return Err(malformed(
                n,
                "has a key id that is not 1 to 32 characters of A-Z a-z 0-9 _ -",
            ));
        }
        let bytes = decode_key(b64.trim())
            .ok_or_else(|| malformed(n, "has a key that is not the base64 of exactly 32 bytes"))?;
        keys = Some(match keys {
            None => EncryptionKeys {
                current: Key::new(id, &bytes)?,
                old: Vec::new(),
            },
            Some(keys) => keys.with_old_key(id, *bytes)?,
        });
    }
    keys.ok_or_else(|| malformed(0, "is empty"))
}

fn decode_key(b64: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 3]);
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(KEY_LEN) = engine.decode_slice(b64, &mut *buf) {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            key.copy_from_slice(&buf[..KEY_LEN]);
            return Some(key);
        }
    }
    None
}

/// Where key text came from, for [`KeyError::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOrigin {
    /// The environment variable `TRUELAYER_CONNECTIONS_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
    /// Text given to [`EncryptionKeys::from_secret_text`].
    Secret,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::Env => write!(f, "the environment variable {KEY_ENV}"),
            KeyOrigin::File(path) => write!(f, "the key file {}", path.display()),
            KeyOrigin::Secret => f.write_str("the key secret"),
        }
    }
}

/// Why [`EncryptionKeys`] could not be made. Never shows key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key text is not `<key-id>:<base64 of 32 bytes>`, comma separated.
    #[error(
        "{origin} is not `<key-id>:<base64 of 32 bytes>` (several separated by commas, the current first): {}{problem}",
        if *entry == 0 { String::from("it ") } else { format!("entry {entry} ") }
    )]
    Malformed {
        /// Where the text came from.
        origin: KeyOrigin,
        /// Which comma-separated entry, from 1 (0: the whole text).
        entry: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A key id given in code is not 1 to 32 characters of `A-Z a-z 0-9 _ -`.
    #[error("a connections key id is 1 to 32 characters of A-Z a-z 0-9 _ -; this one is not")]
    InvalidKeyId,
    /// Two keys have the same id.
    #[error("two connections keys have the id `{key_id}`; each key needs its own id")]
    DuplicateKeyId {
        /// The id.
        key_id: String,
    },
    /// A key file may be read or written by its group or others.
    #[error(
        "the key file {} has mode {mode:04o}, so others may read it; `chmod 600` it",
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file could not be read or created.
    #[error("could not {action} the key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// `read` or `create`.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// AWS-LC failed (its CSPRNG or its key setup).
    #[error("AWS-LC could not set up a connections key")]
    Crypto,
}

/// The source of a [`StoreError::Corrupt`] for a token that is not a ciphertext.
#[derive(Debug)]
struct BadCiphertext(&'static str);

impl fmt::Display for BadCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a stored token is not an encrypted token: {}", self.0)
    }
}

impl std::error::Error for BadCiphertext {}

/// The source of a [`StoreError::Backend`] when AWS-LC cannot encrypt.
#[derive(Debug)]
struct CryptoFailure;

impl fmt::Display for CryptoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AWS-LC could not encrypt a token")
    }
}

impl std::error::Error for CryptoFailure {}
