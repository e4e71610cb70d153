//! Polls an HTTP JSON API. The API is one partition (`<url>[0]`) whose
//! position is a [`RestPosition`]: the request that yields the next event (a
//! cursor or page number), how many events of that response were already
//! read, and how many events were read in all (`seq`, each event's offset).
//! Responses are treated as an append-only feed, so a position survives
//! pages that fill up later, and a replay refetches from an epoch's start
//! position exactly the `seq` difference it planned.
//!
//! Planning fetches pages until the API is caught up (an empty or partial
//! page, or no next cursor) or the epoch's record budget is spent, and buffers
//! them for the epoch. Between polls of a caught-up API it waits
//! `pollInterval`; after a 429 it waits `Retry-After`, after 5xx answers and
//! timeouts an exponential backoff; requests are spaced to honour
//! `maxRequestsPerSecond`. A 200 answer that is not JSON or lacks the events
//! array becomes one dead-letter record with the reason, and is asked for
//! again after a backoff. Other 4xx answers stop the runner with the server's
//! message.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use backon::ExponentialBackoff;
use reqwest::{
    Url,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_crds::{HttpMethod, RestSource as RestSpec};

use super::{
    Chunk, PartitionId, PartitionRange, Planned, Position, Positions, Source, SourceContext,
    SourceError, budget::EpochBudget,
};
use crate::{
    http::{self, Failure, RetryPolicy},
    secrets::Secrets,
    telemetry::RequestMeter,
};

const KIND: &str = "rest";

/// Longest [`Source::plan`] waits for its next allowed request before
/// returning an empty plan.
const MAX_PLAN_WAIT: Duration = Duration::from_secs(1);

/// Backoff after failures of the API, between polls.
const POLL_RETRY: RetryPolicy = RetryPolicy {
    min: Duration::from_millis(250),
    max: Duration::from_secs(60),
    attempts: None,
};

/// Backoff while replaying an epoch, which must read exactly its plan.
const REPLAY_RETRY: RetryPolicy = RetryPolicy {
    min: Duration::from_millis(250),
    max: Duration::from_secs(30),
    attempts: Some(20),
};

/// Where the next event is (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestPosition {
    /// Cursor or page number of the request whose response holds the next
    /// event; `None` for the first request (no cursor) or an unpaginated API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Events of that response already read.
    pub skip: u64,
    /// Events (and rejected responses) read since the lineage began.
    pub seq: i64,
}

impl RestPosition {
    fn encode(&self) -> Position {
        Position::Cursor(serde_json::to_string(self).unwrap_or_default())
    }

    fn decode(partition: &PartitionId, position: &Position) -> Result<Self, SourceError> {
        let bad = || SourceError::BadPosition {
            source_kind: KIND,
            partition: partition.clone(),
            position: position.clone(),
        };
        match position {
            Position::Cursor(text) => serde_json::from_str(text).map_err(|_| bad()),
            Position::Offset(_) => Err(bad()),
        }
    }

    /// Same request and skip: the same place in the feed.
    fn same_place(&self, other: &Self) -> bool {
        self.request == other.request && self.skip == other.skip
    }
}

enum Paging {
    None,
    Cursor {
        param: String,
        next_path: Vec<String>,
    },
    Page {
        param: String,
        size_param: Option<String>,
        size: u64,
        first: i64,
    },
}

/// One read item of an epoch.
enum Item {
    Event(Vec<u8>),
    /// A response that could not be used, as received.
    Rejected {
        body: Vec<u8>,
        reason: String,
    },
}

impl Item {
    /// Bytes the item holds in the epoch.
    fn bytes(&self) -> i64 {
        match self {
            Self::Event(event) => event.len() as i64,
            Self::Rejected { body, .. } => body.len() as i64,
        }
    }
}

/// A successful HTTP answer.
enum Reply {
    Page {
        events: Vec<Value>,
        next: Option<String>,
    },
    Rejected {
        body: Vec<u8>,
        reason: String,
    },
}

/// Items planned for the epoch `[start, end)`.
struct Buffered {
    start: Position,
    end: Position,
    items: Vec<Item>,
}

