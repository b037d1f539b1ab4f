//! A newcomer's first hour (issue #22): `tlauth sign` refuses what TrueLayer would refuse,
//! a failed `tlauth verify` points at a cause it can see, and every message names the flag
//! to use, not a Rust function or another command's option.

mod support;

use support::{text, tlauth};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../signing/tests/vectors");
/// The path, `Idempotency-Key` and body TrueLayer's vector signature covers.
const VECTOR_PATH: &str = "/merchant_accounts/a61acaef-ee05-4077-92f3-25543a11bd8d/sweeping";
const VECTOR_IDEMPOTENCY_KEY: &str = "Idempotency-Key: idemp-2076717c-9005-4811-a321-9e0787fa0382";
const VECTOR_BODY: &str = r#"{"currency":"GBP","max_amount_in_minor":5000000,"name":"Foo???"}"#;

fn private_key() -> String {
    format!("{VECTORS}/ec512-private.pem")
}

fn vector_signature() -> String {
    std::fs::read_to_string(format!("{VECTORS}/tl-signature.txt"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A file under the temporary directory holding `contents`, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("tlauth-newcomer-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sign(extra: &[&str]) -> std::process::Output {
    let key = private_key();
    let mut args = vec!["sign", "--key-file", &key, "--kid", "k"];
    args.extend_from_slice(extra);
    tlauth(&args, &[], None)
}

#[test]
fn sign_refuses_a_modifying_request_without_an_idempotency_key() {
    for method in ["POST", "PUT", "PATCH", "DELETE", "post"] {
        let out = sign(&["--method", method, "--path", "/v3/payments", "--body", "{}"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{method}: {stderr}");
        assert!(out.stdout.is_empty(), "{method}: {}", text(&out.stdout));
        assert!(stderr.contains("Idempotency-Key"), "{method}: {stderr}");
        assert!(
            stderr.contains(r#"--header "Idempotency-Key: $(uuidgen)""#),
            "{method}: {stderr}"
        );
    }
    // With one (in any case), and a GET without one, it signs.
    let with_key = sign(&["--path", "/v3/payments", "--header", "idempotency-key: k-1"]);
    assert!(with_key.status.success(), "{}", text(&with_key.stderr));
    let get = sign(&["--method", "GET", "--path", "/v3/payments/p-1"]);
    assert!(get.status.success(), "{}", text(&get.stderr));
}

#[test]
fn sign_and_verify_refuse_a_path_with_a_query() {
    let signed = sign(&[
        "--path",
        "/v3/payments?x=1",
        "--header",
        "Idempotency-Key: k-1",
    ]);
    assert_eq!(signed.status.code(), Some(2), "{}", text(&signed.stderr));
    assert!(signed.stdout.is_empty());
    assert!(
        text(&signed.stderr).contains("query"),
        "{}",
        text(&signed.stderr)
    );
    let signature = vector_signature();
    let path = format!("{VECTOR_PATH}?x=1");
    let verified = tlauth(
        &[
            "verify",
            "--public-key-file",
            &format!("{VECTORS}/ec512-public.pem"),
            "--signature",
            &signature,
            "--path",
            &path,
            "--header",
            VECTOR_IDEMPOTENCY_KEY,
            "--body",
            VECTOR_BODY,
        ],
        &[],
        None,
    );
    assert_eq!(
        verified.status.code(),
        Some(2),
        "{}",
        text(&verified.stderr)
    );
    assert!(
        text(&verified.stderr).contains("query"),
        "{}",
        text(&verified.stderr)
    );
}

#[test]
fn a_failed_verify_points_at_a_final_newline_in_the_body_file() {
    // What `echo '{...}' > body.json` writes.
    let body = TempFile::new("body.json", &format!("{VECTOR_BODY}\n"));
    let out = tlauth(
        &[
            "verify",
            "--public-key-file",
            &format!("{VECTORS}/ec512-public.pem"),
            "--signature",
            &vector_signature(),
            "--path",
            VECTOR_PATH,
            "--header",
            VECTOR_IDEMPOTENCY_KEY,
            "--body-file",
            body.path(),
        ],
        &[],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains("ends in a newline"), "{stderr}");
    assert!(stderr.contains("printf"), "{stderr}");
    assert!(stderr.contains("matches without it"), "{stderr}");
}

#[test]
fn a_scope_mistake_names_the_cli_flag_and_the_likely_scope() {
    let out = tlauth(&["token", "--scope", "paymnets"], &[], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--without-payments"), "{stderr}");
    assert!(!stderr.contains("Scopes::"), "{stderr}");
    assert!(stderr.contains("did you mean `payments`?"), "{stderr}");
}

#[test]
fn verify_asks_its_key_flags_for_what_they_take() {
    let verify = |flag: &str, file: &str| {
        tlauth(
            &[
                "verify",
                flag,
                &format!("{VECTORS}/{file}"),
                "--signature",
                &vector_signature(),
                "--path",
                VECTOR_PATH,
            ],
            &[],
            None,
        )
    };
    let jwks_as_pem = verify("--public-key-file", "jwks.json");
    let stderr = text(&jwks_as_pem.stderr);
    assert_eq!(jwks_as_pem.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("-----BEGIN PUBLIC KEY-----"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    assert!(stderr.contains("--jwks-file"), "{stderr}");
    let pem_as_jwks = verify("--jwks-file", "ec512-public.pem");
    let stderr = text(&pem_as_jwks.stderr);
    assert_eq!(pem_as_jwks.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--public-key-file"), "{stderr}");
}

#[test]
fn environment_mistakes_say_how_to_write_one_like_the_help_does() {
    let token = |env: &str| tlauth(&["token", "--env", env, "--client-id", "x"], &[], None);
    let help = text(&tlauth(&["token", "--help"], &[], None).stdout);
    assert!(help.contains("http://127.0.0.1:8080"), "{help}");

    let unknown = token("staging");
    let stderr = text(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:8080"), "{stderr}");
    assert!(!stderr.contains("auth.example.com"), "{stderr}");

    let no_scheme = tlauth(
        &["token"],
        &[
            ("TRUELAYER_ENV", "127.0.0.1:8080"),
            ("TRUELAYER_CLIENT_ID", "x"),
            ("TRUELAYER_CLIENT_SECRET", "y"),
        ],
        None,
    );
    let stderr = text(&no_scheme.stderr);
    assert_eq!(no_scheme.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:8080"), "{stderr}");
    let no_scheme_remote = token("auth.example.com");
    let stderr = text(&no_scheme_remote.stderr);
    assert!(stderr.contains("https://auth.example.com"), "{stderr}");

    // A typo is caught with the name it was likely meant to be ...
    let typo = token("sandbx");
    let stderr = text(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `sandbox`?"), "{stderr}");
    // ... while another casing of a name is that name: what is missing next is the secret.
    let cased = token("Sandbox");
    let stderr = text(&cased.stderr);
    assert_eq!(cased.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no client secret"), "{stderr}");
}

#[test]
fn a_missing_signing_key_id_is_named_alone() {
    let key = private_key();
    let configured = [("TRUELAYER_ENV", "sandbox"), ("TRUELAYER_CLIENT_ID", "x")];
    /// Arguments, environment, and the one thing missing.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &["proxy", "--signing-key-file", &key],
            &configured,
            "--signing-key-id",
        ),
        (
            &["proxy", "--signing-key-id", "k"],
            &configured,
            "--signing-key-file",
        ),
        (
            &["sign", "--signing-key-file", &key, "--path", "/x"],
            &[],
            "--signing-key-id",
        ),
        (
            &["sign", "--path", "/x"],
            &[("TRUELAYER_SIGNING_KEY_ID", "k")],
            "--signing-key-file",
        ),
    ];
    for (args, env, missing) in cases {
        let out = tlauth(args, env, None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(missing), "{args:?}: {stderr}");
        let env_var = missing.trim_start_matches("--").replace('-', "_");
        assert!(
            stderr.contains(&format!("TRUELAYER_{}", env_var.to_uppercase())),
            "{args:?}: {stderr}"
        );
        for other in ["--env", "--client-id", "--path", "Usage:"] {
            assert!(!stderr.contains(other), "{args:?} names {other}: {stderr}");
        }
    }
}

#[test]
fn verify_help_talks_about_verifying() {
    let verify = text(&tlauth(&["verify", "--help"], &[], None).stdout);
    let header = verify
        .split("--header")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default()
        .to_owned();
    assert!(header.contains("signature names"), "{verify}");
    assert!(!header.contains("signing order"), "{verify}");
    let sign = text(&tlauth(&["sign", "--help"], &[], None).stdout);
    assert!(sign.contains("signing order"), "{sign}");
}

#[test]
fn global_options_come_after_each_commands_own() {
    for (command, own_last) in [
        ("sign", "--body-file"),
        ("verify", "--body-file"),
        ("token", "--without-payments"),
        ("proxy", "--without-payments"),
    ] {
        let help = text(&tlauth(&[command, "--help"], &[], None).stdout);
        // Where each is listed, not where another option's help mentions it.
        let listed = |option: &str| help.find(&format!("      {option}")).unwrap();
        let own = listed(own_last);
        let heading = help
            .find("Global options:")
            .unwrap_or_else(|| panic!("{command}: {help}"));
        let global = listed("--log-format <");
        assert!(own < heading && heading < global, "{command}: {help}");
    }
}
