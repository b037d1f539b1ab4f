//! `tlauth sign` and `tlauth verify`: the "sign this curl" tool people otherwise write by hand.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use truelayer_auth_signing::{IDEMPOTENCY_KEY, Signable, Signer, Verifier, VerifyError};

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
    /// A header, `Name: value`; repeat for several. When signing, the order given is the
    /// signing order (TrueLayer wants at least Idempotency-Key).
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
pub(crate) struct SignArgs {
    /// The P-521 private key, PEM (SEC1 `EC PRIVATE KEY` or PKCS#8).
    #[arg(long, env = "TRUELAYER_SIGNING_KEY_FILE", value_name = "PATH")]
    key_file: PathBuf,
    /// The key id TrueLayer Console shows for its public half.
    #[arg(long, env = "TRUELAYER_SIGNING_KEY_ID", value_name = "KID")]
    kid: String,
    #[command(flatten)]
    request: RequestArgs,
}

/// Methods TrueLayer wants an `Idempotency-Key` on, and signed.
const MODIFYING: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// Options of `tlauth verify`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["public_key_file", "jwks_file"])))]
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

fn read(path: &PathBuf, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| Failure::usage(format!("could not read the {what} {}: {e}", path.display())))
}

pub(crate) async fn sign(args: SignArgs) -> Result<(), Failure> {
    let pem = read(&args.key_file, "key file")?;
    let signer = Signer::from_pem(&args.kid, &pem).map_err(|e| Failure::usage(e.to_string()))?;
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
    let signature = signer
        .sign(&request)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    writeln!(std::io::stdout(), "{signature}")
        .map_err(|e| Failure::failed(format!("writing the signature: {e}")))
}

pub(crate) fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let mut verifier = match (&args.public_key_file, &args.jwks_file) {
        (Some(path), _) => Verifier::from_public_pem(&read(path, "public key file")?),
        (None, Some(path)) => Verifier::from_jwks(&read(path, "JWKS file")?),
        (None, None) => unreachable!("clap requires one"),
    }
    .map_err(|e| Failure::usage(e.to_string()))?;
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
