//! One segment: a file of entries plus its sparse indexes.
//!
//! `{base_index:020}.log` holds entries back to back. Every `index_interval_bytes` an index
//! point is recorded in memory: (index, offset, file position) goes to `.index`, (newest
//! timestamp of all entries before that position, position) goes to `.timeindex`. The
//! files are written when a segment is closed. A segment with missing or inconsistent
//! index files is re-indexed by a scan; the active segment is always scanned at open,
//! which is also its crash recovery.
//!
//! Only the active segment keeps its file open. A closed segment opens its file for each
//! read and closes it after: a node with tens of thousands of partition replicas holds
//! one descriptor per replica, however many segments their logs have.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tracing::{error, warn};

use crate::entry::{self, DecodeError, Entry};
use crate::LogError;

const INDEX_POINT_BYTES: usize = 24;
const TIME_POINT_BYTES: usize = 16;
/// Bytes read from a file at a time when scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// One sparse index point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPoint {
    pub index: u64,
    pub offset: i64,
    pub pos: u64,
    /// Newest timestamp among all entries of the segment before `pos`.
    pub max_ts_before: i64,
}

/// What a scan of a segment's bytes found.
struct ScanResult {
    /// Bytes of valid entries from the start of the scan.
    valid_end: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stopped: Option<String>,
}

pub struct Segment {
    pub base_index: u64,
    dir: PathBuf,
    /// The open file of the active segment; `None` once the segment is closed (see the
    /// module's documentation).
    file: Option<File>,
    /// Bytes of valid entries in the file.
    pub size: u64,
    /// Offset of the first entry (the log's next offset when the segment is empty).
    pub first_offset: i64,
    pub next_index: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub last_term: Option<u64>,
    points: Vec<IndexPoint>,
    bytes_since_point: u64,
    /// Wall-clock ms when the segment was created or opened, for age-based rolling.
    pub created_ms: i64,
    /// Bytes recovery cut from this segment's tail when it was opened.
    pub recovered_bytes: u64,
    /// When the cut bytes held valid entries after the bad one, the highest index among
    /// them: the cut was damage inside the log, not a torn tail (see [`Segment::open`]).
    pub damaged_through: Option<u64>,
}

pub fn log_path(dir: &Path, base_index: u64) -> PathBuf {
    dir.join(format!("{base_index:020}.log"))
}
fn index_path(dir: &Path, base_index: u64) -> PathBuf {
    dir.join(format!("{base_index:020}.index"))
}
fn time_path(dir: &Path, base_index: u64) -> PathBuf {
    dir.join(format!("{base_index:020}.timeindex"))
}

/// Removes a segment's index files (they are rebuilt when it is opened).
pub fn remove_indexes(dir: &Path, base_index: u64) {
    let _ = std::fs::remove_file(index_path(dir, base_index));
    let _ = std::fs::remove_file(time_path(dir, base_index));
}

/// A segment's file for one read: the one it holds, or one opened for the read and closed
/// after it.
enum FileRef<'a> {
    Held(&'a File),
    Opened(File),
}

impl std::ops::Deref for FileRef<'_> {
    type Target = File;
    fn deref(&self) -> &File {
        match self {
            FileRef::Held(f) => f,
            FileRef::Opened(f) => f,
        }
    }
}

/// Reads exactly `len` bytes at `pos`.
fn read_exact_at(file: &File, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}

