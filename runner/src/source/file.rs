//! JSON lines from a file, or from the `*.jsonl` / `*.json` files of a
//! directory read in name order. The position is a byte offset into the files
//! laid end to end in name order, so files may be added (sorting after the
//! existing ones) and the last file may grow while `follow` is set.
//!
//! An epoch is bounded by lines, so only reading it finds where it ends: a
//! new epoch is planned as [`Planned::Reading`] and its chunks are read as
//! the engine asks for them: by its worker threads through the source's
//! [`Source::feed`], each reading the chunk it processes next, or by the
//! pipeline loop. No more than a few chunks are held at once, whatever the
//! epoch's size.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use sluice_crds::FileSource as FileSpec;

use super::{
    Chunk, ChunkBuffers, ChunkFeed, PartitionId, PartitionRange, Planned, Position, Positions,
    SharedFeed, Source, SourceContext, SourceError, budget::EpochBudget,
};

const KIND: &str = "file";
const DEFAULT_MAX_LINES: i64 = 100_000;
const CHUNK_LINES: usize = 8192;
/// Bytes read from a file at once.
const READ_BLOCK: u64 = 256 * 1024;
/// How long `plan` waits for appended data in follow mode before planning an
/// empty epoch.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct FileSource {
    files: Files,
    partition: PartitionId,
    /// `maxLinesPerTrigger` and the byte budget; a file source reads while
    /// planning, so it bounds the bytes exactly.
    budget: EpochBudget,
    /// The epoch being read.
    reading: Option<Reading>,
}

/// The files to read.
#[derive(Clone)]
struct Files {
    path: PathBuf,
    follow: bool,
    buffers: ChunkBuffers,
}

/// An epoch being read from `start`.
struct Reading {
    start: i64,
    /// Shared with the engine's worker threads while they take its chunks.
    lines: Arc<Mutex<LineReader>>,
    /// Where the epoch ends, once its last chunk has been taken.
    end: Option<i64>,
}

/// One file of the set and its place in the global byte order.
struct Segment {
    path: PathBuf,
    start: i64,
    len: i64,
}

/// The file being read by a [`LineReader`].
struct OpenSegment {
    path: PathBuf,
    file: File,
    /// Bytes still to read from it.
    unread: u64,
    /// Whether its last line ends with the file, newline or not: once the
    /// file is complete (a later file exists, or not following) or at a
    /// replayed range's end.
    last_line_ends: bool,
}

/// Reads whole lines from `start` into chunks, one chunk at a time,
/// stopping at `end` (a replayed range) or once `budget` is spent (a new
/// epoch: its lines or bytes; the line that reaches the byte bound is the
/// last). Files are read in blocks straight into the chunk being filled,
/// whose records are spans of its buffer: each byte is copied once.
struct LineReader {
    files: Files,
    /// A chunk read to see whether there is anything to read, handed out first.
    first: Option<Chunk>,
    segments: Vec<Segment>,
    next_segment: usize,
    open: Option<OpenSegment>,
    chunk: Chunk,
    /// Start of the bytes in the chunk's buffer not yet split into lines.
    scanned: usize,
    start: i64,
    /// The end of the last line taken.
    position: i64,
    lines: i64,
    end: Option<i64>,
    budget: EpochBudget,
    stopped: bool,
}

impl FileSource {
    pub fn new(spec: &FileSpec, context: &SourceContext) -> Result<Self, SourceError> {
        Ok(Self {
            partition: PartitionId::new(spec.path.clone(), 0),
            files: Files {
                path: PathBuf::from(&spec.path),
                follow: spec.follow,
                buffers: ChunkBuffers::default(),
            },
            budget: EpochBudget {
                max_records: spec
                    .max_lines_per_trigger
                    .unwrap_or(DEFAULT_MAX_LINES)
                    .min(context.max_records_per_epoch)
                    .max(1),
                max_bytes: context.max_bytes_per_epoch.max(1),
            },
            reading: None,
        })
    }

    fn offset(&self, position: &Position) -> Result<i64, SourceError> {
        match position {
            Position::Offset(offset) => Ok(*offset),
            other => Err(SourceError::BadPosition {
                source_kind: KIND,
                partition: self.partition.clone(),
                position: other.clone(),
            }),
        }
    }

    fn range(&self, start: i64, end: i64) -> PartitionRange {
        PartitionRange {
            partition: self.partition.clone(),
            start: Position::Offset(start),
            end: Position::Offset(end),
        }
    }

