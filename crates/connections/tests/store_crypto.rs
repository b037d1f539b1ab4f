//! `EncryptionKeys`: the ciphertext, its binding to a row and field, key rotation, and the
//! key text in files, the environment and secrets.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use truelayer_auth_connections::{ConnectionId, EncryptionKeys, KeyError, KeyOrigin, StoreError};

fn id(s: &str) -> ConnectionId {
    s.parse().unwrap()
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn b64(key: impl AsRef<[u8]>) -> String {
    STANDARD.encode(key)
}

#[test]
fn a_token_round_trips_and_each_encryption_has_its_own_nonce() {
    let keys = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let a = keys
        .encrypt(&id("c1"), "access_token", &secret("tok-123"))
        .unwrap();
    let b = keys
        .encrypt(&id("c1"), "access_token", &secret("tok-123"))
        .unwrap();
    assert!(a.starts_with("tlc1.k1."), "{a}");
    assert_ne!(a, b, "a nonce was reused");
    assert!(!a.contains("tok-123"));
    for c in [&a, &b] {
        let plain = keys.decrypt(&id("c1"), "access_token", c).unwrap();
        assert_eq!(plain.expose_secret(), "tok-123");
    }
}

#[test]
fn another_key_under_the_same_id_is_wrong_key() {
    let written = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let reader = EncryptionKeys::new("k1", [2; 32]).unwrap();
    let c = written
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    let err = reader.decrypt(&id("c1"), "access_token", &c).unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
}

#[test]
fn a_key_id_not_given_is_unknown_key() {
    let written = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let reader = EncryptionKeys::new("k2", [1; 32]).unwrap();
    let c = written
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    let err = reader.decrypt(&id("c1"), "access_token", &c).unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownKey { key_id } if key_id == "k1"),
        "{err:?}"
    );
}

#[test]
fn a_ciphertext_is_bound_to_its_connection_its_field_and_its_key_id() {
    let keys = EncryptionKeys::new("k1", [1; 32])
        .unwrap()
        .with_old_key("k0", [1; 32])
        .unwrap();
    let c = keys
        .encrypt(&id("c1"), "refresh_token", &secret("t"))
        .unwrap();
    assert!(keys.decrypt(&id("c1"), "refresh_token", &c).is_ok());
    for (conn, field) in [("c2", "refresh_token"), ("c1", "access_token")] {
        let err = keys.decrypt(&id(conn), field, &c).unwrap_err();
        assert!(
            matches!(err, StoreError::WrongKey { .. }),
            "{conn} {field}: {err:?}"
        );
    }
    // The same bytes under another id's label do not decrypt either.
    let relabelled = c.replacen("tlc1.k1.", "tlc1.k0.", 1);
    let err = keys
        .decrypt(&id("c1"), "refresh_token", &relabelled)
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");
}

#[test]
fn altered_data_is_wrong_key_and_malformed_text_is_corrupt() {
    let keys = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let c = keys
        .encrypt(&id("c1"), "access_token", &secret("token"))
        .unwrap();
    let mut flipped = c.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let err = keys
        .decrypt(&id("c1"), "access_token", &flipped)
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");

    for bad in [
        "",
        "plain-token",
        "tlc2.k1.AAAA",
        "tlc1.k1",
        "tlc1.bad id.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "tlc1.k1.not base64!",
        "tlc1.k1.AAAA",
        // Shorter than a nonce, and than a nonce and a tag.
        "tlc1.k1.AAAAAAAAAAA",
        "tlc1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let err = keys.decrypt(&id("c1"), "access_token", bad).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{bad:?}: {err:?}");
    }
}

#[test]
fn rotation_old_keys_decrypt_and_the_current_key_encrypts() {
    let old = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let c_old = old
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    let rotated = EncryptionKeys::new("k2", [2; 32])
        .unwrap()
        .with_old_key("k1", [1; 32])
        .unwrap();
    assert_eq!(
        rotated
            .decrypt(&id("c1"), "access_token", &c_old)
            .unwrap()
            .expose_secret(),
        "t"
    );
    let c_new = rotated
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    assert!(c_new.starts_with("tlc1.k2."), "{c_new}");
    let only_new = EncryptionKeys::new("k2", [2; 32]).unwrap();
    assert!(only_new.decrypt(&id("c1"), "access_token", &c_new).is_ok());
    assert!(matches!(
        only_new.decrypt(&id("c1"), "access_token", &c_old),
        Err(StoreError::UnknownKey { .. })
    ));
}

#[test]
fn key_ids_are_checked_and_unique() {
    for bad in ["", "has space", "dot.ted", "k:1", &"x".repeat(33)] {
        assert!(
            matches!(
                EncryptionKeys::new(bad, [0; 32]),
                Err(KeyError::InvalidKeyId)
            ),
            "{bad:?}"
        );
    }
    assert!(EncryptionKeys::new(&"x".repeat(32), [0; 32]).is_ok());
    let err = EncryptionKeys::new("k1", [0; 32])
        .unwrap()
        .with_old_key("k1", [1; 32])
        .unwrap_err();
    assert!(matches!(err, KeyError::DuplicateKeyId { .. }), "{err:?}");
}

