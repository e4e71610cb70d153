//! The fast path of decoding: an event that is one flat JSON object of
//! plain values (strings without escapes, numbers, `true`, `false`,
//! `null`), which is what most streams carry. It is read in one scan that
//! checks the JSON grammar as it goes; anything else (a nested value, an
//! escape, a control character, a malformed token) ends the scan with
//! [`NotFlat`], and the event goes to the `serde_json` reader, which
//! decides: so an event is refused or read exactly as `serde_json` would.
//!
//! Measured on the reference query's events (~91 bytes, four fields):
//! `serde_json` with the fields' raw values borrowed and the rest ignored
//! took 160–230 ns an event; `jiter` 180–300 ns and `simd-json` (with
//! runtime CPU detection) 190–290 ns did no better on objects this small.

use std::borrow::Cow;

use super::{FieldValue, number_value, paths::PathTree};

/// The event is not a flat object of plain values (or not valid JSON):
/// the general reader must decide.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFlat;

/// Reads the flat JSON object `json` (already trimmed, known to start with
/// `{` and end with `}`) into the slots of `tree`'s top-level paths. Text
/// outside strings must be ASCII to be JSON, so only strings with other
/// bytes are checked as UTF-8 (the general reader checks the whole event).
pub fn read<'a>(
    tree: &PathTree,
    json: &'a [u8],
    values: &mut [FieldValue<'a>],
) -> Result<(), NotFlat> {
    let mut scan = Scan { bytes: json, at: 1 };
    scan.skip_space();
    if scan.eat(b'}') {
        return scan.end();
    }
    loop {
        let key = scan.string()?;
        scan.skip_space();
        if !scan.eat(b':') {
            return Err(NotFlat);
        }
        scan.skip_space();
        let value = scan.plain_value()?;
        if let Some(node) = tree.child(key) {
            if node.has_paths_below() {
                // A path goes on below this key: a nested event.
                return Err(NotFlat);
            }
            if let Some(slot) = node.slot() {
                values[slot] = value.field_value()?;
            }
        }
        scan.skip_space();
        if scan.eat(b'}') {
            return scan.end();
        }
        if !scan.eat(b',') {
            return Err(NotFlat);
        }
        scan.skip_space();
    }
}

/// A value the scan read, as it knows it.
enum PlainValue<'a> {
    /// A string's content: no escapes, valid UTF-8.
    Str(&'a [u8]),
    /// A number's text, checked against JSON's grammar.
    Number(&'a [u8]),
    Bool(bool),
    Null,
}

impl<'a> PlainValue<'a> {
    fn field_value(&self) -> Result<FieldValue<'a>, NotFlat> {
        let text = |bytes| std::str::from_utf8(bytes).map_err(|_| NotFlat);
        Ok(match *self {
            Self::Str(content) => FieldValue::Str(Cow::Borrowed(text(content)?)),
            Self::Number(number) => number_value(text(number)?).map_err(|_| NotFlat)?,
            Self::Bool(value) => FieldValue::Bool(value),
            Self::Null => FieldValue::Null,
        })
    }
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The object's closing brace must be the last byte.
    fn end(&self) -> Result<(), NotFlat> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(NotFlat)
        }
    }

    /// A string without escapes or control characters; its content, which
    /// is valid UTF-8.
    fn string(&mut self) -> Result<&'a [u8], NotFlat> {
        if !self.eat(b'"') {
            return Err(NotFlat);
        }
        let start = self.at;
        let rest = &self.bytes[start..];
        let mut length = first_special(rest).ok_or(NotFlat)?;
        if rest[length] >= 0x80 {
            // Not ASCII: find the end byte by byte, then check the whole.
            length += rest[length..]
                .iter()
                .position(|byte| matches!(byte, b'"' | b'\\' | 0..0x20))
                .ok_or(NotFlat)?;
            std::str::from_utf8(&rest[..length]).map_err(|_| NotFlat)?;
        }
        if rest[length] != b'"' {
            return Err(NotFlat);
        }
        self.at = start + length + 1;
        Ok(&rest[..length])
    }

    /// A plain value: a string, a number, or a literal.
    fn plain_value(&mut self) -> Result<PlainValue<'a>, NotFlat> {
        let start = self.at;
        Ok(match self.peek().ok_or(NotFlat)? {
            b'"' => PlainValue::Str(self.string()?),
            b't' => self.literal(b"true", PlainValue::Bool(true))?,
            b'f' => self.literal(b"false", PlainValue::Bool(false))?,
            b'n' => self.literal(b"null", PlainValue::Null)?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
                PlainValue::Number(&self.bytes[start..self.at])
            }
            _ => return Err(NotFlat),
        })
    }

    fn literal(&mut self, word: &[u8], value: PlainValue<'a>) -> Result<PlainValue<'a>, NotFlat> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(NotFlat)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), NotFlat> {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(NotFlat),
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), NotFlat> {
        let start = self.at;
        self.digits();
        if self.at > start {
            Ok(())
        } else {
            Err(NotFlat)
        }
    }
}

