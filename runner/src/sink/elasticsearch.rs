//! An Elasticsearch (or OpenSearch) index, written through the `_bulk` API
//! with `index` actions. Document ids are `<pipeline>/<row identity>` (see
//! [`super::row_ids`]: window bounds and group key, or stream/partition/offset
//! for event rows), so a replayed epoch overwrites the same documents instead
//! of adding new ones.
//!
//! Each epoch is sent in requests of at most `batchRows` documents and
//! [`MAX_REQUEST_BYTES`]. Per-item answers are never ignored: items refused
//! with 429 or a 5xx are sent again after a backoff. An event refused with
//! another 4xx (a field that conflicts with the index mapping, say) is bad
//! input: it goes to the dead-letter output with the server's reason and the
//! rest of the epoch is written. A window row refused that way fails the
//! epoch instead, since window rows all share one shape and the index, not
//! the row, is wrong.

use arrow::{array::RecordBatch, datatypes::SchemaRef};
use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_crds::{ElasticsearchSink as ElasticsearchSpec, SinkInput};

use super::{EpochKey, RefusedRow, Sink, SinkError, WriteOutcome, row_ids, rows_as_json};
use crate::{
    http::{self, Auth, Failure, RetryPolicy},
    secrets::Secrets,
    telemetry::SinkMeter,
};

/// Upper bound on one `_bulk` body, well under Elasticsearch's default
/// `http.max_content_length` (100 MB).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

pub struct ElasticsearchSink {
    name: String,
    input: SinkInput,
    client: reqwest::Client,
    bulk_url: String,
    base_url: String,
    index: String,
    auth: Option<Auth>,
    batch_rows: usize,
    retry: RetryPolicy,
    meter: SinkMeter,
}

/// One document to index.
struct Document {
    id: String,
    /// The action line and the source line, newline-terminated.
    lines: Vec<u8>,
    /// Index of its batch among the epoch's rows, and of its row in the batch.
    batch: usize,
    row: usize,
}

/// What one `_bulk` request left to do.
#[derive(Default)]
struct BulkAnswer<'d> {
    /// Refused for now (429, 5xx): sent again.
    retry: Vec<&'d Document>,
    /// Refused for their content, with the reason.
    refused: Vec<(&'d Document, String)>,
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<Map<String, Value>>,
}

impl ElasticsearchSink {
    pub fn new(
        name: &str,
        input: SinkInput,
        spec: &ElasticsearchSpec,
        secrets: &Secrets,
        meter: SinkMeter,
    ) -> Result<Self, SinkError> {
        let failed = |message: String| SinkError::Failed {
            sink: name.to_owned(),
            message,
        };
        let auth = match (&spec.credentials_secret_ref, &spec.api_key_secret_ref) {
            (Some(credentials), _) => {
                Some(Auth::basic(secrets, credentials).map_err(|e| failed(e.to_string()))?)
            }
            (None, Some(key)) => {
                let key = secrets.key(key).map_err(|e| failed(e.to_string()))?;
                Some(Auth::header(&format!("ApiKey {key}")).map_err(failed)?)
            }
            (None, None) => None,
        };
        let client = http::client(spec.timeout.as_std())
            .map_err(|e| failed(format!("cannot build an HTTP client: {e}")))?;
        let base_url = spec.url.trim_end_matches('/').to_owned();
        Ok(Self {
            name: name.to_owned(),
            input,
            client,
            bulk_url: format!("{base_url}/_bulk"),
            base_url,
            index: spec.index.clone(),
            auth,
            batch_rows: usize::try_from(spec.batch_rows.max(1)).unwrap_or(1),
            retry: RetryPolicy::SINK,
            meter,
        })
    }

