//! `Emulator::set_loopback_redirects_by_default`: a process-wide default, so in a file (and
//! a process) of its own.

use truelayer_auth_emulator::Emulator;

#[tokio::test]
async fn the_process_wide_default_applies_to_emulators_started_afterwards() {
    let link = |emulator: &Emulator| {
        format!(
            "{}?response_type=code&client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&scope=accounts",
            emulator.auth_dialog_url(),
            emulator.client_id()
        )
    };
    let strict = Emulator::start().await.unwrap();
    Emulator::set_loopback_redirects_by_default(true);
    let developer = Emulator::start().await.unwrap();
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status() };
    assert_eq!(status(link(&strict)).await, 400);
    assert_eq!(status(link(&developer)).await, 200);
}
