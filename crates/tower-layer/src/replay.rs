//! Which requests may be sent a second time, with a fresh token, after a 401.

use http::Request;

/// Decides whether a request body can be reproduced for a replay after a 401.
///
/// The head (method, URI, version, headers, extensions) is always copied; the policy makes
/// the second body. Modelled on tower's `Policy::clone_request` and tower-http's
/// `follow_redirect`.
pub trait ReplayPolicy<B> {
    /// A copy of `body` for the replay, or `None` if this request must not be replayed.
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// Replays requests whose body is known to be empty (its size hint is exactly 0), recreating
/// it with `B::default()`. The default policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyBodies;

impl<B: http_body::Body + Default> ReplayPolicy<B> for EmptyBodies {
    fn clone_body(&self, body: &B) -> Option<B> {
        (body.size_hint().exact() == Some(0)).then(B::default)
    }
}

/// Replays every request whose body type is `Clone` (such as `Full<Bytes>`, `Bytes` or
/// `String`), by cloning the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBodies;

impl<B: Clone> ReplayPolicy<B> for CloneBodies {
    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

/// Never replays: a 401 is returned as it came (the token is still invalidated).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReplay;

impl<B> ReplayPolicy<B> for NoReplay {
    fn clone_body(&self, _body: &B) -> Option<B> {
        None
    }
}

/// A policy from a function; see [`replay_with`].
#[derive(Debug, Clone, Copy)]
pub struct ReplayFn<F>(F);

/// A policy that asks `f` for the replay body, for body types only the caller knows how to
/// copy (say, bodies read from a buffer the caller keeps).
pub fn replay_with<B, F>(f: F) -> ReplayFn<F>
where
    F: Fn(&B) -> Option<B>,
{
    ReplayFn(f)
}

impl<B, F: Fn(&B) -> Option<B>> ReplayPolicy<B> for ReplayFn<F> {
    fn clone_body(&self, body: &B) -> Option<B> {
        (self.0)(body)
    }
}

/// The request head with another body.
pub(crate) fn with_body<B>(request: &Request<B>, body: B) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}