    /// Shorter backoff, for tests.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn failed(&self, message: impl Into<String>) -> SinkError {
        SinkError::Failed {
            sink: self.name.clone(),
            message: message.into(),
        }
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        Auth::apply(self.auth.as_ref(), builder)
    }

    /// The epoch's rows as documents with deterministic ids.
    fn documents(&self, key: &EpochKey, rows: &[RecordBatch]) -> Result<Vec<Document>, SinkError> {
        let mut documents = Vec::new();
        for (batch_index, batch) in rows.iter().enumerate() {
            let arrow = |error| SinkError::Arrow {
                sink: self.name.clone(),
                error,
            };
            let ids = row_ids(batch).map_err(arrow)?;
            let json = rows_as_json(std::slice::from_ref(batch)).map_err(arrow)?;
            for (row, (id, line)) in ids.into_iter().zip(json.split(|b| *b == b'\n')).enumerate() {
                let id = bounded_id(format!("{}/{id}", key.pipeline));
                let source = self.source(line)?;
                let action = serde_json::json!({"index": {"_index": self.index, "_id": id}});
                let mut lines =
                    serde_json::to_vec(&action).map_err(|e| self.failed(e.to_string()))?;
                lines.push(b'\n');
                lines.extend_from_slice(&source);
                lines.push(b'\n');
                documents.push(Document {
                    id,
                    lines,
                    batch: batch_index,
                    row,
                });
            }
        }
        Ok(documents)
    }

    /// One row's JSON; event rows carry the event as an object, not as text.
    fn source(&self, line: &[u8]) -> Result<Vec<u8>, SinkError> {
        if self.input == SinkInput::Windows {
            return Ok(line.to_vec());
        }
        let mut row: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|e| self.failed(format!("row is not JSON: {e}")))?;
        if let Some(Value::String(event)) = row.get("event")
            && let Ok(event) = serde_json::from_str::<Value>(event)
        {
            row.insert("event".into(), event);
        }
        serde_json::to_vec(&row).map_err(|e| self.failed(e.to_string()))
    }

    /// Sends `documents` until every one is indexed or refused for its
    /// content; retries the items (or whole requests) that failed transiently.
    async fn index(&self, mut pending: Vec<&Document>) -> Result<Vec<RefusedRow>, SinkError> {
        let mut delays = self.retry.schedule();
        let mut refused = Vec::new();
        loop {
            let mut retry_later = Vec::new();
            let mut retry_after = None;
            for batch in batches(&pending, self.batch_rows) {
                match self.send(&batch).await {
                    Ok(answer) => {
                        retry_later.extend(answer.retry);
                        for (document, reason) in answer.refused {
                            if self.input == SinkInput::Windows {
                                return Err(self.failed(format!(
                                    "window row {} refused: {reason}",
                                    document.id
                                )));
                            }
                            refused.push(RefusedRow {
                                batch: document.batch,
                                row: document.row,
                                reason,
                            });
                        }
                    }
                    Err(Failure::Permanent { message }) => return Err(self.failed(message)),
                    Err(Failure::Transient { message, after }) => {
                        tracing::warn!(sink = %self.name, %message, "bulk request failed; will retry");
                        retry_after = after.or(retry_after);
                        retry_later.extend(batch);
                    }
                }
            }
            if retry_later.is_empty() {
                return Ok(refused);
            }
            let Some(delay) = delays.next() else {
                return Err(SinkError::Unavailable {
                    sink: self.name.clone(),
                    message: format!(
                        "{} documents still refused after {} attempts",
                        retry_later.len(),
                        self.retry.attempts.unwrap_or_default() + 1
                    ),
                });
            };
            self.meter.retries.inc_by(retry_later.len() as u64);
            tokio::time::sleep(retry_after.unwrap_or(delay)).await;
            pending = retry_later;
        }
    }

    /// One `_bulk` request; says which documents were refused, and how.
    async fn send<'d>(&self, batch: &[&'d Document]) -> Result<BulkAnswer<'d>, Failure> {
        let body: Vec<u8> = batch.iter().flat_map(|d| d.lines.iter().copied()).collect();
        let request = self
            .request(self.client.post(&self.bulk_url))
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        let body = http::exchange(&self.meter.requests, request, Failure::from_status).await?;
        let parsed: BulkResponse = serde_json::from_slice(&body).map_err(|e| {
            self.meter.requests.failure(Failure::Permanent {
                message: format!(
                    "the _bulk answer is not understood ({e}): {}",
                    http::excerpt(&String::from_utf8_lossy(&body))
                ),
            })
        })?;
        if parsed.items.len() != batch.len() {
            return Err(self.meter.requests.failure(Failure::Permanent {
                message: format!(
                    "the _bulk answer has {} items for {} documents",
                    parsed.items.len(),
                    batch.len()
                ),
            }));
        }
        self.meter.requests.ok.inc();
        let mut answer = BulkAnswer::default();
        for (document, item) in batch.iter().zip(parsed.items) {
            match item_outcome(&item) {
                ItemOutcome::Indexed => self.meter.rows_written.inc(),
                ItemOutcome::Transient(reason) => {
                    tracing::debug!(sink = %self.name, id = %document.id, %reason, "document refused; will retry");
                    answer.retry.push(*document);
                }
                ItemOutcome::Permanent(reason) => {
                    self.meter.item_failures.inc();
                    answer.refused.push((*document, reason));
                }
            }
        }
        self.meter.item_retries.inc_by(answer.retry.len() as u64);
        Ok(answer)
    }
}

