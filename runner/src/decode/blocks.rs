//! Where an event's quotes are, the bytes no plain string may hold
//! (backslashes, control characters) and the bytes of UTF-8 sequences
//! (0x80 and above), marked 64 bytes at a time in three bit masks. The flat
//! scan then finds a string's end with a bit search instead of reading its
//! bytes, and checks as UTF-8 only strings that are not ASCII: on the
//! reference bench's events, the marks of both 64-byte blocks cost less
//! than reading one string did.

/// Bytes one block marks.
pub const BLOCK: usize = 64;

/// The marks of one block of an event: bit `i` stands for byte `start + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: usize,
    pub quotes: u64,
    /// Backslashes and control characters.
    pub specials: u64,
    /// Bytes of 0x80 and above.
    pub high: u64,
}

impl Block {
    /// The block of `bytes` that holds position `at`; bytes past the end
    /// are marked as spaces would be, with nothing.
    #[inline]
    pub fn containing(bytes: &[u8], at: usize) -> Self {
        let start = at - at % BLOCK;
        let [quotes, specials, high] = match bytes.get(start..).and_then(<[u8]>::first_chunk) {
            Some(block) => marks(block),
            // The last 64 bytes, shifted to start at `start`: read where
            // they are, as copying them first would stall the loads.
            None => match bytes.last_chunk::<BLOCK>() {
                Some(last) => {
                    // 64 or more (nothing) when `at` is past the end.
                    let shift = u32::try_from(start - (bytes.len() - BLOCK)).unwrap_or(u32::MAX);
                    marks(last).map(|bits| bits.checked_shr(shift).unwrap_or(0))
                }
                None => {
                    let rest = bytes.get(start..).unwrap_or_default();
                    let mut padded = [b' '; BLOCK];
                    padded[..rest.len()].copy_from_slice(rest);
                    marks(&padded)
                }
            },
        };
        Self {
            start,
            quotes,
            specials,
            high,
        }
    }
}

/// Quotes, specials and high bytes.
type Marks = [u64; 3];

#[cfg(target_arch = "x86_64")]
fn marks(block: &[u8; BLOCK]) -> Marks {
    // SAFETY: SSE2 is part of x86-64 itself: every CPU that runs this
    // binary has it.
    unsafe { sse2::marks(block) }
}

#[cfg(not(target_arch = "x86_64"))]
fn marks(block: &[u8; BLOCK]) -> Marks {
    byte_by_byte(block)
}

/// The marks read one byte at a time: other architectures' path, and what
/// the SSE2 path is tested against.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn byte_by_byte(block: &[u8; BLOCK]) -> Marks {
    block
        .iter()
        .enumerate()
        .fold([0; 3], |[quotes, specials, high], (i, byte)| {
            [
                quotes | u64::from(*byte == b'"') << i,
                specials | u64::from(matches!(byte, b'\\' | 0..0x20)) << i,
                high | u64::from(*byte >= 0x80) << i,
            ]
        })
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };

    use super::{BLOCK, Marks};

    /// Sixteen bytes at a time: a byte is a control character when the
    /// larger of it and 0x1f is 0x1f, and 0x80 or above when its sign bit
    /// is set.
    #[target_feature(enable = "sse2")]
    pub(super) fn marks(block: &[u8; BLOCK]) -> Marks {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let last_control = _mm_set1_epi8(0x1f);
        let [mut quotes, mut specials, mut high] = [0; 3];
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            let (first, second) = bytes.split_at(8);
            let half = |half: &[u8]| i64::from_le_bytes(half.try_into().unwrap_or_default());
            let bytes = _mm_set_epi64x(half(second), half(first));
            let quote_bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, quote)) as u16;
            let special_bits = _mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(bytes, backslash),
                _mm_cmpeq_epi8(_mm_max_epu8(bytes, last_control), last_control),
            )) as u16;
            let high_bits = _mm_movemask_epi8(bytes) as u16;
            quotes |= u64::from(quote_bits) << (16 * lane);
            specials |= u64::from(special_bits) << (16 * lane);
            high |= u64::from(high_bits) << (16 * lane);
        }
        [quotes, specials, high]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_value_is_marked_as_one_byte_at_a_time_marks_it() {
        for value in 0..=u8::MAX {
            for at in 0..BLOCK {
                let mut block = [b'a'; BLOCK];
                block[at] = value;
                block[(at * 7 + 3) % BLOCK] = b'"';
                assert_eq!(marks(&block), byte_by_byte(&block), "{value:#x} at {at}");
            }
        }
        assert_eq!(marks(&[b'"'; BLOCK]), [u64::MAX, 0, 0]);
        assert_eq!(marks(&[0xe9; BLOCK]), [0, 0, u64::MAX]);
    }

    #[test]
    fn the_last_block_is_marked_up_to_the_end_whatever_its_length() {
        for length in 0..200 {
            let bytes: Vec<u8> = (0..length).map(|i| b"a\"b\\c\n\xc3"[i % 7]).collect();
            for start in (0..length).step_by(BLOCK) {
                let mut expected = [b' '; BLOCK];
                let end = length.min(start + BLOCK);
                expected[..end - start].copy_from_slice(&bytes[start..end]);
                let block = Block::containing(&bytes, start + (end - start) / 2);
                assert_eq!(block.start, start);
                assert_eq!(
                    [block.quotes, block.specials, block.high],
                    byte_by_byte(&expected),
                    "{length} bytes, block at {start}"
                );
            }
        }
    }

    #[test]
    fn a_short_last_block_is_padded_with_nothing_marked() {
        let bytes = [b"{\"a\":\"\\\\\"}".as_slice(), &[b'x'; 60]].concat();
        let first = Block::containing(&bytes, 5);
        assert_eq!((first.start, first.quotes), (0, 0b1_0010_1010));
        assert_eq!(first.specials, 0b1100_0000);
        let last = Block::containing(&bytes, 64);
        assert_eq!((last.start, last.quotes, last.specials), (64, 0, 0));
        let past_the_end = Block::containing(&[0xff; 100], 140);
        assert_eq!(past_the_end.high, 0);
    }
}
