//! `tlauth sign` and `tlauth verify`: the "sign this curl" tool people otherwise write by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use truelayer_auth_signing::{
    IDEMPOTENCY_KEY, KeyError, Signable, SignatureError, Signer, Verifier, VerifyError,
};

use crate::Failure;

/// The request a signature covers.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// The absolute path as sent (`/v3/payments`), without scheme, host or query.
    #[arg(long)]
    path: String,
    /// A header of the request, `Name: value`; repeat for several.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// The body, as sent.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file holding the body, as sent (byte for byte).
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
}

/// Headers as `(name, value)`, in the order given.
type Headers = Vec<(String, String)>;

impl RequestArgs {
    /// The headers split into name and value, and the body bytes.
    fn parts(&self) -> Result<(Headers, Vec<u8>), Failure> {
        if let Some((path, _)) = self.path.split_once('?') {
            return Err(Failure::usage(format!(
                "--path `{}` has a query: a Tl-Signature covers the path without it, so pass \
                 --path {path} (the query stays on the URL the request is sent to)",
                self.path
            )));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for header in &self.headers {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                Failure::usage(format!("--header `{header}` is not `Name: value`"))
            })?;
            headers.push((name.trim().to_owned(), value.trim_start().to_owned()));
        }
        let body = match (&self.body, &self.body_file) {
            (Some(body), _) => body.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path).map_err(|e| {
                Failure::usage(format!(
                    "could not read the body file {}: {e}",
                    path.display()
                ))
            })?,
            (None, None) => Vec::new(),
        };
        Ok((headers, body))
    }
}

/// Options of `tlauth sign`.
#[derive(Debug, Args)]
#[command(mut_arg("headers", |arg| arg.help(
    "A header of the request, `Name: value`; repeat for several. The order given is the \
     signing order. TrueLayer wants at least Idempotency-Key, on every POST, PUT, PATCH and \
     DELETE: a new one per payment, the same one on its retries"
)))]
pub(crate) struct SignArgs {
    /// The P-521 private key, PEM (SEC1 `EC PRIVATE KEY` or PKCS#8).
    // Named as in `tlauth proxy` and the environment variables; the old name is an alias.
    #[arg(
        long = "signing-key-file",
        visible_alias = "key-file",
        env = "TRUELAYER_SIGNING_KEY_FILE",
        value_name = "PATH"
    )]
    key_file: Option<PathBuf>,
    /// Sign with this AWS KMS key instead (an `ECC_NIST_P521` `SIGN_VERIFY` key: its id,
    /// ARN or alias); the private key never leaves KMS. AWS region and credentials come
    /// from the default chain.
    #[arg(
        long = "signing-kms-key-id",
        env = "TRUELAYER_SIGNING_KMS_KEY_ID",
        value_name = "KMS_KEY_ID",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
        conflicts_with = "key_file"
    )]
    kms_key_id: Option<String>,
    /// The key id TrueLayer Console shows for its public half.
    #[arg(
        long = "signing-key-id",
        visible_alias = "kid",
        env = "TRUELAYER_SIGNING_KEY_ID",
        value_name = "KID"
    )]
    kid: Option<String>,
    #[command(flatten)]
    request: RequestArgs,
}

