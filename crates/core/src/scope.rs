//! Payments API scopes and validated scope sets.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::error::ConfigError;

/// One scope of a payments access token.
///
/// The known scopes are the ones TrueLayer documents for the Payments API; anything else
/// goes in [`Scope::Custom`], validated by [`Scope::custom`] against RFC 6749 §3.3.
///
/// # Example
///
/// ```
/// use truelayer_auth::Scope;
///
/// let s: Scope = "recurring_payments:sweeping".parse()?;
/// assert_eq!(s, Scope::RecurringPaymentsSweeping);
/// assert!(Scope::custom("has space").is_err());
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// `payments`: required for every Payments API request (single payments, payouts).
    Payments,
    /// `recurring_payments:sweeping`: create sweeping VRP mandates.
    RecurringPaymentsSweeping,
    /// `recurring_payments:commercial`: create commercial VRP mandates.
    RecurringPaymentsCommercial,
    /// `signupplus`: collect user details through the Signup+ API.
    SignupPlus,
    /// `payouts`: legacy payouts product.
    Payouts,
    /// `paydirect`: legacy PayDirect product.
    PayDirect,
    /// Any other scope token, validated.
    Custom(CustomScope),
}

/// A scope token that is not one of the known [`Scope`]s, checked against RFC 6749 §3.3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomScope(String);

impl CustomScope {
    pub(crate) fn new_unchecked(token: &str) -> Self {
        CustomScope(token.to_owned())
    }

    /// The scope token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Scope {
    /// Every known scope, in a stable order.
    pub const KNOWN: [Scope; 6] = [
        Scope::Payments,
        Scope::RecurringPaymentsSweeping,
        Scope::RecurringPaymentsCommercial,
        Scope::SignupPlus,
        Scope::Payouts,
        Scope::PayDirect,
    ];

    /// A scope that is not one of the known ones.
    ///
    /// Known names come back as their known variant, so `Scope::custom("payments")` is
    /// [`Scope::Payments`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidScope`] when `token` is empty or has a character RFC 6749 §3.3 does
    /// not allow in a scope token (space, `"`, `\`, control or non-ASCII characters).
    pub fn custom(token: &str) -> Result<Self, ConfigError> {
        if let Some(known) = Scope::KNOWN.iter().find(|k| k.as_str() == token) {
            return Ok(known.clone());
        }
        validate_token(token)?;
        Ok(Scope::Custom(CustomScope(token.to_owned())))
    }

    /// The scope as sent to TrueLayer.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Payments => "payments",
            Scope::RecurringPaymentsSweeping => "recurring_payments:sweeping",
            Scope::RecurringPaymentsCommercial => "recurring_payments:commercial",
            Scope::SignupPlus => "signupplus",
            Scope::Payouts => "payouts",
            Scope::PayDirect => "paydirect",
            Scope::Custom(c) => c.as_str(),
        }
    }
}

pub(crate) fn validate_token(token: &str) -> Result<(), ConfigError> {
    if token.is_empty() {
        return Err(ConfigError::InvalidScope {
            scope: String::new(),
            reason: "a scope cannot be empty",
        });
    }
    // scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    let allowed = |b: u8| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b);
    if let Some(bad) = token.bytes().find(|&b| !allowed(b)) {
        let reason = if bad.is_ascii_whitespace() {
            "a scope cannot contain whitespace; pass several scopes as separate values"
        } else {
            "a scope may only contain printable ASCII other than space, `\"` and `\\` (RFC 6749 §3.3)"
        };
        return Err(ConfigError::InvalidScope {
            scope: token.escape_debug().to_string(),
            reason,
        });
    }
    Ok(())
}

