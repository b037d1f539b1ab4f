//! The emulator's RS256 signing key, its JWKS, and token issuance.

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

/// The key id published in the JWKS and in every token header.
pub const KEY_ID: &str = "truelayer-auth-emulator-rs256";

/// The audience TrueLayer puts in payments tokens.
pub const AUDIENCE: &str = "payments_api";

pub(crate) struct SigningKey {
    pair: KeyPair,
    n: String,
    e: String,
    pub(crate) decoding: DecodingKey,
}

/// One RSA key per process: generating it is the slow part of starting an emulator, and
/// tests start many.
pub(crate) fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation failed");
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let decoding = DecodingKey::from_rsa_components(&n, &e).expect("valid RSA components");
        SigningKey {
            pair,
            n,
            e,
            decoding,
        }
    })
}

/// The claims of an emulator-issued payments token, as TrueLayer documents them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer: the emulator's base URL.
    pub iss: String,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Audience: `payments_api`.
    pub aud: String,
    /// Granted scopes.
    pub scope: Vec<String>,
    /// The client the token was issued to.
    pub client_id: String,
    /// Token id; its first 16 hex digits are the issue sequence number.
    pub jti: String,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

impl SigningKey {
    /// Signs `claims` (payments or Data API ones) as an RS256 `at+jwt`.
    pub(crate) fn sign(&self, claims: &impl Serialize) -> String {
        let header = Header {
            alg: "RS256",
            kid: KEY_ID,
            typ: "at+jwt",
        };
        let encode = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let mut jwt = format!(
            "{}.{}",
            encode(&serde_json::to_vec(&header).expect("header serializes")),
            encode(&serde_json::to_vec(claims).expect("claims serialize"))
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .expect("RSA signing failed");
        jwt.push('.');
        jwt.push_str(&encode(&signature));
        jwt
    }

    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": KEY_ID,
                "n": self.n,
                "e": self.e,
            }]
        })
    }
}