impl Segment {
    /// Creates an empty segment file.
    pub fn create(dir: &Path, base_index: u64, next_offset: i64, now_ms: i64) -> Result<Segment, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(log_path(dir, base_index))?;
        crate::fault::created(&log_path(dir, base_index));
        let _ = std::fs::remove_file(index_path(dir, base_index));
        let _ = std::fs::remove_file(time_path(dir, base_index));
        // The new file's name must outlive a power loss, or the log would reopen shorter
        // than what was fsynced into it.
        crate::durable::sync_dir(dir)?;
        Ok(Segment {
            base_index,
            dir: dir.to_path_buf(),
            file: Some(file),
            size: 0,
            first_offset: next_offset,
            next_index: base_index,
            next_offset,
            max_timestamp: -1,
            last_term: None,
            points: Vec::new(),
            bytes_since_point: u64::MAX,
            created_ms: now_ms,
            recovered_bytes: 0,
            damaged_through: None,
        })
    }

    /// Opens an existing segment. `active` segments are scanned in full and a torn or
    /// corrupt tail is cut off (the cut bytes are kept beside the segment as
    /// `.dropped-<ms>`); closed segments load their index files, or are re-indexed.
    pub fn open(dir: &Path, base_index: u64, active: bool, interval: u64, now_ms: i64) -> Result<Segment, LogError> {
        let path = log_path(dir, base_index);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        crate::fault::opened(&path, file_len);
        let mut seg = Segment {
            base_index,
            dir: dir.to_path_buf(),
            file: Some(file),
            size: file_len,
            first_offset: 0,
            next_index: base_index,
            next_offset: 0,
            max_timestamp: -1,
            last_term: None,
            points: Vec::new(),
            bytes_since_point: u64::MAX,
            created_ms: now_ms,
            recovered_bytes: 0,
            damaged_through: None,
        };
        if !active {
            if let Some(points) = seg.load_points() {
                // Resume from the last index point: everything before it was indexed when
                // the segment was closed.
                if let Some(last) = points.last().copied() {
                    seg.points = points;
                    seg.next_index = last.index;
                    seg.next_offset = last.offset;
                    seg.max_timestamp = last.max_ts_before;
                    seg.first_offset = seg.points.first().map(|p| p.offset).unwrap_or(0);
                    seg.bytes_since_point = 0;
                    let r = seg.scan_from(last.pos, interval, false)?;
                    if r.stopped.is_none() && r.valid_end == file_len {
                        seg.release();
                        return Ok(seg);
                    }
                }
            }
            warn!(segment = %path.display(), "index files missing or inconsistent; re-indexing");
        }
        seg.points.clear();
        seg.next_index = base_index;
        seg.max_timestamp = -1;
        seg.last_term = None;
        seg.bytes_since_point = u64::MAX;
        let r = seg.scan_from(0, interval, true)?;
        if let Some(reason) = r.stopped {
            if active {
                seg.cut_tail(r.valid_end, file_len, &reason, now_ms)?;
            } else {
                // A closed segment is never cut: later segments depend on it. Reads that
                // reach the damage report it instead of serving it.
                error!(segment = %path.display(), pos = r.valid_end, %reason, "corrupt entry in a closed segment");
                seg.size = r.valid_end;
            }
        }
        if !active {
            seg.write_indexes()?;
            seg.release();
        }
        Ok(seg)
    }

    /// The segment's file: the open one of the active segment, or the closed segment's,
    /// opened for this one use.
    fn file(&self) -> std::io::Result<FileRef<'_>> {
        match &self.file {
            Some(f) => Ok(FileRef::Held(f)),
            None => File::open(log_path(&self.dir, self.base_index)).map(FileRef::Opened),
        }
    }

    /// The segment's file for writing, opened (and kept open) if the segment was closed:
    /// truncation makes a closed segment the active one again.
    fn file_mut(&mut self) -> std::io::Result<&File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(log_path(&self.dir, self.base_index))?;
            self.file = Some(f);
        }
        match &self.file {
            Some(f) => Ok(f),
            None => Err(std::io::Error::other("segment file not open")),
        }
    }

    /// Closes the file of a segment that is no longer active (it was synced when it was
    /// closed); reads open it again as they need it.
    pub fn release(&mut self) {
        self.file = None;
    }

    /// Whether the segment holds its file open (only the active one does).
    pub fn holds_file(&self) -> bool {
        self.file.is_some()
    }

    /// Cuts the file at `valid_end`, keeping the removed bytes in a side file.
    fn cut_tail(&mut self, valid_end: u64, file_len: u64, reason: &str, now_ms: i64) -> Result<(), LogError> {
        let dropped = file_len.saturating_sub(valid_end);
        let side = self.dir.join(format!("{:020}.log.dropped-{now_ms}", self.base_index));
        if dropped > 0 {
            let bytes = read_exact_at(&*self.file()?, valid_end, dropped as usize)?;
            let mut f = File::create(&side)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            self.damaged_through = valid_entries_after_damage(&bytes, self.next_index);
            if let Some(last) = self.damaged_through {
                error!(
                    segment = %log_path(&self.dir, self.base_index).display(),
                    pos = valid_end, last_valid_index = last,
                    "valid entries follow the bad one: the log was damaged, not torn"
                );
            }
        }
        error!(
            segment = %log_path(&self.dir, self.base_index).display(),
            pos = valid_end, dropped_bytes = dropped, kept_in = %side.display(), %reason,
            "recovery truncated the log tail to the last valid entry"
        );
        let f = self.file_mut()?;
        f.set_len(valid_end)?;
        f.sync_all()?;
        crate::fault::synced(&log_path(&self.dir, self.base_index), valid_end);
        self.size = valid_end;
        self.recovered_bytes += dropped;
        Ok(())
    }

    /// Scans entries from `pos` to the end of the file, updating the segment's state and
    /// index points. Stops at the first invalid entry.
    fn scan_from(&mut self, pos: u64, interval: u64, from_start: bool) -> Result<ScanResult, LogError> {
        // Scans run at open, on the file the segment holds then (a second handle of it:
        // the scan updates the segment as it goes).
        let file = self.file_mut()?.try_clone()?;
        let file_len = file.metadata()?.len();
        let mut pos = pos;
        let mut first = from_start;
        loop {
            if pos >= file_len {
                self.size = pos;
                return Ok(ScanResult {
                    valid_end: pos,
                    stopped: None,
                });
            }
            let want = ((file_len - pos) as usize).min(SCAN_CHUNK_BYTES);
            let mut chunk = read_exact_at(&file, pos, want)?;
            // An entry larger than the chunk: read it whole.
            if let Ok(total) = entry::peek_len(&chunk) {
                if total > chunk.len() && pos + total as u64 <= file_len {
                    chunk = read_exact_at(&file, pos, total)?;
                }
            }
            let mut cursor = 0usize;
            while cursor < chunk.len() {
                let rest = chunk.slice(cursor..);
                match entry::decode(&rest) {
                    Ok((e, n)) => {
                        if let Some(reason) = self.check_next(&e, first) {
                            self.size = pos + cursor as u64;
                            return Ok(ScanResult {
                                valid_end: self.size,
                                stopped: Some(reason),
                            });
                        }
                        if first {
                            self.first_offset = e.offset;
                            self.next_offset = e.offset;
                            first = false;
                        }
                        self.note_entry(&e, pos + cursor as u64, n as u64, interval);
                        cursor += n;
                    }
                    Err(DecodeError::Incomplete { needed }) => {
                        if pos + cursor as u64 + needed as u64 > file_len {
                            let at = pos + cursor as u64;
                            self.size = at;
                            return Ok(ScanResult {
                                valid_end: at,
                                stopped: Some(format!("torn entry: {needed} bytes needed, {} left", file_len - at)),
                            });
                        }
                        break; // the rest of this entry is in the next chunk
                    }
                    Err(DecodeError::Invalid(reason)) => {
                        let at = pos + cursor as u64;
                        self.size = at;
                        return Ok(ScanResult {
                            valid_end: at,
                            stopped: Some(reason),
                        });
                    }
                }
            }
            pos += cursor as u64;
        }
    }

    /// Why `e` cannot follow the entries scanned so far, if it cannot.
    fn check_next(&self, e: &Entry, first: bool) -> Option<String> {
        if e.index != self.next_index {
            return Some(format!(
                "entry index {} where {} was expected",
                e.index, self.next_index
            ));
        }
        if !first && e.offset < self.next_offset {
            return Some(format!("entry offset {} below {}", e.offset, self.next_offset));
        }
        if let Some(t) = self.last_term {
            if e.term < t {
                return Some(format!("entry term {} below {}", e.term, t));
            }
        }
        None
    }

    /// Updates state for an entry at `pos` of `len` bytes.
    fn note_entry(&mut self, e: &Entry, pos: u64, len: u64, interval: u64) {
        if self.bytes_since_point >= interval {
            self.points.push(IndexPoint {
                index: e.index,
                offset: e.offset,
                pos,
                max_ts_before: self.max_timestamp,
            });
            self.bytes_since_point = 0;
        }
        self.bytes_since_point = self.bytes_since_point.saturating_add(len);
        self.next_index = e.index + 1;
        self.next_offset = e.next_offset();
        self.max_timestamp = self.max_timestamp.max(e.max_timestamp);
        self.last_term = Some(e.term);
        self.size = pos + len;
    }

    /// Writes an encoded entry at the end of the file.
    pub fn append(&mut self, e: &Entry, encoded: &[u8], interval: u64) -> Result<(), LogError> {
        if self.size == 0 {
            self.first_offset = e.offset;
        }
        let pos = self.size;
        crate::fault::write()?;
        self.file_mut()?.write_all_at(encoded, pos)?;
        self.note_entry(e, pos, encoded.len() as u64, interval);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.next_index == self.base_index
    }

    pub fn points(&self) -> &[IndexPoint] {
        &self.points
    }

    /// Position to start scanning from to find the first entry matching `past`, where
    /// `past(point)` says the point lies at or before the wanted entry.
    fn start_pos(&self, past: impl Fn(&IndexPoint) -> bool) -> u64 {
        let i = self.points.partition_point(|p| past(p));
        i.checked_sub(1)
            .and_then(|i| self.points.get(i))
            .map(|p| p.pos)
            .unwrap_or(0)
    }

    /// Visits the entries from `pos` to the end of the segment, in order, verifying each.
    /// `f` gets each entry with its position and length and says whether to go on.
    pub fn walk(
        &self,
        pos: u64,
        chunk_hint: usize,
        f: &mut dyn FnMut(Entry, u64, u64) -> bool,
    ) -> Result<(), LogError> {
        let mut pos = pos;
        let chunk_len = chunk_hint.clamp(64 * 1024, 1 << 26);
        if pos >= self.size {
            return Ok(());
        }
        let file = self.file()?;
        while pos < self.size {
            let want = ((self.size - pos) as usize).min(chunk_len);
            let mut chunk = read_exact_at(&file, pos, want)?;
            let mut cursor = 0usize;
            while cursor < chunk.len() {
                let rest = chunk.slice(cursor..);
                match entry::decode(&rest) {
                    Ok((e, n)) => {
                        if !f(e, pos + cursor as u64, n as u64) {
                            return Ok(());
                        }
                        cursor += n;
                    }
                    Err(DecodeError::Incomplete { needed }) if pos + (cursor + needed) as u64 <= self.size => {
                        if cursor == 0 {
                            // One entry larger than the chunk: read it whole.
                            chunk = read_exact_at(&file, pos, needed)?;
                            continue;
                        }
                        break;
                    }
                    Err(err) => {
                        let reason = match err {
                            DecodeError::Invalid(r) => r,
                            DecodeError::Incomplete { .. } => "entry extends past the end of the segment".into(),
                        };
                        return Err(LogError::Corrupt {
                            file: log_path(&self.dir, self.base_index).display().to_string(),
                            pos: pos + cursor as u64,
                            reason,
                        });
                    }
                }
            }
            pos += cursor as u64;
        }
        Ok(())
    }

    /// Reads entries from `pos` on while `budget` lasts, skipping those `skip` rejects.
    /// The first entry pushed into an empty `out` is taken whatever its size.
    /// Returns false when the budget ran out.
    pub fn read_into(
        &self,
        pos: u64,
        budget: &mut usize,
        skip: &dyn Fn(&Entry) -> bool,
        out: &mut Vec<Entry>,
    ) -> Result<bool, LogError> {
        let mut more = true;
        let hint = *budget;
        self.walk(pos, hint, &mut |e, _, _| {
            if skip(&e) {
                return true;
            }
            if !out.is_empty() && e.payload.len() > *budget {
                more = false;
                return false;
            }
            *budget = budget.saturating_sub(e.payload.len());
            out.push(e);
            if *budget == 0 {
                more = false;
                return false;
            }
            true
        })?;
        Ok(more)
    }

    /// Reads entries with index >= `index`.
    pub fn read_from_index(&self, index: u64, budget: &mut usize, out: &mut Vec<Entry>) -> Result<bool, LogError> {
        let pos = self.start_pos(|p| p.index <= index);
        self.read_into(pos, budget, &|e| e.index < index, out)
    }

    /// Reads entries whose offsets reach past `offset`.
    pub fn read_from_offset(&self, offset: i64, budget: &mut usize, out: &mut Vec<Entry>) -> Result<bool, LogError> {
        let pos = self.start_pos(|p| p.offset <= offset);
        self.read_into(pos, budget, &|e| e.next_offset() <= offset || e.offset_count == 0, out)
    }

    /// The first data entry whose `max_timestamp >= ts`.
    pub fn entry_for_timestamp(&self, ts: i64) -> Result<Option<Entry>, LogError> {
        let pos = self.start_pos(|p| p.max_ts_before < ts);
        let mut found = None;
        self.walk(pos, 64 * 1024, &mut |e, _, _| {
            if e.offset_count > 0 && e.max_timestamp >= ts {
                found = Some(e);
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Removes entries after `index`; `index` must be at least `base_index - 1`
    /// (`base_index - 1` empties the segment).
    pub fn truncate_after(&mut self, index: u64, interval: u64) -> Result<(), LogError> {
        // Resume from the last index point at or before `index`, or from the start.
        let resume = self.points.iter().rev().find(|p| p.index <= index).copied();
        let (pos0, next_index, next_offset, max_ts) = match resume {
            Some(p) => (p.pos, p.index, p.offset, p.max_ts_before),
            None => (0, self.base_index, self.first_offset, -1),
        };
        let mut kept = Vec::new();
        // Stop at `index` itself: what follows may be the damage being cut away.
        self.walk(pos0, 64 * 1024, &mut |e, pos, len| {
            if e.index > index {
                return false;
            }
            let more = e.index < index;
            kept.push((e, pos, len));
            more
        })?;
        self.points.retain(|p| p.pos < pos0);
        self.next_index = next_index;
        self.next_offset = next_offset;
        self.max_timestamp = max_ts;
        if resume.is_none() {
            self.last_term = None;
        }
        self.bytes_since_point = u64::MAX;
        self.size = pos0;
        for (e, pos, len) in &kept {
            self.note_entry(e, *pos, *len, interval);
        }
        let size = self.size;
        self.file_mut()?.set_len(size)?;
        let _ = std::fs::remove_file(index_path(&self.dir, self.base_index));
        let _ = std::fs::remove_file(time_path(&self.dir, self.base_index));
        Ok(())
    }

    /// Loads and checks the index files; `None` if either is missing or inconsistent.
    fn load_points(&self) -> Option<Vec<IndexPoint>> {
        let idx = std::fs::read(index_path(&self.dir, self.base_index)).ok()?;
        let tim = std::fs::read(time_path(&self.dir, self.base_index)).ok()?;
        if idx.len() % INDEX_POINT_BYTES != 0 || tim.len() % TIME_POINT_BYTES != 0 {
            return None;
        }
        if idx.len() / INDEX_POINT_BYTES != tim.len() / TIME_POINT_BYTES || idx.is_empty() {
            return None;
        }
        let (mut a, mut b) = (&idx[..], &tim[..]);
        let mut points: Vec<IndexPoint> = Vec::with_capacity(idx.len() / INDEX_POINT_BYTES);
        while a.remaining() >= INDEX_POINT_BYTES && b.remaining() >= TIME_POINT_BYTES {
            let (index, offset, pos) = (a.get_u64(), a.get_i64(), a.get_u64());
            let (max_ts_before, tpos) = (b.get_i64(), b.get_u64());
            if tpos != pos || pos >= self.size {
                return None;
            }
            if let Some(prev) = points.last() {
                if index <= prev.index || offset < prev.offset || pos <= prev.pos || max_ts_before < prev.max_ts_before
                {
                    return None;
                }
            } else if index != self.base_index || pos != 0 {
                return None;
            }
            points.push(IndexPoint {
                index,
                offset,
                pos,
                max_ts_before,
            });
        }
        Some(points)
    }

    /// Writes both index files and syncs them.
    pub fn write_indexes(&self) -> Result<(), LogError> {
        let mut idx = BytesMut::with_capacity(self.points.len() * INDEX_POINT_BYTES);
        let mut tim = BytesMut::with_capacity(self.points.len() * TIME_POINT_BYTES);
        for p in &self.points {
            idx.put_u64(p.index);
            idx.put_i64(p.offset);
            idx.put_u64(p.pos);
            tim.put_i64(p.max_ts_before);
            tim.put_u64(p.pos);
        }
        for (path, bytes) in [
            (index_path(&self.dir, self.base_index), idx),
            (time_path(&self.dir, self.base_index), tim),
        ] {
            let mut f = File::create(&path)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
        }
        crate::durable::sync_dir(&self.dir)?;
        Ok(())
    }

    /// fsyncs the segment's data (a closed segment was synced when it was closed).
    pub fn sync(&self) -> Result<(), LogError> {
        crate::fault::fsync()?;
        if let Some(f) = &self.file {
            f.sync_data()?;
            crate::fault::synced(&log_path(&self.dir, self.base_index), self.size);
        }
        Ok(())
    }

    /// A handle of the segment's file to fsync it with (fsync through any descriptor of a
    /// file syncs the file).
    pub fn try_clone_file(&self) -> Result<File, LogError> {
        Ok(match &self.file {
            Some(f) => f.try_clone()?,
            None => File::open(log_path(&self.dir, self.base_index))?,
        })
    }

    /// Deletes the segment's files.
    pub fn delete(self) -> Result<(), LogError> {
        std::fs::remove_file(log_path(&self.dir, self.base_index))?;
        crate::fault::removed(&log_path(&self.dir, self.base_index));
        let _ = std::fs::remove_file(index_path(&self.dir, self.base_index));
        let _ = std::fs::remove_file(time_path(&self.dir, self.base_index));
        // A removed segment must not reappear after power loss: truncation removes
        // segments whose entries a new leader replaced.
        crate::durable::sync_dir(&self.dir)?;
        Ok(())
    }
}

/// Most bytes of a cut tail searched byte by byte for a valid entry, when the bad entry's
/// own length cannot be trusted.
const DAMAGE_SEARCH_BYTES: usize = 64 * 1024 * 1024;

/// Looks through bytes cut from a segment's tail (starting at the first bad entry, which
/// should have had index `expected`) for valid entries that come after it. A torn tail (a
/// write cut short by a crash) has none: only the last entry is incomplete. Damage inside
/// the log (a flipped bit) leaves the entries after the bad one intact, and they may have
/// been acknowledged: returns the highest index among them, so the replica can refuse to
/// vote for logs shorter than what it had. Tries the position the bad entry's length field
/// points to first, then searches byte by byte (bounded).
fn valid_entries_after_damage(cut: &Bytes, expected: u64) -> Option<u64> {
    // Follows a chain of consecutive valid entries from `pos`; the highest index seen.
    let chain = |mut pos: usize| -> Option<u64> {
        let mut last = None;
        while let Some(rest) = cut.get(pos..) {
            if rest.is_empty() {
                break;
            }
            match entry::decode(&cut.slice(pos..)) {
                Ok((e, n)) if e.index > expected && e.index < expected.saturating_add(1 << 32) => {
                    last = Some(last.map_or(e.index, |l: u64| l.max(e.index)));
                    pos += n;
                }
                _ => break,
            }
        }
        last
    };
    if let Ok(len) = entry::peek_len(cut) {
        if len < cut.len() {
            if let Some(last) = chain(len) {
                return Some(last);
            }
        }
    }
    let end = cut.len().min(DAMAGE_SEARCH_BYTES);
    let mut best = None;
    let mut pos = 1;
    while pos < end {
        if entry::peek_len(cut.get(pos..).unwrap_or_default()).is_ok() {
            if let Some(last) = chain(pos) {
                best = Some(best.map_or(last, |b: u64| b.max(last)));
            }
        }
        pos += 1;
    }
    best
}
