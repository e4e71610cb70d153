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
    SourceError,
};

const KIND: &str = "file";
const DEFAULT_MAX_LINES: i64 = 100_000;
const CHUNK_LINES: usize = 8192;
/// How long `plan` waits for appended data in follow mode before planning an
/// empty epoch.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct FileSource {
    path: PathBuf,
    partition: PartitionId,
    max_lines: i64,
    follow: bool,
    /// Chunks read while planning, handed out by `next_chunk` when the epoch
    /// started is the one planned last.
    planned: Option<(PartitionRange, Vec<Chunk>)>,
    reading: Vec<Chunk>,
}

/// One file of the set and its place in the global byte order.
struct Segment {
    path: PathBuf,
    start: i64,
    len: i64,
}

impl FileSource {
    pub fn new(spec: &FileSpec, context: &SourceContext) -> Result<Self, SourceError> {
        if context.replicas > 1 {
            return Err(SourceError::InvalidSpec {
                source_kind: KIND,
                field: "spec.parallelism",
                message: "the file source has one partition; run it with parallelism 1".into(),
            });
        }
        let path = PathBuf::from(&spec.path);
        Ok(Self {
            partition: PartitionId::new(spec.path.clone(), 0),
            path,
            max_lines: spec
                .max_lines_per_trigger
                .unwrap_or(DEFAULT_MAX_LINES)
                .min(context.max_records_per_epoch.max(1)),
            follow: spec.follow,
            planned: None,
            reading: Vec::new(),
        })
    }

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
    /// after `max_lines` lines (a new plan). A file's last line needs no
    /// newline once the file is complete: when a later file exists, or when
    /// not following. Returns the chunks and the end position.
    fn read_lines(
        &self,
        start: i64,
        end: Option<i64>,
        max_lines: i64,
    ) -> Result<(Vec<Chunk>, i64), SourceError> {
        let segments = self.segments()?;
        let mut chunks = Vec::new();
        let mut chunk = Chunk::new(0);
        let mut position = start;
        let mut lines = 0;
        for (index, segment) in segments.iter().enumerate() {
            let segment_end = segment.start + segment.len;
            if segment_end <= position || lines >= max_lines {
                continue;
            }
            if end.is_some_and(|end| position >= end) {
                break;
            }
            let complete = !self.follow || index + 1 < segments.len();
            let read_to = end.map_or(segment_end, |end| end.min(segment_end));
            let mut file =
                std::fs::File::open(&segment.path).map_err(|e| self.io_error(&segment.path, e))?;
            file.seek(SeekFrom::Start((position - segment.start) as u64))
                .map_err(|e| self.io_error(&segment.path, e))?;
            let mut bytes = Vec::with_capacity((read_to - position) as usize);
            file.take((read_to - position) as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| self.io_error(&segment.path, e))?;
            let mut rest = &bytes[..];
            while lines < max_lines && !rest.is_empty() {
                let (line, consumed) = match memchr::memchr(b'\n', rest) {
                    Some(newline) => (&rest[..newline], newline + 1),
                    None if complete || end.is_some() => (rest, rest.len()),
                    None => break,
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    chunk.push(line, position);
                    lines += 1;
                    if chunk.len() >= CHUNK_LINES {
                        chunks.push(std::mem::replace(&mut chunk, Chunk::new(0)));
                    }
                }
                position += consumed as i64;
                rest = &rest[consumed..];
            }
            if !rest.is_empty() {
                break;
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        Ok((chunks, position))
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
        let (mut chunks, mut end) = self.read_lines(start, None, self.max_lines)?;
        if end == start {
            if !self.follow {
                return Ok(Planned::Exhausted);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            (chunks, end) = self.read_lines(start, None, self.max_lines)?;
        }
        let range = PartitionRange {
            partition: self.partition.clone(),
            start: Position::Offset(start),
            end: Position::Offset(end),
        };
        self.planned = Some((range.clone(), chunks));
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
                self.read_lines(start, Some(end), i64::MAX)?.0
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
