//! Chunk buffers used again. A source that reads chunk after chunk (the
//! file source) would otherwise allocate each afresh, and buffers of a
//! megabyte come from the kernel as new pages, zeroed and mapped one fault
//! at a time (a tenth of the reference bench's CPU when epochs were held
//! whole); used again, the few buffers in flight also stay in cache.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Chunk, RecordSpan};

/// Buffers of dropped chunks, for a source's next chunks. It holds no more
/// than the most chunks that were alive at once: a buffer is only made new
/// when none is free.
#[derive(Clone, Debug, Default)]
pub struct ChunkBuffers(Arc<Mutex<Vec<Buffers>>>);

/// A chunk's payload bytes and record spans, emptied.
type Buffers = (Vec<u8>, Vec<RecordSpan>);

impl ChunkBuffers {
    /// An empty chunk with room for `bytes` of payloads and `records`
    /// records, in buffers used before when there are any; they come back
    /// here when the chunk is dropped.
    pub fn chunk(&self, range_index: usize, bytes: usize, records: usize) -> Chunk {
        let (mut buffer, mut spans) = self.free().pop().unwrap_or_default();
        buffer.reserve(bytes);
        spans.reserve(records);
        Chunk::from_parts(range_index, buffer, spans, Some(self.clone()))
    }

    /// Frees the buffers kept, when the source has nothing to read.
    pub fn release(&self) {
        *self.free() = Vec::new();
    }

    pub(super) fn put(&self, mut buffer: Vec<u8>, mut records: Vec<RecordSpan>) {
        buffer.clear();
        records.clear();
        self.free().push((buffer, records));
    }

    fn free(&self) -> MutexGuard<'_, Vec<Buffers>> {
        // The list stays consistent whatever a panicking holder did.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
