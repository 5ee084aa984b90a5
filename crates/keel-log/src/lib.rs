//! Keel's partition log: an append-only sequence of checksummed entries.
//!
//! The log knows nothing of Kafka requests. It stores [`Entry`]s, each at a log position
//! ([`Entry::index`], the future Raft index) and covering a range of record offsets
//! (`offset .. offset + offset_count`). A data entry carries one Kafka record batch as its
//! payload; a non-data entry (Raft blank or membership) covers no offsets.
//!
//! - [`entry`]: the on-disk envelope of one entry (length, CRC-32C, index, term, kind,
//!   offsets, timestamp, payload) and its validating decoder.
//! - [`segment`]: one segment file with its sparse offset index and time index.
//! - [`disk::DiskLog`]: segments in a directory; roll by size and age, retention by time and
//!   size, crash recovery of the active segment's tail at open, `truncate_after`, prefix purge.
//! - [`mem::MemLog`]: the same contract in memory, for tests and simulation.
//! - [`suite`]: the one behavioural test suite every [`LogStore`] passes.
//!
//! Durability is explicit: [`LogStore::append`] writes to the OS, [`LogStore::sync`] (or a
//! [`SyncHandle`] used outside a lock, for group commit) makes it durable. A failed fsync
//! poisons the log: every later write is refused with the reason, because after a failed
//! fsync the state of the file is unknown.
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

pub mod disk;
pub mod durable;
pub mod entry;
pub mod fault;
pub mod mem;
pub mod segment;
pub mod suite;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use disk::{CleanedWriter, DiskLog, SegmentInfo};
pub use entry::{Entry, EntryKind};
pub use mem::MemLog;

/// Errors of the log. `Corrupt` and `Io` describe this node's storage; the others are
/// refusals of a caller's request.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("log is poisoned after a failed fsync and refuses writes: {0}")]
    Poisoned(String),
    #[error("corrupt log data in {file} at byte {pos}: {reason}")]
    Corrupt { file: String, pos: u64, reason: String },
    #[error("append at index {got} but the log expects {expected}")]
    NonContiguous { expected: u64, got: u64 },
    #[error("append at offset {got} but the log's next offset is {expected}")]
    OffsetRegression { expected: i64, got: i64 },
    #[error("entry of {0} bytes exceeds the entry size limit")]
    EntryTooLarge(usize),
    #[error("index {0} is outside the log")]
    OutOfRange(u64),
}

impl LogError {
    /// The disk is full (ENOSPC). An append that fails so leaves the log as it was (the
    /// entry is not counted, and the next append writes over whatever part of it reached the
    /// file), so it may be retried once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io(e) if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// Limits and policies of one log. One struct per layer, validated once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Roll the active segment when it would grow past this size.
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old.
    pub segment_ms: u64,
    /// Delete closed segments whose newest timestamp is older than this; `None` keeps all.
    pub retention_ms: Option<u64>,
    /// Delete the oldest closed segments while the log is larger than this; `None` keeps all.
    pub retention_bytes: Option<u64>,
    /// One sparse index entry per this many bytes of log.
    pub index_interval_bytes: u64,
}

/// Largest single entry the log stores or believes when reading a length from disk.
pub const ENTRY_BYTES_MAX: usize = 256 * 1024 * 1024;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 1024 {
            return Err(format!("segment_bytes {} is below 1024", self.segment_bytes));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be positive".into());
        }
        if self.segment_ms == 0 {
            return Err("segment_ms must be positive".into());
        }
        Ok(())
    }
}

/// A file handle and the position it makes durable, taken under the caller's lock and
/// synced outside it, so that appends can continue while an fsync is in flight.
pub struct SyncHandle {
    pub file: Option<std::fs::File>,
    /// Every entry below this index is durable once `file` is synced.
    pub next_index: u64,
    /// The file's path and the length the sync makes durable (for the power-loss model
    /// of [`fault`]).
    pub durable: Option<(std::path::PathBuf, u64)>,
}