    /// Starts handing out the chunks `reader` reads.
    fn start_reading(&mut self, start: i64, reader: LineReader) {
        self.reading = Some(Reading {
            start,
            lines: Arc::new(Mutex::new(reader)),
            end: None,
        });
    }
}

/// The reader, whatever a thread that panicked holding it left: a panic
/// fails the epoch, which is read again from its start.
fn lock(lines: &Mutex<LineReader>) -> MutexGuard<'_, LineReader> {
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Files {
    fn io_error(&self, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io {
            source_kind: KIND,
            path: path.display().to_string(),
            error,
        }
    }

    /// The files in name order with their global offsets.
    fn segments(&self) -> Result<Vec<Segment>, SourceError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| self.io_error(&self.path, e))?;
        let mut paths = if meta.is_dir() {
            let entries =
                std::fs::read_dir(&self.path).map_err(|e| self.io_error(&self.path, e))?;
            let mut paths = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| self.io_error(&self.path, e))?.path();
                let wanted = path
                    .extension()
                    .is_some_and(|ext| ext == "jsonl" || ext == "json");
                if wanted && path.is_file() {
                    paths.push(path);
                }
            }
            paths
        } else {
            vec![self.path.clone()]
        };
        paths.sort();
        let mut start = 0;
        let mut segments = Vec::with_capacity(paths.len());
        for path in paths {
            let len = std::fs::metadata(&path)
                .map_err(|e| self.io_error(&path, e))?
                .len() as i64;
            segments.push(Segment { path, start, len });
            start += len;
        }
        Ok(segments)
    }

    /// A reader of the lines from `start` (see [`LineReader`]).
    fn lines(
        &self,
        start: i64,
        end: Option<i64>,
        budget: EpochBudget,
    ) -> Result<LineReader, SourceError> {
        Ok(LineReader {
            first: None,
            segments: self.segments()?,
            next_segment: 0,
            open: None,
            chunk: self.buffers.chunk(0, READ_BLOCK as usize, CHUNK_LINES),
            scanned: 0,
            start,
            position: start,
            lines: 0,
            end,
            budget,
            stopped: false,
            files: self.clone(),
        })
    }
}

impl ChunkFeed for LineReader {
    /// The next chunk of lines, `None` once the lines are read.
    fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        while !self.stopped {
            if let Some(full) = self.split_lines() {
                return Ok(Some(full));
            }
            if self.spent() {
                break;
            }
            match &mut self.open {
                Some(open) if open.unread > 0 => {
                    let read = (&mut open.file)
                        .take(open.unread.min(READ_BLOCK))
                        .read_to_end(self.chunk.buffer_mut())
                        .map_err(|e| self.files.io_error(&open.path, e))?;
                    // A file that shrank since it was listed ends here.
                    open.unread = if read == 0 {
                        0
                    } else {
                        open.unread - read as u64
                    };
                }
                Some(_) => {
                    // The file is read: bytes past its last whole line are
                    // read again by the next plan.
                    let partial = self.scanned < self.chunk.bytes();
                    self.chunk.buffer_mut().truncate(self.scanned);
                    self.open = None;
                    if partial {
                        break;
                    }
                }
                None => {
                    if !self.open_next_file()? {
                        break;
                    }
                }
            }
        }
        self.stopped = true;
        self.chunk.buffer_mut().truncate(self.scanned);
        Ok((!self.chunk.is_empty()).then(|| std::mem::replace(&mut self.chunk, Chunk::new(0))))
    }
}

impl LineReader {
    fn spent(&self) -> bool {
        self.budget.is_spent(self.lines, self.position - self.start)
    }

    /// Seals the whole lines of the bytes read into the chunk; hands the
    /// chunk out once it is full.
    fn split_lines(&mut self) -> Option<Chunk> {
        let (last_block, last_line_ends) = self.open.as_ref().map_or((true, false), |open| {
            (open.unread == 0, open.last_line_ends)
        });
        while !self.spent() && self.scanned < self.chunk.bytes() {
            let rest = &self.chunk.buffer()[self.scanned..];
            let (line_len, consumed) = match memchr::memchr(b'\n', rest) {
                Some(newline) => (newline, newline + 1),
                None if last_block && last_line_ends => (rest.len(), rest.len()),
                None => break,
            };
            let line = &rest[..line_len];
            let line_len = line_len - usize::from(line.ends_with(b"\r"));
            if !rest[..line_len].iter().all(u8::is_ascii_whitespace) {
                self.chunk
                    .seal(self.scanned..self.scanned + line_len, self.position);
                self.lines += 1;
            }
            self.position += consumed as i64;
            self.scanned += consumed;
            if self.chunk.len() >= CHUNK_LINES {
                return Some(self.take_full_chunk());
            }
        }
        None
    }

