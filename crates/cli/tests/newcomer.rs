//! A newcomer's first hour (issue #22): `tlauth sign` refuses what TrueLayer would refuse,
//! a failed `tlauth verify` points at a cause it can see, and a mistaken environment or
//! scope is answered with what was likely meant and the flag to use.

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
