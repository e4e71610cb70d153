//! A ClickHouse table, written over the HTTP interface with
//! `INSERT INTO <database>.<table> FORMAT JSONEachRow` in blocks of at most
//! `batchRows` rows. The sink creates nothing: `open` checks that the table
//! exists and has every column it writes. Timestamps are sent as Unix seconds,
//! which every ClickHouse version reads into `DateTime` without time-zone
//! ambiguity (18.16 reads no RFC 3339 text).
//!
//! Replays: an epoch's rows are put in row-identity order before blocks are
//! cut, so a replayed epoch cuts the same blocks as the first attempt, in
//! whatever order its rows arrived. At `open` the sink reads the server
//! version and the table's engine and settles on a [`Guarantee`] (see
//! [`layout`]): deduplication tokens `<EpochKey::token>-<block>` where the
//! table honours them, else a `ReplacingMergeTree` keyed by the row
//! identity; any other table is refused with the statements that create a
//! good one.

mod layout;

use std::sync::Arc;

use arrow::{
    array::RecordBatch,
    compute::{SortColumn, cast, concat_batches, lexsort_to_indices, take_record_batch},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
};
use async_trait::async_trait;
use sluice_crds::ClickHouseSink as ClickHouseSpec;

pub use self::layout::Guarantee;
use self::layout::{
    TableFacts, create_statements, decide, parse_version, setting_in, window_setting,
};
use super::{EpochKey, Sink, SinkError, WriteOutcome, identity_columns, rows_as_json};
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

pub struct ClickHouseSink {
    name: String,
    client: reqwest::Client,
    url: String,
    database: String,
    table_name: String,
    /// `database`.`table`, quoted.
    table: String,
    auth: Option<Auth>,
    batch_rows: usize,
    retry: RetryPolicy,
    meter: SinkMeter,
    /// Known after `open`.
    guarantee: Option<Guarantee>,
    /// The columns that identify a row, known after `open`.
    identity: Vec<usize>,
}

/// `name` as a ClickHouse identifier.
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `text` as a ClickHouse string literal.
fn quote_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
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

/// The epoch's rows in one batch ordered by the `identity` columns, so that
/// the blocks cut from it depend on the rows alone, not on the order in
/// which the source's partitions delivered them.
fn in_identity_order(
    rows: &[RecordBatch],
    identity: &[usize],
) -> Result<Option<RecordBatch>, ArrowError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let all = if rows.len() == 1 {
        first.clone()
    } else {
        concat_batches(&first.schema(), rows)?
    };
    if all.num_rows() < 2 || identity.is_empty() {
        return Ok(Some(all));
    }
    let keys: Vec<SortColumn> = identity
        .iter()
        .map(|&index| SortColumn {
            values: all.column(index).clone(),
            options: None,
        })
        .collect();
    let order = lexsort_to_indices(&keys, None)?;
    take_record_batch(&all, &order).map(Some)
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
            database: spec.database.clone(),
            table_name: spec.table.clone(),
            table: format!(
                "{}.{}",
                quote_identifier(&spec.database),
                quote_identifier(&spec.table)
            ),
            auth,
            batch_rows: usize::try_from(spec.batch_rows.max(1)).unwrap_or(1),
            retry: RetryPolicy::SINK,
            meter,
            guarantee: None,
            identity: Vec::new(),
        })
    }

    /// Shorter backoff, for tests.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How the table leaves replayed epochs once (known after `open`).
    pub fn guarantee(&self) -> Option<Guarantee> {
        self.guarantee
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

    /// The table's row of `system.tables` (`None` when there is no such
    /// table). Every column is asked for, since older servers lack some.
    async fn table_row(&self) -> Result<Option<serde_json::Value>, SinkError> {
        let answer = self
            .query(&format!(
                "SELECT * FROM system.tables WHERE database = {} AND name = {} FORMAT JSONEachRow",
                quote_string(&self.database),
                quote_string(&self.table_name)
            ))
            .await?;
        answer
            .lines()
            .next()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| self.failed(format!("unreadable system.tables row: {e}")))
    }

    /// The server's default for MergeTree setting `name` (0 when it does
    /// not know the setting).
    async fn merge_tree_default(&self, name: &str) -> Result<u64, SinkError> {
        let value = self
            .query(&format!(
                "SELECT value FROM system.merge_tree_settings WHERE name = {}",
                quote_string(name)
            ))
            .await?;
        Ok(value.trim().parse().unwrap_or(0))
    }

    /// What the server says about the table, from its `system.tables` row.
    async fn table_facts(
        &self,
        version: &str,
        row: &serde_json::Value,
        columns: Vec<String>,
    ) -> Result<TableFacts, SinkError> {
        let text = |name: &str| {
            row.get(name)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let engine = text("engine");
        let engine_full = text("engine_full");
        let setting = window_setting(&engine);
        let deduplication_window = match setting_in(&engine_full, setting) {
            Some(window) => window,
            None => self.merge_tree_default(setting).await?,
        };
        Ok(TableFacts {
            version: parse_version(version),
            engine,
            sorting_key: text("sorting_key"),
            deduplication_window,
            columns,
        })
    }

    fn create_statements(&self, schema: &Schema) -> String {
        create_statements(&self.table, schema, &self.identity, quote_identifier)
    }
}

