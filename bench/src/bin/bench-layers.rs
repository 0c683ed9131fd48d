//! The framework floor taken apart: `bench-hello`'s `GET /healthz` with one
//! variant of the per-request middleware each, so `scripts/bench-layers.sh`
//! can count what every piece costs in instructions per request (callgrind),
//! a figure that does not drift with the machine's load as req/s does.
//!
//! `bench-layers VARIANT`, listening on `PORT` (default 8080), logging as the
//! functions do (`RUST_LOG`, default `info`):
//! - `bare`: no middleware (the same server as `bench-hello`)
//! - `shared`: the functions' own `finapp_shared::http::app`
//! - `function`: a function's whole stack: the Prometheus recorder,
//!   `http::app`, the functions' accept loop, and tracing as the environment
//!   sets it (`OTEL_EXPORTER_OTLP_ENDPOINT`); the bench's framework figure
//! - `from-fn`: axum's `from_fn` with a middleware that only calls the next
//! - `request-id`: `from_fn` with the request id and its response header, no span
//! - `tower-http`: the id and span from tower-http's `SetRequestId`,
//!   `TraceLayer` and `PropagateRequestId`, which need no boxing per request
//! - `shared-traced`: `shared` with spans exported over OTLP, as with
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` set, to `BENCH_OTLP_ENDPOINT` (the script's
//!   sink; by default a closed port, where each failed send is retried)

use axum::{
    Router, ServiceExt,
    extract::Request,
    http::HeaderValue,
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use finapp_shared::http::Routes;
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};

fn hello() -> Routes {
    Routes::new().route(
        "/healthz",
        get(|| async { axum::Json(json!({ "status": "ok" })) }),
    )
}

fn new_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

async fn pass_through(request: Request, next: Next) -> Response {
    next.run(request).await
}

async fn request_id_only(request: Request, next: Next) -> Response {
    let id = new_request_id();
    let mut response = next.run(request).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

#[derive(Clone)]
struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

fn with_tower_http(routes: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!(
                "request",
                request_id = %id,
                method = %request.method(),
                path = %request.uri().path(),
            )
        })
        .on_request(())
        .on_failure(());
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(UuidRequestId))
            .layer(trace)
            .layer(PropagateRequestIdLayer::x_request_id()),
    )
}

/// The bounds of the HTTP edge alone, as `http::app` stacks them: a 503 for
/// what is shed or times out, the load shed, the global in-flight limit and
/// the request timeout.
fn with_limits(routes: Router) -> Router {
    let limits = finapp_shared::config::HttpLimits::default();
    routes.layer(
        ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                |_: tower::BoxError| async { axum::http::StatusCode::SERVICE_UNAVAILABLE },
            ))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_in_flight,
            ))
            .timeout(limits.request_timeout),
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let variant = std::env::args().nth(1).unwrap_or_default();
    let limits = Default::default();
    // Variants served by `axum::serve` as a `Router`, or the functions' own
    // `http::app`, and in which server.
    enum Served {
        Router(Router),
        App(finapp_shared::http::App),
        InAcceptLoop(finapp_shared::http::App),
    }
    let served = match variant.as_str() {
        "bare" => Served::Router(hello().into_router()),
        "from-fn" => Served::Router(
            hello()
                .into_router()
                .layer(middleware::from_fn(pass_through)),
        ),
        "request-id" => Served::Router(
            hello()
                .into_router()
                .layer(middleware::from_fn(request_id_only)),
        ),
        "tower-http" => Served::Router(with_tower_http(hello().into_router())),
        "limits" => Served::Router(with_limits(hello().into_router())),
        "shared" => Served::App(finapp_shared::http::app(hello(), &limits)),
        // As `shared`, with the Prometheus recorder installed, as every
        // function's `main` does: the metrics are recorded, not only counted
        // against no recorder.
        "shared-metrics" => {
            finapp_shared::metrics::start("bench-layers", None)
                .await
                .expect("the recorder installs");
            Served::App(finapp_shared::http::app(hello(), &limits))
        }
        "shared-server" | "shared-traced" => {
            Served::InAcceptLoop(finapp_shared::http::app(hello(), &limits))
        }
        // A function's whole stack around the hello handler: the Prometheus
        // recorder, `http::app`, the functions' accept loop, and tracing as
        // the environment configures it (the bench's framework scenario).
        "function" => {
            finapp_shared::metrics::start("bench-layers", None)
                .await
                .expect("the recorder installs");
            Served::InAcceptLoop(finapp_shared::http::app(hello(), &limits))
        }
        other => {
            eprintln!(
                "unknown variant {other:?}: bare, function, shared, shared-metrics, shared-server, shared-traced, from-fn, request-id, limits, tower-http"
            );
            std::process::exit(2);
        }
    };
    let otlp_endpoint = (variant == "shared-traced").then(|| {
        std::env::var("BENCH_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9".to_owned())
    });
    finapp_shared::telemetry::init_from("bench-layers", |name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" if variant != "function" => otlp_endpoint.clone(),
        _ => std::env::var(name).ok(),
    });
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // Stopped by SIGTERM: valgrind still writes its counts for a process a
    // signal ends.
    match served {
        Served::Router(router) => axum::serve(listener, router).await,
        Served::App(app) => {
            axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await
        }
        // The functions' own accept loop (header-read timeout, connection cap).
        Served::InAcceptLoop(app) => {
            finapp_shared::server::run(listener, app, &limits, std::future::pending()).await;
            Ok(())
        }
    }
}
