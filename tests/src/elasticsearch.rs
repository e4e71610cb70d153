//! An in-process stand-in for Elasticsearch's `_bulk` API, for the faults a
//! real server cannot be made to show (tests that need real semantics use
//! [`crate::opensearch`]). It checks the protocol strictly — `POST /_bulk` or
//! `POST /<index>/_bulk`, `Content-Type: application/x-ndjson`, newline-terminated
//! body, an action line (`index`, `create`, `update` or `delete`) naming `_id` and
//! `_index` (or the URL's index) followed by a source line where the action needs
//! one — and refuses violations with a 400 like Elasticsearch's. Documents are
//! stored by (index, id), so a replay overwrites. Per-item failures can be
//! scripted per document id (429 and 503 refusals), whole requests can be
//! failed, and every request's headers and ids are kept for the test.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Map, Value, json};

use crate::net::StatefulServer;

/// A per-item error answered for one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemFailure {
    /// 429 `es_rejected_execution_exception`: the node is overloaded; retry.
    Rejected,
    /// 503 `unavailable_shards_exception`: the shard is not ready; retry.
    Unavailable,
}

impl ItemFailure {
    fn status(self) -> u16 {
        match self {
            Self::Rejected => 429,
            Self::Unavailable => 503,
        }
    }

    fn error(self, index: &str) -> Value {
        let (kind, reason) = match self {
            Self::Rejected => (
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation [queue capacity reached]".to_owned(),
            ),
            Self::Unavailable => (
                "unavailable_shards_exception",
                format!("[{index}][0] primary shard is not active"),
            ),
        };
        json!({"type": kind, "reason": reason, "index": index})
    }
}

/// One stored document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The source as sent.
    pub source: Value,
    /// 1 when created, incremented by every overwrite.
    pub version: u64,
}

/// One `_bulk` request as the server saw it.
#[derive(Clone, Debug)]
pub struct BulkRequest {
    /// Number of actions in it (0 when it broke the protocol).
    pub actions: usize,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Why the request was refused as malformed, if it was.
    pub protocol_error: Option<String>,
    /// Document ids in the request, in order.
    pub ids: Vec<String>,
}

#[derive(Default)]
struct EsState {
    documents: BTreeMap<(String, String), Document>,
    item_failures: HashMap<String, VecDeque<ItemFailure>>,
    request_failures: VecDeque<u16>,
    requests: Vec<BulkRequest>,
}

/// The running server; stops when dropped.
pub struct Elasticsearch {
    server: StatefulServer<EsState>,
}

impl Elasticsearch {
    /// Starts an empty server on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let router = Router::new()
            .route("/", get(cluster_info))
            .route("/_bulk", post(bulk_without_index))
            .route("/{index}/_bulk", post(bulk_with_index));
        Self {
            server: StatefulServer::start(EsState::default(), router).await,
        }
    }

    /// Base URL, for example `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The next `times` actions on document `id` fail with `failure`
    /// (`usize::MAX`: always).
    pub fn fail_item(&self, id: &str, failure: ItemFailure, times: usize) {
        let mut state = self.lock();
        let queue = state.item_failures.entry(id.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(failure, times.min(1_000_000)));
    }

    /// The next whole `_bulk` request is answered with `status` (for example 503).
    pub fn fail_next_request(&self, status: u16) {
        self.lock().request_failures.push_back(status);
    }

    /// Stored documents of `index`, by id.
    pub fn documents(&self, index: &str) -> BTreeMap<String, Document> {
        self.lock()
            .documents
            .iter()
            .filter(|((i, _), _)| i == index)
            .map(|((_, id), doc)| (id.clone(), doc.clone()))
            .collect()
    }

    /// Every `_bulk` request so far.
    pub fn requests(&self) -> Vec<BulkRequest> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, EsState> {
        self.server.lock()
    }
}

async fn cluster_info() -> Json<Value> {
    Json(json!({
        "name": "sluice-test",
        "cluster_name": "sluice-test",
        "version": {"number": "8.15.0"},
        "tagline": "You Know, for Search"
    }))
}

async fn bulk_without_index(
    State(state): State<Arc<Mutex<EsState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(&state, None, &headers, &body)
}

async fn bulk_with_index(
    State(state): State<Arc<Mutex<EsState>>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(&state, Some(&index), &headers, &body)
}

/// One parsed action of a bulk body.
struct Action {
    kind: String,
    index: String,
    id: String,
    source: Option<Value>,
}

