//! Keys: a P-521 private key from PEM, held so it never leaks, and P-521 public keys from PEM
//! or a JWKS.

use std::fmt;

use aws_lc_rs::signature::{
    self as sig, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED, ECDSA_P521_SHA512_FIXED_SIGNING,
    EcdsaKeyPair, KeyPair, ParsedPublicKey,
};
use zeroize::Zeroizing;

use crate::jws;

/// Why a key could not be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not PEM (`-----BEGIN ...-----`).
    #[error(
        "the key is not PEM: expected `-----BEGIN EC PRIVATE KEY-----` (as `openssl ecparam -genkey -name secp521r1 -noout` writes) or `-----BEGIN PRIVATE KEY-----`"
    )]
    NotPem,
    /// The PEM is encrypted with a passphrase.
    #[error(
        "the private key is encrypted: decrypt it first (`openssl ec -in key.pem -out plain.pem`) and keep it in a secret store instead"
    )]
    Encrypted,
    /// A key of another curve or type (P-256 and P-384 keys and RSA keys are common mistakes).
    #[error(
        "the key is {found}, but TrueLayer request signing needs an EC P-521 (secp521r1) key: generate one with `openssl ecparam -genkey -name secp521r1 -noout -out key.pem`"
    )]
    WrongKeyType {
        /// What the key is, as far as it could be told (`an EC P-256 key`, `an RSA key`, ...).
        found: String,
    },
    /// A PEM block of a kind that is not a key of the expected kind (a public key where a
    /// private key is needed, a certificate, ...).
    #[error("the PEM holds `{label}`, not {expected}")]
    WrongPemKind {
        /// The PEM label found.
        label: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The PEM decodes, but not to a key.
    #[error("the {expected} is malformed: its PEM block does not decode to a key")]
    Malformed {
        /// What was expected.
        expected: &'static str,
    },
    /// The key id is empty.
    #[error(
        "the key id (`kid`) is empty: use the id TrueLayer Console shows for the uploaded public key"
    )]
    EmptyKid,
    /// A JWKS that is not `{"keys": [...]}`.
    #[error("the JWKS is not a JSON object with a `keys` array")]
    InvalidJwks,
}

const PRIVATE: &str = "P-521 private key";
const PUBLIC: &str = "P-521 public key";

/// Reads the key's PEM block: its label and DER (zeroized when dropped). An `EC PARAMETERS`
/// block before it (`openssl ecparam -genkey` without `-noout` writes one) is skipped.
fn pem_block(
    text: &[u8],
    expected: &'static str,
) -> Result<(String, Zeroizing<Vec<u8>>), KeyError> {
    const BEGIN: &str = "-----BEGIN ";
    let text_str = std::str::from_utf8(text).map_err(|_| KeyError::NotPem)?;
    if !text_str.contains(BEGIN) {
        return Err(KeyError::NotPem);
    }
    // Legacy encrypted PEM (`Proc-Type: 4,ENCRYPTED`) and PKCS#8 `ENCRYPTED PRIVATE KEY`.
    if text_str.contains("ENCRYPTED") {
        return Err(KeyError::Encrypted);
    }
    let malformed = KeyError::Malformed { expected };
    let mut rest = text_str;
    while let Some(begin) = rest.find(BEGIN) {
        let block = &rest[begin..];
        let label_len = block[BEGIN.len()..]
            .find("-----")
            .ok_or(malformed.clone())?;
        let label = &block[BEGIN.len()..BEGIN.len() + label_len];
        let end_marker = format!("-----END {label}-----");
        let end = block.find(&end_marker).ok_or(malformed.clone())? + end_marker.len();
        rest = &block[end..];
        if label == "EC PARAMETERS" {
            continue;
        }
        let (label, der) = pem_rfc7468::decode_vec(block[..end].trim().as_bytes())
            .map_err(|_| malformed.clone())?;
        return Ok((label.to_owned(), Zeroizing::new(der)));
    }
    Err(malformed)
}

