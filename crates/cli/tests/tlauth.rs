//! `tlauth` as a user runs it: a real process, its stdout, stderr and exit code.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use truelayer_auth_emulator::Emulator;

fn tlauth(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlauth"));
    cmd.args(args)
        .env_remove("TRUELAYER_ENV")
        .env_remove("TRUELAYER_CLIENT_ID")
        .env_remove("TRUELAYER_CLIENT_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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
