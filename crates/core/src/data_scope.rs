//! Data API scopes: what a user's consent covers.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::error::ConfigError;
use crate::scope::{CustomScope, validate_token};

/// One scope of a Data API consent (the auth link's `scope`).
///
/// # Example
///
/// ```
/// use truelayer_auth::DataScope;
///
/// assert_eq!("offline_access".parse::<DataScope>()?, DataScope::OfflineAccess);
/// assert_eq!(DataScope::DirectDebits.as_str(), "direct_debits");
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataScope {
    /// `info`: the account holder's identity (`/data/v1/info`).
    Info,
    /// `accounts`: the accounts and their details.
    Accounts,
    /// `balance`: account and card balances.
    Balance,
    /// `cards`: card accounts.
    Cards,
    /// `transactions`: settled and pending transactions.
    Transactions,
    /// `direct_debits`: an account's direct debits.
    DirectDebits,
    /// `standing_orders`: an account's standing orders.
    StandingOrders,
    /// `offline_access`: a refresh token, so the connection outlives the hour-long access
    /// token. Without it nothing can be refreshed.
    OfflineAccess,
    /// Any other scope token, validated against RFC 6749 §3.3.
    Custom(CustomScope),
}

impl DataScope {
    /// Every known Data API scope, in a stable order.
    pub const KNOWN: [DataScope; 8] = [
        DataScope::Info,
        DataScope::Accounts,
        DataScope::Balance,
        DataScope::Cards,
        DataScope::Transactions,
        DataScope::DirectDebits,
        DataScope::StandingOrders,
        DataScope::OfflineAccess,
    ];

    /// A scope that is not one of the known ones; known names come back as their variant.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidScope`] for an empty token or one with a character RFC 6749 §3.3
    /// does not allow.
    pub fn custom(token: &str) -> Result<Self, ConfigError> {
        if let Some(known) = DataScope::KNOWN.iter().find(|k| k.as_str() == token) {
            return Ok(known.clone());
        }
        validate_token(token)?;
        Ok(DataScope::Custom(CustomScope::new_unchecked(token)))
    }

    /// The scope as sent to TrueLayer.
    pub fn as_str(&self) -> &str {
        match self {
            DataScope::Info => "info",
            DataScope::Accounts => "accounts",
            DataScope::Balance => "balance",
            DataScope::Cards => "cards",
            DataScope::Transactions => "transactions",
            DataScope::DirectDebits => "direct_debits",
            DataScope::StandingOrders => "standing_orders",
            DataScope::OfflineAccess => "offline_access",
            DataScope::Custom(c) => c.as_str(),
        }
    }
}

impl FromStr for DataScope {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataScope::custom(s)
    }
}

impl fmt::Display for DataScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for DataScope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DataScope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// A deduplicated set of Data API scopes, never empty, sent space-separated.
///
/// [`DataScopes::default`] is every known scope, `offline_access` included, which is what a
/// connection that should outlive an hour needs.
///
/// # Example
///
/// ```
/// use truelayer_auth::{DataScope, DataScopes};
///
/// let scopes = DataScopes::new([DataScope::Accounts, DataScope::Balance, DataScope::OfflineAccess])?;
/// assert_eq!(scopes.as_str(), "accounts balance offline_access");
/// assert!(scopes.contains(&DataScope::OfflineAccess));
/// let parsed: DataScopes = "info accounts info".parse()?;
/// assert_eq!(parsed.len(), 2);
/// assert!("".parse::<DataScopes>().is_err());
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataScopes {
    set: BTreeSet<DataScope>,
    joined: String,
}

impl DataScopes {
    /// A set of `scopes`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoScopes`] for an empty set.
    pub fn new(scopes: impl IntoIterator<Item = DataScope>) -> Result<Self, ConfigError> {
        let set: BTreeSet<DataScope> = scopes.into_iter().collect();
        if set.is_empty() {
            return Err(ConfigError::NoScopes);
        }
        let joined = set
            .iter()
            .map(DataScope::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(DataScopes { set, joined })
    }

    /// This set plus `scope`.
    #[must_use]
    pub fn with(self, scope: DataScope) -> Self {
        let mut set = self.set;
        set.insert(scope);
        DataScopes::new(set).expect("a set with a scope added is not empty")
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &DataScope) -> bool {
        self.set.contains(scope)
    }

    /// The scopes, in their stable (lexicographic) order.
    pub fn iter(&self) -> impl Iterator<Item = &DataScope> {
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

    /// The space-separated form sent as the `scope` parameter.
    pub fn as_str(&self) -> &str {
        &self.joined
    }
}

impl Default for DataScopes {
    fn default() -> Self {
        DataScopes::new(DataScope::KNOWN).expect("the known scopes are not empty")
    }
}

impl FromStr for DataScopes {
    type Err = ConfigError;

    /// A whitespace- or comma-separated list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataScopes::new(
            s.split(|c: char| c.is_ascii_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .map(DataScope::custom)
                .collect::<Result<Vec<_>, _>>()?,
        )
    }
}

impl fmt::Display for DataScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined)
    }
}
