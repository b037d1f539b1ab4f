//! TrueLayer's shared test vectors, and both directions against TrueLayer's own Rust crate
//! (`truelayer-signing`, OpenSSL), over generated requests.

use proptest::prelude::*;
use truelayer_auth_signing::{
    KeyError, Signable, SignatureError, Signer, Verifier, VerifyError, jws_header,
};

const KID: &str = "45fc75cf-5649-4134-84b3-192c2c78e990";
const PRIVATE: &[u8] = include_bytes!("vectors/ec512-private.pem");
const PUBLIC: &[u8] = include_bytes!("vectors/ec512-public.pem");
const JWKS: &[u8] = include_bytes!("vectors/jwks.json");
const TL_SIGNATURE: &str = include_str!("vectors/tl-signature.txt");
const WEBHOOK_SIGNATURE: &str = include_str!("vectors/webhook-signature.txt");

const SWEEPING_PATH: &str = "/merchant_accounts/a61acaef-ee05-4077-92f3-25543a11bd8d/sweeping";
const SWEEPING_KEY: &str = "idemp-2076717c-9005-4811-a321-9e0787fa0382";
const SWEEPING_BODY: &[u8] = br#"{"currency":"GBP","max_amount_in_minor":5000000,"name":"Foo???"}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn sweeping() -> Signable<'static> {
    Signable::new("POST", SWEEPING_PATH)
        .header("Idempotency-Key", SWEEPING_KEY)
        .body(SWEEPING_BODY)
}

#[test]
fn truelayers_signature_vector_verifies_with_the_pem_and_the_jwks() {
    for verifier in [
        Verifier::from_public_pem(PUBLIC).unwrap(),
        Verifier::from_jwks(JWKS).unwrap(),
    ] {
        verifier.verify(&sweeping(), TL_SIGNATURE).unwrap();
        // Header names are looked up in any case.
        let lower = Signable::new("POST", SWEEPING_PATH)
            .header("idempotency-key", SWEEPING_KEY)
            .body(SWEEPING_BODY);
        verifier.verify(&lower, TL_SIGNATURE).unwrap();
        // One trailing slash more is tolerated; a different body is not.
        let slash = format!("{SWEEPING_PATH}/");
        let slashed = Signable::new("POST", &slash)
            .header("Idempotency-Key", SWEEPING_KEY)
            .body(SWEEPING_BODY);
        verifier.verify(&slashed, TL_SIGNATURE).unwrap();
        let tampered = Signable::new("POST", SWEEPING_PATH)
            .header("Idempotency-Key", SWEEPING_KEY)
            .body(b"{}");
        assert_eq!(
            verifier.verify(&tampered, TL_SIGNATURE),
            Err(VerifyError::Invalid)
        );
        let no_key = Signable::new("POST", SWEEPING_PATH).body(SWEEPING_BODY);
        assert_eq!(
            verifier.verify(&no_key, TL_SIGNATURE),
            Err(VerifyError::MissingSignedHeader("Idempotency-Key".into()))
        );
    }
}

#[test]
fn a_signature_for_post_does_not_verify_a_request_whose_method_is_lowercase_post() {
    // HTTP methods are case-sensitive: `post` is another method than the `POST` signed.
    // TrueLayer's crate cannot even express it (its `Method` is an enum that writes
    // `POST`); its payload holds the method's bytes as given.
    let ours = runtime()
        .block_on(Signer::from_pem(KID, PRIVATE).unwrap().sign(&sweeping()))
        .unwrap();
    let theirs = truelayer_signing::sign_with_pem(KID, PRIVATE)
        .method(truelayer_signing::Method::Post)
        .path(SWEEPING_PATH)
        .header("Idempotency-Key", SWEEPING_KEY.as_bytes())
        .body(SWEEPING_BODY)
        .build_signer()
        .sign()
        .unwrap();
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    for signature in [TL_SIGNATURE, ours.as_str(), theirs.as_str()] {
        verifier.verify(&sweeping(), signature).unwrap();
        for method in ["post", "Post", "pOST"] {
            let request = Signable::new(method, SWEEPING_PATH)
                .header("Idempotency-Key", SWEEPING_KEY)
                .body(SWEEPING_BODY);
            assert_eq!(
                verifier.verify(&request, signature),
                Err(VerifyError::Invalid),
                "{method}"
            );
        }
    }
    // The signer writes the canonical (uppercase) method whatever case it is given.
    let lower = Signable::new("post", SWEEPING_PATH)
        .header("Idempotency-Key", SWEEPING_KEY)
        .body(SWEEPING_BODY);
    let signed_lower = runtime()
        .block_on(Signer::from_pem(KID, PRIVATE).unwrap().sign(&lower))
        .unwrap();
    verifier.verify(&sweeping(), &signed_lower).unwrap();
}

