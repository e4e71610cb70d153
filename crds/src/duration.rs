//! Human-readable, non-negative durations such as `"5m"`, `"10s"` or `"1h30m"`.
//!
//! The format is Go's `time.ParseDuration` (the Kubernetes convention, and what
//! CEL's `duration()` understands), so the same string can be compared in a CEL
//! rule at apply time and parsed by the runner. Event times are milliseconds,
//! so a duration is a whole number of milliseconds: the units are `ms`, `s`,
//! `m` and `h`, and a fraction may not go below a millisecond (`1.5s` yes,
//! `1.0005s` no).

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// One or more `<number><unit>` terms, each a whole number of milliseconds:
/// a fraction has at most 5 digits for hours, 4 for minutes, 3 for seconds
/// and none for milliseconds. [`Duration::from_str`] accepts all of them.
pub const DURATION_PATTERN: &str =
    r"^([0-9]+(\.[0-9]{1,5})?h|[0-9]+(\.[0-9]{1,4})?m|[0-9]+(\.[0-9]{1,3})?s|[0-9]+ms)+$";

/// Longest duration string accepted (it bounds the cost of CEL rules that parse it).
pub const MAX_DURATION_LENGTH: u32 = 64;

/// A non-negative duration written like `"2m"` or `"1h30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(time::Duration);

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {input:?}: {reason} (write it like \"30s\", \"5m\" or \"1h30m\")")]
    Invalid { input: String, reason: String },
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
    #[error(
        "invalid duration {0:?}: event times are milliseconds, so write a whole number of milliseconds (units ms, s, m, h)"
    )]
    FinerThanMillisecond(String),
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(time::Duration::from_millis(millis))
    }

    pub const fn as_std(self) -> time::Duration {
        self.0
    }

    /// Whole milliseconds, saturating; event times are millisecond precision.
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl From<time::Duration> for Duration {
    fn from(value: time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('-') {
            return Err(DurationError::Negative(s.to_owned()));
        }
        // Go also accepts a bare "0" and a leading "+"; the schema pattern does not.
        if !s.starts_with(|c: char| c.is_ascii_digit()) || s.ends_with(|c: char| c.is_ascii_digit())
        {
            return Err(DurationError::Invalid {
                input: s.to_owned(),
                reason: "expected a number followed by a unit".into(),
            });
        }
        let parsed: kube::core::Duration = s.parse().map_err(
            |e: kube::core::duration::ParseError| DurationError::Invalid {
                input: s.to_owned(),
                reason: e.to_string(),
            },
        )?;
        let parsed: time::Duration = parsed.into();
        let micro_units = ["ns", "us", "µs"];
        if !parsed.subsec_nanos().is_multiple_of(1_000_000)
            || micro_units.iter().any(|u| s.contains(u))
        {
            return Err(DurationError::FinerThanMillisecond(s.to_owned()));
        }
        Ok(Self(parsed))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&kube::core::Duration::from(self.0), f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": MAX_DURATION_LENGTH,
            "description": "A duration such as \"30s\", \"5m\" or \"1h30m\" (units: ms, s, m, h; whole milliseconds)."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!("5m".parse(), Ok(Duration::from_secs(300)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("250ms".parse(), Ok(Duration::from_millis(250)));
        assert_eq!("0s".parse(), Ok(Duration::default()));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in [
            "",
            "5",
            "five minutes",
            "-1m",
            "1d",
            "5 m",
            "500us",
            "1000ns",
            "1.0005s",
            "0.5ms",
        ] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn parses_everything_the_schema_pattern_accepts() {
        let schema = serde_json::json!({"type": "string", "pattern": DURATION_PATTERN});
        let pattern = jsonschema::validator_for(&schema).expect("the pattern compiles");
        let samples = [
            "0s", "1ms", "250ms", "1.5s", "1.001s", "0.0001m", "0.00001h", "1h30m", "2m3s4ms",
            "5m", "1.0005s", "500us", "1ns", "0.5ms", "0.00001m", "1.5", "",
        ];
        for sample in samples {
            let accepted = pattern.is_valid(&serde_json::json!(sample));
            let parsed = sample.parse::<Duration>();
            if accepted {
                assert!(
                    parsed.is_ok(),
                    "{sample:?} matches the pattern but: {parsed:?}"
                );
            } else {
                assert!(
                    parsed.is_err(),
                    "{sample:?} is refused by the pattern, parsed as {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn displays_in_the_format_it_parses() {
        let d: Duration = "2m".parse().unwrap();
        assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }
}
