//! The HTTP edge shared by every function: the error type and its one mapping to
//! `{"error": CODE, "message": TEXT, "detail": TEXT}`, extractors that turn every bad input into
//! such an error, request-scoped logging, and `serve`, which runs a router under
//! the Lambda runtime or as a plain HTTP server.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{
        ConnectInfo, FromRequest, FromRequestParts, Request,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use lambda_http::RequestExt as _;
use serde_json::json;
use tower::Service as _;
use tracing::Instrument as _;

use crate::{
    auth::{PasswordError, Role, TokenError},
    config::{HttpLimits, under_lambda},
    deps::Deps,
    metrics,
    store::{Store, StoreError},
    telemetry,
    trace_context::TraceParent,
};

/// Largest request body any function accepts; every body here is a small JSON object.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every error a client can see. [`IntoResponse`] below is the one place that
/// picks status codes and codes; `message` is written for the client and never
/// carries internals (those are logged instead).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Validation(String),
    /// The `Idempotency-Key` was used before, by this user, for a different request.
    #[error(
        "this Idempotency-Key was already used with a different request; \
         send a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// A request with the same `Idempotency-Key` has not finished yet.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyKeyInProgress,
    /// Throttled: this client or name may try again after `retry_after` seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// Overloaded, timed out, or a dependency is down: try again shortly.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] InternalError),
}

/// The `Retry-After` of every 503, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `validation_error`.
    #[schema(example = "validation_error")]
    pub error: String,
    /// What went wrong, for a person.
    #[schema(example = "username must be 3 to 64 characters")]
    pub message: String,
    /// The same text under FastAPI's name: the original web client shows
    /// `error.response.data.detail`.
    #[schema(example = "username must be 3 to 64 characters")]
    pub detail: String,
}

/// Failures of our own machinery, as opposed to the client's input.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] PasswordError),
}

/// Every database failure is a 503 with `Retry-After`: whatever the driver
/// says when FerretDB, its PostgreSQL or MongoDB goes away mid-request (no
/// server to select, a reset connection, a backend error, a failed write
/// concern), the request did not happen or is finished by a retry (see
/// `store::effects`), so the client's answer is "try again". Refusals that
/// are the client's (a name taken) are decided at the call site before this.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        metrics::mongodb_error(err.operation());
        if err.is_time_limit() {
            tracing::warn!(error = %err, "database read over its time limit");
            ApiError::Unavailable(
                "the database is too busy to answer in time; try again shortly".into(),
            )
        } else {
            if err.is_unavailable() {
                tracing::warn!(error = %err, "database unavailable");
            } else {
                // Not a known outage: worth an operator's look.
                tracing::error!(error = %err, "database error");
            }
            ApiError::Unavailable("the database is unavailable; try again shortly".into())
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(err: PasswordError) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        ApiError::Unauthorized(err.to_string())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::IdempotencyKeyInProgress => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation(_) => "validation_error",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInProgress => "idempotency_key_in_progress",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ApiError::Unavailable(_) | ApiError::IdempotencyKeyInProgress => {
                Some(u64::from(RETRY_AFTER_SECS))
            }
            _ => None,
        };
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = %err, cause = ?std::error::Error::source(err), "request failed");
        } else {
            // The message may echo client input, so only the code is logged.
            tracing::info!(
                status = status.as_u16(),
                error = self.code(),
                "request refused"
            );
        }
        let message = self.to_string();
        let body = ErrorBody {
            error: self.code().to_owned(),
            detail: message.clone(),
            message,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Maps an axum rejection to our error by its status, keeping axum's explanation
/// (which names the field, line and column, but never internals).
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation(text),
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Validation(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Validation(rejection.body_text())
    }
}

/// A JSON body, refused with a JSON error when it is not one.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// Query parameters, refused with a 422 JSON error when they do not parse.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters, refused with a 422 JSON error when they do not parse.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The caller, proven by a valid bearer token.
#[derive(Debug)]
pub struct AuthUser {
    pub username: String,
    /// The role the token was issued with. Admin routes use [`AdminUser`] instead,
    /// which re-reads the role from the database.
    pub role: Role,
}

impl FromRequestParts<Arc<Deps>> for AuthUser {
    type Rejection = ApiError;

    /// A valid token whose user still exists: found in the database now, or
    /// less than `USER_CHECK_CACHE_MS` ago.
    async fn from_request_parts(parts: &mut Parts, deps: &Arc<Deps>) -> Result<Self, ApiError> {
        let user = Self::from_token(parts, deps)?;
        if !deps.known_users.is_fresh(&user.username) {
            if !deps.store.user_exists(&user.username).await? {
                return Err(ApiError::Unauthorized(
                    "token's user no longer exists".into(),
                ));
            }
            deps.known_users.remember(&user.username);
        }
        Ok(user)
    }
}

