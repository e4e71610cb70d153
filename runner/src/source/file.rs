//! JSON lines from a file, or from the `*.jsonl` / `*.json` files of a
//! directory read in name order. The position is a byte offset into the files
//! laid end to end in name order, so files may be added (sorting after the
//! existing ones) and the last file may grow while `follow` is set.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::Duration,
};

use async_trait::async_trait;
use sluice_crds::FileSource as FileSpec;

use super::{
    Chunk, ChunkBuffers, PartitionId, PartitionRange, Planned, Position, Positions, Source,
    SourceContext, SourceError, budget::EpochBudget,
};

const KIND: &str = "file";
const DEFAULT_MAX_LINES: i64 = 100_000;
const CHUNK_LINES: usize = 8192;
/// Bytes read from a file at once.
const READ_BLOCK: u64 = 256 * 1024;
/// A plan expected to span fewer bytes is read on one thread.
const TWO_THREADS_FROM_BYTES: i64 = 4 << 20;
/// How long `plan` waits for appended data in follow mode before planning an
/// empty epoch.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct FileSource {
    files: Files,
    partition: PartitionId,
    /// `maxLinesPerTrigger` and the byte budget; a file source reads while
    /// planning, so it bounds the bytes exactly.
    budget: EpochBudget,
    /// Chunks read while planning, handed out by `next_chunk` when the epoch
    /// started is the one planned last.
    planned: Option<(PartitionRange, Vec<Chunk>)>,
    reading: Vec<Chunk>,
    /// Read the next epoch's lines on a blocking thread while this one is
    /// processed (when the engine has threads to spare).
    read_ahead: bool,
    ahead: Option<ReadAhead>,
}

/// The files to read.
#[derive(Clone)]
struct Files {
    path: PathBuf,
    follow: bool,
    buffers: ChunkBuffers,
    /// Plans expected to span this many bytes or more are read on two
    /// threads when the engine has threads to spare.
    two_threads_from: i64,
}

/// The lines of the epoch after the one planned last, being read.
struct ReadAhead {
    start: i64,
    task: tokio::task::JoinHandle<Result<(Vec<Chunk>, i64), SourceError>>,
}

/// One file of the set and its place in the global byte order.
struct Segment {
    path: PathBuf,
    start: i64,
    len: i64,
}

impl FileSource {
    pub fn new(spec: &FileSpec, context: &SourceContext) -> Result<Self, SourceError> {
        Ok(Self {
            partition: PartitionId::new(spec.path.clone(), 0),
            files: Files {
                path: PathBuf::from(&spec.path),
                follow: spec.follow,
                buffers: ChunkBuffers::default(),
                two_threads_from: if context.read_ahead {
                    TWO_THREADS_FROM_BYTES
                } else {
                    i64::MAX
                },
            },
            budget: EpochBudget {
                max_records: spec
                    .max_lines_per_trigger
                    .unwrap_or(DEFAULT_MAX_LINES)
                    .min(context.max_records_per_epoch)
                    .max(1),
                max_bytes: context.max_bytes_per_epoch.max(1),
            },
            planned: None,
            reading: Vec::new(),
            read_ahead: context.read_ahead,
            ahead: None,
        })
    }

    /// The lines of a new plan from `start`: those read ahead when they
    /// start there and are what reading now would give (a whole epoch, or
    /// the end of files that do not grow), else read now.
    async fn lines_from(&mut self, start: i64) -> Result<(Vec<Chunk>, i64), SourceError> {
        if let Some(ahead) = self.ahead.take()
            && ahead.start == start
            && let Ok(Ok((chunks, end))) = ahead.task.await
            && (!self.files.follow || self.budget.is_spent(lines_in(&chunks), end - start))
        {
            return Ok((chunks, end));
        }
        self.files.read_plan(start, self.budget)
    }

    /// Starts reading the epoch after one ending at `start`.
    fn read_ahead_from(&mut self, start: i64) {
        if !self.read_ahead {
            return;
        }
        let (files, budget) = (self.files.clone(), self.budget);
        self.ahead = Some(ReadAhead {
            start,
            task: tokio::task::spawn_blocking(move || files.read_lines(start, None, budget)),
        });
    }
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

