//! The link's control endpoint, for scripts and tests: `GET /stats` (state, bytes per
//! direction, connections), `POST /cut/reset`, `POST /cut/blackhole`, `POST /restore`,
//! and `POST /shape?delay_ms=&jitter_ms=&rate_mbit=` (both directions; an absent
//! `rate_mbit` lifts the cap).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as Shared};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{Link, Shape, Shapes, State, Stats};

/// Serves the control endpoint on `listen` until the process ends.
pub async fn serve(link: Arc<Link>, listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/cut/reset", post(|s| set(s, State::Reset)))
        .route("/cut/blackhole", post(|s| set(s, State::Blackhole)))
        .route("/restore", post(|s| set(s, State::Up)))
        .route("/shape", post(shape))
        .with_state(link);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn stats(Shared(link): Shared<Arc<Link>>) -> Json<Stats> {
    Json(link.stats())
}

async fn set(Shared(link): Shared<Arc<Link>>, state: State) -> Json<Stats> {
    link.set_state(state);
    Json(link.stats())
}

async fn shape(Shared(link): Shared<Arc<Link>>, Query(q): Query<HashMap<String, f64>>) -> Json<Stats> {
    let ms = |key: &str| Duration::from_secs_f64(q.get(key).copied().unwrap_or(0.0).max(0.0) / 1000.0);
    let one = Shape { delay: ms("delay_ms"), jitter: ms("jitter_ms"), rate_bits: q.get("rate_mbit").map(|m| (m * 1_000_000.0) as u64) };
    link.set_shapes(Shapes { up: one, down: one });
    Json(link.stats())
}