impl AuthUser {
    /// The caller as the bearer token says, without asking the database.
    fn from_token(parts: &Parts, deps: &Deps) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
        // An event token (it has an audience) is refused here, on every route.
        let claims = deps.tokens.verify(token)?;
        Ok(Self {
            username: claims.sub,
            role: claims.role,
        })
    }
}

/// An administrator: a valid token whose user holds the admin role in the
/// database *now*, so a demotion takes effect on the next request.
#[derive(Debug)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<Arc<Deps>> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, deps: &Arc<Deps>) -> Result<Self, ApiError> {
        let user = AuthUser::from_token(parts, deps)?;
        match deps.store.find_user(&user.username).await? {
            Some(stored) if stored.role() == Role::Admin => Ok(Self(user)),
            Some(_) => Err(ApiError::Forbidden("admin rights required".into())),
            None => Err(ApiError::Unauthorized(
                "token's user no longer exists".into(),
            )),
        }
    }
}

/// The client's address, as far as this process can trust it: API Gateway's
/// source address under Lambda; otherwise the entry `TRUSTED_PROXY_HOPS`
/// from the right of `X-Forwarded-For` (the one the nearest trusted proxy
/// appended), or the TCP peer when no proxy is trusted. `None` only when
/// none of these is known. The plain HTTP server tells the TCP peer only to
/// routes made [`Routes::with_peer_address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<Arc<Deps>> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        deps: &Arc<Deps>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(lambda_http::request::RequestContext::ApiGatewayV2(context)) =
            parts.extensions.request_context_ref()
        {
            let source = context.http.source_ip.as_deref();
            return Ok(Self(source.and_then(|ip| ip.trim().parse().ok())));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let hops = deps.config.login_throttle.trusted_proxy_hops;
        Ok(Self(client_address(&forwarded, hops, peer)))
    }
}

/// The client among `forwarded` (the `X-Forwarded-For` entries, in order)
/// when `hops` proxies are trusted: the entry the farthest trusted proxy saw
/// as its peer. With fewer entries than that, the first one; with no trusted
/// proxy, or an entry that is not an address, the TCP `peer`.
fn client_address(forwarded: &[&str], hops: usize, peer: Option<IpAddr>) -> Option<IpAddr> {
    if hops == 0 || forwarded.is_empty() {
        return peer;
    }
    let entry = forwarded[forwarded.len().saturating_sub(hops)];
    entry.trim().parse().ok().or(peer)
}

