//! `Tl-Signature` as TrueLayer checks it, written apart from the project's signing crate
//! (with RustCrypto's `p521`, not aws-lc-rs) so the two check each other; and the key the
//! emulator signs its webhooks with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p521::ecdsa::signature::{Signer as _, Verifier as _};
use p521::ecdsa::{Signature, SigningKey, VerifyingKey};
use p521::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Deserialize;
use truelayer_auth_http::IDEMPOTENCY_KEY;

use crate::error::Error;

/// A registered request-signing public key.
#[derive(Clone)]
pub(crate) struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From a `PUBLIC KEY` (SPKI) PEM.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, Error> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(PublicKey)
            .map_err(|e| Error::InvalidSigningKey { source: e.into() })
    }
}

/// A P-521 key pair the emulator generates: the default client's request-signing key (whose
/// private half tools use to sign against the emulator), and the webhook signing key.
pub(crate) struct KeyPair {
    key: SigningKey,
}

impl KeyPair {
    pub(crate) fn generate() -> Self {
        // The scalar from AWS-LC's system RNG: 521 random bits, tried again in the
        // vanishingly rare case that they exceed the curve order.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        loop {
            let mut bytes = [0u8; 66];
            aws_lc_rs::rand::SecureRandom::fill(&rng, &mut bytes)
                .unwrap_or_else(|_| unreachable!("the system RNG does not fail"));
            bytes[0] &= 0x01;
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return KeyPair { key };
            }
        }
    }

    pub(crate) fn public(&self) -> PublicKey {
        PublicKey(*self.key.verifying_key())
    }

    pub(crate) fn private_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .unwrap_or_else(|_| unreachable!("a P-521 key always encodes"))
    }

    pub(crate) fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|_| unreachable!("a P-521 key always encodes"))
    }

    /// The key as a JWK (`kty` EC, `crv` P-521, 66-byte coordinates).
    pub(crate) fn jwk(&self, kid: &str) -> serde_json::Value {
        let point = self.key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-521",
            "alg": "ES512",
            "use": "sig",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..67]),
            "y": URL_SAFE_NO_PAD.encode(&bytes[67..133]),
        })
    }

    /// A v2 `Tl-Signature` with a `jku`, as TrueLayer signs webhooks.
    pub(crate) fn sign(
        &self,
        kid: &str,
        jku: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let header = serde_json::json!({
            "alg": "ES512",
            "kid": kid,
            "tl_version": "2",
            "tl_headers": names.join(","),
            "jku": jku,
        });
        let encoded = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = payload(
            method,
            path,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            body,
        );
        let input = format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(payload));
        let signature: Signature = self.key.sign(input.as_bytes());
        format!(
            "{encoded}..{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: String,
    #[serde(default)]
    tl_version: Option<String>,
    #[serde(default)]
    tl_headers: Option<String>,
}

fn payload<'a>(
    method: &str,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Vec<u8> {
    // The method as sent: methods are case-sensitive, and TrueLayer signs `POST`, so a
    // request given as `post` is not the request that was signed.
    let mut out = format!("{method} {path}\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// Checks `signature` on a request as TrueLayer's API does: ES512, v2, `Idempotency-Key`
/// among the signed headers, each signed header present (looked up in any case), one
/// trailing-slash difference in the path tolerated. `key_for` finds the public key for a
/// `kid`. The error is the reason given in the 401.
pub(crate) fn verify(
    signature: &str,
    method: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    key_for: impl Fn(&str) -> Option<PublicKey>,
) -> Result<(), String> {
    let mut parts = signature.trim().split('.');
    let (Some(head), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the Tl-Signature is not a detached JWS".into());
    };
    let header: JoseHeader = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or("the Tl-Signature's JOSE header is invalid")?;
    if header.alg != "ES512" {
        return Err("the Tl-Signature must use ES512".into());
    }
    if header.tl_version.as_deref() != Some("2") {
        return Err("the Tl-Signature must be tl_version 2".into());
    }
    let key = key_for(&header.kid).ok_or("the Tl-Signature's kid is not a registered key")?;
    let names: Vec<&str> = header
        .tl_headers
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if !names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(IDEMPOTENCY_KEY.as_str()))
    {
        return Err("the Idempotency-Key header must be signed".into());
    }
    let mut signed = Vec::with_capacity(names.len());
    for name in &names {
        let value = headers
            .get(*name)
            .ok_or_else(|| format!("the signed header {name} is missing"))?;
        signed.push((*name, value.as_bytes()));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or("the Tl-Signature's signature is malformed")?;
    let other = match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
        Some(_) => path.to_owned(),
        None => format!("{path}/"),
    };
    for candidate in [path, other.as_str()] {
        let input = format!(
            "{head}.{}",
            URL_SAFE_NO_PAD.encode(payload(method, candidate, signed.iter().copied(), body))
        );
        if key.0.verify(input.as_bytes(), &sig).is_ok() {
            return Ok(());
        }
    }
    Err("the Tl-Signature does not match the request".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_method_is_signed_as_sent_not_case_folded() {
        let upper = super::payload("POST", "/v3/payments", std::iter::empty(), b"{}");
        let lower = super::payload("post", "/v3/payments", std::iter::empty(), b"{}");
        assert_eq!(upper, b"POST /v3/payments\n{}");
        assert_ne!(upper, lower);
    }
}