    /// Reads a new plan from `start` as [`Files::read_lines`] would, on two
    /// threads when it is expected to be long: nothing overlaps a plan read
    /// with no read-ahead to take over (the first one, mostly), so with one
    /// thread it held up the whole engine. The first chunk's lines are read
    /// alone and tell how long lines are; the rest of the expected span is
    /// split at a line start, both halves are read at once, and the second
    /// is cut where one thread would have stopped (or read on from its end
    /// when the lines ran longer than expected).
    fn read_plan(&self, start: i64, budget: EpochBudget) -> Result<(Vec<Chunk>, i64), SourceError> {
        let first_chunk = EpochBudget {
            max_records: budget.max_records.min(CHUNK_LINES as i64),
            ..budget
        };
        let (mut chunks, end) = self.read_lines(start, None, first_chunk)?;
        let mut lines = lines_in(&chunks);
        if lines == 0 || budget.is_spent(lines, end - start) {
            return Ok((chunks, end));
        }
        let bytes_per_line = (end - start) as f64 / lines as f64;
        let expected = ((budget.max_records - lines) as f64 * bytes_per_line) as i64;
        let expected = expected.min(budget.max_bytes - (end - start));
        let middle = if expected >= self.two_threads_from {
            self.line_start_from(end + expected / 2)?
        } else {
            None
        };
        let rest = budget_after(budget, lines, end - start);
        let Some(middle) = middle else {
            let (more, end) = self.read_lines(end, None, rest)?;
            chunks.extend(more);
            return Ok((chunks, end));
        };
        // The second half reads a sixteenth past the expected end, so
        // that lines a little longer than the first chunk's rarely need a
        // third read.
        let second_half = EpochBudget {
            max_records: budget.max_records - lines,
            max_bytes: (end + expected + expected / 16 - middle).max(1),
        };
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| self.read_lines(middle, None, second_half));
            let first = self.read_lines(end, Some(middle), rest);
            (first, second.join())
        });
        let (first, first_end) = first?;
        lines += lines_in(&first);
        chunks.extend(first);
        if first_end < middle || budget.is_spent(lines, first_end - start) {
            return Ok((chunks, first_end));
        }
        let (second, second_end) = match second {
            Ok(read) => read?,
            Err(_) => self.read_lines(middle, None, second_half)?,
        };
        let mut end = middle;
        for mut chunk in second {
            match lines_taken(&chunk, start, budget, &mut lines, &mut end) {
                Some(kept) => {
                    chunk.truncate(kept);
                    if !chunk.is_empty() {
                        chunks.push(chunk);
                    }
                    return Ok((chunks, end));
                }
                None => chunks.push(chunk),
            }
        }
        let rest = budget_after(budget, lines, second_end - start);
        let (more, end) = self.read_lines(second_end, None, rest)?;
        chunks.extend(more);
        Ok((chunks, end))
    }

    /// Where the first line that starts at or after `position` starts;
    /// `None` past the end, or when the last file's last line is not
    /// complete there.
    fn line_start_from(&self, position: i64) -> Result<Option<i64>, SourceError> {
        let segments = self.segments()?;
        let Some(index) = segments
            .iter()
            .position(|segment| position < segment.start + segment.len)
        else {
            return Ok(None);
        };
        let segment = &segments[index];
        let io_error = |e| self.io_error(&segment.path, e);
        let mut file = std::fs::File::open(&segment.path).map_err(io_error)?;
        let mut at = position;
        file.seek(SeekFrom::Start((at - segment.start) as u64))
            .map_err(io_error)?;
        let mut block = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut block).map_err(io_error)?;
            if read == 0 {
                // A file's end is a line's end when a later file exists.
                return Ok(segments.get(index + 1).map(|next| next.start));
            }
            if let Some(newline) = memchr::memchr(b'\n', &block[..read]) {
                return Ok(Some(at + newline as i64 + 1));
            }
            at += read as i64;
        }
    }

    /// Reads whole lines from `start`, stopping at `end` (a replayed plan) or
    /// once `budget` is spent (a new plan: its lines or bytes; the line that
    /// reaches the byte bound is the last). A file's last line needs no
    /// newline once the file is complete: when a later file exists, or when
    /// not following. Returns the chunks and the end position.
    ///
    /// Files are read in blocks straight into the chunk being filled, whose
    /// records are spans of its buffer: each byte is copied once, and no
    /// buffer the size of the whole epoch is ever allocated.
    fn read_lines(
        &self,
        start: i64,
        end: Option<i64>,
        budget: EpochBudget,
    ) -> Result<(Vec<Chunk>, i64), SourceError> {
        let segments = self.segments()?;
        let mut chunks = Vec::new();
        let mut chunk = self.buffers.chunk(0, READ_BLOCK as usize, CHUNK_LINES);
        let mut position = start;
        let mut lines = 0;
        let spent = |lines: i64, position: i64| budget.is_spent(lines, position - start);
        for (index, segment) in segments.iter().enumerate() {
            let segment_end = segment.start + segment.len;
            if segment_end <= position || spent(lines, position) {
                continue;
            }
            if end.is_some_and(|end| position >= end) {
                break;
            }
            let complete = !self.follow || index + 1 < segments.len();
            let read_to = end.map_or(segment_end, |end| end.min(segment_end));
            let io_error = |e| self.io_error(&segment.path, e);
            let mut file = std::fs::File::open(&segment.path).map_err(io_error)?;
            file.seek(SeekFrom::Start((position - segment.start) as u64))
                .map_err(io_error)?;
            let mut unread = (read_to - position) as u64;
            // Start of the bytes in the chunk's buffer not yet split into lines.
            let mut scanned = chunk.bytes();
            loop {
                if unread > 0 {
                    let read = (&mut file)
                        .take(unread.min(READ_BLOCK))
                        .read_to_end(chunk.buffer_mut())
                        .map_err(io_error)?;
                    // A file that shrank since it was listed ends here.
                    unread = if read == 0 { 0 } else { unread - read as u64 };
                }
                let last_block = unread == 0;
                while !spent(lines, position) && scanned < chunk.bytes() {
                    let rest = &chunk.buffer()[scanned..];
                    let (line_len, consumed) = match memchr::memchr(b'\n', rest) {
                        Some(newline) => (newline, newline + 1),
                        None if last_block && (complete || end.is_some()) => {
                            (rest.len(), rest.len())
                        }
                        None => break,
                    };
                    let line = &rest[..line_len];
                    let line_len = line_len - usize::from(line.ends_with(b"\r"));
                    if !rest[..line_len].iter().all(u8::is_ascii_whitespace) {
                        chunk.seal(scanned..scanned + line_len, position);
                        lines += 1;
                    }
                    position += consumed as i64;
                    scanned += consumed;
                    if chunk.len() >= CHUNK_LINES {
                        // The next chunk will likely be as long as this one.
                        let mut next =
                            self.buffers
                                .chunk(0, chunk.bytes() + READ_BLOCK as usize, CHUNK_LINES);
                        next.buffer_mut()
                            .extend_from_slice(&chunk.buffer()[scanned..]);
                        chunk.buffer_mut().truncate(scanned);
                        chunks.push(std::mem::replace(&mut chunk, next));
                        scanned = 0;
                    }
                }
                if last_block || spent(lines, position) {
                    break;
                }
            }
            // Bytes past the last whole line are read again by the next plan.
            let partial = scanned < chunk.bytes();
            chunk.buffer_mut().truncate(scanned);
            if partial || spent(lines, position) {
                break;
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        Ok((chunks, position))
    }
}

/// Lines in `chunks`.
fn lines_in(chunks: &[Chunk]) -> i64 {
    chunks.iter().map(|chunk| chunk.len() as i64).sum()
}

/// How many of `chunk`'s lines a plan from `start` within `budget` takes
/// after `lines` lines ending at `end`, when not all of them: as
/// [`Files::read_lines`] stops, at the end of the line that spends the
/// budget, or at the start of a line past the byte bound (after a blank
/// line). Counts the lines taken into `lines` and `end`.
fn lines_taken(
    chunk: &Chunk,
    start: i64,
    budget: EpochBudget,
    lines: &mut i64,
    end: &mut i64,
) -> Option<usize> {
    for (index, record) in chunk.iter().enumerate() {
        if budget.is_spent(*lines, *end - start) {
            return Some(index);
        }
        if budget.is_spent(*lines, record.offset - start) {
            *end = record.offset;
            return Some(index);
        }
        *lines += 1;
        let after = chunk.after_record(index);
        let ending = match after {
            [b'\r', b'\n', ..] => 2,
            [b'\n' | b'\r', ..] => 1,
            _ => 0,
        };
        *end = record.offset + record.payload.len() as i64 + ending;
    }
    None
}

/// What is left of `budget` after `lines` lines of `bytes` bytes.
fn budget_after(budget: EpochBudget, lines: i64, bytes: i64) -> EpochBudget {
    EpochBudget {
        max_records: budget.max_records - lines,
        max_bytes: budget.max_bytes - bytes,
    }
}

impl FileSource {
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
}

#[async_trait]
impl Source for FileSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&mut self, committed: &Positions) -> Result<Planned, SourceError> {
        let start = match committed.get(&self.partition) {
            Some(position) => self.offset(position)?,
            None => 0,
        };
        let (mut chunks, mut end) = self.lines_from(start).await?;
        if end == start {
            self.files.buffers.release();
            if !self.files.follow {
                return Ok(Planned::Exhausted);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            (chunks, end) = self.files.read_lines(start, None, self.budget)?;
        }
        let range = PartitionRange {
            partition: self.partition.clone(),
            start: Position::Offset(start),
            end: Position::Offset(end),
        };
        self.planned = Some((range.clone(), chunks));
        self.read_ahead_from(end);
        Ok(Planned::Ranges(vec![range]))
    }