    /// The chunk filled so far; the bytes not split into lines yet (a line
    /// not read to its end) start the next one, which will likely be as long.
    fn take_full_chunk(&mut self) -> Chunk {
        let split = self.scanned;
        let mut next =
            self.files
                .buffers
                .chunk(0, self.chunk.bytes() + READ_BLOCK as usize, CHUNK_LINES);
        next.buffer_mut()
            .extend_from_slice(&self.chunk.buffer()[split..]);
        self.chunk.buffer_mut().truncate(split);
        self.scanned = 0;
        std::mem::replace(&mut self.chunk, next)
    }

    /// Opens the next file that holds bytes from the position on; `false`
    /// when none is left (or the end is reached).
    fn open_next_file(&mut self) -> Result<bool, SourceError> {
        if self.end.is_some_and(|end| self.position >= end) {
            return Ok(false);
        }
        while let Some(segment) = self.segments.get(self.next_segment) {
            self.next_segment += 1;
            let segment_end = segment.start + segment.len;
            if segment_end <= self.position {
                continue;
            }
            let read_to = self.end.map_or(segment_end, |end| end.min(segment_end));
            let io_error = |e| self.files.io_error(&segment.path, e);
            let mut file = File::open(&segment.path).map_err(io_error)?;
            file.seek(SeekFrom::Start((self.position - segment.start) as u64))
                .map_err(io_error)?;
            self.open = Some(OpenSegment {
                path: segment.path.clone(),
                file,
                unread: (read_to - self.position) as u64,
                last_line_ends: !self.files.follow
                    || self.next_segment < self.segments.len()
                    || self.end.is_some(),
            });
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait]
impl Source for FileSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError> {
        // An epoch not read to its end was abandoned.
        self.reading = None;
        let start = match committed.get(&self.partition) {
            Some(position) => self.offset(position)?,
            None => 0,
        };
        let mut reader = self.files.lines(start, None, self.budget)?;
        let mut first = reader.next_chunk()?;
        if first.is_none() {
            self.files.buffers.release();
            if !self.files.follow {
                return Ok(Planned::Exhausted);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            reader = self.files.lines(start, None, self.budget)?;
            first = reader.next_chunk()?;
            if first.is_none() {
                return Ok(Planned::Ranges(vec![self.range(start, start)]));
            }
        }
        reader.first = first;
        self.start_reading(start, reader);
        Ok(Planned::Reading(vec![self.range(start, start)]))
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        self.reading = None;
        match ranges {
            [] => Ok(()),
            [range] => {
                let start = self.offset(&range.start)?;
                let end = self.offset(&range.end)?;
                let reader = self.files.lines(start, Some(end), EpochBudget::UNBOUNDED)?;
                self.start_reading(start, reader);
                Ok(())
            }
            [_, extra, ..] => Err(SourceError::BadPosition {
                source_kind: KIND,
                partition: extra.partition.clone(),
                position: extra.start.clone(),
            }),
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        let Some(reading) = &mut self.reading else {
            return Ok(None);
        };
        if reading.end.is_some() {
            return Ok(None);
        }
        let mut lines = lock(&reading.lines);
        let chunk = lines.next_chunk()?;
        if chunk.is_none() {
            reading.end = Some(lines.position);
        }
        Ok(chunk)
    }

    fn feed(&self) -> Option<SharedFeed> {
        let reading = self.reading.as_ref().filter(|r| r.end.is_none())?;
        Some(Arc::clone(&reading.lines) as SharedFeed)
    }

    fn ranges_read(&self) -> Result<Vec<PartitionRange>, SourceError> {
        match &self.reading {
            Some(Reading {
                start,
                end: Some(end),
                ..
            }) => Ok(vec![self.range(*start, *end)]),
            _ => Err(SourceError::Unavailable {
                source_kind: KIND,
                message: "asked where an epoch ends before it was read to its end".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn source(path: &Path, max_lines: i64, follow: bool) -> FileSource {
        source_within(path, max_lines, i64::MAX, follow)
    }

    fn source_within(path: &Path, max_lines: i64, max_bytes: i64, follow: bool) -> FileSource {
        let spec = FileSpec {
            path: path.display().to_string(),
            max_lines_per_trigger: Some(max_lines),
            follow,
        };
        let context = SourceContext {
            replica: 0,
            replicas: 1,
            max_records_per_epoch: i64::MAX,
            max_bytes_per_epoch: max_bytes,
        };
        FileSource::new(&spec, &context).unwrap()
    }

    /// Plans one epoch after `committed` and reads it on `threads`
    /// threads: (line, byte offset) pairs and the range.
    async fn epoch(
        source: &mut FileSource,
        committed: &Positions,
        threads: usize,
    ) -> Option<(Vec<(String, i64)>, PartitionRange)> {
        let ranges = match source.plan(committed).await.unwrap() {
            Planned::Exhausted => return None,
            Planned::Reading(_) => None,
            Planned::Ranges(ranges) => {
                source.start_epoch(&ranges).await.unwrap();
                Some(ranges)
            }
        };
        let lines = read_all(source, threads).await;
        let ranges = ranges.unwrap_or_else(|| source.ranges_read().unwrap());
        Some((lines, ranges[0].clone()))
    }

    /// The epoch's lines: with one thread from `next_chunk`, with more
    /// taken from the feed by that many threads at once (as the engine's
    /// workers take them), in the order of their offsets.
    async fn read_all(source: &mut FileSource, threads: usize) -> Vec<(String, i64)> {
        let lines_of = |chunk: Chunk| -> Vec<(String, i64)> {
            chunk
                .iter()
                .map(|r| (String::from_utf8(r.payload.to_vec()).unwrap(), r.offset))
                .collect()
        };
        let mut lines = Vec::new();
        if threads > 1
            && let Some(feed) = source.feed()
        {
            let taken = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        loop {
                            let chunk = feed.lock().unwrap().next_chunk().unwrap();
                            let Some(chunk) = chunk else { break };
                            taken.lock().unwrap().push(lines_of(chunk));
                        }
                    });
                }
            });
            let mut taken = taken.into_inner().unwrap();
            taken.sort_by_key(|chunk| chunk.first().map(|(_, offset)| *offset));
            lines.extend(taken.into_iter().flatten());
        }
        while let Some(chunk) = source.next_chunk().await.unwrap() {
            lines.extend(lines_of(chunk));
        }
        lines
    }

    /// Lines of varied lengths (some longer than a read block), CRLF endings
    /// and blank lines; returns the expected records.
    fn lines_file(path: &Path) -> Vec<(String, i64)> {
        let mut file = std::fs::File::create(path).unwrap();
        let mut expected = Vec::new();
        let mut offset = 0;
        for i in 0..30_000_usize {
            let padding = if i % 9_999 == 0 { 300_000 } else { i % 200 };
            let line = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(padding));
            let ending = match i % 7 {
                0 => "\r\n",
                1 => "\n  \n",
                _ => "\n",
            };
            write!(file, "{line}{ending}").unwrap();
            let size = (line.len() + ending.len()) as i64;
            expected.push((line, offset));
            offset += size;
        }
        expected
    }

    /// Reads every epoch of `source` from the start on `threads` threads,
    /// replaying each range on `replayer` as a restarted runner would, on
    /// one thread: the lines of each epoch (checked to be what the replay
    /// reads) and their ranges.
    async fn all_epochs(
        source: &mut FileSource,
        replayer: &mut FileSource,
        threads: usize,
    ) -> Vec<(Vec<(String, i64)>, PartitionRange)> {
        let mut committed = Positions::new();
        let mut epochs = Vec::new();
        while let Some((lines, range)) = epoch(source, &committed, threads).await {
            replayer
                .start_epoch(std::slice::from_ref(&range))
                .await
                .unwrap();
            let replayed = read_all(replayer, 1).await;
            assert!(
                replayed == lines,
                "the replay of {range:?} read other lines"
            );
            committed.insert(range.partition.clone(), range.end.clone());
            epochs.push((lines, range));
        }
        epochs
    }

    #[tokio::test]
    async fn lines_across_blocks_and_chunks_are_read_once_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let expected = lines_file(&path);
        for threads in [1, 3] {
            let mut planner = source(&path, 7_000, false);
            let mut replayer = source(&path, 1, false);
            let epochs = all_epochs(&mut planner, &mut replayer, threads).await;
            assert!(epochs.iter().all(|(lines, _)| lines.len() <= 7_000));
            let read: Vec<_> = epochs.into_iter().flat_map(|(lines, _)| lines).collect();
            assert_eq!(read.len(), expected.len());
            assert!(read == expected, "records differ from the file's lines");
        }
    }