/// A P-521 key pair for signing, from PEM. Held in AWS-LC, which cleanses the key's memory
/// when it is freed; the DER it was read from is zeroized. `Debug` shows the curve only.
pub(crate) struct PrivateKey {
    pair: EcdsaKeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("curve", &"P-521")
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = pem_block(pem, PRIVATE)?;
        match label.as_str() {
            "EC PRIVATE KEY" | "PRIVATE KEY" => {}
            "RSA PRIVATE KEY" => {
                return Err(KeyError::WrongKeyType {
                    found: "an RSA key".into(),
                });
            }
            _ => {
                return Err(KeyError::WrongPemKind {
                    label,
                    expected: "a private key",
                });
            }
        }
        match EcdsaKeyPair::from_private_key_der(&ECDSA_P521_SHA512_FIXED_SIGNING, &der) {
            Ok(pair) => Ok(PrivateKey { pair }),
            Err(_) => Err(identify_private(&der)),
        }
    }

    pub(crate) fn generate() -> Self {
        PrivateKey {
            pair: EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING)
                .unwrap_or_else(|_| unreachable!("AWS-LC can always generate a P-521 key")),
        }
    }

    /// The key as a PKCS#8 PEM (for tools and tests that need to hand it on).
    pub(crate) fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let der = self
            .pair
            .to_pkcs8v1()
            .unwrap_or_else(|_| unreachable!("a P-521 key pair always serializes"));
        Zeroizing::new(
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, der.as_ref())
                .unwrap_or_else(|_| unreachable!("PEM encoding of DER cannot fail")),
        )
    }

    /// Signs with ES512: `r || s`, 132 bytes.
    pub(crate) fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&rng, input)
            .unwrap_or_else(|_| unreachable!("ES512 signing with a valid key cannot fail"))
            .as_ref()
            .to_vec()
    }

    /// The public key as a JWK (`kty` EC, `crv` P-521, 66-byte base64url coordinates).
    pub(crate) fn public_jwk(&self, kid: &str) -> serde_json::Value {
        let point = self.pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-521",
            "alg": jws::ALG,
            "use": "sig",
            "kid": kid,
            "x": jws::encode(&point[1..67]),
            "y": jws::encode(&point[67..133]),
        })
    }

    /// The public point (uncompressed SEC1), which identifies the key.
    pub(crate) fn public_point(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        PublicKey::from_point(self.pair.public_key().as_ref())
            .unwrap_or_else(|| unreachable!("a key pair's own point is valid"))
    }
}

/// What a private key that is not P-521 is, for the error message.
fn identify_private(der: &[u8]) -> KeyError {
    let curve = if EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).is_ok()
    {
        Some("an EC P-256 key")
    } else if EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, der).is_ok() {
        Some("an EC P-384 key")
    } else if aws_lc_rs::rsa::KeyPair::from_pkcs8(der).is_ok()
        || aws_lc_rs::rsa::KeyPair::from_der(der).is_ok()
    {
        Some("an RSA key")
    } else if sig::Ed25519KeyPair::from_pkcs8(der).is_ok()
        || sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok()
    {
        Some("an Ed25519 key")
    } else {
        None
    };
    match curve {
        Some(found) => KeyError::WrongKeyType {
            found: found.into(),
        },
        None => KeyError::Malformed { expected: PRIVATE },
    }
}

/// A P-521 public key, for verifying.
#[derive(Clone)]
pub(crate) struct PublicKey {
    key: ParsedPublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("curve", &"P-521")
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// From a `PUBLIC KEY` (SPKI) PEM, or the public half of a private key PEM.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = pem_block(pem, PUBLIC)?;
        match label.as_str() {
            "PUBLIC KEY" => {}
            "EC PRIVATE KEY" | "PRIVATE KEY" => return Ok(PrivateKey::from_pem(pem)?.public_key()),
            "RSA PUBLIC KEY" => {
                return Err(KeyError::WrongKeyType {
                    found: "an RSA key".into(),
                });
            }
            _ => {
                return Err(KeyError::WrongPemKind {
                    label,
                    expected: "a public key",
                });
            }
        }
        match ParsedPublicKey::new(&ECDSA_P521_SHA512_FIXED, der.as_slice()) {
            Ok(key) => Ok(PublicKey { key }),
            Err(_) => Err(identify_public(&der)),
        }
    }

    /// From an uncompressed SEC1 point (`0x04 || x || y`).
    pub(crate) fn from_point(point: &[u8]) -> Option<Self> {
        ParsedPublicKey::new(&ECDSA_P521_SHA512_FIXED, point)
            .ok()
            .map(|key| PublicKey { key })
    }

    /// From a JWK's base64url `x` and `y` (each up to 66 bytes; shorter ones are left-padded,
    /// as some encoders drop a leading zero byte).
    pub(crate) fn from_jwk_coordinates(x: &str, y: &str) -> Option<Self> {
        let (x, y) = (jws::decode(x)?, jws::decode(y)?);
        if x.len() > 66 || y.len() > 66 {
            return None;
        }
        let mut point = vec![0x04];
        for coordinate in [&x, &y] {
            point.extend(std::iter::repeat_n(0, 66 - coordinate.len()));
            point.extend_from_slice(coordinate);
        }
        Self::from_point(&point)
    }

    /// The SPKI PEM.
    pub(crate) fn to_pem(&self) -> String {
        use aws_lc_rs::encoding::AsDer;
        let der = self
            .key
            .as_der()
            .unwrap_or_else(|_| unreachable!("a parsed public key always serializes"));
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, der.as_ref())
            .unwrap_or_else(|_| unreachable!("PEM encoding of DER cannot fail"))
    }

    pub(crate) fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        signature.len() == jws::SIGNATURE_LEN && self.key.verify_sig(input, signature).is_ok()
    }
}

fn identify_public(der: &[u8]) -> KeyError {
    let found = if ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, der).is_ok() {
        "an EC P-256 key"
    } else if ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, der).is_ok() {
        "an EC P-384 key"
    } else if ParsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, der).is_ok() {
        "an RSA key"
    } else {
        return KeyError::Malformed { expected: PUBLIC };
    };
    KeyError::WrongKeyType {
        found: found.into(),
    }
}