/// A function's routes: an axum [`Router`] that also keeps the path template
/// of each route, so that [`app`] can name a request's route (for metrics and
/// traces) without wrapping every route in a layer. `Router::layer` boxes
/// each route once more and clones and boxes it again for every request,
/// which cost a cheap request more than everything the edge does
/// (BENCHMARKS.md, "The request path, piece by piece").
pub struct Routes<S = ()> {
    router: Router<S>,
    templates: Vec<&'static str>,
    peer_address: bool,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            templates: Vec::new(),
            peer_address: false,
        }
    }

    /// Its handlers read the client's address ([`ClientAddress`]): the plain
    /// HTTP server gives each of its requests the TCP peer as axum's
    /// [`ConnectInfo`]. Other routes go without: each extension costs every
    /// request a hash-map insert.
    pub fn with_peer_address(mut self) -> Self {
        self.peer_address = true;
        self
    }

    /// As [`Router::route`]; `path` is also the route's template.
    pub fn route(mut self, path: &'static str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        if !self.templates.contains(&path) {
            self.templates.push(path);
        }
        self
    }

    /// As [`Router::merge`].
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.peer_address |= other.peer_address;
        for template in other.templates {
            if !self.templates.contains(&template) {
                self.templates.push(template);
            }
        }
        self
    }

    /// As [`Router::with_state`].
    pub fn with_state<S2>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            templates: self.templates,
            peer_address: self.peer_address,
        }
    }

    /// The path templates, in the order they were added.
    pub fn templates(&self) -> &[&'static str] {
        &self.templates
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// Wraps a function's routes with what every function shares: JSON 404/405,
/// the body limit, and the edge (metrics, the request id and trace on every
/// log line, and the limits: at most `max_in_flight` requests at once, one
/// more refused at once with 503 and `Retry-After`, each for at most
/// `request_timeout`).
pub fn app(routes: Routes, limits: &HttpLimits) -> App {
    App::new(routes, None, limits)
}

/// The target of the per-request line: `RUST_LOG=info,access=debug` turns
/// an access log on.
pub const ACCESS_LOG_TARGET: &str = "access";
/// A request slower than this is logged at `info` whatever the filter.
pub const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// A function as every request reaches it ([`app`]): the probes, if any, as
/// they are, and every other request through the edge around the whole router.
///
/// What the edge does is one service rather than a stack of middleware: each
/// `from_fn` layer boxes and clones the rest of the stack per request, and
/// tower's limit layers add a semaphore and an error type to map back. Per
/// request, in order:
///
/// 1. **Metrics**: in flight while it runs; then counted by route template and
///    status class with its latency (refusals included); under Lambda an EMF
///    line as well.
/// 2. **Identity** ([`Identity`]): its id, echoed in `x-request-id` and on
///    every line it logs, and its span while spans are exported.
/// 3. **Limits** ([`Limited`]): refused with 503 when `max_in_flight`
///    requests are already running, and answered 503 when it takes longer
///    than the timeout.
#[derive(Clone)]
pub struct App {
    routes: Router,
    edge: Arc<Edge>,
}

/// What every request through the edge shares.
struct Edge {
    limits: Arc<EdgeLimits>,
    /// Each route's index in `names` by its template; the router matches the
    /// same templates the same way (axum routes with matchit too).
    templates: matchit::Router<usize>,
    /// The templates without parameters and their indexes, looked for first:
    /// most paths are one of them, and comparing a few strings costs a
    /// fraction of a lookup in `templates`.
    fixed: Box<[(&'static str, usize)]>,
    /// The route names by index: the templates, then [`metrics::UNMATCHED_ROUTE`].
    names: Box<[&'static str]>,
    /// Each route's metric handles, made on the first request, once the
    /// function's recorder is installed.
    metrics: OnceLock<Box<[metrics::RouteMetrics]>>,
    /// Served outside the edge, so an overloaded process still answers them.
    probes: Option<Routes>,
    /// Whether the routes read the client's TCP address ([`Routes::with_peer_address`]).
    peer_address: bool,
}

struct EdgeLimits {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    timeout: Duration,
}

impl App {
    /// `routes` behind the edge, and `probes` beside it.
    fn new(routes: Routes, probes: Option<Routes>, limits: &HttpLimits) -> Self {
        let Routes {
            router,
            templates,
            peer_address,
        } = routes;
        let mut table = matchit::Router::new();
        for (index, template) in templates.iter().enumerate() {
            table
                .insert(*template, index)
                .expect("axum accepted the same templates");
        }
        let fixed = templates
            .iter()
            .enumerate()
            .filter(|(_, template)| !template.contains('{'))
            .map(|(index, template)| (*template, index))
            .collect();
        let names = templates
            .into_iter()
            .chain([metrics::UNMATCHED_ROUTE])
            .collect();
        // Handlers added without state (the fallbacks) become routes here,
        // once; left as they are, axum would make them again per request.
        let router = router
            .fallback(|| async { ApiError::NotFound("no such route".into()) })
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
            .with_state(());
        let probes = probes.map(|probes| probes.with_state(()));
        Self {
            routes: router,
            edge: Arc::new(Edge {
                limits: Arc::new(EdgeLimits {
                    in_flight: AtomicUsize::new(0),
                    max_in_flight: limits.max_in_flight,
                    timeout: limits.request_timeout,
                }),
                templates: table,
                fixed,
                names,
                metrics: OnceLock::new(),
                probes,
                peer_address,
            }),
        }
    }

    /// Answers `request`.
    pub(crate) fn answer<B>(&self, request: axum::http::Request<B>) -> Answer
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        // The body limit is the body's own, as axum's extractors make it from
        // `DefaultBodyLimit`'s extension, without inserting that extension
        // into every request's map; they answer 413 when it is hit.
        let request = request
            .map(|body| axum::body::Body::new(http_body_util::Limited::new(body, MAX_BODY_BYTES)));
        let path = request.uri().path();
        if let Some(probes) = &self.edge.probes
            && probes.templates.contains(&path)
        {
            let probe = probes.router.clone().call(request);
            return Answer {
                inner: Answering::Probe { probe },
            };
        }
        let started = Instant::now();
        let in_flight = metrics::InFlightRequest::enter();
        let edge = &self.edge;
        let route = edge.route(path);
        let identity = Identity::of(&request, edge.names[route]);
        let line = AccessLine {
            method: request.method().clone(),
            route: edge.names[route],
            uri: tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::DEBUG)
                .then(|| request.uri().clone()),
            started,
        };
        // Made now, run later: an axum route's future does nothing until
        // polled, and is dropped unpolled if the request is refused.
        let call = self.routes.clone().call(request);
        let limited = match InFlight::enter(&edge.limits) {
            Some(place) => Limited::Running {
                deadline: Deadline {
                    inner: call,
                    at: started + edge.limits.timeout,
                    timer: None,
                },
                _place: place,
            },
            None => Limited::Refused,
        };
        Answer {
            inner: Answering::Edge {
                run: identity.run(limited, line),
                edge: Arc::clone(edge),
                route,
                in_flight: Some(in_flight),
            },
        }
    }
}

impl crate::server::Answers for App {
    type Future = Answer;

    fn answer(&self, request: axum::http::Request<hyper::body::Incoming>) -> Answer {
        App::answer(self, request)
    }

    fn wants_peer_address(&self) -> bool {
        self.edge.peer_address
    }
}

impl Edge {
    /// The index in `names` of the route `path` is one of.
    fn route(&self, path: &str) -> usize {
        self.fixed
            .iter()
            .find(|(template, _)| *template == path)
            .map(|(_, index)| *index)
            .or_else(|| self.templates.at(path).ok().map(|found| *found.value))
            .unwrap_or(self.names.len() - 1)
    }

    fn finished(&self, route: usize, status: StatusCode, elapsed: Duration) {
        let metrics = self.metrics.get_or_init(|| {
            self.names
                .iter()
                .map(|name| metrics::RouteMetrics::of(name))
                .collect()
        });
        metrics[route].finished(status, elapsed);
    }
}

impl<B> tower::Service<axum::http::Request<B>> for App
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready, and the limits answer in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Answer {
        self.answer(request)
    }
}

type RouteFuture = axum::routing::future::RouteFuture<Infallible>;

pin_project_lite::pin_project! {
    /// One request's answer ([`App`]).
    pub struct Answer {
        #[pin]
        inner: Answering,
    }
}

pin_project_lite::pin_project! {
    /// A probe's answer, or one through the edge, as one future rather than
    /// nested `async` blocks: each of those would move the route's future
    /// (which holds the whole request until first polled) into itself once more.
    #[project = AnsweringProjection]
    enum Answering {
        Probe {
            #[pin]
            probe: axum::routing::future::RouteFuture<Infallible>,
        },
        Edge {
            #[pin]
            run: Run<RouteFuture>,
            edge: Arc<Edge>,
            route: usize,
            in_flight: Option<metrics::InFlightRequest>,
        },
    }
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let (run, edge, route, in_flight) = match self.project().inner.project() {
            AnsweringProjection::Probe { probe } => return probe.poll(cx),
            AnsweringProjection::Edge {
                run,
                edge,
                route,
                in_flight,
            } => (run, edge, *route, in_flight),
        };
        let (response, elapsed) = std::task::ready!(run.poll(cx));
        in_flight.take();
        edge.finished(route, response.status(), elapsed);
        if under_lambda() {
            metrics::emf::print(&metrics::emf::request_line(
                metrics::emf::now_ms(),
                metrics::function(),
                edge.names[route],
                metrics::status_class(response.status()),
                elapsed.as_secs_f64(),
            ));
        }
        Poll::Ready(Ok(response))
    }
}

