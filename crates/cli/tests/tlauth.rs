//! `tlauth` as a user runs it: a real process, its stdout, stderr and exit code.

mod support;

use serde_json::Value;
use support::{text, tlauth};
use truelayer_auth_emulator::Emulator;

#[test]
fn with_nothing_configured_it_prints_a_token_from_the_embedded_emulator() {
    let out = tlauth(&["token"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("embedded emulator"));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["scope"], "payments");
    assert_eq!(json["access_token"].as_str().unwrap().split('.').count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_exit_non_zero_naming_invalid_client_without_the_secret() {
    let emulator = Emulator::start().await.unwrap();
    let marker = "MARKER-wrong-secret-4f1c";
    let url = emulator.url();
    let out = tokio::task::spawn_blocking(move || {
        tlauth(
            &["token"],
            &[
                ("TRUELAYER_ENV", url.as_str()),
                ("TRUELAYER_CLIENT_ID", "emulator-client"),
                ("TRUELAYER_CLIENT_SECRET", marker),
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(stderr.contains("environment"), "{stderr}");
    assert!(!stderr.contains(marker) && !text(&out.stdout).contains(marker));
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_can_come_from_standard_input_with_repeated_scopes() {
    let emulator = Emulator::start().await.unwrap();
    let url = emulator.url();
    let secret = format!("{}\n", emulator.client_secret());
    let out = tokio::task::spawn_blocking(move || {
        tlauth(
            &[
                "token",
                "--env",
                &url,
                "--client-id",
                "emulator-client",
                "--client-secret-stdin",
                "--scope",
                "payments",
                "--scope",
                "signupplus",
            ],
            &[],
            Some(&secret),
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["scope"], "payments signupplus");
    assert_eq!(emulator.stats().tokens_issued, 1);
}

#[test]
fn configuration_mistakes_exit_2_with_what_to_do() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &["token"],
            &[
                ("TRUELAYER_CLIENT_ID", "x"),
                ("TRUELAYER_CLIENT_SECRET", "y"),
            ],
            "TRUELAYER_ENV",
        ),
        (
            &["token", "--env", "sandbox", "--client-id", "x"],
            &[],
            "TRUELAYER_CLIENT_SECRET",
        ),
        (&["token", "--scope", "signupplus"], &[], "payments"),
        (
            &[
                "token",
                "--env",
                "http://auth.example.com",
                "--client-id",
                "x",
            ],
            &[("TRUELAYER_CLIENT_SECRET", "y")],
            "https",
        ),
    ];
    for (args, env, hint) in cases {
        let out = tlauth(args, env, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(hint),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../signing/tests/vectors");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlauth_sign_and_a_plain_http_client_create_a_payment() {
    let emulator = Emulator::start().await.unwrap();
    let key_file = std::env::temp_dir().join(format!("tlauth-sign-key-{}.pem", std::process::id()));
    std::fs::write(&key_file, emulator.signing_key_pem()).unwrap();
    let body = r#"{"amount_in_minor":100,"currency":"GBP"}"#;
    let out = tlauth(
        &[
            "sign",
            "--key-file",
            key_file.to_str().unwrap(),
            "--kid",
            emulator.signing_key_id(),
            "--path",
            "/v3/payments",
            "--header",
            "Idempotency-Key: curl-1",
            "--body",
            body,
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let signature = text(&out.stdout).trim().to_owned();
    // What `curl -H "Tl-Signature: $(tlauth sign ...)"` sends.
    let token: Value = serde_json::from_slice(
        &tlauth(
            &["token"],
            &[
                ("TRUELAYER_ENV", &emulator.url()),
                ("TRUELAYER_CLIENT_ID", emulator.client_id()),
                ("TRUELAYER_CLIENT_SECRET", emulator.client_secret()),
            ],
            None,
        )
        .stdout,
    )
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/v3/payments", emulator.url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("idempotency-key", "curl-1")
        .header("tl-signature", &signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(emulator.stats().signature_rejections, 0);
    let _ = std::fs::remove_file(key_file);
}

#[test]
fn tlauth_verify_accepts_truelayers_vector_and_names_what_is_wrong_otherwise() {
    let signature = std::fs::read_to_string(format!("{VECTORS}/tl-signature.txt")).unwrap();
    let verify = |body: &str, key: &str| {
        tlauth(
            &[
                "verify",
                "--public-key-file",
                &format!("{VECTORS}/{key}"),
                "--signature",
                signature.trim(),
                "--path",
                "/merchant_accounts/a61acaef-ee05-4077-92f3-25543a11bd8d/sweeping",
                "--header",
                "Idempotency-Key: idemp-2076717c-9005-4811-a321-9e0787fa0382",
                "--body",
                body,
            ],
            &[],
            None,
        )
    };
    let body = r#"{"currency":"GBP","max_amount_in_minor":5000000,"name":"Foo???"}"#;
    let ok = verify(body, "ec512-public.pem");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let tampered = verify("{}", "ec512-public.pem");
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        text(&tampered.stderr).contains("does not match"),
        "{}",
        text(&tampered.stderr)
    );
    let with_jwks = tlauth(
        &[
            "verify",
            "--jwks-file",
            &format!("{VECTORS}/jwks.json"),
            "--signature",
            signature.trim(),
            "--path",
            "/merchant_accounts/a61acaef-ee05-4077-92f3-25543a11bd8d/sweeping",
            "--header",
            "idempotency-key: idemp-2076717c-9005-4811-a321-9e0787fa0382",
            "--body",
            body,
        ],
        &[],
        None,
    );
    assert!(with_jwks.status.success(), "{}", text(&with_jwks.stderr));
    let bad_key = tlauth(
        &[
            "sign",
            "--key-file",
            &format!("{VECTORS}/ec512-public.pem"),
            "--kid",
            "k",
            "--path",
            "/x",
        ],
        &[],
        None,
    );
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(
        text(&bad_key.stderr).contains("not a private key"),
        "{}",
        text(&bad_key.stderr)
    );
}

#[test]
fn emulator_help_lists_the_admin_routes_and_the_librarys_defaults() {
    let out = tlauth(&["emulator", "--help"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(
        help.contains(truelayer_auth_emulator::ADMIN_ROUTES.trim_end()),
        "{help}"
    );
    let step = truelayer_auth_emulator::DEFAULT_PAYMENT_STEP.as_millis();
    assert!(
        help.contains(&format!("Defaults to {step} with --webhook-url")),
        "{help}"
    );
    let port = truelayer_auth_emulator::DEFAULT_ADDR.port();
    assert!(help.contains(&format!("[default: {port}]")), "{help}");
}

#[test]
fn the_client_secret_is_never_taken_as_a_flag_nor_echoed() {
    const MARKER: &str = "MARKER-SECRET-0b7f3c";
    let joined = format!("--client-secret={MARKER}");
    for args in [
        ["token", "--client-secret", MARKER],
        ["token", &joined, "--env"],
    ] {
        let out = tlauth(&args, &[], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(stderr.contains("--client-secret-stdin"), "{stderr}");
        assert!(
            !stdout.contains(MARKER) && !stderr.contains(MARKER),
            "{stderr}"
        );
    }
}
