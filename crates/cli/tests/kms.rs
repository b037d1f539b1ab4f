//! `tlauth sign` and `tlauth proxy` with `--signing-kms-key-id`: the key lives in AWS KMS
//! (moto here), the emulator knows only its public half, and a payment is created.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signable, Verifier};
use truelayer_auth_testkit::moto;
use truelayer_auth_vault::KmsSigningKey;

mod support;

const REGION: &str = "eu-west-3";

/// A new P-521 signing key in moto's KMS: its id and public key (PEM).
async fn kms_key() -> (String, String) {
    let kms = aws_sdk_kms::Client::new(&moto::config(REGION).await);
    let created = kms
        .create_key()
        .key_spec(KeySpec::EccNistP521)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let key_id = created.key_metadata().unwrap().key_id().to_owned();
    let key = KmsSigningKey::new(kms, &key_id).await.unwrap();
    (key_id, key.public_key_pem().to_owned())
}

/// `tlauth` with moto as AWS and no other settings inherited.
fn tlauth(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = support::command(args);
    cmd.env("AWS_ENDPOINT_URL", moto::url())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run cargo xtask ci"]
async fn tlauth_sign_with_a_kms_key_makes_a_signature_its_public_key_verifies() {
    let (key_id, public_pem) = kms_key().await;
    let body = r#"{"amount_in_minor":100}"#;
    let out = tlauth(
        &[
            "sign",
            "--signing-kms-key-id",
            &key_id,
            "--signing-key-id",
            "kms-kid",
            "--path",
            "/v3/payments",
            "--header",
            "Idempotency-Key: k-1",
            "--body",
            body,
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signature = String::from_utf8(out.stdout).unwrap();
    let signature = signature.trim();
    let verifier = Verifier::from_public_pem(public_pem.as_bytes()).unwrap();
    let request = Signable::new("POST", "/v3/payments")
        .header("Idempotency-Key", "k-1")
        .body(body.as_bytes());
    verifier.verify(&request, signature).unwrap();
    let header = truelayer_auth_signing::jws_header(signature).unwrap();
    assert_eq!(header.kid, "kms-kid");

    // Without the kid, the message names the missing flag alone.
    let out = tlauth(
        &["sign", "--signing-kms-key-id", &key_id, "--path", "/x"],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--signing-key-id"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run cargo xtask ci"]
async fn tlauth_proxy_signs_with_a_kms_key_and_the_payment_is_created() {
    let (key_id, public_pem) = kms_key().await;
    let emulator = Emulator::start().await.unwrap();
    emulator
        .register_signing_key(emulator.client_id(), "kms-kid", &public_pem)
        .unwrap();
    let env_url = emulator.url();
    let mut child = tlauth(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--signing-kms-key-id",
            &key_id,
            "--signing-key-id",
            "kms-kid",
        ],
        &[
            ("TRUELAYER_ENV", &env_url),
            ("TRUELAYER_CLIENT_ID", emulator.client_id()),
            ("TRUELAYER_CLIENT_SECRET", emulator.client_secret()),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the proxy exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("tlauth: proxy listening on http://") {
            assert!(line.contains("signing requests"), "{line}");
            break rest.split(' ').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let created = reqwest::Client::new()
        .post(format!("http://{addr}/v3/payments"))
        .header("content-type", "application/json")
        .body(r#"{"amount_in_minor":100,"currency":"GBP"}"#)
        .send()
        .await
        .unwrap();
    let status = created.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 201, "{}", created.text().await.unwrap());
    assert_eq!(emulator.stats().signature_rejections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_secret_naming_a_kms_key_that_cannot_be_used_stops_the_proxy_instead_of_running_unsigned()
{
    let emulator = Emulator::start().await.unwrap();
    let config = moto::config(REGION).await;
    let name = format!("cli/kms-missing/{}", std::process::id());
    let value = serde_json::json!({
        "client_id": emulator.client_id(),
        "client_secret": emulator.client_secret(),
        "signing_key_id": "kms-kid",
        "signing_kms_key_id": "alias/no-such-key",
    })
    .to_string();
    moto::create_secret(&config, &name, &value).await;
    let env_url = emulator.url();
    let mut child = tlauth(
        &["proxy", "--listen", "127.0.0.1:0", "--secret-id", &name],
        &[("TRUELAYER_ENV", &env_url)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Its standard error until it exits, or until it says it listens (then it runs, unsigned).
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .take_while(|line| !line.contains("proxy listening"))
        .collect();
    let _ = child.kill();
    let status = child.wait().unwrap();
    let stderr = lines.join("\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("alias/no-such-key"), "{stderr}");
}
