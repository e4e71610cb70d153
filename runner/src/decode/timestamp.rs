//! RFC 3339 event times on the hot path. Neighbouring events of a stream
//! share their date and hour (even out of order by minutes), so the parser
//! remembers the last two hours `jiff` resolved and reads only the minutes,
//! seconds and fraction of a canonical UTC time (`2026-11-24T10:00:00.123Z`)
//! itself. Every other form (offsets,
//! lower-case separators, leap seconds, times before 1970) goes to `jiff`
//! whole, so the result is always exactly jiff's.
//!
//! The remembered hours are per thread, so that the engine's worker threads
//! share the decoder without sharing a cache line; it depends only on the
//! text, so every parser of a thread can use it.

use std::cell::Cell;

thread_local! {
    /// `YYYY-MM-DDTHH` of the last two hours of canonical times this
    /// thread read, the latest first, and when each starts. Two, because
    /// out-of-order events around the turn of an hour alternate between
    /// its two sides. Zero bytes match no time.
    static RECENT_HOURS: Cell<[([u8; 13], i64); 2]> = const { Cell::new([([0; 13], 0); 2]) };
}

#[derive(Debug, Default)]
pub struct Rfc3339Parser;

impl Rfc3339Parser {
    /// Milliseconds since the Unix epoch (the fraction truncated), or why
    /// `text` is not an RFC 3339 time.
    pub fn millis(&self, text: &str) -> Result<i64, jiff::Error> {
        match self.canonical_utc(text.as_bytes()) {
            Some(millis) => Ok(millis),
            None => text
                .parse::<jiff::Timestamp>()
                .map(|time| time.as_millisecond()),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` within an hour seen before (or
    /// one jiff accepts now); `None` sends the text to jiff.
    fn canonical_utc(&self, text: &[u8]) -> Option<i64> {
        let (hour, rest) = text.split_first_chunk::<13>()?;
        let [b':', m1, m2, b':', s1, s2, tail @ ..] = rest else {
            return None;
        };
        let (minutes, seconds) = (sexagesimal(*m1, *m2)?, sexagesimal(*s1, *s2)?);
        let millis = match tail {
            [b'Z'] => 0,
            // Milliseconds, the usual form, read without a loop.
            [b'.', hundreds, tens, units, b'Z'] => {
                i64::from(digit(*hundreds)?) * 100
                    + i64::from(digit(*tens)?) * 10
                    + i64::from(digit(*units)?)
            }
            [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
                let mut millis = 0;
                for place in 0..3 {
                    let value = fraction.get(place).map_or(Some(0), |d| digit(*d))?;
                    millis = millis * 10 + i64::from(value);
                }
                if !fraction.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                millis
            }
            _ => return None,
        };
        Some(self.hour_start(hour)? + (minutes * 60 + seconds) * 1000 + millis)
    }

    fn hour_start(&self, hour: &[u8; 13]) -> Option<i64> {
        let recent = RECENT_HOURS.get();
        if let Some((_, start)) = recent.iter().find(|(known, _)| known == hour) {
            return Some(*start);
        }
        let canonical = hour.iter().enumerate().all(|(i, byte)| match i {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            _ => byte.is_ascii_digit(),
        });
        if !canonical {
            return None;
        }
        let text = std::str::from_utf8(hour).ok()?;
        let start = format!("{text}:00:00Z")
            .parse::<jiff::Timestamp>()
            .ok()?
            .as_millisecond();
        // Before 1970 jiff's truncation and ours differ in direction.
        if start < 0 {
            return None;
        }
        RECENT_HOURS.set([(*hour, start), recent[0]]);
        Some(start)
    }
}

fn digit(byte: u8) -> Option<u8> {
    byte.is_ascii_digit().then(|| byte - b'0')
}

/// Two digits below 60 (minutes or seconds; a leap second goes to jiff).
fn sexagesimal(tens: u8, units: u8) -> Option<i64> {
    let value = digit(tens)? * 10 + digit(units)?;
    (value < 60).then_some(i64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jiff_millis(text: &str) -> Option<i64> {
        text.parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond())
    }

    #[test]
    fn agrees_with_jiff_on_canonical_and_other_forms() {
        let parser = Rfc3339Parser;
        let mut texts = Vec::new();
        for millis in (0..36_000_000_i64).step_by(97_919) {
            let time = jiff::Timestamp::from_millisecond(1_795_514_400_000 + millis).unwrap();
            for format in [
                "%Y-%m-%dT%H:%M:%SZ",
                "%Y-%m-%dT%H:%M:%S%.fZ",
                "%Y-%m-%dT%H:%M:%S%.3fZ",
            ] {
                texts.push(time.strftime(format).to_string());
            }
        }
        texts.extend(
            [
                "2026-11-24T10:00:00.1234567Z",
                "2026-11-24T10:00:59.999999999Z",
                "2026-11-24t10:00:00.5z",
                "2026-11-24T10:00:00.5+01:00",
                "2026-11-24T10:00:00-00:30",
                "1969-12-31T23:59:59.999Z",
                "2026-12-31T23:59:60Z",
                "2026-02-30T10:00:00Z",
                "2026-11-24T10:00:00.Z",
                "2026-11-24T10:00:00.1234567890Z",
                "2026-11-24T10:00:0xZ",
                "2026-11-24T10:60:00Z",
                "2026-11-24T24:00:00Z",
                "2026-11-24T10:00:00.12aZ",
                "2026-11-24T10:00",
                "2026-11-24 10:00:00Z",
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            assert_eq!(parser.millis(text).ok(), jiff_millis(text), "{text}");
        }
    }
}
