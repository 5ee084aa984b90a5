//! The on-disk log: a directory of segments.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tracing::{error, info, warn};

use crate::entry::Entry;
use crate::segment::Segment;
use crate::{LogConfig, LogError, LogStore, SyncHandle, ENTRY_BYTES_MAX};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a segment sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_index: u64,
    pub next_index: u64,
    pub first_offset: i64,
    pub next_offset: i64,
    pub bytes: u64,
    /// Newest record timestamp in the segment.
    pub max_timestamp: i64,
}

/// Writes a cleaned copy of the closed segment `info` (the same entries, with the same
/// index, term, kind, offset and offset count each, payloads rewritten) to a file beside
/// it, entry by entry, fsynced at [`CleanedWriter::finish`]; `LogStore::swap_cleaned`
/// swaps it in. Needs no lock: closed segments do not change while it runs (the swap
/// checks that).
pub struct CleanedWriter {
    info: SegmentInfo,
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    buf: BytesMut,
    next_index: u64,
    next_offset: i64,
    written: u64,
}

impl CleanedWriter {
    pub fn create(dir: &Path, info: &SegmentInfo) -> Result<CleanedWriter, LogError> {
        let path = crate::segment::log_path(dir, info.base_index).with_extension("log.cleaned");
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        crate::fault::created(&path);
        Ok(CleanedWriter {
            info: *info,
            path,
            file,
            buf: BytesMut::new(),
            next_index: info.base_index,
            next_offset: info.first_offset,
            written: 0,
        })
    }

    fn refuse(&self, why: String) -> LogError {
        let _ = std::fs::remove_file(&self.path);
        LogError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
    }

    /// Appends the next entry of the copy.
    pub fn push(&mut self, e: &Entry) -> Result<(), LogError> {
        use std::io::Write;
        if e.index != self.next_index || e.offset != self.next_offset || e.encoded_len() > ENTRY_BYTES_MAX {
            return Err(self.refuse(format!(
                "cleaned entry {} at offset {} does not follow index {} offset {}",
                e.index, e.offset, self.next_index, self.next_offset
            )));
        }
        self.next_index += 1;
        self.next_offset += i64::from(e.offset_count);
        self.buf.clear();
        e.encode(&mut self.buf);
        crate::fault::write()?;
        self.file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        Ok(())
    }

    /// fsyncs the copy, which must hold every entry of its segment; returns its path.
    pub fn finish(self) -> Result<PathBuf, LogError> {
        if self.next_index != self.info.next_index || self.next_offset != self.info.next_offset {
            return Err(self.refuse("a cleaned copy must hold every entry of its segment".into()));
        }
        let file = self.file.into_inner().map_err(|e| LogError::Io(e.into_error()))?;
        crate::fault::fsync()?;
        file.sync_all()?;
        crate::fault::synced(&self.path, self.written);
        Ok(self.path)
    }
}

pub struct DiskLog {
    dir: PathBuf,
    config: LogConfig,
    /// Oldest first; never empty; the last one is active.
    segments: Vec<Segment>,
    poisoned: Option<String>,
    /// Start offset after a purge, when the first remaining segment starts later.
    encode_buf: BytesMut,
    /// When a segment was missing from the middle of the log at open: the last index
    /// of what was set aside after the gap.
    gap_through: Option<u64>,
}

