//! Ports and listeners for the services tests start on 127.0.0.1.

use std::{
    net::{Ipv4Addr, TcpListener},
    sync::{Arc, Mutex, MutexGuard},
};

use axum::Router;

/// A port that was free a moment ago, for servers that must be told their port
/// on the command line (in-process servers bind port 0 instead).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free port on 127.0.0.1")
}

/// An in-process HTTP server on a fresh port of 127.0.0.1 whose handlers share
/// state `S` with the test (behind one mutex); stops when dropped.
pub(crate) struct StatefulServer<S> {
    url: String,
    state: Arc<Mutex<S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Send + 'static> StatefulServer<S> {
    pub(crate) async fn start(state: S, router: Router<Arc<Mutex<S>>>) -> Self {
        let state = Arc::new(Mutex::new(state));
        let router = router.with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("test server failed");
        });
        Self {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Base URL, for example `http://127.0.0.1:41234`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().expect("test server state lock")
    }
}

impl<S> Drop for StatefulServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