enum ItemOutcome {
    Indexed,
    Transient(String),
    Permanent(String),
}

fn item_outcome(item: &Map<String, Value>) -> ItemOutcome {
    let Some(result) = item.values().next() else {
        return ItemOutcome::Permanent("an empty item in the _bulk answer".into());
    };
    let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
    let Some(error) = result.get("error") else {
        return if (200..300).contains(&status) {
            ItemOutcome::Indexed
        } else {
            ItemOutcome::Permanent(format!("status {status} without an error"))
        };
    };
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let reason = error
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let message = format!("{status} {kind}: {reason}");
    match reqwest::StatusCode::from_u16(u16::try_from(status).unwrap_or(0)) {
        Ok(code) if http::is_transient_status(code) => ItemOutcome::Transient(message),
        _ => ItemOutcome::Permanent(message),
    }
}

/// Splits documents into requests of at most `rows` documents and [`MAX_REQUEST_BYTES`].
fn batches<'d>(documents: &[&'d Document], rows: usize) -> Vec<Vec<&'d Document>> {
    let mut batches = Vec::new();
    let mut current: Vec<&Document> = Vec::new();
    let mut bytes = 0;
    for document in documents {
        if !current.is_empty()
            && (current.len() >= rows || bytes + document.lines.len() > MAX_REQUEST_BYTES)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += document.lines.len();
        current.push(document);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[async_trait]
impl Sink for ElasticsearchSink {
    /// Checks that the cluster answers (and accepts the credentials).
    async fn open(&mut self, _schema: SchemaRef) -> Result<(), SinkError> {
        let request = self.request(self.client.get(&self.base_url));
        http::exchange(&self.meter.requests, request, Failure::from_status)
            .await
            .map_err(|failure| SinkError::request(&self.name, &self.base_url, &failure))?;
        self.meter.requests.ok.inc();
        Ok(())
    }

    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError> {
        let documents = self.documents(key, rows)?;
        let refused = self.index(documents.iter().collect()).await?;
        Ok(WriteOutcome::Written {
            rows: documents.len() - refused.len(),
            refused,
        })
    }
}

/// Elasticsearch's limit on a document id, in bytes.
const MAX_ID_BYTES: usize = 512;

/// `id` itself when it fits [`MAX_ID_BYTES`]; else (long group values,
/// stream names or pipeline uids) its first 400 bytes (at a character
/// boundary), `#sha256:` and the hex SHA-256 of the whole id. The document
/// keeps every field in full.
fn bounded_id(id: String) -> String {
    use sha2::{Digest, Sha256};

    if id.len() <= MAX_ID_BYTES {
        return id;
    }
    let mut cut = 400;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest: String = Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}#sha256:{digest}", &id[..cut])
}
