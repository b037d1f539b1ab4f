//! Errors signing with a key in AWS KMS.

use std::fmt;

use crate::error::AwsFailure;
use crate::sdk_error::SdkFailure;

/// Why a key in AWS KMS could not be used to sign, or be set up for signing.
///
/// As everywhere in the workspace, `Display` says what failed and what to check, naming the
/// KMS key id (and the IAM action, for a denial), and `source()` carries the cause, never
/// both. Only a summary of the SDK's error is kept. [`is_retryable`](Self::is_retryable) says
/// whether a later attempt may succeed; the SDK has already retried those (see
/// [`KmsSigningKey`](crate::KmsSigningKey)) by the time one is returned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KmsError {
    /// IAM (or the key policy) denied the call.
    AccessDenied {
        /// The KMS key id, as configured.
        key_id: String,
        /// The IAM action that is missing: `kms:Sign` or `kms:GetPublicKey`.
        action: &'static str,
    },
    /// KMS has no key under this id (or alias) in this account and region.
    NotFound {
        /// The KMS key id, as configured.
        key_id: String,
    },
    /// The key is disabled.
    Disabled {
        /// The KMS key id, as configured.
        key_id: String,
    },
    /// The key's state does not allow the call (pending deletion, pending import, ...).
    InvalidState {
        /// The KMS key id, as configured.
        key_id: String,
    },
    /// The key is not an ECC_NIST_P521 `SIGN_VERIFY` key that signs with `ECDSA_SHA_512`.
    WrongKey {
        /// The KMS key id, as configured.
        key_id: String,
        /// What the key is, as KMS describes it (`ECC_NIST_P256 with key usage SIGN_VERIFY
        /// (signing algorithms: [ECDSA_SHA_256])`, ...).
        found: String,
    },
    /// KMS answered with something that is not what it documents: a public key that is not
    /// a P-521 SubjectPublicKeyInfo, a signature that is not a DER `ECDSA-Sig-Value`.
    MalformedAnswer {
        /// The KMS key id, as configured.
        key_id: String,
        /// What was wrong with it.
        problem: &'static str,
    },
    /// KMS throttled the call (the ECC signing quota is per account and region). Retryable.
    Throttled {
        /// The KMS key id, as configured.
        key_id: String,
        /// The call: `kms:Sign` or `kms:GetPublicKey`.
        action: &'static str,
    },
    /// The call timed out. Retryable.
    Timeout {
        /// The KMS key id, as configured.
        key_id: String,
        /// The call: `kms:Sign` or `kms:GetPublicKey`.
        action: &'static str,
    },
    /// The connection failed, or the answer could not be read. Retryable.
    Transport {
        /// The KMS key id, as configured.
        key_id: String,
        /// What failed (also the error's `source()`).
        cause: AwsFailure,
    },
    /// The AWS configuration has no region.
    MissingRegion,
    /// No AWS credentials could be found, or AWS does not accept the ones configured.
    MissingCredentials {
        /// The credential provider's account of the failure (also the error's `source()`).
        cause: AwsFailure,
    },
    /// Loading AWS credentials failed for now (a provider timeout, expired session
    /// credentials being renewed). Retryable.
    AwsCredentialsUnavailable {
        /// What failed (also the error's `source()`).
        cause: AwsFailure,
    },
    /// Another error from KMS.
    Service {
        /// The KMS key id, as configured.
        key_id: String,
        /// The error code, such as `KMSInternalException` or `KeyUnavailableException`.
        code: String,
        /// Whether it is worth retrying (KMS's internal errors and 5xx-style errors).
        retryable: bool,
    },
}

