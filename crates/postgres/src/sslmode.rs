//! The `sslmode` of a connection string, read as tokio-postgres reads the string, and the
//! TLS mode chosen from it.

use crate::TlsMode;

/// The connection string without its `sslmode`, and the [`TlsMode`] that asked for:
/// libpq's `verify-ca` and `verify-full` are [`TlsMode::Require`] (certificates and host
/// names are always verified) and `allow` is [`TlsMode::Prefer`]. tokio-postgres refuses
/// `verify-*`, hence the string without it. A string that does not parse is returned as it
/// is, for tokio-postgres to refuse.
pub(crate) fn take_sslmode(s: &str) -> Result<(String, Option<TlsMode>), String> {
    for prefix in ["postgres://", "postgresql://"] {
        let Some(rest) = s.strip_prefix(prefix) else {
            continue;
        };
        // As tokio-postgres reads a URL: the credentials end at the first '@', and the
        // parameters start at the first '?' after them; `key=value` pairs joined by '&'.
        let from = rest.find('@').map_or(0, |at| at + 1);
        let Some(query) = rest[from..].find('?').map(|i| from + i) else {
            return Ok((s.to_owned(), None));
        };
        let mut mode = None;
        let mut kept = Vec::new();
        for pair in rest[query + 1..].split('&') {
            let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
            match decoded {
                Some((key, value)) if pair.contains('=') && key == "sslmode" => {
                    mode = Some(sslmode(&value)?);
                }
                _ => kept.push(pair),
            }
        }
        let mut out = format!("{prefix}{}", &rest[..query]);
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        return Ok((out, mode));
    }
    // libpq's `key = value` form, values plain or in single quotes, '\' escaping.
    let Some(pairs) = key_values(s) else {
        return Ok((s.to_owned(), None));
    };
    let mut mode = None;
    let mut out = Vec::new();
    for (key, value) in pairs {
        if key == "sslmode" {
            mode = Some(sslmode(&value)?);
        } else {
            let value = value.replace('\\', "\\\\").replace('\'', "\\'");
            out.push(format!("{key}='{value}'"));
        }
    }
    Ok((out.join(" "), mode))
}

fn sslmode(value: &str) -> Result<TlsMode, String> {
    match value {
        "disable" => Ok(TlsMode::Disable),
        "allow" | "prefer" => Ok(TlsMode::Prefer),
        "require" | "verify-ca" | "verify-full" => Ok(TlsMode::Require),
        other => Err(format!(
            "sslmode `{}` is not one of disable, allow, prefer, require, verify-ca, verify-full",
            other.escape_debug()
        )),
    }
}

/// The `key = value` pairs of a libpq connection string, as tokio-postgres reads them;
/// `None` when it is not one.
fn key_values(s: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return (it.peek().is_none()).then_some(pairs);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    it.next();
                    break;
                }
                Some(c) if !quoted && c.is_whitespace() => break,
                Some('\\') => {
                    it.next();
                    value.extend(it.next());
                }
                Some(&c) => {
                    it.next();
                    value.push(c);
                }
            }
        }
        if !quoted && value.is_empty() {
            return None;
        }
        pairs.push((key, value));
    }
}

