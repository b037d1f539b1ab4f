//! A PostgreSQL database of its own for each test, on the server in `DATABASE_URL`.
//!
//! `cargo xtask ci` passes `DATABASE_URL`: the caller's server when it was already set, else
//! a throw-away cluster it starts (Debian's `postgresql`, in `target/postgres`, on a free
//! loopback port). `cargo xtask postgres` runs the same cluster in the foreground for a
//! session of your own and prints the `DATABASE_URL=...` to export.
//!
//! Without `DATABASE_URL`, [`database`] returns `None` and the test returns early, so a
//! plain `cargo test --workspace` passes on a machine with no PostgreSQL:
//!
//! ```no_run
//! # async fn test() {
//! let Some(url) = truelayer_auth_testkit::postgres::database().await else {
//!     return; // skipped, and said so once
//! };
//! // `url` names a database created for this test alone.
//! # let _ = url;
//! # }
//! ```
//!
//! The databases are not dropped: the cluster xtask starts is wiped at its next start; on a
//! server of your own, drop the `t_*` databases when you like.

use std::sync::Once;

/// The message printed (once per test binary) when a test skips for want of a server.
pub const SKIP_MESSAGE: &str = "skipping: set DATABASE_URL or run `cargo xtask ci`";

/// The URL of a new, empty database `t_<random>` on the server in `DATABASE_URL`, for one
/// test: tests using it are isolated from each other and may run in parallel.
///
/// `None`, after printing [`SKIP_MESSAGE`] once, when `DATABASE_URL` is unset or empty.
///
/// # Panics
///
/// When `DATABASE_URL` is set but is not a `postgres://` URL, or the server cannot be
/// reached or refuses `CREATE DATABASE`: a test run that was given a server must not pass
/// by skipping.
pub async fn database() -> Option<String> {
    let server = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            static SAID: Once = Once::new();
            SAID.call_once(|| eprintln!("{SKIP_MESSAGE}"));
            return None;
        }
    };
    let mut url = url::Url::parse(&server)
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
        .unwrap_or_else(|| panic!("DATABASE_URL is not a postgres:// URL"));
    let name = format!("t_{:016x}", fastrand::u64(..));
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to DATABASE_URL ({}): {e}", redacted(&url)));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", redacted(&url)));
    drop(client);
    let _ = connection.await;
    url.set_path(&format!("/{name}"));
    Some(url.into())
}

/// The URL without its password, for messages.
fn redacted(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}
