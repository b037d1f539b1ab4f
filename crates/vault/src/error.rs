//! Errors loading client credentials from AWS Secrets Manager.
//!
//! As everywhere in the workspace, each error's `Display` describes its own failure and
//! `source()` carries the cause, never both: [`VaultError`] says which secret and what to fix,
//! its source ([`SecretProblem`], [`AwsFailure`]) what exactly went wrong.

use std::fmt;

use truelayer_auth::CredentialsError;

/// What is wrong with a secret's value: the source of [`VaultError::Malformed`]. Never
/// contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretProblem {
    /// The secret version has neither a string nor a binary value.
    NoValue,
    /// The value is empty (or only whitespace).
    Empty,
    /// A binary value that is not UTF-8.
    NotUtf8,
    /// The value is not JSON; where the parser stopped.
    NotJson {
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
    },
    /// The JSON is not an object.
    NotAnObject,
    /// A required field is missing.
    MissingField(String),
    /// A field is not a string.
    NotAString(String),
    /// A field is an empty string.
    EmptyField(String),
    /// The signing private key is not a usable P-521 key.
    SigningKey(truelayer_auth_signing::KeyError),
    /// The secret holds a signing private key and names a key in AWS KMS: which one signs?
    ConflictingSigningKeys,
    /// The secret names a signing key in AWS KMS (`signing_kms_key_id`), and its signer was
    /// asked for where it cannot be made: in a build without the `kms` feature, or from
    /// [`LoadedSecret::signer`](crate::LoadedSecret::signer) alone.
    NamesKmsKey,
}

impl fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretProblem::NoValue => {
                f.write_str("the version has no SecretString or SecretBinary")
            }
            SecretProblem::Empty => f.write_str("the value is empty"),
            SecretProblem::NotUtf8 => f.write_str("the binary value is not UTF-8 text"),
            SecretProblem::NotJson { line, column } => {
                write!(
                    f,
                    "the value is not valid JSON (error at line {line}, column {column})"
                )
            }
            SecretProblem::NotAnObject => f.write_str("the value is JSON but not an object"),
            SecretProblem::MissingField(name) => write!(f, "the field `{name}` is missing"),
            SecretProblem::NotAString(name) => write!(f, "the field `{name}` is not a string"),
            SecretProblem::EmptyField(name) => write!(f, "the field `{name}` is empty"),
            SecretProblem::SigningKey(_) => f.write_str("the signing private key is unusable"),
            SecretProblem::ConflictingSigningKeys => f.write_str(
                "the secret has both `signing_private_key` and `signing_kms_key_id`: keep the \
                 one that signs",
            ),
            SecretProblem::NamesKmsKey if cfg!(feature = "kms") => f.write_str(
                "the secret names a signing key in AWS KMS (`signing_kms_key_id`): its signer \
                 comes from `SecretsManagerCredentials` or `KmsSigningKey`, not from the secret \
                 alone",
            ),
            SecretProblem::NamesKmsKey => f.write_str(
                "the secret names a signing key in AWS KMS (`signing_kms_key_id`), and this \
                 build cannot sign with one: enable the `kms` feature of truelayer-auth-vault",
            ),
        }
    }
}

impl std::error::Error for SecretProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretProblem::SigningKey(e) => Some(e),
            _ => None,
        }
    }
}

/// How a call to AWS failed, in a few words: the source of [`VaultError::Transport`],
/// [`VaultError::MissingCredentials`] and [`VaultError::AwsCredentialsUnavailable`].
///
/// Only this summary is kept: the SDK's own errors can hold the raw HTTP response, which for
/// `GetSecretValue` is the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFailure(String);

impl AwsFailure {
    pub(crate) fn new(summary: impl Into<String>) -> Self {
        AwsFailure(summary.into())
    }