impl KmsError {
    /// Whether a later attempt may succeed (throttling, timeouts, transport and internal
    /// errors). Access denied, a missing, disabled or wrong key are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KmsError::Throttled { .. }
            | KmsError::Timeout { .. }
            | KmsError::Transport { .. }
            | KmsError::AwsCredentialsUnavailable { .. } => true,
            KmsError::Service { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// What a failed call for `key_id` means.
    pub(crate) fn from_sdk(failure: SdkFailure, key_id: &str, action: &'static str) -> Self {
        let key_id = key_id.to_owned();
        match failure {
            SdkFailure::Timeout => KmsError::Timeout { key_id, action },
            SdkFailure::Transport(cause) => KmsError::Transport { key_id, cause },
            SdkFailure::MissingCredentials(cause) => KmsError::MissingCredentials { cause },
            SdkFailure::CredentialsUnavailable(cause) => {
                KmsError::AwsCredentialsUnavailable { cause }
            }
            SdkFailure::AccessDenied => KmsError::AccessDenied { key_id, action },
            SdkFailure::Throttled => KmsError::Throttled { key_id, action },
            SdkFailure::Service { code, server_error } => match code.as_str() {
                "NotFoundException" => KmsError::NotFound { key_id },
                "DisabledException" => KmsError::Disabled { key_id },
                "KMSInvalidStateException" => KmsError::InvalidState { key_id },
                "InvalidKeyUsageException" => KmsError::WrongKey {
                    key_id,
                    found: "a key whose key usage does not allow ECDSA_SHA_512 signing".into(),
                },
                _ => KmsError::Service {
                    key_id,
                    // KMS documents these as worth a retry.
                    retryable: matches!(
                        code.as_str(),
                        "KMSInternalException"
                            | "DependencyTimeoutException"
                            | "KeyUnavailableException"
                    ) || (server_error && code == "Unknown"),
                    code,
                },
            },
        }
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmsError::AccessDenied { key_id, action } => write!(
                f,
                "access to KMS key `{key_id}` was denied: grant {action} on it to this role \
                 (see docs/operations.md for the policy)"
            ),
            KmsError::NotFound { key_id } => write!(
                f,
                "AWS KMS has no key `{key_id}`: check the key id or alias, the account and the \
                 region"
            ),
            KmsError::Disabled { key_id } => write!(
                f,
                "KMS key `{key_id}` is disabled: enable it (`aws kms enable-key`) or configure \
                 the key that replaced it"
            ),
            KmsError::InvalidState { key_id } => write!(
                f,
                "KMS key `{key_id}` is not in a state that allows signing (pending deletion or \
                 import?): check `aws kms describe-key`"
            ),
            KmsError::WrongKey { key_id, found } => write!(
                f,
                "KMS key `{key_id}` is {found}, but TrueLayer request signing needs an \
                 ECC_NIST_P521 key with key usage SIGN_VERIFY: create one with \
                 `aws kms create-key --key-spec ECC_NIST_P521 --key-usage SIGN_VERIFY`"
            ),
            KmsError::MalformedAnswer { key_id, problem } => {
                write!(f, "AWS KMS answered for key `{key_id}` with {problem}")
            }
            KmsError::Throttled { key_id, action } => write!(
                f,
                "AWS KMS throttled {action} with key `{key_id}` after the SDK's retries: the \
                 ECC signing quota is shared by the account in this region"
            ),
            KmsError::Timeout { key_id, action } => {
                write!(f, "{action} with KMS key `{key_id}` timed out")
            }
            KmsError::Transport { key_id, .. } => write!(
                f,
                "could not reach AWS KMS for key `{key_id}`: check network access to the \
                 endpoint"
            ),
            KmsError::MissingRegion => f.write_str(
                "the AWS configuration of the KMS client has no region: set AWS_REGION or give \
                 a region in the SdkConfig",
            ),
            KmsError::MissingCredentials { .. } => f.write_str(
                "no AWS credentials could be loaded for AWS KMS: configure the default chain \
                 (environment, profile, web identity, or instance/task role)",
            ),
            KmsError::AwsCredentialsUnavailable { .. } => {
                f.write_str("AWS credentials for AWS KMS are unavailable for now")
            }
            KmsError::Service { key_id, code, .. } => {
                write!(f, "AWS KMS answered {code} for key `{key_id}`")
            }
        }
    }
}