    async fn start_epoch(&mut self, ranges: &[PartitionRange]) -> Result<(), SourceError> {
        let planned = self.planned.take();
        self.reading = match (ranges, planned) {
            ([], _) => Vec::new(),
            ([range], Some((planned_range, chunks))) if *range == planned_range => chunks,
            ([range], _) => {
                let start = self.offset(&range.start)?;
                let end = self.offset(&range.end)?;
                self.files
                    .read_lines(start, Some(end), EpochBudget::UNBOUNDED)?
                    .0
            }
            ([_, extra, ..], _) => {
                return Err(SourceError::BadPosition {
                    source_kind: KIND,
                    partition: extra.partition.clone(),
                    position: extra.start.clone(),
                });
            }
        };
        self.reading.reverse();
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SourceError> {
        Ok(self.reading.pop())
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
            read_ahead: true,
            max_bytes_per_epoch: max_bytes,
        };
        FileSource::new(&spec, &context).unwrap()
    }

    /// Plans one epoch after `committed` and reads it: (line, byte offset) pairs and the range.
    async fn epoch(
        source: &mut FileSource,
        committed: &Positions,
    ) -> Option<(Vec<(String, i64)>, PartitionRange)> {
        let Planned::Ranges(ranges) = source.plan(committed).await.unwrap() else {
            return None;
        };
        source.start_epoch(&ranges).await.unwrap();
        Some((read_all(source).await, ranges[0].clone()))
    }

