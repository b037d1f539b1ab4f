//! Errors loading client credentials from AWS Secrets Manager.

use std::fmt;

use truelayer_auth::CredentialsError;

/// What is wrong with a secret's value. Never contains the value.
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
            SecretProblem::SigningKey(e) => write!(f, "the signing private key is unusable: {e}"),
        }
    }
}

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
        /// What is wrong.
        problem: SecretProblem,
    },
    /// The AWS configuration has no region.
    MissingRegion,
    /// No AWS credentials could be found, or AWS does not accept the ones configured.
    MissingCredentials {
        /// The credential provider's description of the failure.
        detail: String,
    },
    /// Loading AWS credentials failed for now: the provider timed out or failed, or the
    /// session credentials expired (an expiring role session being renewed). Retryable.
    AwsCredentialsUnavailable {
        /// What failed, in a few words.
        detail: String,
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
        /// What failed, in a few words.
        detail: String,
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
            VaultError::Malformed { secret_id, problem } => write!(
                f,
                "secret `{secret_id}` is not in the expected format: {problem} (expected JSON \
                 {{\"client_id\": ..., \"client_secret\": ...}} or the configured fields)"
            ),
            VaultError::MissingRegion => f.write_str(
                "the AWS configuration has no region: set AWS_REGION or give a region in the SdkConfig",
            ),
            VaultError::MissingCredentials { detail } => write!(
                f,
                "no AWS credentials could be loaded ({detail}): configure the default chain \
                 (environment, profile, web identity, or instance/task role)"
            ),
            VaultError::AwsCredentialsUnavailable { detail } => write!(
                f,
                "AWS credentials are unavailable for now ({detail}); this is retried, and a \
                 secret already loaded is served meanwhile"
            ),
            VaultError::Timeout { secret_id } => {
                write!(f, "the request for secret `{secret_id}` to AWS Secrets Manager timed out")
            }
            VaultError::Transport { secret_id, detail } => write!(
                f,
                "could not reach AWS Secrets Manager for secret `{secret_id}` ({detail}): check \
                 network access to the endpoint"
            ),
            VaultError::Service {
                secret_id, code, ..
            } => write!(f, "AWS Secrets Manager answered {code} for secret `{secret_id}`"),
        }
    }
}

impl std::error::Error for VaultError {}

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