impl std::error::Error for KmsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KmsError::Transport { cause, .. }
            | KmsError::MissingCredentials { cause }
            | KmsError::AwsCredentialsUnavailable { cause } => Some(cause),
            KmsError::AccessDenied { .. }
            | KmsError::NotFound { .. }
            | KmsError::Disabled { .. }
            | KmsError::InvalidState { .. }
            | KmsError::WrongKey { .. }
            | KmsError::MalformedAnswer { .. }
            | KmsError::Throttled { .. }
            | KmsError::Timeout { .. }
            | KmsError::MissingRegion
            | KmsError::Service { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// One error of every kind, with a cause where the kind has one.
    fn every_error() -> Vec<KmsError> {
        let id = || "alias/truelayer-signing".to_owned();
        vec![
            KmsError::AccessDenied {
                key_id: id(),
                action: "kms:Sign",
            },
            KmsError::NotFound { key_id: id() },
            KmsError::Disabled { key_id: id() },
            KmsError::InvalidState { key_id: id() },
            KmsError::WrongKey {
                key_id: id(),
                found: "ECC_NIST_P256 with key usage SIGN_VERIFY".into(),
            },
            KmsError::MalformedAnswer {
                key_id: id(),
                problem: "a signature that is not DER",
            },
            KmsError::Throttled {
                key_id: id(),
                action: "kms:Sign",
            },
            KmsError::Timeout {
                key_id: id(),
                action: "kms:Sign",
            },
            KmsError::Transport {
                key_id: id(),
                cause: AwsFailure::new("connection failed"),
            },
            KmsError::MissingRegion,
            KmsError::MissingCredentials {
                cause: AwsFailure::new("no credentials provider is configured"),
            },
            KmsError::AwsCredentialsUnavailable {
                cause: AwsFailure::new("AWS answered ExpiredTokenException"),
            },
            KmsError::Service {
                key_id: id(),
                code: "KMSInternalException".into(),
                retryable: true,
            },
        ]
    }

    #[test]
    fn display_describes_this_layer_and_source_carries_the_cause_never_both() {
        for error in every_error() {
            let messages = crate::error::tests::layer_messages(&error);
            if !matches!(
                error,
                KmsError::MissingRegion
                    | KmsError::MissingCredentials { .. }
                    | KmsError::AwsCredentialsUnavailable { .. }
            ) {
                assert!(
                    messages[0].contains("alias/truelayer-signing"),
                    "{error:?}: the key is named"
                );
            }
        }
    }

    #[test]
    fn kms_codes_are_classified_as_the_vault_classifies_secrets_manager_ones() {
        let error = |code: &str| {
            KmsError::from_sdk(
                SdkFailure::Service {
                    code: code.into(),
                    server_error: false,
                },
                "k",
                "kms:Sign",
            )
        };
        for retryable in [
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert!(error(retryable).is_retryable(), "{retryable}");
        }
        for (code, kind) in [
            ("NotFoundException", "NotFound"),
            ("DisabledException", "Disabled"),
            ("KMSInvalidStateException", "InvalidState"),
            ("InvalidKeyUsageException", "WrongKey"),
            ("ValidationException", "Service"),
        ] {
            let e = error(code);
            assert!(!e.is_retryable(), "{code}");
            assert!(format!("{e:?}").starts_with(kind), "{code}: {e:?}");
        }
        let denied = KmsError::from_sdk(SdkFailure::AccessDenied, "k", "kms:GetPublicKey");
        assert!(!denied.is_retryable());
        assert!(denied.to_string().contains("kms:GetPublicKey"));
        assert!(KmsError::from_sdk(SdkFailure::Throttled, "k", "kms:Sign").is_retryable());
        assert!(KmsError::from_sdk(SdkFailure::Timeout, "k", "kms:Sign").is_retryable());
    }
}