/// The mode used, given the one asked for (the builder's, else the string's) and whether
/// every host is on this machine; and whether it is plain text off loopback (to warn of).
/// Off loopback, `Prefer` is `Require` (else anyone on the path could answer "no TLS" and
/// read the session), and plain text is only what was asked for explicitly.
pub(crate) fn choose_tls(asked: Option<TlsMode>, local: bool) -> (TlsMode, bool) {
    match (asked, local) {
        (None, true) => (TlsMode::Disable, false),
        (None, false) | (Some(TlsMode::Prefer), false) => (TlsMode::Require, false),
        (Some(TlsMode::Disable), false) => (TlsMode::Disable, true),
        (Some(mode), _) => (mode, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(s: &str) -> (String, Option<TlsMode>) {
        take_sslmode(s).unwrap()
    }

    #[test]
    fn sslmode_is_read_from_a_urls_parameters_only() {
        // In the password or another parameter's value, "sslmode=" is not a setting.
        let url = "postgres://app:p%40ss?sslmode=disable@db.internal/app?application_name=x-sslmode=disable";
        assert_eq!(take(url), (url.to_owned(), None));
        let url = "postgres://app:sslmode=disable@db.internal/app";
        assert_eq!(take(url), (url.to_owned(), None));
        assert_eq!(
            take("postgresql://db.internal/app?sslmode=disable&application_name=a"),
            (
                "postgresql://db.internal/app?application_name=a".to_owned(),
                Some(TlsMode::Disable)
            )
        );
        assert_eq!(
            take("postgres://db.internal/app?ssl%6Dode=prefer"),
            (
                "postgres://db.internal/app".to_owned(),
                Some(TlsMode::Prefer)
            )
        );
        assert_eq!(
            take("postgres://db.internal/app"),
            ("postgres://db.internal/app".to_owned(), None)
        );
    }

    #[test]
    fn verify_full_and_verify_ca_are_require_and_parse() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let (url, asked) = take(&format!(
                "postgres://u@db.internal:5433/app?sslmode={mode}&connect_timeout=3"
            ));
            assert_eq!(asked, Some(TlsMode::Require), "{mode}");
            assert_eq!(url, "postgres://u@db.internal:5433/app?connect_timeout=3");
            let config: tokio_postgres::Config = url.parse().unwrap();
            assert_eq!(config.get_dbname(), Some("app"));
            let (kv, asked) = take(&format!("host=db.internal sslmode = {mode} dbname=app"));
            assert_eq!(asked, Some(TlsMode::Require), "{mode}");
            assert!(kv.parse::<tokio_postgres::Config>().is_ok(), "{kv}");
        }
        assert!(take_sslmode("postgres://db.internal/app?sslmode=bogus").is_err());
        assert!(take_sslmode("host=db.internal sslmode=bogus").is_err());
    }

    #[test]
    fn key_value_strings_are_tokenized_not_searched() {
        // Spaces around '=': still the setting.
        assert_eq!(
            take("host=db.internal sslmode = disable").1,
            Some(TlsMode::Disable)
        );
        // Inside a quoted value: not a setting; the value survives the rewrite.
        let (kv, asked) =
            take(r"host=db.internal password='it\'s sslmode=disable' application_name=a\ b");
        assert_eq!(asked, None);
        let config: tokio_postgres::Config = kv.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's sslmode=disable"[..]));
        assert_eq!(config.get_application_name(), Some("a b"));
        // The last one counts, as in tokio-postgres.
        assert_eq!(
            take("sslmode=disable host=db.internal sslmode=verify-full").1,
            Some(TlsMode::Require)
        );
        // Not a key=value string: left for tokio-postgres to refuse.
        assert_eq!(take("host=").1, None);
        assert_eq!(take("host='db").1, None);
    }

    #[test]
    fn prefer_off_loopback_is_require_and_disable_only_when_asked() {
        assert_eq!(choose_tls(None, true), (TlsMode::Disable, false));
        assert_eq!(choose_tls(None, false), (TlsMode::Require, false));
        assert_eq!(
            choose_tls(Some(TlsMode::Prefer), false),
            (TlsMode::Require, false)
        );
        assert_eq!(
            choose_tls(Some(TlsMode::Prefer), true),
            (TlsMode::Prefer, false)
        );
        assert_eq!(
            choose_tls(Some(TlsMode::Disable), false),
            (TlsMode::Disable, true)
        );
        assert_eq!(
            choose_tls(Some(TlsMode::Disable), true),
            (TlsMode::Disable, false)
        );
        assert_eq!(
            choose_tls(Some(TlsMode::Require), true),
            (TlsMode::Require, false)
        );
    }
}
