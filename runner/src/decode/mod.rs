//! JSON decoding that reads only the fields the pipeline uses (event time,
//! group-by and aggregation fields, transform variables) in one pass over the
//! event, skipping every other value without building it and borrowing field
//! text from the event where possible. A flat object of plain values is
//! scanned directly (`flat`); any other event is read with `serde_json`
//! (`paths`), which also decides what is malformed.

mod blocks;
mod flat;
mod paths;
mod timestamp;

use std::borrow::Cow;

use sluice_crds::{JsonFormat, TimestampFormat};

use self::{paths::PathTree, timestamp::Rfc3339Parser};

/// A decoded field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An object or array, as JSON text.
    Json(Cow<'a, str>),
}

impl FieldValue<'_> {
    /// The value as a number, for aggregations; `None` for missing and null.
    pub fn as_number(&self) -> Result<Option<f64>, String> {
        match self {
            Self::Missing | Self::Null => Ok(None),
            Self::Int(i) => Ok(Some(*i as f64)),
            Self::Float(f) => Ok(Some(*f)),
            other => Err(format!("expected a number, found {}", other.type_name())),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Missing => "nothing",
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Int(_) | Self::Float(_) => "a number",
            Self::Str(_) => "a string",
            Self::Json(_) => "an object or array",
        }
    }

    /// Owned copy, for values that outlive the event (computed fields).
    pub fn into_owned(self) -> FieldValue<'static> {
        match self {
            Self::Missing => FieldValue::Missing,
            Self::Null => FieldValue::Null,
            Self::Bool(b) => FieldValue::Bool(b),
            Self::Int(i) => FieldValue::Int(i),
            Self::Float(f) => FieldValue::Float(f),
            Self::Str(s) => FieldValue::Str(Cow::Owned(s.into_owned())),
            Self::Json(s) => FieldValue::Json(Cow::Owned(s.into_owned())),
        }
    }
}

/// Reads a fixed set of dot-separated field paths from JSON events.
pub struct Decoder {
    tree: PathTree,
    paths: Vec<String>,
    timestamp_format: TimestampFormat,
    rfc3339: Rfc3339Parser,
}

/// Slot of the event-time field in [`Decoder::decode`]'s output.
pub const TIMESTAMP_SLOT: usize = 0;

impl Decoder {
    /// A decoder for the event-time field (slot 0) and `fields` (deduplicated).
    pub fn new(format: &JsonFormat, fields: impl IntoIterator<Item = String>) -> Self {
        let mut paths = vec![format.timestamp_field.clone()];
        for field in fields {
            if !paths.contains(&field) {
                paths.push(field);
            }
        }
        Self {
            tree: PathTree::new(&paths),
            paths,
            timestamp_format: format.timestamp_format,
            rfc3339: Rfc3339Parser,
        }
    }

    /// The slot of a field path given to [`Decoder::new`].
    pub fn slot(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// Decodes `payload` into one value per slot (replacing `values`' content)
    /// and returns the event time in milliseconds since the Unix epoch, or why
    /// the event is malformed.
    pub fn decode<'a>(
        &self,
        payload: &'a [u8],
        values: &mut Vec<FieldValue<'a>>,
    ) -> Result<i64, String> {
        let trimmed = payload.trim_ascii();
        if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
            return Err("not a JSON object".into());
        }
        self.empty_slots(values);
        if flat::read(&self.tree, trimmed, values).is_err() {
            let text = utf8(trimmed)?;
            self.empty_slots(values);
            self.tree.read(text, values)?;
        }
        self.event_time(&values[TIMESTAMP_SLOT])
    }

    /// One `Missing` per slot. Made in place rather than cloned: `fill`
    /// clones through a call per slot, 3% of the reference bench.
    fn empty_slots(&self, values: &mut Vec<FieldValue<'_>>) {
        values.clear();
        values.extend(self.paths.iter().map(|_| FieldValue::Missing));
    }

    /// Milliseconds since the Unix epoch from a timestamp field's value;
    /// numbers must be within the years -9999 to 9999, as RFC 3339 times are.
    pub fn event_time(&self, value: &FieldValue<'_>) -> Result<i64, String> {
        let field = &self.paths[TIMESTAMP_SLOT];
        let in_range = |millis: Option<i64>| {
            millis
                .filter(|millis| jiff::Timestamp::from_millisecond(*millis).is_ok())
                .ok_or_else(|| format!("the event-time field {field} is out of range"))
        };
        let from_float = |millis: f64| {
            in_range((millis.is_finite() && millis.abs() < 9e18).then(|| millis.floor() as i64))
        };
        match (self.timestamp_format, value) {
            (_, FieldValue::Missing) => Err(format!("the event-time field {field} is missing")),
            (TimestampFormat::Rfc3339, FieldValue::Str(text)) => self
                .rfc3339
                .millis(text)
                .map_err(|e| format!("the event-time field {field} is not an RFC 3339 time: {e}")),
            (TimestampFormat::EpochMillis, FieldValue::Int(millis)) => in_range(Some(*millis)),
            (TimestampFormat::EpochMillis, FieldValue::Float(millis)) => from_float(*millis),
            (TimestampFormat::EpochSeconds, FieldValue::Int(secs)) => {
                in_range(secs.checked_mul(1000))
            }
            (TimestampFormat::EpochSeconds, FieldValue::Float(secs)) => from_float(secs * 1000.0),
            (format, other) => Err(format!(
                "the event-time field {field} is {}, not a {format:?} time",
                other.type_name()
            )),
        }
    }
}