    /// The summary.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AwsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AwsFailure {}

/// Why client credentials could not be loaded from AWS Secrets Manager.
///
/// Messages name the secret id and what to fix (a missing IAM action, a missing field), and
/// never contain secret material.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VaultError {
    /// No secret (or no version with the stage) under this id.
    NotFound {
        /// The secret id (name or ARN).
        secret_id: String,
        /// The version stage asked for.
        stage: String,
    },
    /// IAM denied the call.
    AccessDenied {
        /// The secret id.
        secret_id: String,
        /// The IAM action that is missing.
        action: &'static str,
    },
    /// Secrets Manager could not decrypt the secret with its KMS key.
    Decryption {
        /// The secret id.
        secret_id: String,
    },
    /// Secrets Manager throttled the call. Retryable.
    Throttled {
        /// The secret id.
        secret_id: String,
    },
    /// The secret's value is not in the configured format.
    Malformed {
        /// The secret id.
        secret_id: String,
        /// What is wrong (also the error's `source()`).
        problem: SecretProblem,
    },
    /// The AWS configuration has no region.
    MissingRegion,
    /// No AWS credentials could be found, or AWS does not accept the ones configured.
    MissingCredentials {
        /// The credential provider's account of the failure (also the error's `source()`).
        cause: AwsFailure,
    },
    /// Loading AWS credentials failed for now: the provider timed out or failed, or the
    /// session credentials expired (an expiring role session being renewed). Retryable.
    AwsCredentialsUnavailable {
        /// What failed (also the error's `source()`).
        cause: AwsFailure,
    },
    /// The call timed out. Retryable.
    Timeout {
        /// The secret id.
        secret_id: String,
    },
    /// The connection failed, or the answer could not be read. Retryable.
    ///
    /// Only a summary of the SDK error is kept: its `Debug` form can include the raw HTTP
    /// response, which for `GetSecretValue` is the secret.
    Transport {
        /// The secret id.
        secret_id: String,
        /// What failed (also the error's `source()`).
        cause: AwsFailure,
    },
    /// The secret names a signing key in AWS KMS (`signing_kms_key_id`) that could not be
    /// set up: KMS's answer to `GetPublicKey`. Retryable when that is.
    #[cfg(feature = "kms")]
    KmsKey {
        /// The secret id.
        secret_id: String,
        /// What KMS said (also the error's `source()`), naming the KMS key.
        cause: crate::KmsError,
    },
    /// The secret names a signing key in AWS KMS, and the source has no KMS client: it was
    /// built from a Secrets Manager client alone.
    #[cfg(feature = "kms")]
    NoKmsClient {
        /// The secret id.
        secret_id: String,
    },
    /// Another error from Secrets Manager.
    Service {
        /// The secret id.
        secret_id: String,
        /// The error code, such as `InternalServiceError` or `InvalidRequestException`.
        code: String,
        /// Whether it is worth retrying (5xx-style errors).
        retryable: bool,
    },
}

impl VaultError {
    /// Whether a later attempt may succeed (throttling, timeouts, transport and internal errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            VaultError::Throttled { .. }
            | VaultError::Timeout { .. }
            | VaultError::Transport { .. }
            | VaultError::AwsCredentialsUnavailable { .. } => true,
            VaultError::Service { retryable, .. } => *retryable,
            #[cfg(feature = "kms")]
            VaultError::KmsKey { cause, .. } => cause.is_retryable(),
            _ => false,
        }
    }
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultError::NotFound { secret_id, stage } => write!(
                f,
                "AWS Secrets Manager has no secret `{secret_id}` with a version in stage {stage}: \
                 check the secret id, the region and the stage"
            ),
            VaultError::AccessDenied { secret_id, action } => write!(
                f,
                "access to secret `{secret_id}` was denied: grant {action} on it to this role \
                 (see docs/operations.md for the policy)"
            ),
            VaultError::Decryption { secret_id } => write!(
                f,
                "AWS Secrets Manager could not decrypt secret `{secret_id}`: grant kms:Decrypt on \
                 its KMS key to this role, and check the key is enabled"
            ),
            VaultError::Throttled { secret_id } => write!(
                f,
                "AWS Secrets Manager throttled the request for secret `{secret_id}`; it is retried, \
                 and the cached value is served meanwhile"
            ),
            VaultError::Malformed { secret_id, .. } => write!(
                f,
                "secret `{secret_id}` is not in the expected format (JSON \
                 {{\"client_id\": ..., \"client_secret\": ...}} or the configured fields)"
            ),
            VaultError::MissingRegion => f.write_str(
                "the AWS configuration has no region: set AWS_REGION or give a region in the SdkConfig",
            ),
            VaultError::MissingCredentials { .. } => f.write_str(
                "no AWS credentials could be loaded: configure the default chain \
                 (environment, profile, web identity, or instance/task role)",
            ),
            VaultError::AwsCredentialsUnavailable { .. } => f.write_str(
                "AWS credentials are unavailable for now; this is retried, and a secret already \
                 loaded is served meanwhile",
            ),
            VaultError::Timeout { secret_id } => {
                write!(f, "the request for secret `{secret_id}` to AWS Secrets Manager timed out")
            }
            VaultError::Transport { secret_id, .. } => write!(
                f,
                "could not reach AWS Secrets Manager for secret `{secret_id}`: check network \
                 access to the endpoint"
            ),
            VaultError::Service {
                secret_id, code, ..
            } => write!(f, "AWS Secrets Manager answered {code} for secret `{secret_id}`"),
            #[cfg(feature = "kms")]
            VaultError::KmsKey { secret_id, .. } => write!(
                f,
                "the signing key in AWS KMS that secret `{secret_id}` names cannot be used"
            ),
            #[cfg(feature = "kms")]
            VaultError::NoKmsClient { secret_id } => write!(
                f,
                "secret `{secret_id}` names a signing key in AWS KMS, but this source has no KMS \
                 client: give one to `SecretsManagerCredentialsBuilder::kms_client`, or build \
                 the source from an SdkConfig"
            ),
        }
    }
}

