//! [`SigningLayer`]: `Idempotency-Key` and `Tl-Signature` on every modification request.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Limited;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use truelayer_auth_http::{IDEMPOTENCY_KEY, LogicalRequest, TL_SIGNATURE};

use crate::signer::{Signable, SignatureError, Signer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Idempotency-Key` as the layer writes it among a signature's signed headers (`tl_headers`),
/// in TrueLayer's casing.
const IDEMPOTENCY_KEY_AS_SIGNED: &str = "Idempotency-Key";

/// The future a [`SignerSource`] returns.
pub type SignerFuture<'a> = Pin<Box<dyn Future<Output = Result<Signer, BoxError>> + Send + 'a>>;

/// Where a [`SigningLayer`] gets its signer: a fixed [`Signer`], or a store the key can be
/// rotated in (the `truelayer-auth-vault` crate reads it from the same Secrets Manager secret
/// as the client credentials).
///
/// Both methods get the request's extensions, so a platform signing for many merchants (each
/// TrueLayer client uploads its own signing key) can pick the merchant's signer from the
/// `truelayer_auth::CacheKey` its bearer layer reads too. The future must not
/// borrow them: take what you need (a clone of the key) before it starts.
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use truelayer_auth::CacheKey;
/// use truelayer_auth_signing::{Signer, SignerFuture, SignerSource};
///
/// /// One signing key per merchant, picked by the request's `CacheKey`.
/// #[derive(Clone)]
/// struct PerMerchant(Arc<HashMap<CacheKey, Signer>>);
///
/// impl SignerSource for PerMerchant {
///     fn signer(&self, request: &http::Extensions) -> SignerFuture<'_> {
///         let signer = request.get::<CacheKey>().and_then(|key| self.0.get(key)).cloned();
///         Box::pin(async move { signer.ok_or_else(|| "no signing key for this merchant".into()) })
///     }
/// }
/// ```
pub trait SignerSource: Clone + Send + Sync + 'static {
    /// The signer for a request with these extensions, now.
    fn signer(&self, request: &http::Extensions) -> SignerFuture<'_>;

    /// The signer read again, after TrueLayer answered 401 to a request signed by it (the
    /// signing key may have been rotated). Defaults to [`signer`](Self::signer).
    fn reload(&self, request: &http::Extensions) -> SignerFuture<'_> {
        self.signer(request)
    }
}

impl SignerSource for Signer {
    fn signer(&self, _request: &http::Extensions) -> SignerFuture<'_> {
        let signer = self.clone();
        Box::pin(async move { Ok(signer) })
    }
}

/// The longest request body collected for signing, by default: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How long the layer waits for the next part of a body it collects, by default: 10 s.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the layer waits for the whole of a body it collects, by default: 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How seldom a 401 may make the layer read a signing key (one `kid`) again.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// How long a request rejected while another reads its key again waits for that read.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// Reload times kept per `kid` before old ones are swept.
const RELOADS_KEPT: usize = 1024;

