//! Retry policy: exponential backoff with full jitter, bounded by attempts and a deadline,
//! honouring `Retry-After`.

use std::time::{Duration, SystemTime};

use crate::error::ConfigError;

/// The longest wait a `Retry-After` header can ask for; longer values are clamped.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How failed token requests are retried.
///
/// Only retryable errors ([`Error::is_retryable`](crate::Error::is_retryable)) are retried.
/// Attempt `n` (from 1) waits a random time in `[0, min(max_backoff, initial_backoff * 2^(n-1))]`
/// ("full jitter"), and at least as long as the server's `Retry-After`. No attempt starts after
/// the deadline; a `Retry-After` that reaches past it ends the retries at once.
///
/// The defaults are 3 attempts, 500 ms initial backoff, 10 s maximum backoff and a 30 s
/// deadline: enough to ride over a blip without holding a payment request for long.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use truelayer_auth::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(5)?
///     .with_deadline(Duration::from_secs(60));
/// assert_eq!(policy.max_attempts(), 5);
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Total attempts, the first included.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for 0.
    pub fn with_max_attempts(mut self, attempts: u32) -> Result<Self, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "max_attempts",
                reason: "at least 1 attempt is needed",
            });
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// The backoff cap before the first retry, doubled for each later one up to `max`.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The time after which no new attempt starts, counted from the first.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Total attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The initial backoff.
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The maximum backoff.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The deadline for starting attempts.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The wait before retry number `retry` (1 for the first retry): full jitter over the
    /// exponential cap, and never less than `retry_after`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = full_jitter(exponential_cap(
            self.initial_backoff,
            self.max_backoff,
            retry,
        ));
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// `min(max, initial * 2^(retry-1))`, saturating.
pub(crate) fn exponential_cap(initial: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// A uniformly random duration in `[0, cap]`.
pub(crate) fn full_jitter(cap: Duration) -> Duration {
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
///
/// Dates in the past give zero; values beyond [`MAX_RETRY_AFTER`] are clamped to it;
/// anything else is `None`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_exponential_with_full_jitter() {
        let p = RetryPolicy::default().with_backoff(Duration::from_secs(1), Duration::from_secs(8));
        for retry in 1..=10 {
            let cap = exponential_cap(Duration::from_secs(1), Duration::from_secs(8), retry);
            assert_eq!(
                cap,
                Duration::from_secs(1 << (retry - 1).min(3)),
                "retry {retry}"
            );
            for _ in 0..100 {
                assert!(p.backoff(retry, None) <= cap);
            }
        }
        // Full jitter really spreads: over many draws both halves of the range appear.
        let draws: Vec<_> = (0..200).map(|_| p.backoff(4, None)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(4)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(4)));
        assert_eq!(
            exponential_cap(Duration::from_secs(1), Duration::MAX, 200),
            Duration::from_secs(u64::from(u32::MAX))
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            assert!(p.backoff(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        }
        assert_eq!(p.backoff(1, Some(Duration::MAX)), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "tomorrow", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn zero_attempts_is_refused() {
        assert!(RetryPolicy::default().with_max_attempts(0).is_err());
    }
}
