//! The runner's HTTP endpoints: `/healthz` (the process answers), `/readyz`
//! (checkpoint restored, source and sinks open), `/metrics` (Prometheus) and
//! `/status` ([`sluice_crds::RunnerStatus`] as JSON, read by the controller).

use std::{net::SocketAddr, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::telemetry::Telemetry;

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(t): State<Arc<Telemetry>>| async move {
                let status = t.status();
                if status.ready {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    let why = status.error.unwrap_or_else(|| "starting".into());
                    (StatusCode::SERVICE_UNAVAILABLE, why)
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(t): State<Arc<Telemetry>>| async move {
                ([("content-type", "text/plain; version=0.0.4")], t.render())
            }),
        )
        .route(
            "/status",
            get(|State(t): State<Arc<Telemetry>>| async move { Json(t.status()) }),
        )
        .with_state(telemetry)
}

/// Binds `address` and serves in the background; returns the bound address
/// (useful with port 0).
pub async fn serve(address: SocketAddr, telemetry: Arc<Telemetry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = router(telemetry);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });
    Ok(bound)
}