/// Where a signing key is: a PEM file, or an AWS KMS key.
pub(crate) enum KeySource<'a> {
    File(&'a Path),
    Kms(&'a str),
}

/// The signer for `source` under `kid`: the key read from its file (zeroized after
/// parsing), or the KMS key, whose public key is fetched once and checked to be P-521.
pub(crate) async fn load_signer(source: KeySource<'_>, kid: &str) -> Result<Signer, Failure> {
    match source {
        KeySource::File(file) => {
            let pem = read(file, "key file")?;
            Signer::from_pem(kid, &pem).map_err(|e| {
                Failure::usage(format!(
                    "the signing key {} is unusable: {e}",
                    file.display()
                ))
            })
        }
        KeySource::Kms(key_id) => {
            let key = truelayer_auth_vault::KmsSigningKey::from_env(key_id)
                .await
                .map_err(|e| {
                    // A passing failure (throttled, slow) is the work failing, not the usage.
                    let chain = truelayer_auth::error_chain(&e);
                    if e.is_retryable() {
                        Failure::failed(chain)
                    } else {
                        Failure::usage(chain)
                    }
                })?;
            key.signer(kid)
                .map_err(|e| Failure::usage(truelayer_auth::error_chain(&e)))
        }
    }
}

/// `--signing-key-file` or `--signing-kms-key-id`, and `--signing-key-id` (or their
/// environment variables): both or neither, with an error that names only the one missing.
/// Checked here rather than by clap, whose error would list every argument given as if it
/// were required.
pub(crate) fn signing_key<'a>(
    file: Option<&'a Path>,
    kms_key_id: Option<&'a str>,
    id: Option<&'a str>,
) -> Result<Option<(KeySource<'a>, &'a str)>, Failure> {
    let source = match (file, kms_key_id) {
        (Some(file), _) => Some(KeySource::File(file)),
        (None, Some(kms)) => Some(KeySource::Kms(kms)),
        (None, None) => None,
    };
    match (source, id) {
        (Some(source), Some(id)) => Ok(Some((source, id))),
        (None, None) => Ok(None),
        (Some(KeySource::Kms(_)), None) => Err(Failure::usage(
            "a KMS signing key (--signing-kms-key-id or TRUELAYER_SIGNING_KMS_KEY_ID) needs \
             the id TrueLayer Console shows for its public half: pass --signing-key-id or set \
             TRUELAYER_SIGNING_KEY_ID",
        )),
        (Some(KeySource::File(_)), None) => Err(Failure::usage(
            "a signing key file (--signing-key-file or TRUELAYER_SIGNING_KEY_FILE) needs its \
             id: pass --signing-key-id or set TRUELAYER_SIGNING_KEY_ID, the id TrueLayer \
             Console shows for the key's public half",
        )),
        (None, Some(_)) => Err(Failure::usage(
            "a signing key id (--signing-key-id or TRUELAYER_SIGNING_KEY_ID) needs its key: \
             pass --signing-key-file or set TRUELAYER_SIGNING_KEY_FILE, the P-521 private key \
             (PEM), or --signing-kms-key-id for a key in AWS KMS",
        )),
    }
}

/// Methods TrueLayer wants an `Idempotency-Key` on, and signed.
const MODIFYING: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// Options of `tlauth verify`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["public_key_file", "jwks_file"])))]
#[command(mut_arg("headers", |arg| arg.help(
    "A header of the request, `Name: value`; repeat for several. Give at least those the \
     signature names (its `tl_headers`), in any order; others are ignored"
)))]
pub(crate) struct VerifyArgs {
    /// The public key, PEM (`PUBLIC KEY`).
    #[arg(long, value_name = "PATH")]
    public_key_file: Option<PathBuf>,
    /// A JWKS holding the key (picked by the signature's `kid`).
    #[arg(long, value_name = "PATH")]
    jwks_file: Option<PathBuf>,
    /// The `Tl-Signature` value.
    #[arg(long)]
    signature: String,
    /// A header that must be among the signed ones; repeat for several.
    #[arg(long = "require-header", value_name = "NAME")]
    required: Vec<String>,
    #[command(flatten)]
    request: RequestArgs,
}

fn read(path: &Path, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| Failure::usage(format!("could not read the {what} {}: {e}", path.display())))
}

pub(crate) async fn sign(args: SignArgs) -> Result<(), Failure> {
    let (source, kid) = signing_key(
        args.key_file.as_deref(),
        args.kms_key_id.as_deref(),
        args.kid.as_deref(),
    )?
    .ok_or_else(|| {
        Failure::usage(
            "no signing key: pass --signing-key-file (or --signing-kms-key-id) and \
             --signing-key-id, or set TRUELAYER_SIGNING_KEY_FILE and TRUELAYER_SIGNING_KEY_ID \
             (`tlauth emulator` prints both for its own key)",
        )
    })?;
    let signer = load_signer(source, kid).await?;
    let (headers, body) = args.request.parts()?;
    let method = &args.request.method;
    let modifying = MODIFYING.iter().any(|m| m.eq_ignore_ascii_case(method));
    let keyed = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(IDEMPOTENCY_KEY.as_str()));
    if modifying && !keyed {
        // Signed without one, the request is refused by TrueLayer (401, "Invalid request
        // signature"); better said here than there.
        return Err(Failure::usage(format!(
            "a {method} needs an Idempotency-Key among the signed headers, or TrueLayer refuses \
             it: add --header \"Idempotency-Key: $(uuidgen)\" and send the same header with \
             the request (a new key per payment, the same one when retrying it)"
        )));
    }
    let request = Signable::new(&args.request.method, &args.request.path)
        .headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .body(&body);
    // The whole chain: with KMS, the cause (denied `kms:Sign`, throttled) is what to act on.
    let signature = signer.sign(&request).await.map_err(|e| match &e {
        SignatureError::Backend(_) => Failure::failed(truelayer_auth::error_chain(&e)),
        _ => Failure::usage(truelayer_auth::error_chain(&e)),
    })?;
    writeln!(std::io::stdout(), "{signature}")
        .map_err(|e| Failure::failed(format!("writing the signature: {e}")))
}

