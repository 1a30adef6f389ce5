//! The HTTP listener every process runs: `/status` (JSON), `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (connected to its cluster and broker).
//! `/status` and `/metrics` require `Authorization: Bearer <http.bearer_token>` when set.

mod config;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub use config::HttpConfig;

use crate::metrics as m;
use crate::status::StatusBoard;

#[derive(Clone)]
struct AppState {
    board: StatusBoard,
    prometheus: PrometheusHandle,
    token: Option<Arc<str>>,
}

/// Installs the process-wide Prometheus recorder once (histograms as real buckets).
pub fn prometheus() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(m::SINK_WRITE_SECONDS.into()), &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])?
        .set_buckets_for_metric(Matcher::Full(m::SINK_BATCH_SIZE.into()), &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0])?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Binds `config.listen` and serves until `shutdown`. Returns the bound address (the
/// port may have been 0) once listening.
pub async fn start(config: &HttpConfig, board: StatusBoard, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let state = AppState {
        board,
        prometheus: prometheus()?,
        token: config.bearer_token.as_deref().map(Arc::from),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.addr())
        .await
        .with_context(|| format!("cannot listen on {} (http.listen): is another process using it?", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!("status listening on http://{addr}/status");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::warn!("status listener stopped: {e}");
        }
    });
    Ok(addr)
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    match &state.token {
        None => true,
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token.as_ref()),
    }
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
    }
    Json(state.board.report()).into_response()
}

async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.prometheus.render()).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.board.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = state.board.unreachable();
        let body = if why.is_empty() { "not ready\n".to_string() } else { format!("not ready: {}\n", why.join(", ")) };
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
