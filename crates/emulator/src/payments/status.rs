//! [`PaymentStatus`]: where a payment is, as TrueLayer names its statuses.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Where a payment is, as TrueLayer names its statuses. A payment that fails leaves this
/// sequence for `failed` (see [`Emulator::fail_payment`](crate::Emulator::fail_payment)).
///
/// The order of the variants is the order a payment moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PaymentStatus {
    /// Created; the payer has not started authorising it.
    AuthorizationRequired,
    /// The payer is authorising it at their bank.
    Authorizing,
    /// Authorised by the payer (webhook `payment_authorized`).
    Authorized,
    /// Submitted to the payment scheme (webhook `payment_executed`).
    Executed,
    /// The money has arrived in the merchant account (webhook `payment_settled`); final.
    Settled,
}

impl PaymentStatus {
    pub(crate) const ALL: [PaymentStatus; 5] = [
        PaymentStatus::AuthorizationRequired,
        PaymentStatus::Authorizing,
        PaymentStatus::Authorized,
        PaymentStatus::Executed,
        PaymentStatus::Settled,
    ];

    /// The status as TrueLayer's API writes it, e.g. `authorization_required`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::AuthorizationRequired => "authorization_required",
            PaymentStatus::Authorizing => "authorizing",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Executed => "executed",
            PaymentStatus::Settled => "settled",
        }
    }

    /// The status after this one, `None` after `settled`.
    pub(crate) fn next(self) -> Option<Self> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = Error;

    /// Parses TrueLayer's name of a status (`failed` is not one of these).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPaymentStatus`] for any other name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| Error::UnknownPaymentStatus {
                status: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_are_ordered() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>().ok(), Some(status));
        }
        assert!(matches!(
            "failed".parse::<PaymentStatus>(),
            Err(Error::UnknownPaymentStatus { status }) if status == "failed"
        ));
        assert!(PaymentStatus::Authorized < PaymentStatus::Settled);
        assert_eq!(PaymentStatus::Settled.next(), None);
        assert_eq!(
            PaymentStatus::Authorizing.next(),
            Some(PaymentStatus::Authorized)
        );
    }
}
