//! Remembering which `event_id`s were handled, so TrueLayer's retries and replays reach a
//! handler once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// What [`EventLedger::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Begin {
    /// Not seen before, released, or its claim's lease ran out: now claimed for this
    /// delivery, under this claim number (pass it to `complete` or `release`).
    New(u64),
    /// Handled already (the handler answered 2xx): answer 200 and skip the handler.
    Done,
    /// Claimed by a delivery still being handled: answer 409 so TrueLayer retries later.
    InProgress,
}

/// A ledger failure (its store is unreachable): the layer answers 503, so TrueLayer retries.
#[derive(Debug, thiserror::Error)]
#[error("the webhook event ledger failed")]
pub struct LedgerError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl LedgerError {
    /// A ledger failure with its cause.
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LedgerError(cause.into())
    }
}

/// The future a ledger returns.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// Where handled `event_id`s are kept. TrueLayer retries a webhook until it gets a 2xx, so a
/// handler can see one event more than once; with a ledger, the layer hands each event to
/// the handler until one delivery succeeds, and not after: at least once, and once as long
/// as the ledger remembers it.
///
/// The layer calls [`begin`](Self::begin) before the handler; then
/// [`complete`](Self::complete) when the handler answered 2xx, or
/// [`release`](Self::release) when it did not, or its future was dropped before it
/// answered (the client hung up), so a retry is handled: nothing is lost to a handler that
/// failed. Once the handler answered 2xx the claim is never released: if the request's
/// future is dropped while `complete` is awaited, the layer calls `complete` again in a task
/// on the current tokio runtime, so `complete` must be idempotent for its claim.
///
/// A claim is a lease: a process that dies between `begin` and `complete` releases nothing,
/// so an implementation must let a claim older than its lease count as new again. The claim
/// number `begin` returns lets `complete` and `release` act only on their own claim, not on
/// a newer one made after the lease ran out.
///
/// [`InMemoryLedger`] suits one process; with several replicas, implement this over a shared
/// store: a row per event with a status, a claim number and a claim time, claimed with a
/// conditional `INSERT ... ON CONFLICT DO UPDATE ... WHERE status = 'claimed' AND claimed_at
/// < now() - lease`.
pub trait EventLedger: Send + Sync + fmt::Debug + 'static {
    /// Claims `event_id` for one delivery, atomically.
    fn begin<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, Begin>;

    /// Marks `event_id` handled, if `claim` still holds it.
    fn complete<'a>(&'a self, event_id: &'a str, claim: u64) -> LedgerFuture<'a, ()>;

    /// Drops `claim` on `event_id` so a later delivery is handled. Called from `Drop` when a
    /// handler's future is cancelled, so it must not block: a ledger over a network store
    /// should spawn the release, or leave it to the lease.
    fn release(&self, event_id: &str, claim: u64);
}

/// An [`EventLedger`] in memory, remembering the last `capacity` handled events (oldest
/// forgotten first), with claims leased for a minute. TrueLayer retries for up to 72 hours;
/// size it for the events of that span, or use a shared store.
///
/// # Example
///
/// ```
/// use truelayer_auth_webhooks::{InMemoryLedger, VerifyWebhooksLayer, WebhookVerifier};
///
/// let layer = VerifyWebhooksLayer::new(WebhookVerifier::builder().build()?)
///     .ledger(InMemoryLedger::new(100_000));
/// # let _ = layer;
/// # Ok::<(), truelayer_auth_webhooks::ConfigError>(())
/// ```
pub struct InMemoryLedger {
    capacity: usize,
    lease: Duration,
    state: Mutex<LedgerState>,
}

enum Status {
    Claimed { claim: u64, at: Instant },
    Done,
}

#[derive(Default)]
struct LedgerState {
    events: HashMap<String, Status>,
    /// Handled ids, oldest first.
    order: VecDeque<String>,
    next_claim: u64,
}

impl fmt::Debug for InMemoryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("InMemoryLedger")
            .field("capacity", &self.capacity)
            .field("lease", &self.lease)
            .field("events", &state.events.len())
            .finish()
    }
}

impl InMemoryLedger {
    /// A ledger remembering up to `capacity` handled events (at least one).
    pub fn new(capacity: usize) -> Self {
        InMemoryLedger {
            capacity: capacity.max(1),
            lease: Duration::from_secs(60),
            state: Mutex::default(),
        }
    }

    /// How long a claim holds before another delivery may take the event (a minute by
    /// default): longer than the slowest handler.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut LedgerState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl EventLedger for InMemoryLedger {
    fn begin<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, Begin> {
        let now = Instant::now();
        let begin = self.with_state(|state| {
            match state.events.get(event_id) {
                Some(Status::Done) => return Begin::Done,
                Some(Status::Claimed { at, .. })
                    if now.saturating_duration_since(*at) < self.lease =>
                {
                    return Begin::InProgress;
                }
                _ => {}
            }
            state.next_claim += 1;
            let claim = state.next_claim;
            state
                .events
                .insert(event_id.to_owned(), Status::Claimed { claim, at: now });
            Begin::New(claim)
        });
        Box::pin(std::future::ready(Ok(begin)))
    }

    fn complete<'a>(&'a self, event_id: &'a str, claim: u64) -> LedgerFuture<'a, ()> {
        self.with_state(|state| {
            if let Some(status) = state.events.get_mut(event_id)
                && matches!(status, Status::Claimed { claim: c, .. } if *c == claim)
            {
                *status = Status::Done;
                state.order.push_back(event_id.to_owned());
            }
            while state.order.len() > self.capacity {
                if let Some(oldest) = state.order.pop_front() {
                    state.events.remove(&oldest);
                }
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(&self, event_id: &str, claim: u64) {
        self.with_state(|state| {
            if matches!(state.events.get(event_id), Some(Status::Claimed { claim: c, .. }) if *c == claim)
            {
                state.events.remove(event_id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(begin: Begin) -> u64 {
        match begin {
            Begin::New(claim) => claim,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn claims_complete_release_and_forget_the_oldest() {
        let ledger = InMemoryLedger::new(2);
        let first = claim(ledger.begin("a").await.unwrap());
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::InProgress);
        ledger.release("a", first);
        let second = claim(ledger.begin("a").await.unwrap());
        // A stale claim's release or completion does not touch the newer claim.
        ledger.release("a", first);
        ledger.complete("a", first).await.unwrap();
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::InProgress);
        ledger.complete("a", second).await.unwrap();
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::Done);
        // A late release of a handled event does not forget it.
        ledger.release("a", second);
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::Done);
        for id in ["b", "c"] {
            let c = claim(ledger.begin(id).await.unwrap());
            ledger.complete(id, c).await.unwrap();
        }
        assert!(
            matches!(ledger.begin("a").await.unwrap(), Begin::New(_)),
            "oldest forgotten"
        );
        assert_eq!(ledger.begin("c").await.unwrap(), Begin::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_whose_holder_died_expires_with_its_lease() {
        let ledger = InMemoryLedger::new(10);
        let _abandoned = claim(ledger.begin("e").await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(ledger.begin("e").await.unwrap(), Begin::InProgress);
        tokio::time::advance(Duration::from_secs(2)).await;
        let retried = claim(ledger.begin("e").await.unwrap());
        ledger.complete("e", retried).await.unwrap();
        assert_eq!(ledger.begin("e").await.unwrap(), Begin::Done);
    }
}