pub struct RestSource {
    client: reqwest::Client,
    url: Url,
    method: HttpMethod,
    headers: HeaderMap,
    events_path: Vec<String>,
    paging: Paging,
    partition: PartitionId,
    poll_interval: Duration,
    request_spacing: Option<Duration>,
    /// Events are read while planning, so the bytes are bounded exactly.
    budget: EpochBudget,
    requests: RequestMeter,
    /// When the last request went out, for `maxRequestsPerSecond`.
    last_request: Mutex<Option<Instant>>,
    /// No request before this (poll interval, `Retry-After`, backoff).
    not_before: Option<Instant>,
    /// The running backoff schedule while the API keeps failing.
    failures: Option<ExponentialBackoff>,
    buffered: Option<Buffered>,
    epoch: Option<Chunk>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> SourceError {
    SourceError::InvalidSpec {
        source_kind: KIND,
        field,
        message: message.into(),
    }
}

fn path(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(key))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl RestSource {
    /// `requests` counts and times the API's answers.
    pub fn new(
        spec: &RestSpec,
        context: &SourceContext,
        secrets: &Secrets,
        requests: RequestMeter,
    ) -> Result<Self, SourceError> {
        let url =
            Url::parse(&spec.url).map_err(|e| invalid("url", format!("{}: {e}", spec.url)))?;
        let mut headers = HeaderMap::new();
        for header in &spec.headers {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|e| invalid("headers", format!("{}: {e}", header.name)))?;
            let value = match (&header.value, &header.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(secret)) => secrets
                    .key(secret)
                    .map_err(|e| invalid("headers.valueFrom", e.to_string()))?,
                (None, None) => {
                    return Err(invalid("headers", format!("{} has no value", header.name)));
                }
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                invalid(
                    "headers",
                    format!("the value of {} is not a valid header value", header.name),
                )
            })?;
            value.set_sensitive(header.value_from.is_some());
            headers.insert(name, value);
        }
        let paging = match &spec.pagination {
            Some(p) => match (&p.cursor, &p.page) {
                (Some(cursor), _) => Paging::Cursor {
                    param: cursor.param.clone(),
                    next_path: path(&cursor.response_path),
                },
                (None, Some(page)) => Paging::Page {
                    param: page.param.clone(),
                    size_param: page.size_param.clone(),
                    size: u64::try_from(page.size.max(1)).unwrap_or(1),
                    first: page.first_page,
                },
                (None, None) => Paging::None,
            },
            None => Paging::None,
        };
        let request_spacing = match spec.max_requests_per_second {
            Some(rate) if rate > 0.0 && rate.is_finite() => {
                Some(Duration::from_secs_f64(1.0 / rate))
            }
            Some(rate) if rate < 0.0 || !rate.is_finite() => {
                return Err(invalid(
                    "maxRequestsPerSecond",
                    format!("{rate} is not a rate"),
                ));
            }
            _ => None,
        };
        let client = http::client(spec.timeout.as_std())
            .map_err(|e| invalid("url", format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            client,
            partition: PartitionId::new(spec.url.clone(), 0),
            url,
            method: spec.method,
            headers,
            events_path: path(&spec.events_path),
            paging,
            poll_interval: spec.poll_interval.as_std(),
            request_spacing,
            budget: EpochBudget {
                max_records: context.max_records_per_epoch.max(1),
                max_bytes: context.max_bytes_per_epoch.max(1),
            },
            requests,
            last_request: Mutex::new(None),
            not_before: None,
            failures: None,
            buffered: None,
            epoch: None,
        })
    }

    fn initial_position(&self) -> RestPosition {
        RestPosition {
            request: match &self.paging {
                Paging::Page { first, .. } => Some(first.to_string()),
                Paging::None | Paging::Cursor { .. } => None,
            },
            skip: 0,
            seq: 0,
        }
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Unavailable {
            source_kind: KIND,
            message: format!("{}: {message}", self.url),
        }
    }

    /// Waits (at most [`MAX_PLAN_WAIT`]) until a request is allowed; false if it still is not.
    async fn wait_turn(&self) -> bool {
        let Some(not_before) = self.not_before else {
            return true;
        };
        let now = Instant::now();
        if not_before > now {
            tokio::time::sleep((not_before - now).min(MAX_PLAN_WAIT)).await;
        }
        Instant::now() >= not_before
    }

    /// Schedules the next request after a failure.
    fn back_off(&mut self, after: Option<Duration>) {
        let delay = self
            .failures
            .get_or_insert_with(|| POLL_RETRY.schedule())
            .next()
            .unwrap_or(POLL_RETRY.max);
        self.not_before = Some(Instant::now() + after.unwrap_or(delay));
    }

    async fn fetch(&self, position: &RestPosition) -> Result<Reply, Failure> {
        if let Some(spacing) = self.request_spacing {
            let last = *self
                .last_request
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(last) = last {
                tokio::time::sleep_until((last + spacing).into()).await;
            }
        }
        let mut url = self.url.clone();
        match &self.paging {
            Paging::None => {}
            Paging::Cursor { param, .. } => {
                if let Some(cursor) = &position.request {
                    url.query_pairs_mut().append_pair(param, cursor);
                }
            }
            Paging::Page {
                param,
                size_param,
                size,
                first,
            } => {
                let page = position
                    .request
                    .clone()
                    .unwrap_or_else(|| first.to_string());
                url.query_pairs_mut().append_pair(param, &page);
                if let Some(size_param) = size_param {
                    url.query_pairs_mut()
                        .append_pair(size_param, &size.to_string());
                }
            }
        }
        let request = match self.method {
            HttpMethod::Get => self.client.get(url),
            HttpMethod::Post => self.client.post(url),
        };
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let request = request.headers(self.headers.clone());
        let body = http::exchange(&self.requests, request, Failure::from_status).await?;
        self.requests.ok.inc();
        Ok(self.parse(&body))
    }

    fn parse(&self, body: &[u8]) -> Reply {
        let rejected = |reason: String| Reply::Rejected {
            body: body.to_vec(),
            reason: format!("response from {}: {reason}", self.url),
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(e) => return rejected(format!("not JSON: {e}")),
        };
        let shown_path = if self.events_path.is_empty() {
            "the body".to_owned()
        } else {
            format!("`{}`", self.events_path.join("."))
        };
        let events = match lookup(&value, &self.events_path) {
            Some(Value::Array(events)) => events.clone(),
            Some(other) => {
                return rejected(format!(
                    "{shown_path} is {}, not an array of events",
                    type_name(other)
                ));
            }
            None => return rejected(format!("{shown_path} is missing")),
        };
        let next = match &self.paging {
            Paging::Cursor { next_path, .. } => match lookup(&value, next_path) {
                None | Some(Value::Null) => None,
                Some(Value::String(cursor)) => Some(cursor.clone()),
                Some(Value::Number(cursor)) => Some(cursor.to_string()),
                Some(other) => {
                    return rejected(format!(
                        "the next cursor `{}` is {}",
                        next_path.join("."),
                        type_name(other)
                    ));
                }
            },
            Paging::None | Paging::Page { .. } => None,
        };
        Reply::Page { events, next }
    }

    /// Moves `position` over one response, reading events until `budget`'s
    /// records or bytes are spent (the event that reaches the byte bound is
    /// the last). Returns the events read and whether the API has nothing
    /// more for now.
    fn advance(
        &self,
        position: &mut RestPosition,
        events: Vec<Value>,
        next: Option<String>,
        budget: EpochBudget,
    ) -> (Vec<Item>, bool) {
        let len = events.len() as u64;
        let available = len.saturating_sub(position.skip);
        let mut items = Vec::new();
        let mut bytes = 0_i64;
        for event in events
            .into_iter()
            .skip(usize::try_from(position.skip).unwrap_or(usize::MAX))
        {
            if budget.is_spent(items.len() as i64, bytes) {
                break;
            }
            let event = serde_json::to_vec(&event).unwrap_or_default();
            bytes = bytes.saturating_add(event.len() as i64);
            items.push(Item::Event(event));
        }
        let take = items.len() as u64;
        position.seq += take as i64;
        if take < available {
            position.skip += take;
            return (items, false);
        }
        let next_request = match &self.paging {
            Paging::None => None,
            Paging::Cursor { .. } => next.filter(|next| Some(next) != position.request.as_ref()),
            Paging::Page { size, first, .. } => (len >= *size).then(|| {
                let page = position
                    .request
                    .as_deref()
                    .and_then(|page| page.parse::<i64>().ok())
                    .unwrap_or(*first);
                (page + 1).to_string()
            }),
        };
        match next_request {
            // An empty page that names a new cursor moves on but counts as caught up.
            Some(request) => {
                position.request = Some(request);
                position.skip = 0;
                (items, len == 0)
            }
            None => {
                position.skip = position.skip.max(len);
                (items, true)
            }
        }
    }

    /// Fetches from `start` until caught up, the budget is spent or the API fails.
    async fn read_ahead(
        &mut self,
        start: &RestPosition,
    ) -> Result<(RestPosition, Vec<Item>), SourceError> {
        let mut position = start.clone();
        let mut items = Vec::new();
        let mut left = self.budget;
        loop {
            match self.fetch(&position).await {
                Ok(Reply::Page { events, next }) => {
                    self.failures = None;
                    let (read, caught_up) = self.advance(&mut position, events, next, left);
                    left.max_records -= read.len() as i64;
                    left.max_bytes -= read.iter().map(Item::bytes).sum::<i64>();
                    items.extend(read);
                    if caught_up {
                        self.not_before = Some(Instant::now() + self.poll_interval);
                        break;
                    }
                    if left.max_records <= 0 || left.max_bytes <= 0 {
                        break;
                    }
                }
                Ok(Reply::Rejected { body, reason }) => {
                    tracing::warn!(url = %self.url, %reason, "REST response dead-lettered");
                    items.push(Item::Rejected { body, reason });
                    position.seq += 1;
                    self.back_off(None);
                    break;
                }
                Err(Failure::Transient { message, after }) => {
                    tracing::warn!(url = %self.url, %message, "REST request failed; backing off");
                    self.back_off(after);
                    break;
                }
                Err(Failure::Permanent { message }) => return Err(self.unavailable(message)),
            }
        }
        Ok((position, items))
    }

    /// Refetches the events of `[start, end)` after a restart, retrying failures:
    /// a replay must read exactly what was planned. Rejected responses are
    /// not replayed (their position did not advance; the next epoch asks again).
    async fn replay(
        &self,
        start: RestPosition,
        end: &RestPosition,
    ) -> Result<Vec<Item>, SourceError> {
        let mut position = start;
        let mut items = Vec::new();
        while position.seq < end.seq && !position.same_place(end) {
            let budget = EpochBudget {
                max_records: end.seq - position.seq,
                ..EpochBudget::UNBOUNDED
            };
            let at = position.clone();
            let this = self;
            let attempt = || {
                let at = at.clone();
                async move {
                    match this.fetch(&at).await? {
                        Reply::Page { events, next } => Ok((events, next)),
                        Reply::Rejected { reason, .. } => Err(Failure::Transient {
                            message: reason,
                            after: None,
                        }),
                    }
                }
            };
            let result = http::retry(&REPLAY_RETRY, attempt, |failure, delay| {
                tracing::warn!(
                    message = failure.message(),
                    ?delay,
                    "replay request failed; retrying"
                );
            })
            .await;
            let (events, next) = result.map_err(|failure| self.unavailable(failure.message()))?;
            let before = position.seq;
            let (read, _) = self.advance(&mut position, events, next, budget);
            items.extend(read);
            if position.seq == before && position.same_place(&at) {
                return Err(self.unavailable(format!(
                    "cannot replay events {}..{}: the API no longer serves them",
                    position.seq, end.seq
                )));
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl Source for RestSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError> {
        let start = match committed.get(&self.partition) {
            Some(position) => RestPosition::decode(&self.partition, position)?,
            None => self.initial_position(),
        };
        self.buffered = None;
        let (end, items) = if self.wait_turn().await {
            self.read_ahead(&start).await?
        } else {
            (start.clone(), Vec::new())
        };
        let range = PartitionRange {
            partition: self.partition.clone(),
            start: start.encode(),
            end: end.encode(),
        };
        self.buffered = Some(Buffered {
            start: range.start.clone(),
            end: range.end.clone(),
            items,
        });
        Ok(Planned::Ranges(vec![range]))
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        self.epoch = None;
        let Some((index, range)) = ranges
            .iter()
            .enumerate()
            .find(|(_, range)| range.partition == self.partition)
        else {
            return Ok(());
        };
        let start = RestPosition::decode(&self.partition, &range.start)?;
        let end = RestPosition::decode(&self.partition, &range.end)?;
        let items = match self.buffered.take() {
            Some(buffered) if buffered.start == range.start && buffered.end == range.end => {
                buffered.items
            }
            _ => self.replay(start.clone(), &end).await?,
        };
        let mut chunk = Chunk::new(index);
        for (offset, item) in (start.seq..).zip(items) {
            match item {
                Item::Event(event) => chunk.push(&event, offset),
                Item::Rejected { body, reason } => chunk.push_rejected(&body, offset, reason),
            }
        }
        self.epoch = Some(chunk);
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        Ok(self.epoch.take())
    }
}