/// Signs every POST, PUT, PATCH and DELETE for TrueLayer: adds an `Idempotency-Key` (a new
/// UUIDv4 unless the request has one) and a `Tl-Signature` over the method, the path, the
/// `Idempotency-Key`, the extra headers configured with [`sign_header`](Self::sign_header)
/// and the exact body bytes sent. Other methods pass untouched.
///
/// - **Bodies** of modification requests are collected to be signed (a `Full<Bytes>` at
///   once, without a copy; any body up to [`max_body_bytes`](Self::max_body_bytes), 1 MiB
///   by default: above it the call fails with [`SigningError::BodyTooLarge`] and nothing is
///   sent), and sent on as `B::from(bytes)`: the body type needs `From<Bytes>`
///   (`Full<Bytes>`, `reqwest::Body` and most client bodies have it). Other requests keep
///   their body, streaming or not.
/// - **Body deadlines**: a body that has to be waited for gets 10 s between one part and the
///   next and 30 s in all ([`body_timeouts`](Self::body_timeouts)); past either the call
///   fails with [`SigningError::BodyTimedOut`] and nothing is sent, so a client that stalls
///   mid-body holds neither the request nor its buffer. A body ready at once needs no timer;
///   where tokio has no timers (a runtime built without `enable_time`) one that has to be
///   waited for is waited for without a limit.
/// - **Composes with the bearer layer in either order.** Outside it, the replay the bearer
///   layer makes after a 401 copies the signed request. Inside it, the replay comes through
///   again and gets the same `Idempotency-Key` (shared through the request's
///   [`LogicalRequest`]) and a fresh signature: a new key on a replay could make a second
///   payment.
/// - **Key rotation**: when TrueLayer answers 401, the layer asks its [`SignerSource`] for
///   the signer again; if the key is unchanged it reads it again ([`SignerSource::reload`],
///   one read at a time and at most one per 30 s per `kid`). If the key changed (another
///   public key or `kid`), it signs the request with it and sends it once more, with the
///   same `Idempotency-Key`. A request rejected while another one reads its key again waits
///   for that read to end, then asks the source once more; one rejected after such a read
///   ended (within the 30 s) asks the source once, without waiting.
/// - **Idempotency beyond this layer**: the key this layer adds is kept across the bearer
///   layer's 401 replay and this layer's re-signed resend, and nothing else. A retry made
///   above the stack (a `tower::retry` layer, reqwest-middleware, the application after a
///   timeout) is a new request and gets a new key: it could create a second payment. Set
///   `Idempotency-Key` yourself on anything that may be retried (or insert a
///   [`LogicalRequest`] into the request's extensions before the retry layer clones it).
///
/// # Example
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceBuilder;
/// use truelayer_auth_signing::{Signer, SigningLayer};
///
/// # fn run(pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// let signer = Signer::from_pem("45fc75cf-5649-4134-84b3-192c2c78e990", pem)?;
/// # let hyper_client = tower::service_fn(|_: http::Request<Full<Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// # });
/// let client = ServiceBuilder::new()
///     .layer(SigningLayer::new(signer))
///     .service(hyper_client);
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SigningLayer<K> {
    keys: K,
    extra_headers: Vec<(String, HeaderName)>,
    max_body: usize,
    body_timeouts: BodyTimeouts,
    reloads: Arc<Reloads>,
}

#[derive(Debug)]
struct Settings {
    extra_headers: Vec<(String, HeaderName)>,
    max_body: usize,
    body_timeouts: BodyTimeouts,
    /// Shared by every service of one layer: one reload per `kid` per 30 s in all.
    reloads: Arc<Reloads>,
}

/// How long a body being collected may take: between two frames, and in all.
#[derive(Debug, Clone, Copy)]
struct BodyTimeouts {
    idle: Duration,
    total: Duration,
}

/// The reads of each signing key (by `kid`) made again after a 401: when the last one began,
/// and whether it has ended.
#[derive(Debug, Default)]
struct Reloads(Mutex<HashMap<Arc<str>, Reload>>);

#[derive(Debug)]
struct Reload {
    began: Instant,
    /// `true` once the read ended (or the request making it was dropped).
    ended: watch::Receiver<bool>,
}

/// What a 401 to a request signed with an unchanged key leads to.
enum AfterRejection {
    /// Read the key again. Requests waiting for this read are let go when it is dropped.
    Reload(Reloading),
    /// Another request is reading the key again: wait for it to end (`true`).
    Wait(watch::Receiver<bool>),
    /// The key was read again lately: no reload.
    Skip,
}

/// A read of a key under way; dropping it (the read ended, or its request was dropped)
/// lets go the requests waiting for it.
struct Reloading(watch::Sender<bool>);

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl<K: SignerSource> SigningLayer<K> {
    /// A layer signing with the signers `keys` gives.
    pub fn new(keys: K) -> Self {
        SigningLayer {
            keys,
            extra_headers: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            body_timeouts: BodyTimeouts {
                idle: DEFAULT_BODY_IDLE_TIMEOUT,
                total: DEFAULT_BODY_TIMEOUT,
            },
            reloads: Arc::default(),
        }
    }

    /// Also signs this header when the request has it, after `Idempotency-Key`, in the order
    /// of calls. The name is signed as written here (TrueLayer compares names in any case).
    /// A header named twice, or `Idempotency-Key` (always signed), is signed once.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name.
    #[must_use]
    pub fn sign_header(mut self, name: &str) -> Self {
        let header = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| panic!("`{name}` is not a valid header name"));
        if header != IDEMPOTENCY_KEY && !self.extra_headers.iter().any(|(_, h)| *h == header) {
            self.extra_headers.push((name.to_owned(), header));
        }
        self
    }

    /// The largest body signed, 1 MiB by default: a larger one is refused before anything is
    /// sent, whatever its type.
    #[must_use]
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body = limit;
        self
    }

    /// How long a body is waited for while it is collected: `idle` between one part (frame)
    /// and the next, `total` from the start of the collection to its end; by default
    /// [`DEFAULT_BODY_IDLE_TIMEOUT`] (10 s) and [`DEFAULT_BODY_TIMEOUT`] (30 s). When either
    /// runs out the call fails with [`SigningError::BodyTimedOut`] and nothing is sent.
    /// `Duration::MAX` lifts a limit. Timers are made only for a body that has to be waited
    /// for: a `Full<Bytes>` never needs one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use truelayer_auth_signing::{Signer, SigningLayer};
    ///
    /// let layer = SigningLayer::new(Signer::generate("kid"))
    ///     .body_timeouts(Duration::from_secs(5), Duration::from_secs(20));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn body_timeouts(mut self, idle: Duration, total: Duration) -> Self {
        self.body_timeouts = BodyTimeouts { idle, total };
        self
    }
}

