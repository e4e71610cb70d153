//! An in-process HTTP JSON API for the REST source tests: a growing, append-only
//! event feed served with cursor pagination (`GET /cursor`) or page numbers
//! (`GET /pages`), behind a rate limit that answers 429 with `Retry-After`,
//! with scripted transient failures (5xx, responses slower than the client's
//! timeout) and one-off scripted responses. Every request is recorded.
//!
//! - `GET /cursor?after=<cursor>&limit=<n>` answers
//!   `{"data": {"events": [...], "next_cursor": "<cursor>" | null}}`: the cursor
//!   names the position after the page; it is null when there is nothing new.
//! - `GET /pages?page=<n>&per_page=<size>` (first page 1) answers the page's
//!   events as a bare JSON array; a page past the end is empty.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::net::StatefulServer;

/// Page size when the request does not name one.
const DEFAULT_LIMIT: usize = 10;

/// Misbehaviour of the API, all off by default.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Requests allowed per rolling second; more get 429 with `Retry-After`.
    pub max_requests_per_second: Option<usize>,
    /// Seconds sent in `Retry-After` with a 429.
    pub retry_after_secs: u64,
    /// Every n-th request (after the rate limit) answers 503.
    pub fail_every: Option<usize>,
    /// Every n-th request (after the rate limit) is answered only after `slow_delay`.
    pub slow_every: Option<usize>,
    /// How long a slow response takes; make it longer than the client's timeout.
    pub slow_delay: Duration,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// When it arrived.
    pub at: Instant,
    /// `/cursor` or `/pages`.
    pub path: &'static str,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Request headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// Status of the answer.
    pub status: u16,
}

/// A response sent instead of the normal one, once.
#[derive(Clone, Debug)]
pub struct ScriptedResponse {
    /// HTTP status.
    pub status: u16,
    /// Content-Type header.
    pub content_type: &'static str,
    /// Body, sent as is.
    pub body: String,
}

#[derive(Default)]
struct ApiState {
    events: Vec<Value>,
    faults: Faults,
    scripted: VecDeque<ScriptedResponse>,
    requests: Vec<RecordedRequest>,
    /// Requests past the rate limit, counted for `fail_every` and `slow_every`.
    admitted: usize,
}

/// The running API; stops when dropped.
pub struct RestApi {
    server: StatefulServer<ApiState>,
}

enum Plan {
    Scripted(ScriptedResponse),
    RateLimited(u64),
    Fail,
    Serve { delay: Option<Duration> },
}

impl RestApi {
    /// Starts the API on a free port of 127.0.0.1 with no events.
    pub async fn start(faults: Faults) -> Self {
        let state = ApiState {
            faults,
            ..ApiState::default()
        };
        let router = Router::new()
            .route("/cursor", get(cursor_page))
            .route("/pages", get(numbered_page));
        Self {
            server: StatefulServer::start(state, router).await,
        }
    }

    /// Base URL, for example `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Appends events to the feed.
    pub fn push(&self, events: impl IntoIterator<Item = Value>) {
        self.lock().events.extend(events);
    }

    /// Answers the next request (after the rate limit) with `response` instead.
    pub fn respond_next(&self, response: ScriptedResponse) {
        self.lock().scripted.push_back(response);
    }

    /// Replaces the faults, for example to stop failing.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests that arrived sooner after a 429 than its `Retry-After` allowed.
    pub fn retry_after_violations(&self) -> usize {
        let state = self.lock();
        let retry_after = Duration::from_secs(state.faults.retry_after_secs);
        state
            .requests
            .windows(2)
            .filter(|pair| pair[0].status == 429 && pair[1].at < pair[0].at + retry_after)
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.server.lock()
    }
}

impl ApiState {
    /// Decides how to answer a request and records it.
    fn admit(
        &mut self,
        path: &'static str,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Plan {
        let now = Instant::now();
        let plan = self.plan(now);
        let status = match &plan {
            Plan::Scripted(response) => response.status,
            Plan::RateLimited(_) => 429,
            Plan::Fail => 503,
            Plan::Serve { .. } => 200,
        };
        self.requests.push(RecordedRequest {
            at: now,
            path,
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            status,
        });
        plan
    }

    fn plan(&mut self, now: Instant) -> Plan {
        if let Some(limit) = self.faults.max_requests_per_second {
            let recent = self
                .requests
                .iter()
                .rev()
                .take_while(|r| now.duration_since(r.at) < Duration::from_secs(1))
                .filter(|r| r.status != 429)
                .count();
            if recent >= limit {
                return Plan::RateLimited(self.faults.retry_after_secs);
            }
        }
        self.admitted += 1;
        if let Some(response) = self.scripted.pop_front() {
            return Plan::Scripted(response);
        }
        let nth = |every: Option<usize>| every.is_some_and(|n| self.admitted.is_multiple_of(n));
        if nth(self.faults.fail_every) {
            return Plan::Fail;
        }
        Plan::Serve {
            delay: nth(self.faults.slow_every).then_some(self.faults.slow_delay),
        }
    }
}

fn param(query: &HashMap<String, String>, name: &str) -> Option<usize> {
    query.get(name).and_then(|value| value.parse().ok())
}

/// Runs the plan; `page` builds the normal body from the events.
async fn answer(
    state: Arc<Mutex<ApiState>>,
    path: &'static str,
    query: HashMap<String, String>,
    headers: HeaderMap,
    page: impl FnOnce(&[Value]) -> Value,
) -> Response {
    let plan = state
        .lock()
        .expect("REST API state lock")
        .admit(path, &query, &headers);
    match plan {
        Plan::Scripted(response) => (
            StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, response.content_type)],
            response.body,
        )
            .into_response(),
        Plan::RateLimited(retry_after) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            "rate limit exceeded",
        )
            .into_response(),
        Plan::Fail => (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response(),
        Plan::Serve { delay } => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let body = page(&state.lock().expect("REST API state lock").events);
            axum::Json(body).into_response()
        }
    }
}

async fn cursor_page(
    State(state): State<Arc<Mutex<ApiState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let after = query.get("after").cloned();
    let limit = param(&query, "limit").unwrap_or(DEFAULT_LIMIT);
    answer(state, "/cursor", query, headers, move |events| {
        let start = after
            .as_deref()
            .and_then(|cursor| cursor.strip_prefix("pos-"))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(events.len());
        let end = (start + limit).min(events.len());
        let next = (end > start).then(|| format!("pos-{end}"));
        json!({"data": {"events": &events[start..end], "next_cursor": next}})
    })
    .await
}

async fn numbered_page(
    State(state): State<Arc<Mutex<ApiState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let page = param(&query, "page").unwrap_or(1).max(1);
    let size = param(&query, "per_page").unwrap_or(DEFAULT_LIMIT);
    answer(state, "/pages", query, headers, move |events| {
        let start = ((page - 1) * size).min(events.len());
        let end = (start + size).min(events.len());
        Value::from(&events[start..end])
    })
    .await
}
