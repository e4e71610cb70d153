//! Ports and listeners for the services tests start on 127.0.0.1.

use std::net::{Ipv4Addr, TcpListener};

/// A port that was free a moment ago, for servers that must be told their port
/// on the command line (in-process servers bind port 0 instead).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free port on 127.0.0.1")
}

/// Serves `router` on a fresh port of 127.0.0.1 until the returned guard is
/// dropped; returns the base URL.
pub(crate) async fn serve(router: axum::Router) -> (String, ServerGuard) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("test server failed");
    });
    (format!("http://{addr}"), ServerGuard(task))
}

/// Stops an in-process server when dropped.
pub(crate) struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