impl FromStr for Scope {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::custom(s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// A deduplicated, ordered set of scopes, sent space-separated.
///
/// TrueLayer requires `payments` on every token used with the Payments API, so the
/// constructors that take arbitrary scopes reject a set without it; a set without `payments`
/// (say, legacy `payouts` alone) is an explicit opt-out through [`Scopes::without_payments`].
///
/// # Example
///
/// ```
/// use truelayer_auth::{Scope, Scopes};
///
/// let scopes = Scopes::payments().with(Scope::RecurringPaymentsSweeping);
/// assert_eq!(scopes.to_string(), "payments recurring_payments:sweeping");
///
/// let parsed: Scopes = "signupplus payments payments".parse()?;
/// assert_eq!(parsed.to_string(), "payments signupplus");
///
/// assert!("signupplus".parse::<Scopes>().is_err()); // no `payments`
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scopes {
    set: BTreeSet<Scope>,
    joined: String,
}

impl Scopes {
    /// The `payments` scope alone: what single payments and payouts need.
    pub fn payments() -> Self {
        Self::from_set([Scope::Payments].into_iter().collect())
    }

    /// A scope set that must contain `payments`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoScopes`] for an empty set, [`ConfigError::MissingPaymentsScope`] when
    /// `payments` is absent.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Result<Self, ConfigError> {
        let set: BTreeSet<Scope> = scopes.into_iter().collect();
        if set.is_empty() {
            return Err(ConfigError::NoScopes);
        }
        if !set.contains(&Scope::Payments) {
            return Err(ConfigError::MissingPaymentsScope {
                requested: join(&set),
            });
        }
        Ok(Self::from_set(set))
    }

    /// A scope set that is allowed to lack `payments`: an explicit opt-out for tokens that are
    /// not used with the Payments API.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoScopes`] for an empty set.
    pub fn without_payments(scopes: impl IntoIterator<Item = Scope>) -> Result<Self, ConfigError> {
        let set: BTreeSet<Scope> = scopes.into_iter().collect();
        if set.is_empty() {
            return Err(ConfigError::NoScopes);
        }
        Ok(Self::from_set(set))
    }

    /// Parses a space-separated list of scopes that may lack `payments` (for example the
    /// `scope` a server granted).
    ///
    /// # Errors
    ///
    /// As [`Scope::custom`] for each token, and [`ConfigError::NoScopes`] for an empty list.
    pub fn parse_without_payments(list: &str) -> Result<Self, ConfigError> {
        Self::without_payments(parse_list(list)?)
    }

    /// This set plus `scope`.
    #[must_use]
    pub fn with(mut self, scope: Scope) -> Self {
        self.set.insert(scope);
        self.joined = join(&self.set);
        self
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.set.contains(scope)
    }

    /// The scopes, in their stable (lexicographic) order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.set.iter()
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Always false: a scope set is never empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The space-separated form sent as the `scope` form parameter.
    pub fn as_str(&self) -> &str {
        &self.joined
    }

    fn from_set(set: BTreeSet<Scope>) -> Self {
        let joined = join(&set);
        Scopes { set, joined }
    }
}

fn join(set: &BTreeSet<Scope>) -> String {
    // `payments` first reads best and matches TrueLayer's examples; the rest stay sorted.
    let mut parts: Vec<&str> = Vec::with_capacity(set.len());
    if set.contains(&Scope::Payments) {
        parts.push(Scope::Payments.as_str());
    }
    parts.extend(
        set.iter()
            .filter(|s| **s != Scope::Payments)
            .map(Scope::as_str),
    );
    parts.join(" ")
}

fn parse_list(list: &str) -> Result<Vec<Scope>, ConfigError> {
    list.split_ascii_whitespace().map(Scope::custom).collect()
}

impl FromStr for Scopes {
    type Err = ConfigError;

    /// A whitespace-separated list that must contain `payments`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scopes::new(parse_list(s)?)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined)
    }
}

impl<'a> IntoIterator for &'a Scopes {
    type Item = &'a Scope;
    type IntoIter = std::collections::btree_set::Iter<'a, Scope>;
    fn into_iter(self) -> Self::IntoIter {
        self.set.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_scopes_round_trip_through_their_names() {
        for scope in Scope::KNOWN {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert_eq!(Scope::custom("payments").unwrap(), Scope::Payments);
    }

    #[test]
    fn custom_scopes_follow_rfc6749() {
        assert!(Scope::custom("accounts:read!#[]~").is_ok());
        for bad in [
            "",
            " ",
            "a b",
            "tab\there",
            "quote\"",
            "back\\slash",
            "é",
            "nl\n",
        ] {
            let err = Scope::custom(bad).unwrap_err();
            assert!(matches!(err, ConfigError::InvalidScope { .. }), "{bad:?}");
        }
        let ws = Scope::custom("a b").unwrap_err().to_string();
        assert!(ws.contains("whitespace"), "{ws}");
    }

    #[test]
    fn sets_are_deduplicated_ordered_and_space_separated() {
        let a = Scopes::new([Scope::SignupPlus, Scope::Payments, Scope::SignupPlus]).unwrap();
        let b: Scopes = "  signupplus\tpayments ".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "payments signupplus");
        assert_eq!(a.len(), 2);
        let c = Scopes::payments()
            .with(Scope::RecurringPaymentsSweeping)
            .with(Scope::RecurringPaymentsCommercial);
        assert_eq!(
            c.as_str(),
            "payments recurring_payments:commercial recurring_payments:sweeping"
        );
    }

    #[test]
    fn payments_is_required_unless_opted_out() {
        assert!(matches!(
            "signupplus".parse::<Scopes>(),
            Err(ConfigError::MissingPaymentsScope { .. })
        ));
        assert!(matches!("".parse::<Scopes>(), Err(ConfigError::NoScopes)));
        let legacy = Scopes::without_payments([Scope::Payouts]).unwrap();
        assert_eq!(legacy.to_string(), "payouts");
        assert!(!legacy.contains(&Scope::Payments));
    }
}