#[async_trait]
impl Sink for ClickHouseSink {
    /// Learns the server version and the table's engine, checks its columns
    /// and settles on how replays are made harmless (or refuses the table).
    async fn open(&mut self, schema: SchemaRef) -> Result<(), SinkError> {
        self.identity = identity_columns(&schema).map_err(|error| SinkError::Arrow {
            sink: self.name.clone(),
            error,
        })?;
        let version = self.query("SELECT version()").await?;
        let Some(row) = self.table_row().await? else {
            return Err(self.failed(format!(
                "table {} does not exist; Sluice creates nothing, so create it first, as\n  {}",
                self.table,
                self.create_statements(&schema)
            )));
        };
        let described = self
            .query(&format!(
                "DESCRIBE TABLE {} FORMAT TabSeparated",
                self.table
            ))
            .await?;
        let columns: Vec<String> = described
            .lines()
            .filter_map(|line| line.split('\t').next())
            .map(str::to_owned)
            .collect();
        let missing: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| !columns.iter().any(|column| column == name))
            .collect();
        if !missing.is_empty() {
            return Err(self.failed(format!(
                "table {} lacks the columns {} that this sink writes",
                self.table,
                missing.join(", ")
            )));
        }
        let facts = self.table_facts(&version, &row, columns).await?;
        let identity: Vec<&str> = self
            .identity
            .iter()
            .map(|&index| schema.field(index).name().as_str())
            .collect();
        match decide(&facts, &identity) {
            Ok(guarantee) => {
                tracing::info!(sink = %self.name, version = version.trim(), engine = %facts.engine, ?guarantee, "ClickHouse table recognises replayed epochs");
                self.guarantee = Some(guarantee);
                Ok(())
            }
            Err(reason) => Err(self.failed(format!(
                "table {} would keep the rows of a replayed epoch twice: {reason}; create it as\n  {}",
                self.table,
                self.create_statements(&schema)
            ))),
        }
    }

    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        rows: &[RecordBatch],
    ) -> Result<WriteOutcome, SinkError> {
        let arrow = |error| SinkError::Arrow {
            sink: self.name.clone(),
            error,
        };
        let Some(rows) = in_identity_order(rows, &self.identity).map_err(arrow)? else {
            return Ok(WriteOutcome::all(0));
        };
        let rows = with_unix_seconds(&rows).map_err(arrow)?;
        let blocks = rows.num_rows().div_ceil(self.batch_rows);
        let tokens = match self.guarantee {
            Some(Guarantee::Tokens { window }) => {
                if blocks as u64 > window {
                    tracing::warn!(sink = %self.name, blocks, window, "an epoch has more blocks than the table's deduplication window: a replay of it would write its first blocks twice; raise the window or batchRows");
                }
                true
            }
            _ => false,
        };
        let insert = format!("INSERT INTO {} FORMAT JSONEachRow", self.table);
        let token = key.token();
        for block in 0..blocks {
            let offset = block * self.batch_rows;
            let len = self.batch_rows.min(rows.num_rows() - offset);
            let body = rows_as_json(&[rows.slice(offset, len)]).map_err(arrow)?;
            let block_token = format!("{token}-{block}");
            let mut params = vec![("query", insert.as_str())];
            if tokens {
                params.push(("insert_deduplication_token", block_token.as_str()));
            }
            self.post(&params, body).await?;
            self.meter.rows_written.inc_by(len as u64);
        }
        Ok(WriteOutcome::all(rows.num_rows()))
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
    fn identifiers_and_strings_are_quoted() {
        assert_eq!(quote_identifier("order`s"), "`order\\`s`");
        assert_eq!(quote_string("it's"), "'it\\'s'");
    }

    /// Event rows of (partition, offset) pairs, in the order given.
    fn event_rows(pairs: &[(i32, i64)]) -> RecordBatch {
        use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
        let n = pairs.len();
        RecordBatch::try_new(
            crate::pipeline::event_schema(),
            vec![
                Arc::new(StringArray::from(vec!["orders"; n])),
                Arc::new(Int32Array::from_iter_values(pairs.iter().map(|p| p.0))),
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.1))),
                Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["{}"; n])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_are_ordered_by_identity_whatever_order_partitions_delivered_them() {
        let identity = identity_columns(&crate::pipeline::event_schema()).unwrap();
        let arrived = [
            event_rows(&[(1, 5), (1, 6)]),
            event_rows(&[(0, 9), (0, 10)]),
            event_rows(&[(1, 7)]),
        ];
        let replayed = [event_rows(&[(0, 9), (1, 5), (0, 10), (1, 6), (1, 7)])];
        let first = in_identity_order(&arrived, &identity).unwrap().unwrap();
        let second = in_identity_order(&replayed, &identity).unwrap().unwrap();
        assert_eq!(first, second);
        assert_eq!(
            first,
            event_rows(&[(0, 9), (0, 10), (1, 5), (1, 6), (1, 7)])
        );
        assert_eq!(in_identity_order(&[], &identity).unwrap(), None);
    }
}
