//! moto, a local server speaking the AWS Secrets Manager protocol, for the tests that need a
//! real one (marked `#[ignore = "needs moto: run cargo xtask ci"]`).
//!
//! `cargo xtask ci` (and `cargo xtask moto`, for a session of your own) installs and starts
//! `moto_server` on a free loopback port and passes its address in `MOTO_URL`; these helpers
//! read it from there and panic, saying so, when it is not set.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;

/// The address of the running moto server, from `MOTO_URL`.
///
/// # Panics
///
/// When `MOTO_URL` is not set: the test was run without `cargo xtask ci`.
pub fn url() -> String {
    std::env::var("MOTO_URL").expect("MOTO_URL is not set: run `cargo xtask ci`")
}

/// An SDK configuration for the moto server in `region`, with moto's test credentials and
/// retries off, so that a fault shows at once.
///
/// moto keeps one state for the whole run, per region: tests that share a region must use
/// secret names of their own.
///
/// # Panics
///
/// When `MOTO_URL` is not set.
pub async fn config(region: &'static str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .endpoint_url(url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

/// Creates the secret `name` holding `value` (its AWSCURRENT version); returns the version id.
///
/// # Panics
///
/// When moto refuses, for instance because the name is taken.
pub async fn create_secret(config: &SdkConfig, name: &str, value: &str) -> String {
    let created = Client::new(config)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating the secret {name} in moto: {e:?}"));
    created
        .version_id()
        .expect("moto names the new version")
        .to_owned()
}