impl<S, K: Clone> Layer<S> for SigningLayer<K> {
    type Service = Signing<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Signing {
            inner,
            keys: self.keys.clone(),
            settings: Arc::new(Settings {
                extra_headers: self.extra_headers.clone(),
                max_body: self.max_body,
                body_timeouts: self.body_timeouts,
                reloads: self.reloads.clone(),
            }),
        }
    }
}

/// The service [`SigningLayer`] builds.
#[derive(Debug, Clone)]
pub struct Signing<S, K> {
    inner: S,
    keys: K,
    settings: Arc<Settings>,
}

impl<S, K> Signing<S, K> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Why a request through [`Signing`] failed. Until [`Service`](SigningError::Service),
/// nothing was sent.
#[non_exhaustive]
pub enum SigningError<E> {
    /// The body is larger than the limit for collecting it.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body did not arrive in time: a part of it within the idle timeout, or all of it
    /// within the total timeout ([`SigningLayer::body_timeouts`]).
    BodyTimedOut {
        /// The timeout that ran out.
        limit: BodyTimeout,
    },
    /// The body could not be read.
    Body(BoxError),
    /// The signer source failed (a secret store, say).
    Signer(BoxError),
    /// The request could not be signed.
    Sign(SignatureError),
    /// The inner service failed.
    Service(E),
}

impl<E: fmt::Debug> fmt::Debug for SigningError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::BodyTooLarge { limit } => f
                .debug_struct("BodyTooLarge")
                .field("limit", limit)
                .finish(),
            SigningError::BodyTimedOut { limit } => f
                .debug_struct("BodyTimedOut")
                .field("limit", limit)
                .finish(),
            SigningError::Body(e) => f.debug_tuple("Body").field(&e.to_string()).finish(),
            SigningError::Signer(e) => f.debug_tuple("Signer").field(&e.to_string()).finish(),
            SigningError::Sign(e) => f.debug_tuple("Sign").field(e).finish(),
            SigningError::Service(e) => f.debug_tuple("Service").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for SigningError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::BodyTooLarge { limit } => write!(
                f,
                "the request body is larger than the {limit}-byte limit for signing it; the request was not sent (raise SigningLayer::max_body_bytes)"
            ),
            SigningError::BodyTimedOut {
                limit: BodyTimeout::Idle(idle),
            } => write!(
                f,
                "the request body stalled: no part of it arrived for {idle:?} (the idle timeout for collecting it to sign); the request was not sent (see SigningLayer::body_timeouts)"
            ),
            SigningError::BodyTimedOut {
                limit: BodyTimeout::Total(total),
            } => write!(
                f,
                "the request body did not arrive within {total:?} (the total timeout for collecting it to sign); the request was not sent (see SigningLayer::body_timeouts)"
            ),
            SigningError::Body(_) => f.write_str(
                "the request body could not be read for signing; the request was not sent",
            ),
            SigningError::Signer(_) => {
                f.write_str("no signing key could be had; the request was not sent")
            }
            SigningError::Sign(_) => {
                f.write_str("the request could not be signed; it was not sent")
            }
            SigningError::Service(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for SigningError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SigningError::BodyTooLarge { .. } | SigningError::BodyTimedOut { .. } => None,
            SigningError::Body(e) | SigningError::Signer(e) => Some(e.as_ref()),
            SigningError::Sign(e) => Some(e),
            SigningError::Service(e) => e.source(),
        }
    }
}

