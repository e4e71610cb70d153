//! The `sluice-controller` binary starts against a kubeconfig: it serves its
//! probes and metrics, takes the leader Lease through the API server the
//! kubeconfig names (a local recording HTTP server here), starts watching
//! StreamPipelines, and exits cleanly on SIGTERM.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::eventually;
use axum::{
    Router,
    body::Bytes,
    http::{Method, StatusCode, Uri},
    response::IntoResponse,
};

/// Answers like an API server with no Lease yet: GET → 404, POST → 201 echoing
/// the object; everything else 404. Records "METHOD path".
async fn api_server(
    requests: Arc<Mutex<Vec<String>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> impl IntoResponse {
    requests
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    let json = [("content-type", "application/json")];
    if method == Method::POST {
        return (StatusCode::CREATED, json, body.to_vec());
    }
    let not_found = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"
    });
    (
        StatusCode::NOT_FOUND,
        json,
        not_found.to_string().into_bytes(),
    )
}

/// Kills the controller if the test fails before it exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn binary_starts_against_a_kubeconfig_and_leads() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_address = listener.local_addr().unwrap();
    let recorded = requests.clone();
    let router = Router::new()
        .fallback(move |method, uri, body| api_server(recorded.clone(), method, uri, body));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: 'http://{api_address}'}}}}]\n\
             users: [{{name: test, user: {{token: test-token}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test, namespace: default}}}}]\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    let http_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut controller = Running(
        Command::new(env!("CARGO_BIN_EXE_sluice-controller"))
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("SLUICE_LOG_FORMAT", "text")
            .env("POD_NAMESPACE", "sluice-system")
            .env("POD_NAME", "controller-0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice-controller"),
    );

    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("http://127.0.0.1:{http_port}{path}");
        eventually(Duration::from_secs(60), path, || async {
            let response = http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }
    let seen = |needle: &'static str| {
        let requests = requests.clone();
        move || {
            let found = requests.lock().unwrap().iter().any(|r| r == needle);
            async move { found.then_some(()) }
        }
    };
    eventually(
        Duration::from_secs(60),
        "the Lease to be created",
        seen("POST /apis/coordination.k8s.io/v1/namespaces/sluice-system/leases"),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the leader to list StreamPipelines",
        seen("GET /apis/sluice.dev/v1alpha1/streampipelines"),
    )
    .await;

    let pid = controller.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = eventually(Duration::from_secs(60), "exit after SIGTERM", || {
        let status = controller.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(exit.success(), "exit status {exit}");
}