/// Step 2 of the edge ([`App`]): who the request is: its id (Lambda's, the caller's
/// `x-request-id`, or a new one), echoed in the response, and, while spans
/// are exported, its span.
///
/// While spans are exported, the request runs inside a `request` span that
/// is a child of the caller's span ([`caller_trace`]), carries the trace id as
/// `trace_id`, and is named in the response's `traceparent`. Otherwise there
/// is no span: creating, entering and closing one cost more than the rest of
/// a cheap request (BENCHMARKS.md, "What tracing costs"), and the ids are
/// kept for the log lines by [`telemetry::in_request`], which writes them as
/// the span would have been written, with the caller's trace id if it sent one.
///
/// Refusals and failures are logged where they happen, inside the request,
/// so they carry the id. The line for every completed request is `debug` on
/// [`ACCESS_LOG_TARGET`] (API Gateway and the ingress keep access logs of their
/// own, and one write per request would cost more than the rest of a cheap
/// request); a slow request is logged at `info`.
struct Identity {
    request_id: HeaderValue,
    caller: Option<TraceParent>,
    /// The request's span and its own place in the trace, while exporting.
    span: Option<(tracing::Span, Option<TraceParent>)>,
}

/// What the access line says of a request.
struct AccessLine {
    method: axum::http::Method,
    route: &'static str,
    /// Kept only while the access log is on: copying it costs a cheap request
    /// more than counting it, and a slow request's line names its route.
    uri: Option<axum::http::Uri>,
    started: Instant,
}

/// The header every response echoes the request's id in.
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
/// The W3C trace context header, read from callers and answered while exporting.
const TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");