/// Which of a [`SigningLayer`]'s body timeouts ran out, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimeout {
    /// No part of the body arrived for this long (since the last part, or the start).
    Idle(Duration),
    /// The whole body did not arrive within this long.
    Total(Duration),
}

type SignedFuture<R, E> =
    Pin<Box<dyn Future<Output = Result<R, SigningError<E>>> + Send + 'static>>;

pin_project! {
    /// The future of [`Signing`]. A request that is not signed (GET, HEAD, ...) is the inner
    /// service's future, untouched. A signed one is boxed: collecting the body and the signer
    /// source's future are async work of their own, and an ECDSA P-521 signature (about a
    /// tenth of a millisecond, see `docs/benchmarks.md`) dwarfs one allocation.
    pub struct ResponseFuture<F, R, E> {
        #[pin]
        state: State<F, R, E>,
    }
}

pin_project! {
    #[project = Projected]
    enum State<F, R, E> {
        Unsigned { #[pin] inner: F },
        Signed { inner: SignedFuture<R, E> },
    }
}

impl<F, R, E> fmt::Debug for ResponseFuture<F, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Unsigned { .. } => "ResponseFuture::Unsigned",
            State::Signed { .. } => "ResponseFuture::Signed",
        })
    }
}

impl<F, R, E> Future for ResponseFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, SigningError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projected::Unsigned { inner } => inner.poll(cx).map_err(SigningError::Service),
            Projected::Signed { inner } => inner.as_mut().poll(cx),
        }
    }
}

/// Whether the layer signs requests with this method.
fn signs(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

impl<S, K, B, ResBody> Service<Request<B>> for Signing<S, K>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    K: SignerSource,
    B: http_body::Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = SigningError<S::Error>;
    type Future = ResponseFuture<S::Future, Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(SigningError::Service)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !signs(request.method()) {
            return ResponseFuture {
                state: State::Unsigned {
                    inner: self.inner.call(request),
                },
            };
        }
        // The ready service goes into the future; a clone stays (tower's clone and swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (keys, settings) = (self.keys.clone(), self.settings.clone());
        ResponseFuture {
            state: State::Signed {
                inner: Box::pin(sign_and_send(inner, keys, settings, request)),
            },
        }
    }
}

async fn sign_and_send<S, K, B, ResBody>(
    mut inner: S,
    keys: K,
    settings: Arc<Settings>,
    request: Request<B>,
) -> Result<Response<ResBody>, SigningError<S::Error>>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    K: SignerSource,
    B: http_body::Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let body = collect(body, settings.max_body, settings.body_timeouts).await?;
    // The caller's key, or the one this logical request already has, or a new one.
    if !parts.headers.contains_key(IDEMPOTENCY_KEY) {
        let make = || {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| unreachable!("a UUID is a valid header value"))
        };
        let key = match parts.extensions.get::<LogicalRequest>() {
            Some(logical) => logical.idempotency_key(make),
            None => make(),
        };
        parts.headers.insert(IDEMPOTENCY_KEY, key);
    }
    let signer = keys
        .signer(&parts.extensions)
        .await
        .map_err(SigningError::Signer)?;
    sign(&signer, &mut parts, &settings, &body).await?;
    let copy = copy_head(&parts);
    let response = inner
        .call(Request::from_parts(parts, B::from(body.clone())))
        .await
        .map_err(SigningError::Service)?;
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    // Perhaps the signing key was rotated. Another request may already have read the new
    // one, or be reading it (then wait for it); otherwise read it again (once per key per
    // 30 s). Send once more, same Idempotency-Key, only if the key really changed.
    let fresh = match keys.signer(&copy.extensions).await {
        Ok(current) if !current.same_key(&signer) => current,
        _ => match settings.reloads.after_rejection(signer.kid()) {
            AfterRejection::Skip => return Ok(response),
            AfterRejection::Wait(mut ended) => {
                tracing::debug!(
                    kid = signer.kid(),
                    "another request is reading the signing key again; waiting for it"
                );
                // An error would mean the read's end was never sent: `Reloading` sends it
                // when dropped. Either way the wait is over. A read that hangs (a source
                // without timeouts, a runtime no longer driven) holds this 401 only so long.
                let ended = ended.wait_for(|ended| *ended);
                match Instant::now().checked_add(RELOAD_WAIT).and_then(timer_at) {
                    Some(timer) => {
                        tokio::select! {
                            _ = ended => {}
                            () = timer => {
                                tracing::warn!(
                                    kid = signer.kid(),
                                    wait_s = RELOAD_WAIT.as_secs(),
                                    "another request's read of the signing key did not end in time; answering the 401"
                                );
                                return Ok(response);
                            }
                        }
                    }
                    None => {
                        let _ = ended.await;
                    }
                }
                match keys.signer(&copy.extensions).await {
                    Ok(current) if !current.same_key(&signer) => current,
                    _ => return Ok(response),
                }
            }
            AfterRejection::Reload(reloading) => {
                let reloaded = keys.reload(&copy.extensions).await;
                drop(reloading);
                match reloaded {
                    Ok(fresh) if !fresh.same_key(&signer) => fresh,
                    Ok(_) => return Ok(response),
                    Err(e) => {
                        tracing::warn!(
                            error = %truelayer_auth_http::error_chain(&*e),
                            "could not read the signing key again after a 401"
                        );
                        return Ok(response);
                    }
                }
            }
        },
    };
    tracing::info!(
        kid = fresh.kid(),
        "the signing key changed; signing with it and sending again"
    );
    let mut parts = copy;
    sign(&fresh, &mut parts, &settings, &body).await?;
    inner
        .oneshot(Request::from_parts(parts, B::from(body)))
        .await
        .map_err(SigningError::Service)
}