    #[tokio::test]
    async fn lines_of_a_directory_are_read_once_in_name_order_whatever_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let expected = lines_file(&dir.path().join("all.jsonl"));
        // The same lines over three files, the middle one ending without a
        // newline (its last line ends with the file, as a later one exists).
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let text = std::fs::read(dir.path().join("all.jsonl")).unwrap();
        let newline_before = |at: usize| text[..at].iter().rposition(|b| *b == b'\n').unwrap();
        let (first, second) = (
            newline_before(text.len() / 3) + 1,
            newline_before(2 * text.len() / 3),
        );
        let parts = [
            ("a.jsonl", &text[..first]),
            ("b.jsonl", &text[first..second]),
            ("c.jsonl", &text[second + 1..]),
        ];
        for (name, part) in parts {
            std::fs::write(files.join(name), part).unwrap();
        }
        let texts: Vec<&str> = expected.iter().map(|(line, _)| line.as_str()).collect();
        for (max_lines, max_bytes) in [(7_000, i64::MAX), (12_345, 1 << 20), (i64::MAX, 3 << 20)] {
            for threads in [1, 2] {
                let mut planner = source_within(&files, max_lines, max_bytes, false);
                let mut replayer = source(&files, 1, false);
                let epochs = all_epochs(&mut planner, &mut replayer, threads).await;
                let read: Vec<String> = epochs
                    .into_iter()
                    .flat_map(|(lines, _)| lines)
                    .map(|(line, _)| line)
                    .collect();
                let case = format!("{max_lines} lines, {max_bytes} bytes, {threads} threads");
                assert_eq!(read.len(), texts.len(), "{case}");
                assert!(read == texts, "{case}: other lines");
            }
        }
    }

    #[tokio::test]
    async fn an_epoch_ends_at_the_line_that_reaches_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let expected = lines_file(&path);
        let budget = 1 << 20;
        let mut source = source_within(&path, i64::MAX, budget, false);
        let mut committed = Positions::new();
        let mut read = Vec::new();
        let mut epochs = 0;
        while let Some((lines, range)) = epoch(&mut source, &committed, 2).await {
            let (Position::Offset(start), Position::Offset(end)) = (&range.start, &range.end)
            else {
                unreachable!("file positions are offsets")
            };
            // Whole lines only: the last one may run past the budget.
            let last_line = lines.last().map_or(0, |(line, _)| line.len() as i64 + 4);
            assert!(end - start <= budget + last_line, "{range:?}");
            read.extend(lines);
            committed.insert(range.partition, range.end);
            epochs += 1;
        }
        assert!(epochs > 3, "{epochs} epochs");
        assert!(read == expected, "records differ from the file's lines");
    }

    #[tokio::test]
    async fn a_replayed_range_reads_exactly_the_planned_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let expected = lines_file(&path);
        let mut planner = source(&path, 12_345, false);
        let (planned, range) = epoch(&mut planner, &Positions::new(), 1).await.unwrap();
        let mut replayer = source(&path, 1, false);
        replayer.start_epoch(&[range]).await.unwrap();
        let replayed = read_all(&mut replayer, 2).await;
        assert_eq!(replayed.len(), 12_345);
        assert!(replayed == planned && planned[..] == expected[..12_345]);
    }

    #[tokio::test]
    async fn a_followed_file_waits_for_the_end_of_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"{\"n\":1}\n{\"n\":").unwrap();
        let mut source = source(&path, 100, true);
        let (lines, range) = epoch(&mut source, &Positions::new(), 1).await.unwrap();
        assert_eq!(lines, vec![("{\"n\":1}".to_owned(), 0)]);
        file.write_all(b"2}\n").unwrap();
        let committed = Positions::from_iter([(range.partition, range.end)]);
        let (lines, _) = epoch(&mut source, &committed, 1).await.unwrap();
        assert_eq!(lines, vec![("{\"n\":2}".to_owned(), 8)]);
    }
}