#[test]
fn truelayers_webhook_vector_verifies_and_names_its_jku() {
    let header = jws_header(WEBHOOK_SIGNATURE).unwrap();
    assert_eq!(
        header.jku.as_deref(),
        Some("https://webhooks.truelayer.com/.well-known/jwks")
    );
    let verifier = Verifier::from_jwks(JWKS)
        .unwrap()
        .require_header("X-Tl-Webhook-Timestamp");
    let webhook = |timestamp: &'static str| {
        Signable::new("POST", "/tl-webhook")
            .header("x-tl-webhook-timestamp", timestamp)
            .header("content-type", "application/json")
            .body(br#"{"event_type":"example","event_id":"18b2842b-a57b-4887-a0a6-d3c7c36f1020"}"#)
    };
    verifier
        .verify(&webhook("2021-11-29T11:42:55Z"), WEBHOOK_SIGNATURE)
        .unwrap();
    assert_eq!(
        verifier.verify(&webhook("2021-12-02T14:18:00Z"), WEBHOOK_SIGNATURE),
        Err(VerifyError::Invalid)
    );
}

#[test]
fn what_this_crate_signs_verifies_with_the_vector_key_and_truelayers_crate() {
    let signer = Signer::from_pem(KID, PRIVATE).unwrap();
    let signature = runtime().block_on(signer.sign(&sweeping())).unwrap();
    Verifier::from_public_pem(PUBLIC)
        .unwrap()
        .verify(&sweeping(), &signature)
        .unwrap();
    truelayer_signing::verify_with_pem(PUBLIC)
        .method(truelayer_signing::Method::Post)
        .path(SWEEPING_PATH)
        .header("Idempotency-Key", SWEEPING_KEY.as_bytes())
        .body(SWEEPING_BODY)
        .build_verifier()
        .verify(&signature)
        .unwrap();
    // Random nonces: two signatures of one request differ, and both verify.
    let again = runtime().block_on(signer.sign(&sweeping())).unwrap();
    assert_ne!(signature, again);
}