impl Reloads {
    /// What a 401 to a request signed with the key `kid`, unchanged in the source, leads to:
    /// a read of it again (at most one per 30 s, one at a time), a wait for the read under
    /// way, or nothing.
    fn after_rejection(&self, kid: &str) -> AfterRejection {
        let mut reloads = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let recent = |reload: &Reload| now.saturating_duration_since(reload.began) < RELOAD_EVERY;
        if let Some(reload) = reloads.get(kid) {
            if !*reload.ended.borrow() {
                return AfterRejection::Wait(reload.ended.clone());
            }
            if recent(reload) {
                return AfterRejection::Skip;
            }
        }
        if reloads.len() >= RELOADS_KEPT {
            reloads.retain(|_, reload| !*reload.ended.borrow() || recent(reload));
            if reloads.len() >= RELOADS_KEPT {
                // That many keys rejected within 30 s: wait for the oldest to age out.
                return AfterRejection::Skip;
            }
        }
        let (reloading, ended) = watch::channel(false);
        reloads.insert(Arc::from(kid), Reload { began: now, ended });
        AfterRejection::Reload(Reloading(reloading))
    }
}

/// The body's bytes, up to `limit`, within `timeouts`. A body that is ready at once (a
/// `Full<Bytes>`) is taken without a timer; one is made only when the body has to be waited
/// for.
async fn collect<B, E>(
    body: B,
    limit: usize,
    timeouts: BodyTimeouts,
) -> Result<Bytes, SigningError<E>>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(SigningError::BodyTooLarge { limit });
    }
    let started = Instant::now();
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut deadlines = Deadlines::default();
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                return Poll::Ready(Ok(frame));
            }
            deadlines.poll(cx, started, timeouts).map(Err)
        })
        .await;
        match frame {
            Ok(Some(Ok(frame))) => {
                deadlines.part_arrived();
                if let Ok(mut data) = frame.into_data() {
                    let chunk = data.copy_to_bytes(data.remaining());
                    if !chunk.is_empty() {
                        chunks.push(chunk);
                    }
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(SigningError::BodyTooLarge { limit });
            }
            Ok(Some(Err(e))) => return Err(SigningError::Body(e)),
            Err(limit) => return Err(SigningError::BodyTimedOut { limit }),
        }
    }
    // One part (a `Full<Bytes>`) is kept as it is, without a copy.
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

/// The timers bounding the wait for a body, made the first time it has to be waited for.
#[derive(Default)]
struct Deadlines {
    /// Whether the body had to be waited for yet.
    waited: bool,
    /// Runs out `total` after the collection started (`None`: no limit).
    total: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Runs out `idle` after the last part (`None`: no limit).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `idle` counts from the last part; a new part disarms it.
    idle_armed: bool,
    /// No timer can be made here (no tokio timers): the body is waited for unbounded.
    unbounded: bool,
}

