//! HTTP endpoints: Prometheus `/metrics`, `/health` (liveness) and `/ready`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::Broker;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(health))
        .with_state(broker)
}

async fn metrics(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        b.metrics.encode(),
    )
}

/// 200 with a JSON summary while every partition accepts writes; 503 if any is poisoned.
async fn health(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let parts = b.topics.all_partitions();
    let poisoned: Vec<String> = parts
        .iter()
        .filter(|p| p.committed().poisoned)
        .map(|p| format!("{}-{}", p.topic, p.index))
        .collect();
    let status = if poisoned.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if poisoned.is_empty() { "ok" } else { "degraded" },
        "node_id": b.config.node_id,
        "uptime_s": b.started.elapsed().as_secs(),
        "topics": b.topics.list().len(),
        "partitions": parts.len(),
        "poisoned_partitions": poisoned,
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// Serves the HTTP endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let r = axum::serve(listener, router(broker))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "http server stopped");
    }
}
