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
//! This scan, which finds strings in the marks of [`super::blocks`], takes
//! 70–100 ns (`cargo bench -p sluice-runner --bench decode`).

use std::{borrow::Cow, ops::Range};

use super::{
    FieldValue,
    blocks::{BLOCK, Block},
    number_value,
    paths::PathTree,
};

/// The event is not a flat object of plain values (or not valid JSON):
/// the general reader must decide.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFlat;

/// Reads the flat JSON object `bytes` (already trimmed, known to start
/// with `{` and end with `}`) into the slots of `tree`'s top-level paths.
/// Outside strings JSON is ASCII, so only strings that are not are checked
/// as UTF-8 (an event invalid elsewhere breaks the grammar): most events
/// need no UTF-8 check at all.
pub fn read<'a>(
    tree: &PathTree,
    bytes: &'a [u8],
    values: &mut [FieldValue<'a>],
) -> Result<(), NotFlat> {
    let mut strings = Strings {
        bytes,
        block: Block::containing(bytes, 0),
    };
    let mut at = space(bytes, 1);
    if byte(bytes, at) == b'}' {
        return end(bytes, at + 1);
    }
    loop {
        let (key, key_end) = strings.read(at)?;
        at = space(bytes, key_end + 1);
        if byte(bytes, at) != b':' {
            return Err(NotFlat);
        }
        at = space(bytes, at + 1);
        let value;
        (value, at) = plain_value(bytes, &mut strings, at)?;
        if let Some(node) = tree.child(key.as_bytes()) {
            if node.has_paths_below() {
                // A path goes on below this key: a nested event.
                return Err(NotFlat);
            }
            if let Some(slot) = node.slot() {
                // Emptied before the value is made, so that it is made in
                // place: a value made first and copied in after dropping
                // the old one stalled the copy (a tenth of the scan's time).
                let target = &mut values[slot];
                drop(std::mem::replace(target, FieldValue::Missing));
                *target = value.field_value(bytes)?;
            }
        }
        at = space(bytes, at);
        match byte(bytes, at) {
            b',' => at = space(bytes, at + 1),
            b'}' => return end(bytes, at + 1),
            _ => return Err(NotFlat),
        }
    }
}

/// A value the scan read, as it knows it.
enum PlainValue<'a> {
    /// A string's content, without escapes.
    Str(&'a str),
    /// Where a number's text is, checked against JSON's grammar.
    Number(Range<usize>),
    Bool(bool),
    Null,
}

impl<'a> PlainValue<'a> {
    /// The value, in the event `bytes`.
    fn field_value(self, bytes: &'a [u8]) -> Result<FieldValue<'a>, NotFlat> {
        Ok(match self {
            Self::Str(content) => FieldValue::Str(Cow::Borrowed(content)),
            Self::Number(number) => {
                let text = bytes.get(number).ok_or(NotFlat)?;
                let text = std::str::from_utf8(text).map_err(|_| NotFlat)?;
                number_value(text).map_err(|_| NotFlat)?
            }
            Self::Bool(value) => FieldValue::Bool(value),
            Self::Null => FieldValue::Null,
        })
    }
}

/// The byte at `at`; past the end, 0, which JSON allows nowhere outside
/// strings, so the grammar refuses it like any other.
fn byte(bytes: &[u8], at: usize) -> u8 {
    bytes.get(at).copied().unwrap_or(0)
}

/// Where the whitespace from `at` on ends.
fn space(bytes: &[u8], mut at: usize) -> usize {
    while matches!(byte(bytes, at), b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// The object's closing brace, ending at `at`, must be the last byte.
fn end(bytes: &[u8], at: usize) -> Result<(), NotFlat> {
    if at == bytes.len() {
        Ok(())
    } else {
        Err(NotFlat)
    }
}

/// The strings of an event, found in the marks of its blocks.
struct Strings<'a> {
    bytes: &'a [u8],
    /// The marks of the block strings were last searched in.
    block: Block,
}

impl<'a> Strings<'a> {
    /// The content of the string at `at`, and where its closing quote is:
    /// it ends at the next quote, unless a backslash or a control
    /// character comes first. A string with bytes of 0x80 and above must
    /// be UTF-8; one without is ASCII.
    #[inline(always)]
    fn read(&mut self, at: usize) -> Result<(&'a str, usize), NotFlat> {
        if byte(self.bytes, at) != b'"' {
            return Err(NotFlat);
        }
        let start = at + 1;
        let mut from = start;
        // Any bit set: the string has a byte of 0x80 or above.
        let mut high = 0;
        loop {
            let offset = from.wrapping_sub(self.block.start);
            if offset >= BLOCK {
                if from >= self.bytes.len() {
                    return Err(NotFlat);
                }
                self.block = Block::containing(self.bytes, from);
                continue;
            }
            let ahead = !0 << offset;
            let marks = (self.block.quotes | self.block.specials) & ahead;
            if marks == 0 {
                high |= self.block.high & ahead;
                from = self.block.start + BLOCK;
                continue;
            }
            let first = marks & marks.wrapping_neg();
            if self.block.specials & first != 0 {
                return Err(NotFlat);
            }
            high |= self.block.high & ahead & (first - 1);
            let end = self.block.start + first.trailing_zeros() as usize;
            let content = self.bytes.get(start..end).ok_or(NotFlat)?;
            let text = if high == 0 {
                // SAFETY: the blocks' marks, tested against the bytes one
                // by one, show no byte of 0x80 or above in `content`: it is
                // ASCII, which is UTF-8.
                unsafe { std::str::from_utf8_unchecked(content) }
            } else {
                std::str::from_utf8(content).map_err(|_| NotFlat)?
            };
            return Ok((text, end));
        }
    }
}

/// A plain value at `at`: a string, a number, or a literal; and where it ends.
fn plain_value<'a>(
    bytes: &'a [u8],
    strings: &mut Strings<'a>,
    at: usize,
) -> Result<(PlainValue<'a>, usize), NotFlat> {
    let literal = |word: &[u8], value| {
        let rest = bytes.get(at..).unwrap_or_default();
        if rest.starts_with(word) {
            Ok((value, at + word.len()))
        } else {
            Err(NotFlat)
        }
    };
    match byte(bytes, at) {
        b'"' => {
            let (content, end) = strings.read(at)?;
            Ok((PlainValue::Str(content), end + 1))
        }
        b't' => literal(b"true", PlainValue::Bool(true)),
        b'f' => literal(b"false", PlainValue::Bool(false)),
        b'n' => literal(b"null", PlainValue::Null),
        b'-' | b'0'..=b'9' => {
            let end = number_end(bytes, at)?;
            Ok((PlainValue::Number(at..end), end))
        }
        _ => Err(NotFlat),
    }
}

/// Where the number at `at` ends:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number_end(bytes: &[u8], mut at: usize) -> Result<usize, NotFlat> {
    at += usize::from(byte(bytes, at) == b'-');
    match byte(bytes, at) {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits(bytes, at + 1),
        _ => return Err(NotFlat),
    }
    if byte(bytes, at) == b'.' {
        at = some_digits(bytes, at + 1)?;
    }
    if matches!(byte(bytes, at), b'e' | b'E') {
        at += 1;
        at += usize::from(matches!(byte(bytes, at), b'+' | b'-'));
        at = some_digits(bytes, at)?;
    }
    Ok(at)
}