impl SyncHandle {
    /// Performs the fsync (fdatasync) this handle stands for.
    pub fn sync(&self) -> std::io::Result<()> {
        fault::fsync()?;
        if let Some(f) = &self.file {
            f.sync_data()?;
            if let Some((path, len)) = &self.durable {
                fault::synced(path, *len);
            }
        }
        Ok(())
    }
}

/// The contract every partition log implements (on disk, in memory).
pub trait LogStore: Send + Sync {
    /// Appends one entry. Its index must be `next_index()` and its offset at least
    /// `next_offset()`.
    fn append(&mut self, entry: &Entry) -> Result<(), LogError>;
    /// Entries from `from_index` on, at most `max_bytes` of payload except that the first
    /// entry is always returned whole. Empty when `from_index >= next_index()`.
    fn read(&self, from_index: u64, max_bytes: usize) -> Result<Vec<Entry>, LogError>;
    /// Entries from the one covering record `offset` on, by the same rules as `read`.
    fn read_from_offset(&self, offset: i64, max_bytes: usize) -> Result<Vec<Entry>, LogError>;
    /// The first entry whose `max_timestamp >= ts`, if any.
    fn entry_for_timestamp(&self, ts: i64) -> Result<Option<Entry>, LogError>;
    /// Removes every entry after `index` (keeps `index` itself).
    fn truncate_after(&mut self, index: u64) -> Result<(), LogError>;
    /// Replaces the config (topic config changes); takes effect at the next roll.
    fn set_config(&mut self, config: LogConfig);
    /// Empties the log; the next append must have `next_index` and an offset of at least
    /// `next_offset` (a replica that catches up from a leader's purge point).
    fn reset(&mut self, next_index: u64, next_offset: i64) -> Result<(), LogError>;
    /// Removes whole segments that lie entirely below `index`. Returns entries removed.
    fn purge_before(&mut self, index: u64) -> Result<u64, LogError>;
    /// Makes every appended entry durable.
    fn sync(&mut self) -> Result<(), LogError>;
    /// A handle to sync outside a lock; see [`SyncHandle`].
    fn sync_handle(&self) -> Result<SyncHandle, LogError>;
    /// Records that an fsync failed: the log refuses writes from now on.
    fn poison(&mut self, reason: String);
    /// The first index retention would keep, when retention would delete whole segments
    /// (without deleting them: a replicated log purges through its consensus layer).
    fn retention_point(&self, _now_ms: i64) -> Option<u64> {
        None
    }
    /// Rolls the active segment once it is older than `segment_ms`, so it can expire.
    fn roll_if_aged(&mut self, _now_ms: i64) -> Result<(), LogError> {
        Ok(())
    }
    /// Deletes segments past the retention limits. Returns entries removed.
    fn apply_retention(&mut self, now_ms: i64) -> Result<u64, LogError>;
    /// Index of the first entry (equals `next_index()` when empty).
    fn first_index(&self) -> u64;
    /// Index the next append must have.
    fn next_index(&self) -> u64;
    /// First record offset still in the log.
    fn start_offset(&self) -> i64;
    /// Offset the next record will get.
    fn next_offset(&self) -> i64;
    /// Bytes the log occupies.
    fn size_bytes(&self) -> u64;
    /// Term of the last entry, if any.
    fn last_term(&self) -> Option<u64>;
    /// The log's directory, for a log on disk.
    fn directory(&self) -> Option<&std::path::Path> {
        None
    }
    /// The closed segments a cleaner may rewrite (none for a log not in segments).
    fn closed_segments(&self) -> Vec<SegmentInfo> {
        Vec::new()
    }
    /// Swaps a cleaned copy of a closed segment in (see [`CleanedWriter`]); returns the
    /// bytes freed.
    fn swap_cleaned(&mut self, info: &SegmentInfo, _cleaned: &std::path::Path) -> Result<u64, LogError> {
        Err(LogError::OutOfRange(info.base_index))
    }
}

/// A blank payload, for the non-data entries tests append.
pub fn empty() -> Bytes {
    Bytes::new()
}
