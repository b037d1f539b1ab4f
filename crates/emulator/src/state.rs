//! The emulator's state: one part per domain, each behind its own lock, and the background
//! tasks they start.
//!
//! A domain module (`auth`, `faults`, `payments`, ...) owns its state struct, its HTTP routes
//! and its admin routes; [`State`] holds one of each, and handlers reach the domains they
//! need through it. A new product is one more module with its own state struct: a field
//! here, and its routes merged in the crate's router.
//!
//! Locks are never held across an `.await`. Only two paths hold two: a payment's change
//! queues its webhooks under the payments lock (so they go out in the order of its
//! statuses), taking the webhooks lock inside it; and a code exchange makes (or, for a
//! re-consent, renews) its connection, or revokes the one a reused code made, under the
//! dialog lock, taking the data lock inside it. Nothing takes them the other way round.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::runtime::Handle;
use tokio::task::JoinSet;

use crate::auth::Auth;
use crate::auth::dialog::Dialog;
use crate::clock::Clock;
use crate::data::Data;
use crate::faults::Faults;
use crate::payments::Payments;
use crate::signing_keys::SigningKeys;
use crate::stats::Counters;
use crate::webhooks::Webhooks;

pub(crate) struct State {
    /// The wall clock tokens and webhooks are stamped with.
    pub(crate) clock: Clock,
    /// What has been served.
    pub(crate) stats: Counters,
    /// Clients, and the tokens issued to them.
    pub(crate) auth: Auth,
    /// The Data API's auth dialog: pending authorizations, codes, redirect rules.
    pub(crate) dialog: Dialog,
    /// Data API connections, their user tokens, and refresh faults.
    pub(crate) data: Data,
    /// What the token endpoint is told to do instead of answering.
    pub(crate) faults: Faults,
    /// Request-signing public keys, per client.
    pub(crate) signing_keys: SigningKeys,
    /// Payments, their statuses and idempotency keys.
    pub(crate) payments: Payments,
    /// Where webhooks go, the key they are signed with, and those waiting.
    pub(crate) webhooks: Webhooks,
    /// Payment schedules and webhook deliveries.
    pub(crate) tasks: Tasks,
}

impl State {
    /// A new state for an emulator at `base_url`, its tasks spawned on the current runtime.
    pub(crate) fn new(base_url: String) -> Self {
        State {
            clock: Clock::default(),
            stats: Counters::default(),
            webhooks: Webhooks::new(&base_url),
            dialog: Dialog::new(),
            data: Data::new(base_url.clone()),
            auth: Auth::new(base_url),
            faults: Faults::default(),
            signing_keys: SigningKeys::default(),
            payments: Payments::default(),
            tasks: Tasks::new(),
        }
    }
}

/// Background tasks, aborted together when the emulator is dropped.
pub(crate) struct Tasks {
    /// `None` once the emulator is dropped.
    set: Mutex<Option<JoinSet<()>>>,
    runtime: Handle,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            set: Mutex::new(Some(JoinSet::new())),
            runtime: Handle::current(),
        }
    }

    /// Runs `task` until it ends or the emulator is dropped.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.set);
        if let Some(set) = tasks.as_mut() {
            // Reap finished tasks so the set does not grow without bound.
            while set.try_join_next().is_some() {}
            set.spawn_on(task, &self.runtime);
        }
    }

    /// Aborts every task, and refuses new ones.
    pub(crate) fn shutdown(&self) {
        let tasks = lock(&self.set).take();
        // Dropping the set aborts its tasks.
        drop(tasks);
    }
}

/// Locks `m`, poisoned or not: a panic while holding a lock leaves plain data behind; keep
/// serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