impl DiskLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment's tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<DiskLog, LogError> {
        std::fs::create_dir_all(dir)?;
        let mut bases: Vec<u64> = Vec::new();
        for ent in std::fs::read_dir(dir)? {
            let name = ent?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                match stem.parse::<u64>() {
                    Ok(b) => bases.push(b),
                    Err(_) => warn!(file = %name, "ignoring unexpected file in log directory"),
                }
            }
        }
        bases.sort_unstable();
        let now = now_ms();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        let mut gap_through = None;
        for (i, base) in bases.iter().copied().enumerate() {
            let active = i + 1 == count;
            let seg = Segment::open(dir, base, active, config.index_interval_bytes, now)?;
            if let Some(prev) = segments.last() {
                if prev.next_index != seg.base_index {
                    // A segment is missing from the middle (its file lost at power loss or by
                    // hand): the log ends before the gap. What follows it is set aside, and
                    // the replica counts as damaged through its last entry: it had entries
                    // up to there and may have acknowledged them.
                    let last = bases.last().copied().unwrap_or(base);
                    let later = Segment::open(dir, last, false, config.index_interval_bytes, now)?;
                    gap_through = Some(later.next_index.saturating_sub(1).max(seg.next_index.saturating_sub(1)));
                    drop(later);
                    error!(dir = %dir.display(), prev_next = prev.next_index, base = seg.base_index,
                        damaged_through = ?gap_through,
                        "a segment is missing from the middle of the log: the log ends before the gap");
                    for b in bases.iter().skip(i) {
                        let from = crate::segment::log_path(dir, *b);
                        let to = from.with_extension(format!("log.gap-{now}"));
                        std::fs::rename(&from, &to)?;
                    }
                    crate::durable::sync_dir(dir)?;
                    break;
                }
            }
            segments.push(seg);
        }
        // A trailing empty segment after a non-empty one carries no offsets of its own:
        // take them from its predecessor.
        if segments.len() >= 2 {
            let n = segments.len();
            let (head, tail) = segments.split_at_mut(n - 1);
            if let (Some(prev), Some(last)) = (head.last(), tail.first_mut()) {
                if last.is_empty() {
                    last.first_offset = prev.next_offset;
                    last.next_offset = prev.next_offset;
                    last.last_term = prev.last_term;
                }
            }
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, 0, now)?);
        }
        let log = DiskLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            poisoned: None,
            encode_buf: BytesMut::new(),
            gap_through,
        };
        info!(dir = %dir.display(), first = log.first_index(), next = log.next_index(),
            next_offset = log.next_offset(), segments = log.segments.len(), "log opened");
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The closed segments (every one but the active): base index, next index, bytes.
    fn closed_segment_infos(&self) -> Vec<SegmentInfo> {
        let n = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .take(n)
            .map(|s| SegmentInfo {
                base_index: s.base_index,
                next_index: s.next_index,
                first_offset: s.first_offset,
                next_offset: s.next_offset,
                bytes: s.size,
                max_timestamp: s.max_timestamp,
            })
            .collect()
    }

    /// Replaces closed segment `info` with the cleaned copy at `cleaned` (see
    /// [`write_cleaned`]): renamed over the segment durably, its indexes rebuilt. Refused
    /// when the segment changed meanwhile (purged, or it is now the active one) or the copy
    /// does not cover the same entries and offsets. Returns the bytes it freed.
    fn swap_cleaned_segment(&mut self, info: &SegmentInfo, cleaned: &Path) -> Result<u64, LogError> {
        let last = self.segments.len().saturating_sub(1);
        let Some(i) = self
            .segments
            .iter()
            .take(last)
            .position(|s| s.base_index == info.base_index && s.next_index == info.next_index)
        else {
            let _ = std::fs::remove_file(cleaned);
            return Err(LogError::OutOfRange(info.base_index));
        };
        let now = now_ms();
        let path = crate::segment::log_path(&self.dir, info.base_index);
        let before = self.segments.get(i).map(|s| s.size).unwrap_or(0);
        // The old indexes describe the old positions: rebuilt from the new file.
        crate::segment::remove_indexes(&self.dir, info.base_index);
        std::fs::rename(cleaned, &path)?;
        crate::fault::renamed(cleaned, &path);
        crate::durable::sync_dir(&self.dir)?;
        let seg = Segment::open(&self.dir, info.base_index, false, self.config.index_interval_bytes, now)?;
        if seg.next_index != info.next_index
            || seg.next_offset != info.next_offset
            || seg.first_offset != info.first_offset
        {
            // Cannot happen for a copy `write_cleaned` accepted; the log must not go on with
            // a segment that does not fit.
            self.poison(format!(
                "a cleaned segment at {} does not cover its entries (next index {} vs {})",
                info.base_index, seg.next_index, info.next_index
            ));
            return Err(LogError::Poisoned("cleaned segment mismatch".into()));
        }
        let after = seg.size;
        if let Some(slot) = self.segments.get_mut(i) {
            *slot = seg;
        }
        Ok(before.saturating_sub(after))
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Bytes recovery cut from segment tails when the log was opened (a torn or damaged
    /// tail): entries this replica may once have acknowledged.
    pub fn recovered_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.recovered_bytes).sum()
    }

    /// When recovery cut damage out of the active segment (valid entries followed the bad
    /// one), the highest index it cut: this replica had entries up to there, and may have
    /// acknowledged them.
    pub fn damaged_through(&self) -> Option<u64> {
        self.segments
            .iter()
            .filter_map(|s| s.damaged_through)
            .chain(self.gap_through)
            .max()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> Result<&Segment, LogError> {
        self.segments.last().ok_or(LogError::OutOfRange(0))
    }

    fn active_mut(&mut self) -> Result<&mut Segment, LogError> {
        self.segments.last_mut().ok_or(LogError::OutOfRange(0))
    }

    fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Closes the active segment and starts a new one at the log's end.
    fn roll(&mut self, now: i64) -> Result<(), LogError> {
        let (next_index, next_offset, term) = {
            let a = self.active()?;
            a.sync()?;
            a.write_indexes()?;
            (a.next_index, a.next_offset, a.last_term)
        };
        let mut seg = Segment::create(&self.dir, next_index, next_offset, now)?;
        seg.last_term = term;
        // The closed segment gives its descriptor back (it is synced and indexed).
        self.active_mut()?.release();
        self.segments.push(seg);
        Ok(())
    }

    /// Runs `f` on segments from the one holding `start` on, until it returns false.
    fn read_segments(
        &self,
        first: usize,
        max_bytes: usize,
        mut f: impl FnMut(&Segment, &mut usize, &mut Vec<Entry>) -> Result<bool, LogError>,
    ) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        let mut budget = max_bytes.max(1);
        for seg in self.segments.iter().skip(first) {
            if !f(seg, &mut budget, &mut out)? {
                break;
            }
        }
        Ok(out)
    }

    fn poison_on_err<T>(&mut self, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(LogError::Io(e)) = &r {
            self.poison(format!("{e}"));
        }
        r
    }
}