#[test]
fn keys_that_are_not_p521_private_pem_are_refused_naming_what_they_are() {
    for (pem, found) in [
        (&include_bytes!("keys/p256.pem")[..], "an EC P-256 key"),
        (&include_bytes!("keys/p384.pem")[..], "an EC P-384 key"),
        (&include_bytes!("keys/rsa.pem")[..], "an RSA key"),
        (&include_bytes!("keys/ed25519.pem")[..], "an Ed25519 key"),
    ] {
        match Signer::from_pem(KID, pem) {
            Err(KeyError::WrongKeyType { found: got }) => assert_eq!(got, found),
            other => panic!("{found}: {other:?}"),
        }
    }
    match Verifier::from_public_pem(include_bytes!("keys/p384-public.pem")) {
        Err(KeyError::WrongKeyType { found }) => assert_eq!(found, "an EC P-384 key"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Signer::from_pem(KID, include_bytes!("keys/p521-encrypted.pem")).unwrap_err(),
        KeyError::Encrypted
    );
    assert_eq!(
        Signer::from_pem(KID, b"not a key").unwrap_err(),
        KeyError::NotPem
    );
    assert!(matches!(
        Signer::from_pem(KID, PUBLIC),
        Err(KeyError::WrongPemKind { .. })
    ));
    assert_eq!(
        Signer::from_pem(" ", PRIVATE).unwrap_err(),
        KeyError::EmptyKid
    );
    // The message says what to do, and no key material appears anywhere.
    let message = KeyError::WrongKeyType {
        found: "an RSA key".into(),
    }
    .to_string();
    assert!(message.contains("secp521r1"), "{message}");
    let signer = Signer::from_pem(KID, PRIVATE).unwrap();
    let shown = format!("{signer:?}");
    assert!(shown.contains(KID) && !shown.contains("MIH"), "{shown}");
}

#[test]
fn malformed_and_foreign_signatures_are_refused() {
    let verifier = Verifier::from_jwks(JWKS).unwrap();
    let (header, signature) = TL_SIGNATURE.trim().split_once("..").unwrap();
    let attached = format!("{header}.eyJ4IjoxfQ.{signature}");
    assert_eq!(
        verifier.verify(&sweeping(), &attached),
        Err(VerifyError::AttachedPayload)
    );
    assert_eq!(
        verifier.verify(&sweeping(), "abc"),
        Err(VerifyError::NotDetached)
    );
    let hs256 = format!(
        "{}..{signature}",
        base64_url(br#"{"alg":"HS256","kid":"45fc75cf-5649-4134-84b3-192c2c78e990","tl_version":"2","tl_headers":"Idempotency-Key"}"#)
    );
    assert_eq!(
        verifier.verify(&sweeping(), &hs256),
        Err(VerifyError::UnsupportedAlgorithm("HS256".into()))
    );
    let v1 = format!(
        "{}..{signature}",
        base64_url(br#"{"alg":"ES512","kid":"45fc75cf-5649-4134-84b3-192c2c78e990"}"#)
    );
    assert_eq!(
        verifier.verify(&sweeping(), &v1),
        Err(VerifyError::V1NotAllowed)
    );
    let unknown = format!(
        "{}..{signature}",
        base64_url(br#"{"alg":"ES512","kid":"db2e0bb4-e33d-4fc6-a8c5-645e70331127","tl_version":"2","tl_headers":"Idempotency-Key"}"#)
    );
    assert_eq!(
        verifier.verify(&sweeping(), &unknown),
        Err(VerifyError::UnknownKey(
            "db2e0bb4-e33d-4fc6-a8c5-645e70331127".into()
        )),
        "the RSA key in the JWKS is never used"
    );
    let strict = Verifier::from_jwks(JWKS)
        .unwrap()
        .require_header("Content-Type");
    assert_eq!(
        strict.verify(&sweeping(), TL_SIGNATURE),
        Err(VerifyError::RequiredHeaderNotSigned("Content-Type".into()))
    );
}

#[test]
fn a_v1_signature_verifies_only_when_allowed() {
    // TrueLayer's v1 vector from their crate's tests: the body `{"abc":123}` alone.
    let v1 = "eyJhbGciOiJFUzUxMiIsImtpZCI6IjQ1ZmM3NWNmLTU2NDktNDEzNC04NGIzLTE5MmMyYzc4ZTk5MCJ9..ASwrHoHm-1tuvTWj_YFbrMZiP22sUHEu826cJC7flb9nZLwdfP0L-RDhBA5csNLM2KtkAOD7pnJYS7tnw383gtuxAWnXI_NbJ5rZuYWVgVlqc9VCt8lkvyQZtKOiRQfpFmJWBDNULHWwFTyrX2UaOO_KWHnZ4_8jpNaNsyeQGe61gfk-";
    let request = Signable::new("POST", "/anything").body(br#"{"abc":123}"#);
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    assert_eq!(
        verifier.verify(&request, v1),
        Err(VerifyError::V1NotAllowed)
    );
    verifier
        .clone()
        .allow_v1(true)
        .verify(&request, v1)
        .unwrap();
    // It signs no headers, so it cannot satisfy a required one.
    assert_eq!(
        verifier
            .allow_v1(true)
            .require_header("Idempotency-Key")
            .verify(&request, v1),
        Err(VerifyError::RequiredHeaderNotSigned(
            "Idempotency-Key".into()
        ))
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // A tiny encoder, so the test does not lean on the crate it tests.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            let _ = out.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A request generated for the property tests: path, header names and values, body.
#[derive(Debug, Clone)]
struct Generated {
    method: truelayer_signing::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn generated() -> impl Strategy<Value = Generated> {
    let method = prop_oneof![
        Just(truelayer_signing::Method::Post),
        Just(truelayer_signing::Method::Put),
        Just(truelayer_signing::Method::Patch),
        Just(truelayer_signing::Method::Delete),
    ];
    let path = "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){1,5}";
    let name = "[A-Za-z][A-Za-z0-9-]{0,15}";
    // Values as HTTP carries them: inner spaces, none at either end (a signer refuses those,
    // since transit strips them).
    let value = "([!-~]([ -~]{0,38}[!-~])?)?";
    let headers = proptest::collection::vec((name, value), 0..5).prop_map(|mut hs| {
        // Header names are unique (case-insensitively) in a signed set.
        let mut seen = std::collections::HashSet::new();
        hs.retain(|(n, _)| seen.insert(n.to_ascii_lowercase()));
        hs
    });
    let body = prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..300), // non-UTF-8 included
    ];
    (method, path, headers, body).prop_map(|(method, path, headers, body)| Generated {
        method,
        path,
        headers,
        body,
    })
}

fn signable(g: &Generated) -> Signable<'_> {
    Signable::new(g.method.name(), &g.path)
        .headers(g.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .body(&g.body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ours_verified_by_truelayers_crate(g in generated()) {
        let signer = Signer::from_pem(KID, PRIVATE).unwrap();
        let signature = runtime().block_on(signer.sign(&signable(&g))).unwrap();
        let verified = truelayer_signing::verify_with_pem(PUBLIC)
            .method(g.method)
            .path(&g.path)
            .headers(g.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
            .body(&g.body)
            .build_verifier()
            .verify(&signature);
        prop_assert!(verified.is_ok(), "{:?}", verified);
    }

    #[test]
    fn theirs_verified_by_ours(g in generated()) {
        let signature = truelayer_signing::sign_with_pem(KID, PRIVATE)
            .method(g.method)
            .path(&g.path)
            .headers(g.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
            .body(&g.body)
            .build_signer()
            .sign()
            .unwrap();
        let verifier = Verifier::from_jwks(JWKS).unwrap();
        prop_assert_eq!(verifier.verify(&signable(&g), &signature), Ok(()));
        // And a flipped body byte is caught.
        if !g.body.is_empty() {
            let mut tampered = g.clone();
            tampered.body[0] ^= 1;
            prop_assert_eq!(verifier.verify(&signable(&tampered), &signature), Err(VerifyError::Invalid));
        }
    }
}

#[test]
fn a_key_as_openssl_ecparam_writes_it_without_noout_is_read() {
    // `openssl ecparam -genkey -name secp521r1` (no `-noout`) puts the curve's parameters
    // before the key.
    let with_params = [
        &b"-----BEGIN EC PARAMETERS-----\nBgUrgQQAIw==\n-----END EC PARAMETERS-----\n"[..],
        PRIVATE,
    ]
    .concat();
    let signer = Signer::from_pem(KID, &with_params).unwrap();
    let signature = runtime().block_on(signer.sign(&sweeping())).unwrap();
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    verifier.verify(&sweeping(), &signature).unwrap();
    // Parameters alone are not a key.
    assert!(matches!(
        Signer::from_pem(
            KID,
            b"-----BEGIN EC PARAMETERS-----\nBgUrgQQAIw==\n-----END EC PARAMETERS-----\n"
        ),
        Err(KeyError::Malformed { .. })
    ));
}

#[test]
fn a_key_read_twice_is_the_same_key_and_another_is_not() {
    let once = Signer::from_pem(KID, PRIVATE).unwrap();
    let again = Signer::from_pem(KID, PRIVATE).unwrap();
    assert!(once.same_key(&again), "a secret store read again");
    assert!(!once.same_key(&Signer::from_pem("another-kid", PRIVATE).unwrap()));
    assert!(!once.same_key(&Signer::generate(KID)));
}

#[test]
fn headers_that_would_verify_as_other_bytes_are_refused() {
    let signer = Signer::from_pem(KID, PRIVATE).unwrap();
    let sign = |request: Signable<'_>| runtime().block_on(signer.sign(&request));
    for padded in [" key", "key ", "key\t"] {
        assert!(
            matches!(
                sign(Signable::new("POST", "/p").header("Idempotency-Key", padded)),
                Err(truelayer_auth_signing::SignatureError::InvalidHeader { .. })
            ),
            "{padded:?}: HTTP strips it in transit"
        );
    }
    assert!(matches!(
        sign(
            Signable::new("POST", "/p")
                .header("Idempotency-Key", "a")
                .header("idempotency-key", "b")
        ),
        Err(truelayer_auth_signing::SignatureError::DuplicateHeader { .. })
    ));
    // Inner spaces are part of the value.
    sign(Signable::new("POST", "/p").header("X-Note", "a b")).unwrap();
}

#[test]
fn the_signer_refuses_a_header_value_with_a_line_break() {
    let signer = Signer::from_pem(KID, PRIVATE).unwrap();
    for value in ["a\nb", "a\rb", "a\r\nb", "a\n", "\nX-Other: b"] {
        let request = Signable::new("POST", "/p")
            .header("Idempotency-Key", "k")
            .header("X-Note", value);
        match runtime().block_on(signer.sign(&request)) {
            Err(SignatureError::InvalidHeader { name }) => assert_eq!(name, "X-Note"),
            other => panic!("{value:?}: {other:?}"),
        }
    }
}

#[test]
fn a_line_break_moved_from_the_body_into_a_header_value_does_not_verify() {
    // Signed: `X-Note: a`, then the body `\n{}`. Sent: `X-Note: a\n`, then the body `{}`.
    // Both make the payload `...X-Note: a\n\n{}`: without a check, one signature would
    // verify two requests with different bodies.
    let signed = Signable::new("POST", "/p")
        .header("Idempotency-Key", "k")
        .header("X-Note", "a")
        .body(b"\n{}");
    let moved = Signable::new("POST", "/p")
        .header("Idempotency-Key", "k")
        .header("X-Note", "a\n")
        .body(b"{}");
    let ours = runtime()
        .block_on(Signer::from_pem(KID, PRIVATE).unwrap().sign(&signed))
        .unwrap();
    let theirs = truelayer_signing::sign_with_pem(KID, PRIVATE)
        .method(truelayer_signing::Method::Post)
        .path("/p")
        .header("Idempotency-Key", b"k")
        .header("X-Note", b"a")
        .body(b"\n{}")
        .build_signer()
        .sign()
        .unwrap();
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    for signature in [ours, theirs] {
        verifier.verify(&signed, &signature).unwrap();
        assert_eq!(
            verifier.verify(&moved, &signature),
            Err(VerifyError::InvalidHeader("X-Note".into()))
        );
    }
}

/// What the Signer and the Verifier must both refuse.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Method,
    Path,
    Header(&'static str),
    Duplicate(&'static str),
}

#[test]
fn the_verifier_refuses_every_request_the_signer_refuses() {
    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Refused,
    );
    let key = ("Idempotency-Key", "k");
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/p",
            vec![key, ("X-Note", "a\nb")],
            Refused::Header("X-Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X-Note", "a\rb")],
            Refused::Header("X-Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X-Note", " a")],
            Refused::Header("X-Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X-Note", "a\t")],
            Refused::Header("X-Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X Note", "a")],
            Refused::Header("X Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X(Note)", "a")],
            Refused::Header("X(Note)"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X:Note", "a")],
            Refused::Header("X:Note"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("X-Nöte", "a")],
            Refused::Header("X-Nöte"),
        ),
        (
            "POST",
            "/p",
            vec![key, ("idempotency-key", "k2")],
            Refused::Duplicate("Idempotency-Key"),
        ),
        ("PO ST", "/p", vec![key], Refused::Method),
        ("POST\n", "/p", vec![key], Refused::Method),
        ("", "/p", vec![key], Refused::Method),
        ("POST", "/p\nX-Note: a", vec![key], Refused::Path),
        ("POST", "/p\r", vec![key], Refused::Path),
    ];
    let signer = Signer::from_pem(KID, PRIVATE).unwrap();
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    for (method, path, headers, refused) in cases {
        let request = Signable::new(method, path)
            .headers(headers.iter().map(|(n, v)| (*n, *v)))
            .body(b"{}");
        let signed = runtime().block_on(signer.sign(&request));
        let ok = match (&signed, refused) {
            (Err(SignatureError::InvalidMethod { .. }), Refused::Method)
            | (Err(SignatureError::InvalidPath { .. }), Refused::Path) => true,
            (Err(SignatureError::InvalidHeader { name }), Refused::Header(expected))
            | (Err(SignatureError::DuplicateHeader { name }), Refused::Duplicate(expected)) => {
                name == expected
            }
            _ => false,
        };
        assert!(ok, "signing {method:?} {path:?} {headers:?}: {signed:?}");

        // A signature naming these headers (the checks come before any key is used, so
        // its bytes need not be valid).
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &headers {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name);
            }
        }
        let jose = serde_json::json!({
            "alg": "ES512", "kid": KID, "tl_version": "2", "tl_headers": names.join(","),
        });
        let signature = format!("{}..AAAA", base64_url(jose.to_string().as_bytes()));
        let verified = verifier.verify(&request, &signature);
        let ok = match (&verified, refused) {
            (Err(VerifyError::InvalidMethod(_)), Refused::Method)
            | (Err(VerifyError::InvalidPath(_)), Refused::Path) => true,
            (Err(VerifyError::InvalidHeader(name)), Refused::Header(expected))
            | (Err(VerifyError::DuplicateHeader(name)), Refused::Duplicate(expected)) => {
                name == expected
            }
            _ => false,
        };
        assert!(
            ok,
            "verifying {method:?} {path:?} {headers:?}: {verified:?}"
        );
        // A line break in what the sender chose never reaches a log line.
        for shown in [
            signed.unwrap_err().to_string(),
            verified.unwrap_err().to_string(),
        ] {
            assert!(!shown.contains(['\r', '\n']), "{shown:?}");
        }
    }

    // Every token character is allowed in a name; inner spaces and tabs in a value.
    let request = Signable::new("POST", "/p")
        .header("Idempotency-Key", "k")
        .header("!#$%&'*+-.^_`|~09Az", "a b\tc");
    let signature = runtime().block_on(signer.sign(&request)).unwrap();
    verifier.verify(&request, &signature).unwrap();
}

#[test]
fn a_signature_and_its_high_s_twin_both_verify_so_nothing_may_deduplicate_on_its_bytes() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p521::ecdsa::Signature;

    // ECDSA signatures are malleable: (r, s) and (r, n - s) are both valid, and neither
    // TrueLayer's libraries nor this crate insist on the low-S form. Whoever holds one
    // signature can make a second, different string that verifies for the same request.
    let ours = runtime()
        .block_on(Signer::from_pem(KID, PRIVATE).unwrap().sign(&sweeping()))
        .unwrap();
    for signature in [TL_SIGNATURE.trim(), ours.as_str()] {
        let (header, encoded) = signature.split_once("..").unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(encoded).unwrap();
        let original = Signature::from_slice(&bytes).unwrap();
        let (r, s) = original.split_scalars();
        let twin = Signature::from_scalars(r, -s).unwrap();
        // One of the two is the high-S form; they are the same signature once normalized.
        assert_ne!(original, twin);
        assert_eq!(original.normalize_s(), twin.normalize_s());
        assert!((original.normalize_s() == original) != (twin.normalize_s() == twin));
        let twin = format!("{header}..{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()));
        assert_ne!(twin, signature);

        for value in [signature, twin.as_str()] {
            Verifier::from_public_pem(PUBLIC)
                .unwrap()
                .verify(&sweeping(), value)
                .unwrap();
            truelayer_signing::verify_with_pem(PUBLIC)
                .method(truelayer_signing::Method::Post)
                .path(SWEEPING_PATH)
                .header("Idempotency-Key", SWEEPING_KEY.as_bytes())
                .body(SWEEPING_BODY)
                .build_verifier()
                .verify(value)
                .unwrap();
        }
    }
}