impl Identity {
    fn of(request: &Request, route: &'static str) -> Self {
        let lambda = under_lambda();
        let headers = CallerHeaders::of(request);
        let request_id = lambda
            .then(|| request.extensions().lambda_context_ref())
            .flatten()
            .and_then(|context| HeaderValue::from_str(&context.request_id).ok())
            .or_else(|| {
                headers
                    .request_id
                    .filter(|value| value.len() <= 128 && value.to_str().is_ok())
                    .cloned()
            })
            .unwrap_or_else(new_request_id);
        let caller = caller_trace(&headers, request, lambda);
        if !telemetry::exporting() {
            return Self {
                request_id,
                caller,
                span: None,
            };
        }
        // Named for the trace viewer; these fields reach the logs only while
        // spans are exported.
        let span = tracing::info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            trace_id = tracing::field::Empty,
            otel.name = %format_args!("{} {route}", request.method()),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %request.method(),
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        );
        if let Some(caller) = caller {
            let tracestate = headers.tracestate.and_then(|value| value.to_str().ok());
            telemetry::set_remote_parent(&span, caller, tracestate);
        }
        let own = telemetry::traceparent_of(&span);
        if let Some(trace) = own.or(caller) {
            span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
        }
        Self {
            request_id,
            caller,
            span: Some((span, own)),
        }
    }

    /// Runs `limited` as this request: logs its access line and echoes the id.
    fn run<F>(self, limited: Limited<F>, line: AccessLine) -> Run<F>
    where
        F: Future<Output = Result<Response, Infallible>>,
    {
        match self.span {
            Some((span, own)) => Run::Spanned {
                logged: Logged {
                    limited,
                    line,
                    spanned: true,
                }
                .instrument(span),
                request_id: Some(self.request_id),
                own,
            },
            None => Run::Scoped {
                logged: telemetry::in_request(
                    telemetry::RequestIds {
                        request_id: self.request_id,
                        trace_id: self.caller.map(|caller| caller.trace_id),
                    },
                    Logged {
                        limited,
                        line,
                        spanned: false,
                    },
                ),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A request as [`Identity::run`] runs it: in its span while spans are
    /// exported, otherwise with its ids in the task-local the log lines read.
    #[project = RunProjection]
    enum Run<F> {
        Spanned {
            #[pin]
            logged: tracing::instrument::Instrumented<Logged<F>>,
            request_id: Option<HeaderValue>,
            own: Option<TraceParent>,
        },
        Scoped {
            #[pin]
            logged: tokio::task::futures::TaskLocalFuture<telemetry::RequestIds, Logged<F>>,
        },
    }
}

impl<F> Future for Run<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    /// The response, with its id, and how long it took.
    type Output = (Response, Duration);

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let (mut response, latency, request_id) = match self.project() {
            RunProjection::Spanned {
                logged,
                request_id,
                own,
            } => {
                let (mut response, latency) = std::task::ready!(logged.poll(cx));
                if let Some(value) =
                    own.and_then(|own| HeaderValue::from_str(&own.to_string()).ok())
                {
                    response.headers_mut().insert(TRACEPARENT, value);
                }
                (response, latency, request_id.take())
            }
            RunProjection::Scoped { mut logged } => {
                let (response, latency) = std::task::ready!(logged.as_mut().poll(cx));
                let ids = logged.take_value();
                (response, latency, ids.map(|ids| ids.request_id))
            }
        };
        if let Some(request_id) = request_id {
            response.headers_mut().insert(X_REQUEST_ID, request_id);
        }
        Poll::Ready((response, latency))
    }
}

pin_project_lite::pin_project! {
    /// The answer, then its access line (and, in a span, its status), logged
    /// inside the request.
    struct Logged<F> {
        #[pin]
        limited: Limited<F>,
        line: AccessLine,
        spanned: bool,
    }
}

impl<F> Future for Logged<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = (Response, Duration);

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.limited.poll(cx));
        let line = &*this.line;
        let latency = line.started.elapsed();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let status = response.status().as_u16();
        let (method, route) = (&line.method, line.route);
        let path = line.uri.as_ref().map(axum::http::Uri::path);
        if latency >= SLOW_REQUEST {
            tracing::info!(target: ACCESS_LOG_TARGET, %method, route, path, status, latency_us, "slow request");
        } else {
            tracing::debug!(target: ACCESS_LOG_TARGET, %method, route, path, status, latency_us, "request completed");
        }
        if *this.spanned {
            let span = tracing::Span::current();
            span.record("http.response.status_code", status);
            if response.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        Poll::Ready((response, latency))
    }
}