/// Where the digits from `at` on end.
fn digits(bytes: &[u8], mut at: usize) -> usize {
    while byte(bytes, at).is_ascii_digit() {
        at += 1;
    }
    at
}

/// Where the digits from `at` on end; there must be one at least.
fn some_digits(bytes: &[u8], at: usize) -> Result<usize, NotFlat> {
    let end = digits(bytes, at);
    if end > at { Ok(end) } else { Err(NotFlat) }
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

    /// Every event that deleting a byte of a few seeds, or replacing or
    /// inserting one (or a two-byte character), makes of them, kept to what
    /// the decoder hands on: bytes in braces.
    fn events() -> Vec<Vec<u8>> {
        const SEEDS: [&str; 8] = [
            r#"{"ts":"2026-11-24T10:00:00.250Z","event_type":"click","key":"k1","value":13.94}"#,
            r#"{ "ts" : 1500 , "value":-0.5e+3,"flag":true,"n":null,"f":false,"event_type":"" }"#,
            r#"{"value":0,"value":12E-2,"ts":"é","clé":"dépôt de données"}"#,
            r#"{"ts":"x","user":{"id":7},"flag":false}"#,
            r#"{"a":[1,2],"event_type":"tab	in"}"#,
            r#"{"event_type":"a string of some thirty-odd bytes","ts":"0123456789abcdef"}"#,
            "{}",
            // Strings across the 64-byte blocks the scan marks.
            r#"{"a":"a string that runs from the first block of the event past the second and into its third","ts":"x"}"#,
        ];
        // 0xc3 alone and 0xff are not UTF-8.
        const BYTES: &[u8] = b"\"\\{}[,: 07-+.e\x01\n\x7f\xc3\xff";
        let characters: Vec<&[u8]> = BYTES.chunks(1).chain(["é".as_bytes()]).collect();
        let mut events = Vec::new();
        for seed in SEEDS {
            let seed = seed.as_bytes();
            events.push(seed.to_vec());
            for at in 0..seed.len() {
                let mut deleted = seed.to_vec();
                deleted.remove(at);
                events.push(deleted);
                for bytes in &characters {
                    let mut replaced = seed.to_vec();
                    replaced.splice(at..=at, bytes.iter().copied());
                    events.push(replaced);
                    let mut inserted = seed.to_vec();
                    inserted.splice(at..at, bytes.iter().copied());
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
                    let Ok(text) = std::str::from_utf8(&event) else {
                        panic!("the scan read {shown:?}, which is not UTF-8");
                    };
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