impl Deadlines {
    /// Called when the body is not ready: whether a timeout ran out. The total is checked
    /// first, so a body that missed both is reported against the total.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        started: Instant,
        timeouts: BodyTimeouts,
    ) -> Poll<BodyTimeout> {
        if self.unbounded {
            return Poll::Pending;
        }
        if !self.waited {
            self.waited = true;
            // No deadline for `Duration::MAX` (no limit): it would overflow the clock.
            if let Some(deadline) = started.checked_add(timeouts.total) {
                self.total = timer_at(deadline);
                self.unbounded = self.total.is_none();
            }
        }
        if !self.idle_armed && !self.unbounded {
            self.idle_armed = true;
            match (Instant::now().checked_add(timeouts.idle), &mut self.idle) {
                (Some(deadline), Some(idle)) => idle.as_mut().reset(deadline),
                (Some(deadline), None) => {
                    self.idle = timer_at(deadline);
                    self.unbounded = self.idle.is_none();
                }
                (None, _) => self.idle = None,
            }
        }
        if let Some(total) = &mut self.total
            && total.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(BodyTimeout::Total(timeouts.total));
        }
        if let Some(idle) = &mut self.idle
            && idle.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(BodyTimeout::Idle(timeouts.idle));
        }
        Poll::Pending
    }

    /// A part of the body arrived: the idle timeout counts again from the next wait.
    fn part_arrived(&mut self) {
        self.idle_armed = false;
    }
}

thread_local! {
    /// Set once making a timer panicked on this thread: its runtime has no timers.
    static NO_TIMERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A timer running out at `deadline`, or `None` where tokio has no timers: outside a
/// runtime, or in one built without `enable_time`.
fn timer_at(deadline: Instant) -> Option<Pin<Box<tokio::time::Sleep>>> {
    tokio::runtime::Handle::try_current().ok()?;
    if NO_TIMERS.get() {
        return None;
    }
    // Without `enable_time`, making a Sleep panics, and the panic hook prints a message.
    // Tokio offers no way to ask first, so the first failure on a thread is remembered and
    // later waits there print nothing (the bearer layer's drain timer does the same). A later
    // runtime on that thread, with timers, then collects bodies without deadlines.
    let timer = std::panic::catch_unwind(|| Box::pin(tokio::time::sleep_until(deadline))).ok();
    if timer.is_none() {
        NO_TIMERS.set(true);
    }
    timer
}

/// Signs method, path, `Idempotency-Key`, the extra headers present, and the body; sets
/// `Tl-Signature` (replacing any).
async fn sign<E>(
    signer: &Signer,
    parts: &mut http::request::Parts,
    settings: &Settings,
    body: &Bytes,
) -> Result<(), SigningError<E>> {
    // One value per signed header: hyper sends them all, the receiver may read another.
    let single = |name: &HeaderName, written: &str| {
        let mut values = parts.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(SigningError::Sign(SignatureError::DuplicateHeader {
                name: written.to_owned(),
            })),
            (value, _) => Ok(value.cloned()),
        }
    };
    let path = parts.uri.path().to_owned();
    let mut request = Signable::new(parts.method.as_str(), &path).body(body);
    let key = single(&IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_AS_SIGNED)?;
    if let Some(key) = &key {
        request = request.header(IDEMPOTENCY_KEY_AS_SIGNED, key.as_bytes());
    }
    let mut extra: Vec<(&str, HeaderValue)> = Vec::new();
    for (written, name) in &settings.extra_headers {
        if let Some(value) = single(name, written)? {
            extra.push((written.as_str(), value));
        }
    }
    for (name, value) in &extra {
        request = request.header(name, value.as_bytes());
    }
    // A span of its own, so a backend's events (a KMS `Sign`'s latency) are the signature's.
    let span = tracing::debug_span!("tl_signature", kid = signer.kid());
    let signature = tracing::Instrument::instrument(signer.sign(&request), span)
        .await
        .map_err(SigningError::Sign)?;
    let value = HeaderValue::from_str(&signature)
        .unwrap_or_else(|_| unreachable!("base64url and dots are valid header characters"));
    parts.headers.insert(TL_SIGNATURE, value);
    Ok(())
}

fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy.extensions = parts.extensions.clone();
    copy
}