impl std::error::Error for VaultError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VaultError::Malformed { problem, .. } => Some(problem),
            VaultError::MissingCredentials { cause }
            | VaultError::AwsCredentialsUnavailable { cause }
            | VaultError::Transport { cause, .. } => Some(cause),
            #[cfg(feature = "kms")]
            VaultError::KmsKey { cause, .. } => Some(cause),
            VaultError::NotFound { .. }
            | VaultError::AccessDenied { .. }
            | VaultError::Decryption { .. }
            | VaultError::Throttled { .. }
            | VaultError::MissingRegion
            | VaultError::Timeout { .. }
            | VaultError::Service { .. } => None,
            #[cfg(feature = "kms")]
            VaultError::NoKmsClient { .. } => None,
        }
    }
}

impl From<VaultError> for CredentialsError {
    fn from(e: VaultError) -> Self {
        // This layer's own failure; the vault's error, with what to fix, is the source.
        let message = "loading the client credentials from AWS Secrets Manager failed";
        let base = if e.is_retryable() {
            CredentialsError::retryable(message)
        } else {
            CredentialsError::new(message)
        };
        base.with_source(e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::error::Error as _;

    use super::*;

    /// `error`'s message and its causes', outermost first, after checking the rule every
    /// error here keeps: each layer's `Display` says its own failure, none is empty, and none
    /// repeats a cause's text (`source()` carries the cause).
    pub(crate) fn layer_messages(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut messages = vec![error.to_string()];
        let mut source = error.source();
        while let Some(cause) = source {
            messages.push(cause.to_string());
            source = cause.source();
        }
        for (i, outer) in messages.iter().enumerate() {
            assert!(!outer.trim().is_empty(), "{error:?}: an empty message");
            for inner in &messages[i + 1..] {
                assert!(
                    !outer.contains(inner.as_str()),
                    "{error:?}: `{inner}` is printed twice in {messages:#?}"
                );
            }
        }
        messages
    }

    /// One error of every kind, with a cause where the kind has one.
    fn every_error() -> Vec<VaultError> {
        let id = || "prod/truelayer/merchant-a".to_owned();
        let key_error = truelayer_auth_signing::Signer::from_pem("kid", b"not a key").unwrap_err();
        vec![
            VaultError::NotFound {
                secret_id: id(),
                stage: "AWSCURRENT".into(),
            },
            VaultError::AccessDenied {
                secret_id: id(),
                action: "secretsmanager:GetSecretValue",
            },
            VaultError::Decryption { secret_id: id() },
            VaultError::Throttled { secret_id: id() },
            VaultError::Malformed {
                secret_id: id(),
                problem: SecretProblem::MissingField("client_secret".into()),
            },
            VaultError::Malformed {
                secret_id: id(),
                problem: SecretProblem::NotJson { line: 1, column: 7 },
            },
            VaultError::Malformed {
                secret_id: id(),
                problem: SecretProblem::SigningKey(key_error),
            },
            VaultError::MissingRegion,
            VaultError::MissingCredentials {
                cause: AwsFailure::new("AWS rejected the credentials (InvalidSignatureException)"),
            },
            VaultError::AwsCredentialsUnavailable {
                cause: AwsFailure::new("AWS answered ExpiredTokenException"),
            },
            VaultError::Timeout { secret_id: id() },
            VaultError::Transport {
                secret_id: id(),
                cause: AwsFailure::new("connection failed"),
            },
            VaultError::Service {
                secret_id: id(),
                code: "InternalServiceError".into(),
                retryable: true,
            },
            #[cfg(feature = "kms")]
            VaultError::KmsKey {
                secret_id: id(),
                cause: crate::KmsError::AccessDenied {
                    key_id: "alias/truelayer-signing".into(),
                    action: "kms:GetPublicKey",
                },
            },
            #[cfg(feature = "kms")]
            VaultError::NoKmsClient { secret_id: id() },
            VaultError::Malformed {
                secret_id: id(),
                problem: SecretProblem::NamesKmsKey,
            },
            VaultError::Malformed {
                secret_id: id(),
                problem: SecretProblem::ConflictingSigningKeys,
            },
        ]
    }

    #[test]
    fn display_describes_this_layer_and_source_carries_the_cause_never_both() {
        for error in every_error() {
            layer_messages(&error);
        }
    }

    #[test]
    fn a_malformed_secret_names_the_secret_and_its_source_the_problem() {
        let error = VaultError::Malformed {
            secret_id: "prod/truelayer/merchant-a".into(),
            problem: SecretProblem::MissingField("client_secret".into()),
        };
        assert!(error.to_string().contains("prod/truelayer/merchant-a"));
        let problem = error.source().expect("the problem is the source");
        assert_eq!(problem.to_string(), "the field `client_secret` is missing");

        let key = VaultError::Malformed {
            secret_id: "s".into(),
            problem: SecretProblem::SigningKey(
                truelayer_auth_signing::Signer::from_pem("kid", b"not a key").unwrap_err(),
            ),
        };
        let problem = key.source().unwrap();
        assert_eq!(problem.to_string(), "the signing private key is unusable");
        assert!(
            problem.source().unwrap().to_string().contains("PEM"),
            "the key error says why"
        );
    }
}