impl LogStore for DiskLog {
    fn directory(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn closed_segments(&self) -> Vec<SegmentInfo> {
        self.closed_segment_infos()
    }

    /// Replaces closed segment `info` with the cleaned copy at `cleaned` (see
    /// [`CleanedWriter`]): renamed over the segment durably, its indexes rebuilt. Refused
    /// when the segment changed meanwhile (purged, or it is now the active one) or the copy
    /// does not cover the same entries and offsets. Returns the bytes it freed.
    fn swap_cleaned(&mut self, info: &SegmentInfo, cleaned: &Path) -> Result<u64, LogError> {
        self.swap_cleaned_segment(info, cleaned)
    }

    fn append(&mut self, entry: &Entry) -> Result<(), LogError> {
        self.check_writable()?;
        let expected = self.next_index();
        if entry.index != expected {
            return Err(LogError::NonContiguous {
                expected,
                got: entry.index,
            });
        }
        if entry.offset < self.next_offset() {
            return Err(LogError::OffsetRegression {
                expected: self.next_offset(),
                got: entry.offset,
            });
        }
        let len = entry.encoded_len();
        if len > ENTRY_BYTES_MAX {
            return Err(LogError::EntryTooLarge(len));
        }
        let now = now_ms();
        let roll = {
            let a = self.active()?;
            !a.is_empty()
                && (a.size + len as u64 > self.config.segment_bytes
                    || now.saturating_sub(a.created_ms) as u64 >= self.config.segment_ms)
        };
        if roll {
            let r = self.roll(now);
            self.poison_on_err(r)?;
        }
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        entry.encode(&mut buf);
        let interval = self.config.index_interval_bytes;
        let r = self.active_mut().and_then(|a| a.append(entry, &buf, interval));
        self.encode_buf = buf;
        // A full disk leaves the log as it was: the entry was not counted, and the next
        // append writes at the same position. Any other failed write leaves the file in an
        // unknown state, as a failed fsync does.
        match r {
            Err(e) if e.is_disk_full() => Err(e),
            r => self.poison_on_err(r),
        }
    }

    fn read(&self, from_index: u64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
        if from_index >= self.next_index() {
            return Ok(Vec::new());
        }
        if from_index < self.first_index() {
            return Err(LogError::OutOfRange(from_index));
        }
        let first = self
            .segments
            .partition_point(|s| s.base_index <= from_index)
            .saturating_sub(1);
        self.read_segments(first, max_bytes, |seg, budget, out| {
            seg.read_from_index(from_index, budget, out)
        })
    }

    fn read_from_offset(&self, offset: i64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
        if offset >= self.next_offset() {
            return Ok(Vec::new());
        }
        let first = self
            .segments
            .partition_point(|s| s.first_offset <= offset && !s.is_empty())
            .saturating_sub(1);
        self.read_segments(first, max_bytes, |seg, budget, out| {
            seg.read_from_offset(offset, budget, out)
        })
    }

    fn entry_for_timestamp(&self, ts: i64) -> Result<Option<Entry>, LogError> {
        for seg in &self.segments {
            if seg.max_timestamp >= ts {
                if let Some(e) = seg.entry_for_timestamp(ts)? {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    fn truncate_after(&mut self, index: u64) -> Result<(), LogError> {
        self.check_writable()?;
        if index.saturating_add(1) >= self.next_index() {
            return Ok(());
        }
        // Drop whole segments that start after `index`, but keep at least one.
        while self.segments.len() > 1 {
            let starts_after = self.segments.last().map(|s| s.base_index > index).unwrap_or(false);
            if !starts_after {
                break;
            }
            if let Some(seg) = self.segments.pop() {
                seg.delete()?;
            }
        }
        let interval = self.config.index_interval_bytes;
        let a = self.active_mut()?;
        if index < a.base_index {
            // Truncating below the log start empties the log at its start.
            let (base, off) = (a.base_index, a.first_offset);
            return self.reset(base, off);
        }
        let r = a.truncate_after(index, interval).and_then(|_| a.sync());
        self.poison_on_err(r)
    }

    fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    fn reset(&mut self, next_index: u64, next_offset: i64) -> Result<(), LogError> {
        self.check_writable()?;
        for seg in self.segments.drain(..) {
            seg.delete()?;
        }
        self.segments
            .push(Segment::create(&self.dir, next_index, next_offset, now_ms())?);
        Ok(())
    }

    fn purge_before(&mut self, index: u64) -> Result<u64, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let whole_below = self
                .segments
                .get(1)
                .map(|next| next.base_index <= index)
                .unwrap_or(false);
            if !whole_below {
                break;
            }
            let seg = self.segments.remove(0);
            removed += seg.next_index - seg.base_index;
            seg.delete()?;
        }
        Ok(removed)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.check_writable()?;
        let r = self.active().and_then(|a| a.sync());
        if let Err(e) = &r {
            self.poison(format!("fsync failed: {e}"));
        }
        r
    }

    fn sync_handle(&self) -> Result<SyncHandle, LogError> {
        self.check_writable()?;
        let active = self.active()?;
        Ok(SyncHandle {
            file: Some(active.try_clone_file()?),
            next_index: self.next_index(),
            durable: Some((crate::segment::log_path(&self.dir, active.base_index), active.size)),
        })
    }

    fn poison(&mut self, reason: String) {
        if self.poisoned.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, "log poisoned; refusing further writes");
            self.poisoned = Some(reason);
        }
    }

    fn retention_point(&self, now: i64) -> Option<u64> {
        let mut keep = 0usize;
        if let Some(ms) = self.config.retention_ms {
            while keep + 1 < self.segments.len() {
                let expired = self
                    .segments
                    .get(keep)
                    .map(|s| s.max_timestamp >= 0 && now.saturating_sub(s.max_timestamp) as u64 > ms)
                    .unwrap_or(false);
                if !expired {
                    break;
                }
                keep += 1;
            }
        }
        if let Some(limit) = self.config.retention_bytes {
            let mut size: u64 = self.segments.iter().skip(keep).map(|s| s.size).sum();
            while keep + 1 < self.segments.len() {
                let first = self.segments.get(keep).map(|s| s.size).unwrap_or(0);
                if size.saturating_sub(first) < limit {
                    break;
                }
                size -= first;
                keep += 1;
            }
        }
        if keep == 0 {
            return None;
        }
        self.segments.get(keep).map(|s| s.base_index)
    }

    fn roll_if_aged(&mut self, now: i64) -> Result<(), LogError> {
        let aged = self
            .segments
            .last()
            .map(|a| !a.is_empty() && now.saturating_sub(a.created_ms) as u64 >= self.config.segment_ms)
            .unwrap_or(false);
        if aged && self.poisoned.is_none() {
            let r = self.roll(now);
            self.poison_on_err(r)?;
        }
        Ok(())
    }

    fn apply_retention(&mut self, now: i64) -> Result<u64, LogError> {
        let mut removed = 0;
        // By time: closed segments whose newest record is older than the limit.
        if let Some(ms) = self.config.retention_ms {
            while self.segments.len() > 1 {
                let expired = self
                    .segments
                    .first()
                    .map(|s| s.max_timestamp >= 0 && now.saturating_sub(s.max_timestamp) as u64 > ms)
                    .unwrap_or(false);
                if !expired {
                    break;
                }
                let seg = self.segments.remove(0);
                removed += seg.next_index - seg.base_index;
                seg.delete()?;
            }
        }
        // By size: oldest closed segments while the log would stay above the limit.
        if let Some(limit) = self.config.retention_bytes {
            while self.segments.len() > 1 {
                let first = self.segments.first().map(|s| s.size).unwrap_or(0);
                if self.size_bytes().saturating_sub(first) < limit {
                    break;
                }
                let seg = self.segments.remove(0);
                removed += seg.next_index - seg.base_index;
                seg.delete()?;
            }
        }
        // Roll an active segment that has aged out, so that it can expire in its turn.
        let now_roll = self
            .segments
            .last()
            .map(|a| !a.is_empty() && now.saturating_sub(a.created_ms) as u64 >= self.config.segment_ms)
            .unwrap_or(false);
        if now_roll && self.poisoned.is_none() {
            let r = self.roll(now);
            self.poison_on_err(r)?;
        }
        Ok(removed)
    }

    fn first_index(&self) -> u64 {
        self.segments.first().map(|s| s.base_index).unwrap_or(0)
    }

    fn next_index(&self) -> u64 {
        self.segments.last().map(|s| s.next_index).unwrap_or(0)
    }

    fn start_offset(&self) -> i64 {
        self.segments.first().map(|s| s.first_offset).unwrap_or(0)
    }

    fn next_offset(&self) -> i64 {
        self.segments.last().map(|s| s.next_offset).unwrap_or(0)
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    fn last_term(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.last_term)
    }
}