    async fn read_all(source: &mut FileSource) -> Vec<(String, i64)> {
        let mut lines = Vec::new();
        while let Some(chunk) = source.next_chunk().await.unwrap() {
            for record in chunk.iter() {
                let text = String::from_utf8(record.payload.to_vec()).unwrap();
                lines.push((text, record.offset));
            }
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

    #[tokio::test]
    async fn lines_across_blocks_and_chunks_are_read_once_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let expected = lines_file(&path);
        let mut source = source(&path, 7_000, false);
        let mut committed = Positions::new();
        let mut read = Vec::new();
        while let Some((lines, range)) = epoch(&mut source, &committed).await {
            assert!(lines.len() <= 7_000);
            read.extend(lines);
            committed.insert(range.partition, range.end);
        }
        assert_eq!(read.len(), expected.len());
        assert!(read == expected, "records differ from the file's lines");
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
        while let Some((lines, range)) = epoch(&mut source, &committed).await {
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
        let (planned, range) = epoch(&mut planner, &Positions::new()).await.unwrap();
        let mut replayer = source(&path, 1, false);
        replayer.start_epoch(&[range]).await.unwrap();
        let replayed = read_all(&mut replayer).await;
        assert_eq!(replayed.len(), 12_345);
        assert!(replayed == planned && planned[..] == expected[..12_345]);
    }

    /// Lines and offsets of `chunks`.
    fn records(chunks: &[Chunk]) -> Vec<(Vec<u8>, i64)> {
        chunks
            .iter()
            .flat_map(|chunk| chunk.iter().map(|r| (r.payload.to_vec(), r.offset)))
            .collect()
    }

    #[test]
    fn plans_read_on_two_threads_are_the_plans_one_thread_reads() {
        let dir = tempfile::tempdir().unwrap();
        let one_file = dir.path().join("one.jsonl");
        let expected = lines_file(&one_file);
        // The same lines over three files, the middle one ending without
        // a newline; and lines that grow longer than the first chunk's.
        let three_files = dir.path().join("three");
        std::fs::create_dir(&three_files).unwrap();
        let text = std::fs::read(&one_file).unwrap();
        let (a, rest) = text.split_at(text.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let b = b.strip_suffix(b"\n").unwrap_or(b);
        for (name, part) in [("a.jsonl", a), ("b.jsonl", b), ("c.jsonl", c)] {
            std::fs::write(three_files.join(name), part).unwrap();
        }
        let written = |name: &str, lines: usize, line: &dyn Fn(usize) -> String| {
            let path = dir.path().join(name);
            std::fs::write(&path, (0..lines).map(line).collect::<String>()).unwrap();
            path
        };
        let growing = written("growing.jsonl", 40_000, &|i| {
            format!("\"{}\"\n", "x".repeat(i / 200))
        });
        // Long lines in the first chunk, then short ones: the first half
        // alone holds the plan.
        let dropping = written("dropping.jsonl", 400_000, &|i| {
            let length = if i < CHUNK_LINES { 200 } else { 3 };
            format!("\"{}\"\n", "x".repeat(length))
        });
        // Lines of 100 bytes, and after the 10,000th a blank line, which
        // the byte bound of 1,000,002 falls in.
        let blank = written("blank.jsonl", 40_000, &|i| {
            let blank = if i == 9_999 { "  \n" } else { "" };
            format!("\"{}\"\n{blank}", "x".repeat(97))
        });
        for path in [&one_file, &three_files, &growing, &dropping, &blank] {
            for (max_records, max_bytes) in [
                (7_000, i64::MAX),
                (12_345, 1 << 20),
                (25_000, i64::MAX),
                (i64::MAX, 3 << 20),
                (i64::MAX, 1_000_002),
                (1, i64::MAX),
            ] {
                let budget = EpochBudget {
                    max_records,
                    max_bytes,
                };
                let one_thread = source(path, 1, false).files;
                let mut two_threads = source(path, 1, false).files;
                two_threads.two_threads_from = 0;
                let (mut start, mut read) = (0, 0);
                loop {
                    let (serial, serial_end) = one_thread.read_lines(start, None, budget).unwrap();
                    let (split, split_end) = two_threads.read_plan(start, budget).unwrap();
                    let case = format!("{} from {start}, {budget:?}", path.display());
                    assert_eq!(split_end, serial_end, "{case}");
                    assert!(records(&split) == records(&serial), "{case}: other lines");
                    read += lines_in(&serial);
                    if serial_end == start || max_records == 1 {
                        break;
                    }
                    start = serial_end;
                }
                if path == &one_file && max_records > 1 {
                    assert_eq!(read, expected.len() as i64, "{budget:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_followed_file_waits_for_the_end_of_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"{\"n\":1}\n{\"n\":").unwrap();
        let mut source = source(&path, 100, true);
        let (lines, range) = epoch(&mut source, &Positions::new()).await.unwrap();
        assert_eq!(lines, vec![("{\"n\":1}".to_owned(), 0)]);
        file.write_all(b"2}\n").unwrap();
        let committed = Positions::from_iter([(range.partition, range.end)]);
        let (lines, _) = epoch(&mut source, &committed).await.unwrap();
        assert_eq!(lines, vec![("{\"n\":2}".to_owned(), 8)]);
    }
}