pub(crate) fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let mut verifier = match (&args.public_key_file, &args.jwks_file) {
        (Some(path), _) => public_key_verifier(path)?,
        (None, Some(path)) => jwks_verifier(path)?,
        (None, None) => unreachable!("clap requires one"),
    };
    for name in &args.required {
        verifier = verifier.require_header(name);
    }
    let (headers, body) = args.request.parts()?;
    let matches = |method: &str, body: &[u8]| {
        let request = Signable::new(method, &args.request.path)
            .headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .body(body);
        verifier.verify(&request, &args.signature)
    };
    match matches(&args.request.method, &body) {
        Ok(()) => {
            eprintln!("tlauth: the signature is valid");
            Ok(())
        }
        Err(e) => {
            let mut message = format!("the signature is not valid: {e}");
            if matches!(e, VerifyError::Invalid) {
                let likely = likely_causes(&args.request.method, &body, |method, body| {
                    matches(method, body).is_ok()
                });
                for cause in likely {
                    message.push_str("\n  hint: ");
                    message.push_str(&cause);
                }
            }
            Err(Failure::failed(message))
        }
    }
}

/// A verifier with `--public-key-file`'s key. Its errors say what that flag takes, not
/// what keys are in general (the library's "not PEM" asks for a private key).
fn public_key_verifier(path: &Path) -> Result<Verifier, Failure> {
    Verifier::from_public_pem(&read(path, "public key file")?).map_err(|e| match e {
        KeyError::NotPem => Failure::usage(format!(
            "the public key file {} is not PEM: --public-key-file takes \
             `-----BEGIN PUBLIC KEY-----` (`openssl ec -in key.pem -pubout` writes one); a \
             JWKS goes to --jwks-file instead",
            path.display()
        )),
        e => Failure::usage(format!("the public key file {}: {e}", path.display())),
    })
}

/// A verifier with `--jwks-file`'s keys.
fn jwks_verifier(path: &Path) -> Result<Verifier, Failure> {
    Verifier::from_jwks(&read(path, "JWKS file")?).map_err(|e| match e {
        KeyError::InvalidJwks => Failure::usage(format!(
            "the JWKS file {} is not a JWKS (a JSON object with a `keys` array); a PEM public \
             key goes to --public-key-file instead",
            path.display()
        )),
        e => Failure::usage(format!("the JWKS file {}: {e}", path.display())),
    })
}

/// What a request that does not match its signature shows of the usual reasons, each said
/// more firmly when the signature does match the request with it undone (`matches`).
///
/// A trailing slash in the path is not among them: verifiers, this one included, tolerate it.
fn likely_causes(method: &str, body: &[u8], matches: impl Fn(&str, &[u8]) -> bool) -> Vec<String> {
    let mut causes = Vec::new();
    // The line end `echo` (or an editor saving on Windows) adds.
    let trimmed = body
        .strip_suffix(b"\n")
        .map(|b| b.strip_suffix(b"\r").unwrap_or(b));
    if let Some(trimmed) = trimmed {
        let confirmed = if matches(method, trimmed) {
            ", and the signature matches without it"
        } else {
            ""
        };
        causes.push(format!(
            "the body ends in a newline{confirmed}: a signature covers the body's exact bytes, \
             so write the file with `printf` rather than `echo` (which adds one), or strip it"
        ));
    }
    let upper = method.to_ascii_uppercase();
    if upper != method {
        let confirmed = if matches(&upper, body) {
            ", and the signature matches it in capitals"
        } else {
            ""
        };
        causes.push(format!(
            "the method `{method}` is compared exactly and signed in capitals{confirmed}: pass \
             --method {upper}"
        ));
    }
    causes
}