/// Where the first `"`, `\\`, control character or non-ASCII byte of
/// `bytes` is. Eight bytes at a time, as serde_json's own string reader
/// does: field strings are a few to a few dozen bytes, too short for a SIMD
/// search to pay for its set-up (measured slower, as was one plain loop).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    /// High bit of each byte of `word` that is zero. A borrow can also set
    /// it in bytes above a zero byte, never below: the lowest is right.
    fn zero_bytes(word: u64) -> u64 {
        word.wrapping_sub(ONES) & !word
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = (zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | word.wrapping_sub(ONES * 0x20) & !word
            | word)
            & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|byte| matches!(byte, b'"' | b'\\' | 0..0x20 | 0x80..))
        .map(|at| offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: [&str; 5] = ["ts", "event_type", "value", "user.id", "flag"];

    fn tree() -> PathTree {
        PathTree::new(&PATHS.map(str::to_owned))
    }

    fn missing<'a>() -> Vec<FieldValue<'a>> {
        vec![FieldValue::Missing; PATHS.len()]
    }

    /// Every event that one byte deleted, replaced or inserted makes of a
    /// few seeds, kept to what the decoder hands on (in braces).
    fn events() -> Vec<Vec<u8>> {
        const SEEDS: [&str; 7] = [
            r#"{"ts":"2026-11-24T10:00:00.250Z","event_type":"click","key":"k1","value":13.94}"#,
            r#"{ "ts" : 1500 , "value":-0.5e+3,"flag":true,"n":null,"f":false,"event_type":"" }"#,
            r#"{"value":0,"value":12E-2,"ts":"é","clé":"dépôt de données"}"#,
            r#"{"ts":"x","user":{"id":7},"flag":false}"#,
            r#"{"a":[1,2],"event_type":"tab	in"}"#,
            r#"{"event_type":"a string of some thirty-odd bytes","ts":"0123456789abcdef"}"#,
            "{}",
        ];
        const BYTES: [u8; 19] = [
            b'"', b'\\', b'{', b'}', b'[', b',', b':', b' ', b'0', b'7', b'-', b'+', b'.', b'e',
            0x01, b'\n', 0xc3, 0xa9, 0xff,
        ];
        let mut events = Vec::new();
        for seed in SEEDS {
            let seed = seed.as_bytes();
            events.push(seed.to_vec());
            for at in 0..seed.len() {
                let mut deleted = seed.to_vec();
                deleted.remove(at);
                events.push(deleted);
                for byte in BYTES {
                    let mut replaced = seed.to_vec();
                    replaced[at] = byte;
                    events.push(replaced);
                    let mut inserted = seed.to_vec();
                    inserted.insert(at, byte);
                    events.push(inserted);
                }
            }
        }
        events
            .into_iter()
            .filter(|event| event.starts_with(b"{") && event.ends_with(b"}"))
            .collect()
    }

    #[test]
    fn what_the_scan_reads_serde_json_reads_the_same_and_the_rest_goes_to_serde_json() {
        let tree = tree();
        let (mut scanned, mut handed_on) = (0, 0);
        for event in events() {
            let mut flat = missing();
            match read(&tree, &event, &mut flat) {
                Ok(()) => {
                    scanned += 1;
                    let shown = String::from_utf8_lossy(&event);
                    let text = std::str::from_utf8(&event)
                        .unwrap_or_else(|_| panic!("the scan read {shown:?}, which is not UTF-8"));
                    let mut general = missing();
                    assert_eq!(
                        tree.read(text, &mut general),
                        Ok(()),
                        "the scan read {shown:?}, which serde_json refuses"
                    );
                    assert_eq!(flat, general, "{shown:?}");
                }
                Err(NotFlat) => handed_on += 1,
            }
        }
        assert!(
            scanned > 1000 && handed_on > 1000,
            "{scanned} scanned, {handed_on} handed on"
        );
    }

    #[test]
    fn the_first_special_byte_is_found_wherever_it_is() {
        for length in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff] {
                for at in 0..length {
                    let mut bytes = vec![b'a'; length];
                    bytes[at] = special;
                    // Later special bytes must not hide the first.
                    for later in bytes.iter_mut().skip(at + 1).step_by(3) {
                        *later = b'"';
                    }
                    assert_eq!(first_special(&bytes), Some(at), "{bytes:?}");
                }
            }
            assert_eq!(first_special(&vec![b' '; length]), None);
        }
    }

    #[test]
    fn nested_and_escaped_events_are_handed_on() {
        let tree = tree();
        for event in [
            r#"{"ts":"a","user":{"id":7}}"#,
            r#"{"ts":"a\"b"}"#,
            r#"{"ts":"a","tags":["x"]}"#,
            r#"{"ts":"a"} "#,
        ] {
            assert_eq!(
                read(&tree, event.as_bytes(), &mut missing()),
                Err(NotFlat),
                "{event}"
            );
        }
    }
}
