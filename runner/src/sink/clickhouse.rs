//! A ClickHouse table, written over the HTTP interface with
//! `INSERT INTO <database>.<table> FORMAT JSONEachRow` in blocks of at most
//! `batchRows` rows. The sink creates nothing: `open` checks that the table
//! exists and has every column it writes. Timestamps are sent as Unix seconds,
//! which every ClickHouse version reads into `DateTime` without time-zone
//! ambiguity (18.16 reads no RFC 3339 text).
//!
//! Replays: on servers that know `insert_deduplication_token` (22.2 and
//! later; asked once with `SELECT version()`), each block carries
//! `<EpochKey::token>-<block>`, so a replayed epoch's identical blocks are
//! dropped by tables with deduplication (Replicated*, or MergeTree with
//! `non_replicated_deduplication_window`). On every version, a
//! `ReplacingMergeTree` ordered by the row identity (window bounds and group
//! columns, or stream/partition/offset) makes replayed rows collapse into
//! one; read it with `FINAL`. The README shows the layout.

use std::sync::Arc;

use arrow::{
    array::RecordBatch,
    compute::cast,
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
};
use async_trait::async_trait;
use sluice_crds::ClickHouseSink as ClickHouseSpec;

use super::{EpochKey, Sink, SinkError, WriteOutcome, rows_as_json};
use crate::{
    http::{self, Auth, Failure, RetryPolicy},
    secrets::Secrets,
    telemetry::SinkMeter,
};

/// ClickHouse exception codes that describe a passing condition (overload,
/// timeouts, replicas or Keeper unavailable) rather than a bad request.
const TRANSIENT_CODES: [u32; 14] = [
    159,  // TIMEOUT_EXCEEDED
    164,  // READONLY (a replica in read-only mode)
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    252,  // TOO_MANY_PARTS
    279,  // ALL_CONNECTION_TRIES_FAILED
    319,  // UNKNOWN_STATUS_OF_INSERT
    425,  // SYSTEM_ERROR
    999,  // KEEPER_EXCEPTION
    1002, // UNKNOWN_EXCEPTION
];

/// First version with `insert_deduplication_token`.
const DEDUPLICATION_TOKEN_SINCE: (u32, u32) = (22, 2);

pub struct ClickHouseSink {
    name: String,
    client: reqwest::Client,
    url: String,
    table: String,
    auth: Option<Auth>,
    batch_rows: usize,
    retry: RetryPolicy,
    meter: SinkMeter,
    /// Known after `open`.
    deduplication_tokens: bool,
}

