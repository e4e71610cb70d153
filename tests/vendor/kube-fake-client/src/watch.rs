//! PROTOTYPE: adds `?watch=true` streaming to the fake by wrapping MockService.
//! Mutations (POST/PUT/PATCH/DELETE) that succeed are recorded as watch events (ADDED/MODIFIED/DELETED)
//! with the object's resourceVersion; watches replay history newer than the requested resourceVersion,
//! then stream live events. List responses get the current max resourceVersion.
//! Gaps: cascade-deleted dependents emit no DELETED event; label selector = simple `k=v[,k=v]` only; no bookmarks.
use std::{collections::HashMap, sync::{Arc, Mutex}, task::{Context, Poll}, time::Duration};
use bytes::Bytes;
use futures::{future::BoxFuture, FutureExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use kube::client::Body as KubeBody;
use serde_json::Value;
use tokio::sync::broadcast;
use tower::Service;

use crate::mock_service::MockService;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
struct Ev { coll: String, ns: Option<String>, rv: u64, json: Value }

#[derive(Clone)]
pub struct WatchingService {
    inner: MockService,
    tx: broadcast::Sender<Ev>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State { history: Vec<Ev>, known: HashMap<(String, Option<String>, String), u64>, max_rv: u64 }

/// Split a request path into (collection key without namespace, namespace, name).
fn split(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let gv_len = match p.first()? { &"api" => 2, &"apis" => 3, _ => return None };
    if p.len() <= gv_len { return None; }
    let prefix = p[..gv_len].join("/");
    let rest = &p[gv_len..];
    let (ns, rest) = if rest[0] == "namespaces" && rest.len() >= 3 { (Some(rest[1].to_string()), &rest[2..]) } else { (None, rest) };
    Some((format!("/{prefix}/{}", rest[0]), ns, rest.get(1).map(|s| s.to_string())))
}

fn labels_match(obj: &Value, sel: &str) -> bool {
    sel.split(',').filter(|s| !s.is_empty()).all(|kv| match kv.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('=')),
        None => obj["metadata"]["labels"].get(kv).is_some(),
    })
}

impl WatchingService {
    pub fn new(inner: MockService) -> Self {
        Self { inner, tx: broadcast::channel(4096).0, state: Arc::default() }
    }

    fn record(&self, method: &http::Method, path: &str, obj: &Value) {
        let Some((coll, ns, _)) = split(path) else { return };
        if obj.get("kind").and_then(Value::as_str) == Some("Status") || obj.get("metadata").is_none() { return; }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = ns.or_else(|| obj["metadata"]["namespace"].as_str().map(String::from));
        let rv: u64 = obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut st = self.state.lock().unwrap();
        let key = (coll.clone(), ns.clone(), name);
        let ty = if *method == http::Method::DELETE { st.known.remove(&key); "DELETED" }
                 else { match st.known.insert(key, rv) { None => "ADDED", Some(old) if old == rv => return, Some(_) => "MODIFIED" } };
        st.max_rv = st.max_rv.max(rv);
        let ev = Ev { coll, ns, rv: st.max_rv, json: serde_json::json!({"type": ty, "object": obj}) };
        st.history.push(ev.clone());
        let _ = self.tx.send(ev);
    }

    fn watch(&self, path: &str, query: &str) -> Response<BoxBody<Bytes, BoxError>> {
        let (coll, ns, _) = split(path).unwrap_or_default();
        let q: std::collections::HashMap<String, String> = query.split('&').filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), urlencoding::decode(v).map(|c| c.into_owned()).unwrap_or_default())).collect();
        let from: u64 = q.get("resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0);
        let sel = q.get("labelSelector").cloned().unwrap_or_default();
        let timeout = q.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(290u64);
        let rx = self.tx.subscribe();
        let backlog: Vec<Ev> = self.state.lock().unwrap().history.iter().filter(|e| e.rv > from).cloned().collect();
        let last = backlog.last().map(|e| e.rv).unwrap_or(from);
        let live = tokio_stream_from(rx).filter(move |e| futures::future::ready(e.rv > last));
        let (c2, ns2) = (coll.clone(), ns.clone());
        let stream = futures::stream::iter(backlog).chain(live)
            .filter(move |e| futures::future::ready(e.coll == c2 && (ns2.is_none() || e.ns == ns2) && labels_match(&e.json["object"], &sel)))
            .map(|e| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(format!("{}\n", e.json)))))
            .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
        Response::builder().status(StatusCode::OK).header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
    }
}

fn tokio_stream_from(rx: broadcast::Receiver<Ev>) -> impl futures::Stream<Item = Ev> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

impl Service<Request<KubeBody>> for WatchingService {
    type Response = Response<BoxBody<Bytes, BoxError>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> { Poll::Ready(Ok(())) }
    fn call(&mut self, req: Request<KubeBody>) -> Self::Future {
        let mut this = self.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let is_watch = method == http::Method::GET && query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
            if is_watch { return Ok(this.watch(&path, &query)); }
            let resp = this.inner.call(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| Box::new(e) as BoxError)?.to_bytes();
            let mut bytes = bytes;
            if parts.status.is_success() {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
                    if method == http::Method::GET && v.get("items").is_some() {
                        let rv = this.state.lock().unwrap().max_rv;
                        v["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                        bytes = Bytes::from(v.to_string());
                    } else if method != http::Method::GET {
                        this.record(&method, &path, &v);
                    }
                }
            }
            Ok(Response::from_parts(parts, BodyExt::boxed(Full::new(bytes).map_err(|e| match e {}))))
        }.boxed()
    }
}
