//! The pieces of a `Tl-Signature`: its JOSE header, the payload it signs, and the detached
//! JWS form `b64(header)..b64(signature)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The algorithm TrueLayer accepts, and the only one.
pub(crate) const ALG: &str = "ES512";

/// The size of an ES512 signature: `r || s`, each 66 bytes.
pub(crate) const SIGNATURE_LEN: usize = 132;

/// The JOSE header of a `Tl-Signature`, in the order TrueLayer's libraries write it.
#[derive(Debug, Serialize)]
pub(crate) struct HeaderOut<'a> {
    pub(crate) alg: &'a str,
    pub(crate) kid: &'a str,
    pub(crate) tl_version: &'a str,
    pub(crate) tl_headers: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jku: Option<&'a str>,
}

/// The JOSE header of a signature, as read back. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct JwsHeader {
    /// The algorithm (`ES512` for every signature this crate accepts).
    pub alg: String,
    /// The id of the key that signed.
    pub kid: String,
    /// `2` for the current scheme; absent (or `1`) for the body-only v1.
    #[serde(default)]
    pub tl_version: Option<String>,
    /// The signed header names, comma-separated, in signing order.
    #[serde(default)]
    pub tl_headers: Option<String>,
    /// Where the signer's JWKS is published (TrueLayer's webhooks only).
    #[serde(default)]
    pub jku: Option<String>,
}

impl JwsHeader {
    /// The signed header names, in signing order.
    pub fn signed_headers(&self) -> impl Iterator<Item = &str> {
        self.tl_headers
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
    }
}

/// The v2 payload: `METHOD path\n`, each `Name: value\n` in order, then the body.
///
/// The method goes in byte for byte: HTTP methods are case-sensitive, so folding it here
/// would let a signature over `POST` verify a request sent as `post`.
pub(crate) fn payload<'a>(
    method: &str,
    path: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(method.len() + path.len() + body.len() + 64);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.push(b'\n');
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// `b64(header) + "." + b64(payload)`: what is signed.
pub(crate) fn signing_input(encoded_header: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(encoded_header.len() + 1 + payload.len() * 4 / 3 + 4);
    input.extend_from_slice(encoded_header.as_bytes());
    input.push(b'.');
    input.extend_from_slice(URL_SAFE_NO_PAD.encode(payload).as_bytes());
    input
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// A `Tl-Signature` split into its parts: the encoded header and the signature bytes.
pub(crate) struct Detached {
    pub(crate) encoded_header: String,
    pub(crate) header: JwsHeader,
    pub(crate) signature: Vec<u8>,
}

/// Why a `Tl-Signature` value is not a detached JWS this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    NotDetached,
    AttachedPayload,
    Header,
    Signature,
}

pub(crate) fn split(value: &str) -> Result<Detached, Malformed> {
    let value = value.trim();
    let mut parts = value.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::NotDetached);
    };
    if !payload.is_empty() {
        // A JWS carrying its payload: what it signs is not this request.
        return Err(Malformed::AttachedPayload);
    }
    let header_json = decode(header).ok_or(Malformed::Header)?;
    let parsed: JwsHeader = serde_json::from_slice(&header_json).map_err(|_| Malformed::Header)?;
    let signature = decode(signature).ok_or(Malformed::Signature)?;
    Ok(Detached {
        encoded_header: header.to_owned(),
        header: parsed,
        signature,
    })
}