/// `name` as a ClickHouse identifier.
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The `Code: N` of a ClickHouse error message.
fn exception_code(body: &str) -> Option<u32> {
    let rest = body.split("Code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Classifies a failed answer by its exception code first: ClickHouse answers
/// most errors, bad data included, with HTTP 500.
fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Failure {
    let failure = Failure::from_status(status, headers, body);
    match exception_code(body) {
        Some(code) if TRANSIENT_CODES.contains(&code) => Failure::Transient {
            message: failure.message().to_owned(),
            after: http::retry_after(headers),
        },
        Some(_) if status != reqwest::StatusCode::SERVICE_UNAVAILABLE => Failure::Permanent {
            message: failure.message().to_owned(),
        },
        _ => failure,
    }
}

/// "major.minor…" → (major, minor).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The rows with timestamp columns as Unix seconds (Int64).
fn with_unix_seconds(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if let DataType::Timestamp(_, zone) = field.data_type() {
            let seconds = cast(column, &DataType::Timestamp(TimeUnit::Second, zone.clone()))?;
            columns.push(cast(&seconds, &DataType::Int64)?);
            fields.push(Field::new(
                field.name(),
                DataType::Int64,
                field.is_nullable(),
            ));
        } else {
            columns.push(column.clone());
            fields.push(field.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl ClickHouseSink {
    pub fn new(
        name: &str,
        spec: &ClickHouseSpec,
        secrets: &Secrets,
        meter: SinkMeter,
    ) -> Result<Self, SinkError> {
        let failed = |message: String| SinkError::Failed {
            sink: name.to_owned(),
            message,
        };
        let auth = spec
            .credentials_secret_ref
            .as_ref()
            .map(|credentials| Auth::basic(secrets, credentials))
            .transpose()
            .map_err(|e| failed(e.to_string()))?;
        let client = http::client(spec.timeout.as_std())
            .map_err(|e| failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            client,
            url: spec.url.trim_end_matches('/').to_owned(),
            table: format!(
                "{}.{}",
                quote_identifier(&spec.database),
                quote_identifier(&spec.table)
            ),
            auth,
            batch_rows: usize::try_from(spec.batch_rows.max(1)).unwrap_or(1),
            retry: RetryPolicy::SINK,
            meter,
            deduplication_tokens: false,
        })
    }

    /// Shorter backoff, for tests.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Whether inserts carry `insert_deduplication_token` (known after `open`).
    pub fn uses_deduplication_tokens(&self) -> bool {
        self.deduplication_tokens
    }

    fn failed(&self, message: impl Into<String>) -> SinkError {
        SinkError::Failed {
            sink: self.name.clone(),
            message: message.into(),
        }
    }

    /// One request (`query` in the URL, `body` posted), retried on transient failures.
    async fn post(&self, params: &[(&str, &str)], body: Vec<u8>) -> Result<String, SinkError> {
        let attempt = || async {
            let request = self.client.post(&self.url).query(params).body(body.clone());
            let request = Auth::apply(self.auth.as_ref(), request);
            let body = http::exchange(&self.meter.requests, request, classify).await?;
            self.meter.requests.ok.inc();
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        http::retry(&self.retry, attempt, |failure, delay| {
            self.meter.retries.inc();
            tracing::warn!(sink = %self.name, message = failure.message(), ?delay, "ClickHouse request failed; retrying");
        })
        .await
        .map_err(|failure| SinkError::request(&self.name, &self.url, &failure))
    }

    async fn query(&self, sql: &str) -> Result<String, SinkError> {
        self.post(&[], sql.as_bytes().to_vec()).await
    }
}

#[async_trait]
impl Sink for ClickHouseSink {
    /// Learns the server version and checks the table and its columns.
    async fn open(&mut self, schema: SchemaRef) -> Result<(), SinkError> {
        let version = self.query("SELECT version()").await?;
        self.deduplication_tokens =
            parse_version(&version).is_some_and(|v| v >= DEDUPLICATION_TOKEN_SINCE);
        tracing::info!(sink = %self.name, version = version.trim(), deduplication_tokens = self.deduplication_tokens, "ClickHouse answers");
        if self
            .query(&format!("EXISTS TABLE {}", self.table))
            .await?
            .trim()
            != "1"
        {
            return Err(self.failed(format!(
                "table {} does not exist; Sluice creates nothing, so create it first (see the README for a ReplacingMergeTree layout)",
                self.table
            )));
        }
        let described = self
            .query(&format!(
                "DESCRIBE TABLE {} FORMAT TabSeparated",
                self.table
            ))
            .await?;
        let columns: Vec<&str> = described
            .lines()
            .filter_map(|line| line.split('\t').next())
            .collect();
        let missing: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| !columns.contains(name))
            .collect();
        if !missing.is_empty() {
            return Err(self.failed(format!(
                "table {} lacks the columns {} that this sink writes",
                self.table,
                missing.join(", ")
            )));
        }
        Ok(())
    }

    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError> {
        let insert = format!("INSERT INTO {} FORMAT JSONEachRow", self.table);
        let token = key.token();
        let mut block = 0;
        let mut written = 0;
        for batch in rows {
            let arrow = |error| SinkError::Arrow {
                sink: self.name.clone(),
                error,
            };
            let batch = with_unix_seconds(batch).map_err(arrow)?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = self.batch_rows.min(batch.num_rows() - offset);
                let body = rows_as_json(&[batch.slice(offset, len)]).map_err(arrow)?;
                let block_token = format!("{token}-{block}");
                let mut params = vec![("query", insert.as_str())];
                if self.deduplication_tokens {
                    params.push(("insert_deduplication_token", block_token.as_str()));
                }
                self.post(&params, body).await?;
                self.meter.rows_written.inc_by(len as u64);
                offset += len;
                written += len;
                block += 1;
            }
        }
        Ok(WriteOutcome::all(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_exception_code() {
        let headers = reqwest::header::HeaderMap::new();
        let status = reqwest::StatusCode::INTERNAL_SERVER_ERROR;
        let parse = "Code: 27, e.displayText() = DB::Exception: Cannot parse input";
        assert!(matches!(
            classify(status, &headers, parse),
            Failure::Permanent { .. }
        ));
        let overloaded =
            "Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries";
        assert!(matches!(
            classify(status, &headers, overloaded),
            Failure::Transient { .. }
        ));
        assert!(matches!(
            classify(status, &headers, "proxy error"),
            Failure::Transient { .. }
        ));
    }

    #[test]
    fn versions_decide_deduplication_tokens() {
        assert!(parse_version("18.16.1\n").is_some_and(|v| v < DEDUPLICATION_TOKEN_SINCE));
        assert!(parse_version("22.2.2.1").is_some_and(|v| v >= DEDUPLICATION_TOKEN_SINCE));
        assert!(parse_version("24.8.4.13").is_some_and(|v| v >= DEDUPLICATION_TOKEN_SINCE));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("order`s"), "`order\\`s`");
    }
}
