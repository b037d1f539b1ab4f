//! What the end-to-end tests share.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_secretsmanager::config::retry::RetryConfig;

/// An SDK configuration for the moto server `cargo xtask ci` starts (`MOTO_URL`), with
/// retries off so a fault shows at once.
pub(crate) async fn moto_config() -> SdkConfig {
    let url = std::env::var("MOTO_URL").expect("MOTO_URL is not set: run `cargo xtask ci`");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-2"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}