fn bulk(
    state: &Mutex<EsState>,
    url_index: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut state = state.lock().expect("Elasticsearch state lock");
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let parsed = check_content_type(headers).and_then(|()| parse_bulk(url_index, body));
    let actions = match parsed {
        Ok(actions) => actions,
        Err(reason) => {
            state.requests.push(BulkRequest {
                actions: 0,
                authorization,
                protocol_error: Some(reason.clone()),
                ids: Vec::new(),
            });
            let error = json!({"type": "illegal_argument_exception", "reason": reason});
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"root_cause": [error.clone()], "type": error["type"], "reason": error["reason"]}, "status": 400})),
            )
                .into_response();
        }
    };
    state.requests.push(BulkRequest {
        actions: actions.len(),
        authorization,
        protocol_error: None,
        ids: actions.iter().map(|a| a.id.clone()).collect(),
    });
    if let Some(status) = state.request_failures.pop_front() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let reason = format!("scripted failure {status}");
        return (
            status,
            Json(json!({"error": {"type": "cluster_block_exception", "reason": reason}, "status": status.as_u16()})),
        )
            .into_response();
    }
    let items: Vec<Value> = actions
        .into_iter()
        .map(|action| state.apply(action))
        .collect();
    let errors = items.iter().any(|item| {
        item.as_object()
            .and_then(|o| o.values().next())
            .is_some_and(|r| r.get("error").is_some())
    });
    Json(json!({"took": 1, "errors": errors, "items": items})).into_response()
}

impl EsState {
    fn apply(&mut self, action: Action) -> Value {
        let Action {
            kind,
            index,
            id,
            source,
        } = action;
        let failure = self
            .item_failures
            .get_mut(&id)
            .and_then(VecDeque::pop_front);
        let key = (index.clone(), id.clone());
        let result = if let Some(failure) = failure {
            json!({"_index": index, "_id": id, "status": failure.status(), "error": failure.error(&index)})
        } else {
            // parse_bulk gives every action but `delete` a source.
            match source {
                None => match self.documents.remove(&key) {
                    Some(_) => {
                        json!({"_index": index, "_id": id, "result": "deleted", "status": 200})
                    }
                    None => {
                        json!({"_index": index, "_id": id, "result": "not_found", "status": 404})
                    }
                },
                Some(_) if kind == "create" && self.documents.contains_key(&key) => json!({
                    "_index": index, "_id": id, "status": 409,
                    "error": {"type": "version_conflict_engine_exception",
                              "reason": format!("[{id}]: version conflict, document already exists")}
                }),
                Some(source) => {
                    let doc = self.documents.entry(key).or_insert(Document {
                        source: Value::Null,
                        version: 0,
                    });
                    doc.version += 1;
                    doc.source = source;
                    let (result, status) = if doc.version == 1 {
                        ("created", 201)
                    } else {
                        ("updated", 200)
                    };
                    json!({"_index": index, "_id": id, "_version": doc.version, "result": result, "status": status})
                }
            }
        };
        json!({ kind: result })
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type == "application/x-ndjson" {
        Ok(())
    } else {
        Err(format!(
            "Content-Type header [{content_type}] is not supported: _bulk needs application/x-ndjson"
        ))
    }
}

fn parse_bulk(url_index: Option<&str>, body: &[u8]) -> Result<Vec<Action>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    if text.is_empty() {
        return Err("request body is required".into());
    }
    if !text.ends_with('\n') {
        return Err("The bulk request must be terminated by a newline [\\n]".into());
    }
    let mut lines = text[..text.len() - 1].split('\n').enumerate();
    let mut actions = Vec::new();
    while let Some((number, line)) = lines.next() {
        let action = parse_action(url_index, number + 1, line)?;
        let kind = action.0;
        let source = if kind == "delete" {
            None
        } else {
            let (number, line) = lines
                .next()
                .ok_or_else(|| format!("line {}: {kind} action has no source line", number + 2))?;
            let source: Map<String, Value> = serde_json::from_str(line)
                .map_err(|e| format!("line {}: source is not a JSON object: {e}", number + 1))?;
            Some(Value::Object(source))
        };
        actions.push(Action {
            kind: kind.to_owned(),
            index: action.1,
            id: action.2,
            source,
        });
    }
    Ok(actions)
}

fn parse_action(
    url_index: Option<&str>,
    number: usize,
    line: &str,
) -> Result<(&'static str, String, String), String> {
    let value: Map<String, Value> = serde_json::from_str(line)
        .map_err(|e| format!("line {number}: action is not a JSON object: {e}"))?;
    let mut entries = value.into_iter();
    let (Some((name, meta)), None) = (entries.next(), entries.next()) else {
        return Err(format!(
            "line {number}: an action line holds exactly one action"
        ));
    };
    let kind = ["index", "create", "update", "delete"]
        .into_iter()
        .find(|k| *k == name)
        .ok_or_else(|| format!("line {number}: unknown action [{name}]"))?;
    let meta = meta
        .as_object()
        .ok_or_else(|| format!("line {number}: [{name}] metadata is not an object"))?;
    let index = match (meta.get("_index"), url_index) {
        (Some(Value::String(index)), _) => index.clone(),
        (None, Some(index)) => index.to_owned(),
        _ => return Err(format!("line {number}: no _index in the action or the URL")),
    };
    let id = match meta.get("_id") {
        // Elasticsearch refuses the whole request, as here.
        Some(Value::String(id)) if id.len() > 512 => {
            return Err(format!(
                "Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes but was: {};",
                id.len()
            ));
        }
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(format!(
                "line {number}: sluice always sets a non-empty string _id"
            ));
        }
    };
    Ok((kind, index, id))
}