/// A new request id: this process's random prefix and the count of ids it
/// has made, as `5f0c39a1d2e84b76-1042` (the scheme of chi's and Echo's
/// request-id middleware). An id has to be unique, not unguessable: 64 random
/// bits keep two processes' ids apart, and the count one process's. Making a
/// random UUID and writing it out cost about 500 instructions, a sixth of the
/// edge's own work per request (BENCHMARKS.md, section 3); this costs an
/// atomic add and a few digits.
///
/// Each thread writes its ids one after another into a buffer of its own,
/// and each id is a view of that buffer: no allocation of its own to make
/// and free per request. A buffer is freed once the last id in it is.
fn new_request_id() -> HeaderValue {
    const PREFIX: usize = 17;
    const LONGEST: usize = PREFIX + 20;
    /// About a hundred ids.
    const BUFFER: usize = 4096;
    static PROCESS: OnceLock<[u8; PREFIX]> = OnceLock::new();
    static MADE: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static WRITTEN: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::default();
    }
    let prefix = PROCESS.get_or_init(|| {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        // The version and variant bits, fixed in each half, are at different
        // places in the two, so every bit of their xor is random.
        let mut prefix = [b'-'; PREFIX];
        prefix[..16].copy_from_slice(format!("{:016x}", high ^ low).as_bytes());
        prefix
    });
    let mut count = itoa::Buffer::new();
    let count = count.format(MADE.fetch_add(1, Ordering::Relaxed));
    let text = WRITTEN.with_borrow_mut(|written| {
        if written.capacity() < LONGEST {
            *written = bytes::BytesMut::with_capacity(BUFFER);
        }
        written.extend_from_slice(prefix);
        written.extend_from_slice(count.as_bytes());
        written.split().freeze()
    });
    // SAFETY: lowercase hex digits, a hyphen and decimal digits, all visible
    // ASCII, which is what a header value may hold.
    unsafe { HeaderValue::from_maybe_shared_unchecked(text) }
}

pin_project_lite::pin_project! {
    /// Step 3 of the edge ([`App`]): the route's response, unless the in-flight limit
    /// refused the request or its time runs out (503 either way).
    #[project = LimitedProjection]
    enum Limited<F> {
        Refused,
        Running {
            #[pin]
            deadline: Deadline<F>,
            _place: InFlight,
        },
    }
}

impl<F> Future for Limited<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Response;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Response> {
        let refusal = match self.project() {
            LimitedProjection::Refused => "too many requests in flight; try again shortly",
            LimitedProjection::Running { deadline, .. } => {
                match std::task::ready!(deadline.poll(cx)) {
                    Ok(Ok(response)) => return Poll::Ready(response),
                    Ok(Err(never)) => match never {},
                    Err(TimedOut) => "the request took too long; try again shortly",
                }
            }
        };
        Poll::Ready(ApiError::Unavailable(refusal.into()).into_response())
    }
}

/// A request that ran out of time.
struct TimedOut;