#[test]
fn debug_shows_key_ids_only() {
    let keys = EncryptionKeys::new("k2", [0xAB; 32])
        .unwrap()
        .with_old_key("k1", [0xCD; 32])
        .unwrap();
    let debug = format!("{keys:?}");
    assert_eq!(debug, r#"EncryptionKeys { current: "k2", old: ["k1"] }"#);
}

#[test]
fn secret_text_holds_several_keys_the_first_current() {
    let text = format!(" k2:{} , k1:{}\n", b64([2; 32]), b64([1; 32]));
    let keys = EncryptionKeys::from_secret_text(&secret(&text)).unwrap();
    assert_eq!(keys.current_key_id(), "k2");
    let old = EncryptionKeys::new("k1", [1; 32]).unwrap();
    let c = old
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    assert!(keys.decrypt(&id("c1"), "access_token", &c).is_ok());
    // URL-safe and unpadded base64 are accepted too.
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xFB; 32]);
    assert!(EncryptionKeys::from_secret_text(&secret(&format!("k:{url}"))).is_ok());
}

#[test]
fn malformed_key_text_is_refused_without_showing_the_key() {
    let key = b64([7; 32]);
    let short = b64([7; 31]);
    let cases = [
        (String::new(), 0),
        (key.clone(), 1),
        (format!("bad id:{key}"), 1),
        (format!("k1:{short}"), 1),
        (format!("k1:{key},k2"), 2),
        (format!("k1:{key},"), 2),
    ];
    for (text, entry) in cases {
        let err = EncryptionKeys::from_secret_text(&secret(&text)).unwrap_err();
        match &err {
            KeyError::Malformed {
                origin: KeyOrigin::Secret,
                entry: e,
                ..
            } => assert_eq!(*e, entry, "{text:?}: {err}"),
            other => panic!("{text:?}: {other:?}"),
        }
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(&key[..20]) && !shown.contains(&short[..20]),
            "{shown}"
        );
    }
    let err = EncryptionKeys::from_secret_text(&secret(&format!("k1:{key},k1:{key}")));
    assert!(
        matches!(err, Err(KeyError::DuplicateKeyId { .. })),
        "{err:?}"
    );
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_created_key_file_is_0600_and_loads_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connections.key");
    let created = EncryptionKeys::create_file(&path).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600);
    let loaded = EncryptionKeys::from_file(&path).unwrap();
    assert_eq!(loaded.current_key_id(), created.current_key_id());
    let c = created
        .encrypt(&id("c1"), "access_token", &secret("t"))
        .unwrap();
    assert_eq!(
        loaded
            .decrypt(&id("c1"), "access_token", &c)
            .unwrap()
            .expose_secret(),
        "t"
    );

    // Never overwritten.
    let err = EncryptionKeys::create_file(&path).unwrap_err();
    assert!(
        matches!(&err, KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    let again = EncryptionKeys::load_or_create_file(&path).unwrap();
    assert!(again.decrypt(&id("c1"), "access_token", &c).is_ok());
}

#[test]
fn load_or_create_makes_a_file_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let first = EncryptionKeys::load_or_create_file(&path).unwrap();
    let second = EncryptionKeys::load_or_create_file(&path).unwrap();
    assert_eq!(first.current_key_id(), second.current_key_id());
    let missing = EncryptionKeys::from_file(dir.path().join("none.key")).unwrap_err();
    assert!(matches!(missing, KeyError::Io { .. }), "{missing:?}");
}

#[cfg(unix)]
#[test]
fn a_key_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.key");
    std::fs::write(&path, format!("k1:{}\n", b64([1; 32]))).unwrap();
    for bad in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
        let err = EncryptionKeys::from_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode, .. } if mode == bad),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(
        EncryptionKeys::from_file(&path).unwrap().current_key_id(),
        "k1"
    );
}

#[cfg(unix)]
#[test]
fn a_malformed_key_file_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.key");
    std::fs::write(&path, "k1-without-a-key\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = EncryptionKeys::from_file(&path).unwrap_err();
    assert!(matches!(&err, KeyError::Malformed { origin: KeyOrigin::File(p), .. } if *p == path));
    assert!(err.to_string().contains("bad.key"), "{err}");
}

/// Run in a child with `TRUELAYER_CONNECTIONS_KEY` set (or not) by
/// [`from_env_reads_the_variable`]; prints what `from_env` made of it.
#[test]
fn from_env_child() {
    if std::env::var_os("TLC_FROM_ENV_CHILD").is_none() {
        return;
    }
    let shown = match EncryptionKeys::from_env() {
        Ok(None) => "none".to_owned(),
        Ok(Some(keys)) => format!("current={}", keys.current_key_id()),
        Err(KeyError::Malformed {
            origin: KeyOrigin::Env,
            entry,
            ..
        }) => format!("malformed entry={entry}"),
        Err(other) => format!("other {other:?}"),
    };
    println!("FROM_ENV: {shown}");
}

fn from_env_in_child(value: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "from_env_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TLC_FROM_ENV_CHILD", "1")
    .env_remove("TRUELAYER_CONNECTIONS_KEY");
    if let Some(value) = value {
        cmd.env("TRUELAYER_CONNECTIONS_KEY", value);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // libtest prints the test's name on the same line, before it.
    let answer = stdout
        .split_once("FROM_ENV: ")
        .unwrap_or_else(|| panic!("no answer from the child: {stdout}"))
        .1;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn from_env_reads_the_variable() {
    let key = b64([3; 32]);
    assert_eq!(from_env_in_child(None), "none");
    assert_eq!(
        from_env_in_child(Some(&format!("k3:{key},k2:{}", b64([2; 32])))),
        "current=k3"
    );
    assert_eq!(from_env_in_child(Some("")), "malformed entry=0");
    assert_eq!(from_env_in_child(Some(&key)), "malformed entry=1");
    assert_eq!(from_env_in_child(Some("k3:c2hvcnQ=")), "malformed entry=1");
    assert_eq!(
        from_env_in_child(Some(&format!("k3:{key},x y:{key}"))),
        "malformed entry=2"
    );
}
