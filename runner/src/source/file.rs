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
    Chunk, PartitionId, PartitionRange, Planned, Position, Positions, Source, SourceContext,
    SourceError, budget::EpochBudget,
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
        {
            let lines: usize = chunks.iter().map(Chunk::len).sum();
            if !self.files.follow || self.budget.is_spent(lines as i64, end - start) {
                return Ok((chunks, end));
            }
        }
        self.files.read_lines(start, None, self.budget)
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
        let mut chunk = Chunk::with_capacity(0, READ_BLOCK as usize, CHUNK_LINES);
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
                        let mut next = Chunk::with_capacity(
                            0,
                            chunk.bytes() + READ_BLOCK as usize,
                            CHUNK_LINES,
                        );
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
