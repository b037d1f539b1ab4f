//! What a failed AWS SDK call comes down to, the same for every service this crate calls:
//! Secrets Manager and KMS map it onto their own errors, adding the codes only they answer.

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::error::AwsFailure;

/// A failed AWS call, before a service names what it means for its resource.
#[derive(Debug)]
pub(crate) enum SdkFailure {
    /// An attempt or the whole operation timed out. Retryable.
    Timeout,
    /// The connection failed, or the answer could not be read. Retryable.
    Transport(AwsFailure),
    /// No AWS credentials are configured, or AWS does not accept them.
    MissingCredentials(AwsFailure),
    /// Loading AWS credentials failed for now (a provider timeout, expired session
    /// credentials being renewed). Retryable.
    CredentialsUnavailable(AwsFailure),
    /// IAM denied the call.
    AccessDenied,
    /// The service throttled the call. Retryable.
    Throttled,
    /// Another error the service answered: its code (`Unknown` when it gave none), and
    /// whether the HTTP status was a 5xx.
    Service { code: String, server_error: bool },
}

/// Classifies `err`. `modeled` is the code of a modeled error the caller matched, for the
/// errors that come without one in their metadata (as those built in tests do).
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>, modeled: Option<&str>) -> SdkFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let server_error = err
        .raw_response()
        .is_some_and(|r| r.status().is_server_error());
    match err {
        SdkError::TimeoutError(_) => return SdkFailure::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => return SdkFailure::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            if let Some(failure) = credentials_failure(err) {
                return failure;
            }
            let detail = match err {
                SdkError::DispatchFailure(d) if d.is_io() => "connection failed",
                SdkError::DispatchFailure(d) if d.is_user() => "invalid endpoint or request",
                SdkError::DispatchFailure(_) => "dispatch failed",
                _ => "the request could not be built",
            };
            return SdkFailure::Transport(AwsFailure::new(detail));
        }
        SdkError::ResponseError(_) => {
            return SdkFailure::Transport(AwsFailure::new("the response could not be read"));
        }
        _ => {}
    }
    let code = modeled.or(err.code()).unwrap_or("Unknown").to_owned();
    match code.as_str() {
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
            SdkFailure::AccessDenied
        }
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => SdkFailure::Throttled,
        // Session credentials that expired are being renewed by the provider chain.
        "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => {
            SdkFailure::CredentialsUnavailable(AwsFailure::new(format!("AWS answered {code}")))
        }
        "UnrecognizedClientException" | "InvalidSignatureException" => {
            SdkFailure::MissingCredentials(AwsFailure::new(format!(
                "AWS rejected the credentials ({code})"
            )))
        }
        _ => SdkFailure::Service { code, server_error },
    }
}

/// What went wrong, if the failure was loading AWS credentials: permanent when none are
/// configured, retryable when the provider timed out or failed.
fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<SdkFailure> {
    use aws_credential_types::provider::error::CredentialsError as Provider;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(c) = e.downcast_ref::<Provider>() {
            let cause = AwsFailure::new(c.to_string());
            return Some(match c {
                Provider::ProviderTimedOut(_) | Provider::ProviderError(_) => {
                    SdkFailure::CredentialsUnavailable(cause)
                }
                _ => SdkFailure::MissingCredentials(cause),
            });
        }
        // The SDK's fixed message when no credentials provider is configured at all.
        if e.to_string().contains("no identity resolver") {
            return Some(SdkFailure::MissingCredentials(AwsFailure::new(
                "no credentials provider is configured",
            )));
        }
        current = e.source();
    }
    None
}
