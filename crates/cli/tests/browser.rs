//! `tlauth connect` with a real browser (issue #17): headless Chromium, driven over
//! WebDriver, opens the link `tlauth connect` prints, chooses the mock bank in the
//! emulator's dialog and allows (or denies); the redirect lands on the CLI's own listener,
//! whose page the browser shows; then `tlauth data` answers with the stored connection.
//!
//! The browser is driven with [`fantoccini`], a WebDriver client, against Debian's
//! `chromedriver`, rather than with a Chrome DevTools Protocol client: WebDriver is a W3C
//! standard that every browser's driver speaks (the same test could run on geckodriver),
//! fantoccini is maintained, async and tokio-based like the rest of this workspace, and
//! nothing here needs a Node toolchain (Playwright, Puppeteer) or a browser build
//! downloaded at test time. CDP would give more (network interception), which these tests
//! do not need: they look at pages as a user does.
//!
//! Ignored by default (`cargo test` must pass without a browser); `cargo xtask ci` installs
//! `chromium` and `chromium-driver` and runs ignored tests. Screenshots of the dialog, the
//! success page and the denial page go to `target/e2e-screenshots/`.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::connect::{RunningConnect, StoreDir, emulator_env, run};
use truelayer_auth_emulator::Emulator;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser at a time: the machines that run these have few cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `chromedriver` on a free loopback port; killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{CHROMEDRIVER} could not start ({e}): `cargo xtask ci` installs it")
            });
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{url}/status"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver { child, url }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session, with a profile of its own in `profile`.
async fn browser(driver: &Chromedriver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1024,768",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": CHROMIUM, "args": args }),
    );
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps);
    builder
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// `target/e2e-screenshots`, made if needed.
fn screenshots() -> PathBuf {
    // target/<profile>/tlauth → target
    let target = PathBuf::from(env!("CARGO_BIN_EXE_tlauth"))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap();
    let dir = target.join("e2e-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots().join(name), png).unwrap();
}

/// The element `id`, waited for (up to 20 s).
async fn element(browser: &Client, id: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium and chromedriver: cargo xtask ci installs them"]
async fn a_user_connects_in_chromium_and_tlauth_data_answers() {
    let _one = ONE_BROWSER.lock().await;
    let started = Instant::now();
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let env = emulator_env(&emulator);
    let driver = Chromedriver::start().await;
    let browser = browser(&driver, &store.dir.path().join("chromium")).await;

    let cli = RunningConnect::start(&["--store", store.arg()], &env);
    let link = cli.link();
    browser.goto(link.as_str()).await.unwrap();
    element(&browser, "consent").await;
    element(&browser, "provider-mock")
        .await
        .click()
        .await
        .unwrap();
    screenshot(&browser, "dialog.png").await;
    element(&browser, "approve").await.click().await.unwrap();

    let connected = element(&browser, "connected").await;
    assert_eq!(
        connected.text().await.unwrap(),
        "Connected, you can close this tab"
    );
    let landed = browser.current_url().await.unwrap();
    let redirect: std::collections::HashMap<_, _> = link.query_pairs().into_owned().collect();
    assert!(
        landed.as_str().starts_with(&redirect["redirect_uri"]),
        "the browser is on the CLI's listener: {landed}"
    );
    screenshot(&browser, "connected.png").await;

    let done = cli.finish();
    assert!(done.status.success(), "{done:?}");
    let id = done.stdout.trim();
    let data = run(
        &[
            "data",
            "GET",
            "/data/v1/accounts",
            "--connection",
            id,
            "--store",
            store.arg(),
        ],
        &env,
    );
    assert!(data.status.success(), "{data:?}");
    let json: serde_json::Value = serde_json::from_str(&data.stdout).unwrap();
    assert_eq!(
        json["results"][0]["provider"]["provider_id"], "mock",
        "{json}"
    );

    browser.close().await.unwrap();
    eprintln!(
        "browser test (connect): {:.1} s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshots().display()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium and chromedriver: cargo xtask ci installs them"]
async fn denying_in_chromium_ends_in_the_clis_error_and_the_error_page() {
    let _one = ONE_BROWSER.lock().await;
    let started = Instant::now();
    let emulator = Emulator::start().await.unwrap();
    emulator.set_loopback_redirects(true);
    let store = StoreDir::new();
    let driver = Chromedriver::start().await;
    let browser = browser(&driver, &store.dir.path().join("chromium")).await;

    let cli = RunningConnect::start(
        &["--store", store.arg(), "--response-mode", "form_post"],
        &emulator_env(&emulator),
    );
    browser.goto(cli.link().as_str()).await.unwrap();
    element(&browser, "deny").await.click().await.unwrap();

    // form_post: the emulator's page POSTs the answer to the CLI, which shows why.
    let error = element(&browser, "error").await;
    let why = error.text().await.unwrap();
    assert!(why.contains("You declined"), "{why}");
    screenshot(&browser, "denied.png").await;

    let done = cli.finish();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(
        done.stderr
            .contains("the user declined to connect a bank account (access_denied)"),
        "{done:?}"
    );
    assert!(done.stdout.is_empty(), "{done:?}");
    assert!(emulator.connections().is_empty());

    browser.close().await.unwrap();
    eprintln!(
        "browser test (deny): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
