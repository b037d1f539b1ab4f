//! TrueLayer request signing: `Tl-Signature` (ES512, detached JWS, scheme v2) and its
//! verification, and a tower layer that signs every modification request.
//!
//! TrueLayer's Payments API wants every POST (and DELETE) made with a payments token to
//! carry a `Tl-Signature` over the method, path, chosen headers and body, and an
//! `Idempotency-Key`. [`Signer`] makes the signature from a P-521 private key (or any
//! [`SigningBackend`]: an HSM, a KMS); [`Verifier`] checks one against a public key or a
//! JWKS.
//!
//! # Example
//!
//! ```
//! use truelayer_auth_signing::{Signable, Signer, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pem = Signer::generate("kid").private_key_pem().unwrap();
//! // The key made with `openssl ecparam -genkey -name secp521r1 -noout`, and the id TrueLayer
//! // Console gave its public half.
//! let signer = Signer::from_pem("45fc75cf-5649-4134-84b3-192c2c78e990", pem.as_bytes())?;
//! let body = br#"{"amount_in_minor":100,"currency":"GBP"}"#;
//! let request = Signable::new("POST", "/v3/payments")
//!     .header("Idempotency-Key", "2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f")
//!     .body(body);
//! let tl_signature = signer.sign(&request).await?;
//! # let _ = tl_signature;
//! # Ok(()) }
//! ```
//!
//! # Crypto
//!
//! ECDSA P-521/SHA-512 comes from `aws-lc-rs`, already in the tree through rustls: no system
//! library. RustCrypto's pure-Rust `p521` was the other candidate; side by side in one
//! criterion run (`docs/benchmarks.md`), aws-lc-rs signs and verifies several times faster,
//! which decided it. Nonces are random, so two signatures of one request differ: compare by
//! verifying, not by string.

#![forbid(unsafe_code)]

mod canonical;
mod jws;
mod key;
mod layer;
mod signer;
mod verifier;

pub use jws::JwsHeader;
pub use key::KeyError;
pub use layer::{
    BodyTimeout, DEFAULT_BODY_IDLE_TIMEOUT, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY, ResponseFuture,
    SignerFuture, SignerSource, Signing, SigningError, SigningLayer,
};
pub use signer::{BackendFuture, Signable, SignatureError, Signer, SigningBackend};

/// The old name of [`SignatureError`], kept for a release so upgrades compile.
#[deprecated(
    since = "0.1.0",
    note = "renamed `SignatureError` (it sat beside `SigningError<E>`, the layer's error)"
)]
pub type SignError = SignatureError;
/// The header names, shared with the other `truelayer-auth` crates.
pub use truelayer_auth_http::{IDEMPOTENCY_KEY, TL_SIGNATURE};
pub use verifier::{Verifier, VerifyError, jws_header};
