//! Remembering which `event_id`s were handled, so TrueLayer's retries and replays reach a
//! handler once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

/// What [`EventLedger::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Begin {
    /// Not seen before, or released after a failure: now claimed for this delivery.
    New,
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
/// the handler until one delivery succeeds, and never after.
///
/// The layer calls [`begin`](Self::begin) before the handler, then
/// [`complete`](Self::complete) when the handler answered 2xx, or
/// [`release`](Self::release) when it did not (or its future was dropped), so a retry is
/// handled: nothing is lost to a handler that failed.
///
/// [`InMemoryLedger`] suits one process; with several replicas, implement this over a shared
/// store (an `INSERT ... ON CONFLICT` row with a status column does it).
pub trait EventLedger: Send + Sync + fmt::Debug + 'static {
    /// Claims `event_id` for one delivery, atomically.
    fn begin<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, Begin>;

    /// Marks `event_id` handled.
    fn complete<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, ()>;

    /// Drops the claim on `event_id` so a later delivery is handled. Called from `Drop`
    /// when a handler's future is cancelled, so it must not block: a ledger over a network
    /// store should spawn the release (or let claims expire).
    fn release(&self, event_id: &str);
}

/// An [`EventLedger`] in memory, remembering the last `capacity` handled events (oldest
/// forgotten first). TrueLayer retries for up to 72 hours; size it for the events of that
/// span, or use a shared store.
///
/// # Example
///
/// ```
/// use truelayer_auth_webhooks::{InMemoryLedger, WebhookLayer, WebhookVerifier};
///
/// let layer = WebhookLayer::new(WebhookVerifier::builder().build()?)
///     .ledger(InMemoryLedger::new(100_000));
/// # let _ = layer;
/// # Ok::<(), truelayer_auth_webhooks::ConfigError>(())
/// ```
pub struct InMemoryLedger {
    capacity: usize,
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// event_id → handled (true) or claimed (false).
    events: HashMap<String, bool>,
    /// Handled ids, oldest first.
    order: VecDeque<String>,
}

impl fmt::Debug for InMemoryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("InMemoryLedger")
            .field("capacity", &self.capacity)
            .field("events", &state.events.len())
            .finish()
    }
}

impl InMemoryLedger {
    /// A ledger remembering up to `capacity` handled events (at least one).
    pub fn new(capacity: usize) -> Self {
        InMemoryLedger {
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut LedgerState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl EventLedger for InMemoryLedger {
    fn begin<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, Begin> {
        let begin = self.with_state(|state| match state.events.get(event_id) {
            Some(true) => Begin::Done,
            Some(false) => Begin::InProgress,
            None => {
                state.events.insert(event_id.to_owned(), false);
                Begin::New
            }
        });
        Box::pin(std::future::ready(Ok(begin)))
    }

    fn complete<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, ()> {
        self.with_state(|state| {
            if let Some(done) = state.events.get_mut(event_id)
                && !*done
            {
                *done = true;
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

    fn release(&self, event_id: &str) {
        self.with_state(|state| {
            if state.events.get(event_id) == Some(&false) {
                state.events.remove(event_id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_complete_release_and_forget_the_oldest() {
        let ledger = InMemoryLedger::new(2);
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::New);
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::InProgress);
        ledger.release("a");
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::New);
        ledger.complete("a").await.unwrap();
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::Done);
        // A late release of a handled event does not forget it.
        ledger.release("a");
        assert_eq!(ledger.begin("a").await.unwrap(), Begin::Done);
        for id in ["b", "c"] {
            assert_eq!(ledger.begin(id).await.unwrap(), Begin::New);
            ledger.complete(id).await.unwrap();
        }
        assert_eq!(
            ledger.begin("a").await.unwrap(),
            Begin::New,
            "oldest forgotten"
        );
        assert_eq!(ledger.begin("c").await.unwrap(), Begin::Done);
    }
}