/// `bytes` as text, or why they are not UTF-8: a SIMD check (std's costs
/// half as much again on events of ~100 bytes), then std's, to say where
/// the text is not UTF-8.
fn utf8(bytes: &[u8]) -> Result<&str, String> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| {
        let error = std::str::from_utf8(bytes).err();
        format!(
            "not UTF-8 text: {}",
            error.map(|e| e.to_string()).unwrap_or_default()
        )
    })
}

/// Classifies one raw JSON value; strings without escapes are borrowed.
fn field_value(raw: &str) -> Result<FieldValue<'_>, String> {
    let first = raw.as_bytes().first().copied();
    Ok(match first {
        Some(b'"') if !raw.contains('\\') => FieldValue::Str(Cow::Borrowed(&raw[1..raw.len() - 1])),
        Some(b'"') => FieldValue::Str(Cow::Owned(
            serde_json::from_str::<String>(raw).map_err(|e| format!("invalid string: {e}"))?,
        )),
        Some(b'{' | b'[') => FieldValue::Json(Cow::Borrowed(raw)),
        Some(b't') => FieldValue::Bool(true),
        Some(b'f') => FieldValue::Bool(false),
        Some(b'n') => FieldValue::Null,
        _ => number_value(raw)?,
    })
}

/// A JSON number's value: an integer when it is written as one and fits,
/// else a float.
fn number_value(text: &str) -> Result<FieldValue<'_>, String> {
    let float = || {
        text.parse()
            .map(FieldValue::Float)
            .map_err(|e| format!("invalid number {text}: {e}"))
    };
    if text.contains(['.', 'e', 'E']) {
        float()
    } else {
        text.parse().map(FieldValue::Int).or_else(|_| float())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(format: &str) -> Decoder {
        let format: JsonFormat = serde_json::from_value(
            serde_json::json!({"timestampField": "ts", "timestampFormat": format}),
        )
        .unwrap();
        Decoder::new(
            &format,
            [
                "event_type".to_owned(),
                "user.id".to_owned(),
                "value".to_owned(),
            ],
        )
    }

    #[test]
    fn reads_only_the_requested_fields() {
        let d = decoder("rfc3339");
        let mut values = Vec::new();
        let event = br#"{"ts":"2026-11-24T10:00:00.250Z","skip":{"deep":[1,2]},"event_type":"cl\"ick","user":{"id":7},"value":1.5}"#;
        let time = d.decode(event, &mut values).unwrap();
        assert_eq!(time, 1_795_514_400_250);
        assert_eq!(values[1], FieldValue::Str("cl\"ick".into()));
        assert_eq!(values[2], FieldValue::Int(7));
        assert_eq!(values[3], FieldValue::Float(1.5));
    }

    #[test]
    fn epoch_formats() {
        let mut values = Vec::new();
        assert_eq!(
            decoder("epochMillis").decode(br#"{"ts":1500}"#, &mut values),
            Ok(1500)
        );
        assert_eq!(
            decoder("epochSeconds").decode(br#"{"ts":1.5}"#, &mut values),
            Ok(1500)
        );
        for (format, event) in [
            ("epochMillis", &br#"{"ts":9223372036854775807}"#[..]),
            ("epochMillis", br#"{"ts":-9.5e18}"#),
            ("epochMillis", br#"{"ts":1e300}"#),
            ("epochSeconds", br#"{"ts":9223372036854775}"#),
            ("epochSeconds", br#"{"ts":253402300800}"#),
        ] {
            let error = decoder(format).decode(event, &mut values).unwrap_err();
            assert!(error.contains("out of range"), "{format} {error}");
        }
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        let d = decoder("rfc3339");
        let mut values = Vec::new();
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (
                br#"{"ts":"2026-11-24T10:00:00Z","event_type":"x""#,
                "not a JSON object",
            ),
            (br#"{"event_type":"x"}"#, "ts is missing"),
            (br#"{"ts":"yesterday"}"#, "not an RFC 3339 time"),
            (br#"{"ts":12}"#, "a number, not a Rfc3339 time"),
        ];
        for (event, reason) in cases {
            let error = d.decode(event, &mut values).unwrap_err();
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
    }
}
