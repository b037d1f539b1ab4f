//! Counters for the cache's health, cheap enough for the hot path.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const STRIPES: usize = 4;

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter striped over cache lines, so threads counting hits do not contend.
#[derive(Default)]
pub(crate) struct StripedCounter {
    stripes: [Padded; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl StripedCounter {
    pub(crate) fn add(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// A snapshot of a token cache's health, for operators and health checks.
///
/// It holds no token and no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Token requests started.
    pub fetches: u64,
    /// Token requests that failed.
    pub fetch_failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Calls answered at once from the cache.
    pub hits: u64,
    /// Calls that had to wait for a token.
    pub waits: u64,
    /// Tokens invalidated by a caller (for example after a 401).
    pub invalidations: u64,
    /// Age of the token being handed out, if there is one.
    pub token_age: Option<Duration>,
    /// Lifetime left of the token being handed out, if there is one.
    pub token_remaining: Option<Duration>,
    /// The last failure (its message names no secret), if the last fetch failed.
    pub last_error: Option<String>,
}
