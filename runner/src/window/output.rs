//! Closed windows as Arrow rows (the schema is described in [`crate::sink`]).

use std::sync::Arc;

use arrow::{
    array::{
        ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
        TimestampMicrosecondBuilder,
    },
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    error::ArrowError,
};

use super::{Accumulator, AggregateKind, GroupKey};

/// Builds window rows for one pipeline.
pub struct WindowRows {
    schema: SchemaRef,
    group_columns: usize,
}

impl WindowRows {
    /// Columns: window bounds, one per group-by path, one per aggregation.
    pub fn new(group_by: &[String], aggregations: &[(String, AggregateKind)]) -> Self {
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new("window_start", timestamp.clone(), false),
            Field::new("window_end", timestamp, false),
        ];
        fields.extend(
            group_by
                .iter()
                .map(|path| Field::new(path.replace('.', "_"), DataType::Utf8, true)),
        );
        fields.extend(aggregations.iter().map(|(name, kind)| match kind {
            AggregateKind::Count => Field::new(name, DataType::Int64, false),
            _ => Field::new(name, DataType::Float64, true),
        }));
        Self {
            schema: Arc::new(Schema::new(fields)),
            group_columns: group_by.len(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One batch with one row per closed window and key (times in milliseconds).
    pub fn batch(
        &self,
        closed: &[(i64, i64, GroupKey, Box<[Accumulator]>)],
    ) -> Result<RecordBatch, ArrowError> {
        let mut starts = TimestampMicrosecondBuilder::with_capacity(closed.len());
        let mut ends = TimestampMicrosecondBuilder::with_capacity(closed.len());
        let mut groups: Vec<StringBuilder> = (0..self.group_columns)
            .map(|_| StringBuilder::new())
            .collect();
        let aggregate_fields = &self.schema.fields()[2 + self.group_columns..];
        let mut counts: Vec<Int64Builder> = Vec::new();
        let mut numbers: Vec<Float64Builder> = Vec::new();
        for field in aggregate_fields {
            match field.data_type() {
                DataType::Int64 => counts.push(Int64Builder::with_capacity(closed.len())),
                _ => numbers.push(Float64Builder::with_capacity(closed.len())),
            }
        }
        for (start, end, key, accumulators) in closed {
            starts.append_value(start * 1000);
            ends.append_value(end * 1000);
            for (builder, value) in groups.iter_mut().zip(key.values()) {
                builder.append_option(value);
            }
            let (mut count, mut number) = (counts.iter_mut(), numbers.iter_mut());
            for accumulator in accumulators.iter() {
                match accumulator.count() {
                    Some(n) => count.next().map(|b| b.append_value(n)),
                    None => number.next().map(|b| b.append_option(accumulator.value())),
                };
            }
        }
        let utc = |mut b: TimestampMicrosecondBuilder| -> ArrayRef {
            Arc::new(b.finish().with_timezone("UTC"))
        };
        let mut columns = vec![utc(starts), utc(ends)];
        columns.extend(
            groups
                .into_iter()
                .map(|mut b| Arc::new(b.finish()) as ArrayRef),
        );
        let (mut counts, mut numbers) = (counts.into_iter(), numbers.into_iter());
        for field in aggregate_fields {
            let column: Option<ArrayRef> = match field.data_type() {
                DataType::Int64 => counts.next().map(|mut b| Arc::new(b.finish()) as ArrayRef),
                _ => numbers.next().map(|mut b| Arc::new(b.finish()) as ArrayRef),
            };
            columns.extend(column);
        }
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}