pin_project_lite::pin_project! {
    /// `inner`, unless `at` passes first. As `tokio::time::timeout`, but the
    /// timer is made only once `inner` has to wait: most requests of a cheap
    /// route never do, and making and dropping a timer costs more than they.
    /// It is boxed, so that the futures that hold it stay small to move.
    struct Deadline<F> {
        #[pin]
        inner: F,
        at: Instant,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let at = *this.at;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One of the `max_in_flight` places, held while a request runs.
struct InFlight(Arc<EdgeLimits>);

impl InFlight {
    fn enter(limits: &Arc<EdgeLimits>) -> Option<Self> {
        if limits.in_flight.fetch_add(1, Ordering::AcqRel) < limits.max_in_flight {
            Some(Self(Arc::clone(limits)))
        } else {
            limits.in_flight.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The headers the edge reads of a request, found in one pass over them:
/// each `HeaderMap::get` hashes its name, which costs more than looking at
/// every header of a usual request.
#[derive(Default)]
struct CallerHeaders<'a> {
    request_id: Option<&'a HeaderValue>,
    traceparent: Option<&'a HeaderValue>,
    tracestate: Option<&'a HeaderValue>,
    xray: Option<&'a HeaderValue>,
}

/// The header API Gateway passes X-Ray's trace id in.
const X_AMZN_TRACE_ID: header::HeaderName = header::HeaderName::from_static("x-amzn-trace-id");
/// The W3C trace context's vendor data, read from callers while exporting.
const TRACESTATE: header::HeaderName = header::HeaderName::from_static("tracestate");

impl<'a> CallerHeaders<'a> {
    /// The first value of each.
    fn of(request: &'a Request) -> Self {
        let mut found = Self::default();
        for (name, value) in request.headers() {
            let slot = if name == X_REQUEST_ID {
                &mut found.request_id
            } else if name == TRACEPARENT {
                &mut found.traceparent
            } else if name == TRACESTATE {
                &mut found.tracestate
            } else if name == X_AMZN_TRACE_ID {
                &mut found.xray
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// The caller's span, if the request names one: its W3C `traceparent`; else,
/// `under_lambda`, the invocation's X-Ray trace id (Lambda's own segment, also
/// in `_X_AMZN_TRACE_ID`), or the `X-Amzn-Trace-Id` header API Gateway passes on.
fn caller_trace(
    headers: &CallerHeaders,
    request: &Request,
    under_lambda: bool,
) -> Option<TraceParent> {
    if let Some(value) = headers.traceparent {
        return value.to_str().ok().and_then(TraceParent::parse);
    }
    if !under_lambda {
        return None;
    }
    request
        .extensions()
        .lambda_context_ref()
        .and_then(|context| context.xray_trace_id.as_deref())
        .and_then(TraceParent::from_xray)
        .or_else(|| {
            headers
                .xray
                .and_then(|value| value.to_str().ok())
                .and_then(TraceParent::from_xray)
        })
}

/// Exports the spans of each invocation before returning its response: Lambda
/// freezes the instance once it has the response.
async fn flush_traces(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    telemetry::flush().await;
    response
}

/// Whether this process can serve: MongoDB answers. Checked at most once per
/// [`Readiness::CACHE`], so probes cost the database almost nothing.
pub struct Readiness {
    store: Store,
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    pub const CACHE: Duration = Duration::from_secs(1);

    pub fn new(store: Store) -> Self {
        Self {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn ready(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < Self::CACHE
        {
            return ready;
        }
        let ready = match self.store.ping().await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "not ready");
                false
            }
        };
        *last = Some((Instant::now(), ready));
        ready
    }

    async fn answer(self: Arc<Self>) -> Response {
        if self.ready().await {
            axum::Json(json!({ "status": "ready" })).into_response()
        } else {
            ApiError::Unavailable("the database is unavailable".into()).into_response()
        }
    }
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on port {port}")]
    Bind { port: u16, source: std::io::Error },
    #[error("Lambda runtime failed: {0}")]
    Lambda(lambda_http::Error),
}

/// Serves `routes` under the Lambda runtime when `AWS_LAMBDA_RUNTIME_API` is
/// set; otherwise as a plain HTTP server on `port` with `GET /healthz`
/// (liveness: the process answers) and `GET /readyz` (readiness: MongoDB
/// answers too), until SIGTERM or Ctrl-C, letting in-flight requests finish.
pub async fn serve(
    routes: Routes,
    port: u16,
    limits: &HttpLimits,
    readiness: Arc<Readiness>,
) -> Result<(), ServeError> {
    if under_lambda() {
        let app = app(routes, limits);
        let served = if telemetry::exporting() {
            let app = tower::ServiceBuilder::new()
                .map_request(|request: lambda_http::Request| request.map(axum::body::Body::new))
                .layer(middleware::from_fn(flush_traces))
                .service(app);
            lambda_http::run(app).await
        } else {
            lambda_http::run(app).await
        };
        return served.map_err(ServeError::Lambda);
    }
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| ServeError::Bind { port, source })?;
    tracing::info!(
        port = listener.local_addr().map_or(port, |a| a.port()),
        "listening"
    );
    // The probes stay outside the limits: an overloaded process is alive.
    let probes = Routes::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(move || readiness.clone().answer()));
    let app = App::new(routes, Some(probes), limits);
    crate::server::run(listener, app, limits, shutdown_signal()).await;
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes, Lambda) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_in_flight_places_are_held_at_once() {
        let limits = Arc::new(EdgeLimits {
            in_flight: AtomicUsize::new(0),
            max_in_flight: 2,
            timeout: Duration::from_secs(1),
        });
        let first = InFlight::enter(&limits).expect("a first place");
        let second = InFlight::enter(&limits).expect("a second place");
        assert!(InFlight::enter(&limits).is_none());
        assert!(
            InFlight::enter(&limits).is_none(),
            "a refusal holds no place"
        );
        drop(first);
        let third = InFlight::enter(&limits).expect("a place left by the first");
        drop((second, third));
        assert_eq!(limits.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn new_request_ids_share_the_process_prefix_and_never_repeat() {
        let ids: Vec<String> = (0..1000)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        let (prefix, _) = ids[0].split_once('-').unwrap();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.bytes().all(|byte| byte.is_ascii_hexdigit()));
        let mut counts = std::collections::HashSet::new();
        for id in &ids {
            let (its_prefix, count) = id.split_once('-').unwrap();
            assert_eq!(its_prefix, prefix, "{id}");
            assert!(counts.insert(count.parse::<u64>().unwrap()), "{id} repeats");
        }
    }

    #[test]
    fn a_request_is_counted_under_the_template_its_path_matches() {
        let handler = || get(|| async { "ok" });
        let routes = Routes::new()
            .route("/users/{id}", handler())
            .route("/users/me", handler())
            .route("/status", handler());
        let app = app(routes, &HttpLimits::default());
        let name = |path| app.edge.names[app.edge.route(path)];
        assert_eq!(name("/status"), "/status");
        assert_eq!(name("/users/me"), "/users/me");
        assert_eq!(name("/users/7"), "/users/{id}");
        assert_eq!(name("/users/{id}"), "/users/{id}");
        assert_eq!(name("/status/"), metrics::UNMATCHED_ROUTE);
        assert_eq!(name("/users"), metrics::UNMATCHED_ROUTE);
    }

    #[test]
    fn a_deadline_makes_no_timer_for_a_ready_answer() {
        let mut deadline = std::pin::pin!(Deadline {
            inner: std::future::ready(7),
            at: Instant::now(),
            timer: None,
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            deadline.as_mut().poll(&mut cx),
            Poll::Ready(Ok(7))
        ));
        assert!(deadline.timer.is_none());
    }

    #[tokio::test]
    async fn a_deadline_ends_a_waiting_answer_when_it_passes() {
        let started = Instant::now();
        let answer = Deadline {
            inner: std::future::pending::<()>(),
            at: started + Duration::from_millis(20),
            timer: None,
        }
        .await;
        assert!(matches!(answer, Err(TimedOut)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn every_client_error_maps_to_a_4xx_and_internal_to_a_500() {
        let cases = [
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (ApiError::Unauthorized("x".into()), 401, "unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "forbidden"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (ApiError::Validation("x".into()), 422, "validation_error"),
            (
                ApiError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
            ),
            (
                ApiError::IdempotencyKeyInProgress,
                409,
                "idempotency_key_in_progress",
            ),
            (
                ApiError::TooManyRequests {
                    message: "x".into(),
                    retry_after: 3,
                },
                429,
                "too_many_requests",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!((err.status().as_u16(), err.code()), (status, code));
        }
    }

    #[test]
    fn the_client_is_the_entry_the_trusted_proxies_appended() {
        let peer: Option<IpAddr> = Some("10.0.0.9".parse().unwrap());
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        // No trusted proxy: the header is the client's own claim, ignored.
        assert_eq!(client_address(&["6.6.6.6"], 0, peer), peer);
        // Behind the ingress: a forged first entry is skipped.
        let chain = ["6.6.6.6", " 203.0.113.7"];
        assert_eq!(client_address(&chain, 1, peer), ip("203.0.113.7"));
        assert_eq!(client_address(&chain, 2, peer), ip("6.6.6.6"));
        assert_eq!(client_address(&chain, 5, peer), ip("6.6.6.6"));
        assert_eq!(client_address(&["2001:db8::1"], 1, peer), ip("2001:db8::1"));
        assert_eq!(client_address(&["not-an-ip"], 1, peer), peer);
        assert_eq!(client_address(&[], 1, peer), peer);
    }

    #[test]
    fn the_callers_span_is_its_traceparent_else_under_lambda_the_invocations_xray_id() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let invocation =
            "Root=1-6759e988-bd862e3fe1be46a994272793;Parent=63995c3f42cd8ad8;Sampled=1";
        let request = |headers: &[(&'static str, &str)], context: Option<&str>| {
            let mut request = Request::new(axum::body::Body::empty());
            for (name, value) in headers {
                request
                    .headers_mut()
                    .insert(*name, HeaderValue::from_str(value).unwrap());
            }
            if let Some(id) = context {
                let mut context = lambda_http::Context::default();
                context.xray_trace_id = Some(id.to_owned());
                request.extensions_mut().insert(context);
            }
            request
        };
        let trace_id = |request: &Request, lambda| {
            caller_trace(&CallerHeaders::of(request), request, lambda)
                .map(|parent| parent.trace_id_hex())
        };
        let both = request(
            &[("traceparent", traceparent), ("x-amzn-trace-id", xray)],
            Some(invocation),
        );
        assert_eq!(
            trace_id(&both, true).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let xray_only = request(&[("x-amzn-trace-id", xray)], Some(invocation));
        assert_eq!(
            trace_id(&xray_only, true).as_deref(),
            Some("6759e988bd862e3fe1be46a994272793")
        );
        let header_only = request(&[("x-amzn-trace-id", xray)], None);
        assert_eq!(
            trace_id(&header_only, true).as_deref(),
            Some("5759e988bd862e3fe1be46a994272793")
        );
        // Outside Lambda an X-Ray header names no parent; a bad traceparent none either.
        assert_eq!(trace_id(&header_only, false), None);
        assert_eq!(
            trace_id(
                &request(&[("traceparent", "00-nonsense")], Some(invocation)),
                true
            ),
            None
        );
    }

    #[tokio::test]
    async fn an_error_renders_as_the_json_shape_with_a_bearer_challenge_on_401() {
        let response = ApiError::from(TokenError::Expired).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({
                "error": "unauthorized",
                "message": "token has expired",
                "detail": "token has expired"
            })
        );
    }

    #[tokio::test]
    async fn an_internal_error_never_shows_its_cause() {
        let cause = bcrypt::BcryptError::CostNotAllowed(99);
        let response = ApiError::from(PasswordError::from(cause)).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({
                "error": "internal_error",
                "message": "internal error",
                "detail": "internal error"
            })
        );
    }
}
