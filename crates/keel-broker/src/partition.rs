//! One partition: its log, group commit, the high watermark, idempotent-producer state.
//!
//! Appends are serialised by the log's write lock, which also assigns offsets. Under the
//! `always` fsync policy, an append is acknowledged once a flusher task has fsynced past
//! it. The flusher takes a [`keel_log::SyncHandle`] under the lock and fsyncs outside it,
//! so producers that arrive during an fsync are all covered by the next one: that is the
//! group commit. Consumers see records up to the high watermark, which under `always` is
//! the durable end of the log, so nothing can be read that a crash could take back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use keel_log::{DiskLog, Entry, LogStore};
use keel_proto::batch::{self, BatchHeader};
use tokio::sync::{watch, Notify};
use tracing::{error, warn};

use crate::config::FsyncPolicy;
use crate::error::PartitionError;
use crate::metrics::Metrics;
use crate::producer_state::{Check, ProducerStates};
use crate::topic_config::{TimestampType, TopicSettings};

/// The committed (visible, acknowledged) end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub next_index: u64,
    pub next_offset: i64,
    pub poisoned: bool,
}

struct Inner {
    log: DiskLog,
    producers: ProducerStates,
    settings: TopicSettings,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    inner: RwLock<Inner>,
    committed: watch::Sender<Committed>,
    flush: Notify,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
    /// Broker-wide counter bumped whenever any high watermark moves (wakes long polls).
    data_changed: Arc<watch::Sender<u64>>,
}

/// Result of an append.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// Index of the last entry written; `None` if every batch was a duplicate.
    pub last_index: Option<u64>,
}

/// Result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl Partition {
    /// Opens the partition's log and starts its flusher.
    pub fn open(
        topic: &str,
        index: i32,
        log: DiskLog,
        settings: TopicSettings,
        metrics: Arc<Metrics>,
        data_changed: Arc<watch::Sender<u64>>,
        fsync_interval: Duration,
    ) -> Arc<Partition> {
        let producers = rebuild_producers(&log);
        let committed = Committed {
            next_index: log.next_index(),
            next_offset: log.next_offset(),
            poisoned: false,
        };
        let p = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            inner: RwLock::new(Inner {
                log,
                producers,
                settings,
            }),
            committed: watch::Sender::new(committed),
            flush: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
            data_changed,
        });
        p.update_size_metric();
        tokio::spawn(flusher(p.clone(), fsync_interval));
        p
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> TopicSettings {
        self.read_inner().settings.clone()
    }

    pub fn set_settings(&self, settings: TopicSettings) {
        let mut g = self.write_inner();
        g.log.set_config(settings.log.clone());
        g.settings = settings;
    }

    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    pub fn high_watermark(&self) -> i64 {
        self.committed().next_offset
    }

    pub fn log_start_offset(&self) -> i64 {
        self.read_inner().log.start_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.read_inner().log.size_bytes()
    }

    fn update_size_metric(&self) {
        let size = self.read_inner().log.size_bytes();
        self.metrics.log_size(&self.topic, self.index).set(size as i64);
    }

    /// Validates, assigns offsets to and writes `batches`; waits for durability as the
    /// policy says unless `wait` is false (acks=0).
    pub async fn append(&self, batches: Vec<(BatchHeader, Bytes)>, wait: bool) -> Result<Appended, PartitionError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PartitionError::Deleted);
        }
        let now = keel_log::disk::now_ms();
        let (appended, policy) = {
            let mut g = self.write_inner();
            let max = g.settings.message_bytes_max;
            let mut first: Option<Appended> = None;
            let mut last_index = None;
            for (h, bytes) in &batches {
                if bytes.len() > max {
                    return Err(PartitionError::BatchTooLarge { size: bytes.len(), max });
                }
                if h.producer_id >= 0 {
                    match g
                        .producers
                        .check(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count)
                    {
                        Check::Append => {}
                        Check::Duplicate { base_offset } => {
                            first.get_or_insert(Appended {
                                base_offset,
                                log_append_time: -1,
                                log_start_offset: g.log.start_offset(),
                                last_index: None,
                            });
                            continue;
                        }
                        Check::Reject(code) => return Err(PartitionError::Producer(code)),
                    }
                }
                let base_offset = g.log.next_offset();
                let mut owned = BytesMut::from(&bytes[..]);
                batch::set_base_offset(&mut owned, base_offset);
                batch::set_leader_epoch(&mut owned, 0);
                let log_append = g.settings.timestamp_type == TimestampType::LogAppendTime;
                let max_ts = if log_append {
                    batch::set_log_append_time(&mut owned, now);
                    now
                } else {
                    h.max_timestamp
                };
                // Paired assertion: the bytes about to be written still carry a valid CRC.
                debug_assert!(batch::verify_crc(&owned).is_ok());
                let index = g.log.next_index();
                let entry = Entry::data(index, 0, base_offset, h.record_count as u32, max_ts, owned.freeze());
                g.log.append(&entry)?;
                if h.producer_id >= 0 {
                    g.producers.record(
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.record_count,
                        base_offset,
                    );
                }
                last_index = Some(index);
                first.get_or_insert(Appended {
                    base_offset,
                    log_append_time: if log_append { now } else { -1 },
                    log_start_offset: g.log.start_offset(),
                    last_index: None,
                });
            }
            let mut a = first
                .ok_or_else(|| PartitionError::Proto(keel_proto::ProtoError::CorruptBatch("no batches".into())))?;
            a.last_index = last_index;
            let next = Committed {
                next_index: g.log.next_index(),
                next_offset: g.log.next_offset(),
                poisoned: false,
            };
            let policy = g.settings.fsync;
            if policy != FsyncPolicy::Always && last_index.is_some() {
                self.advance_committed(next);
            }
            (a, policy)
        };
        self.update_size_metric();
        let Some(last_index) = appended.last_index else {
            return Ok(appended);
        };
        if policy == FsyncPolicy::Always {
            self.flush.notify_one();
            if wait {
                self.wait_durable(last_index).await?;
            }
        }
        Ok(appended)
    }

    fn advance_committed(&self, next: Committed) {
        let moved = self.committed.send_if_modified(|c| {
            if next.next_index > c.next_index {
                c.next_index = next.next_index;
                c.next_offset = next.next_offset;
                true
            } else {
                false
            }
        });
        if moved {
            self.data_changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    pub async fn wait_durable(&self, index: u64) -> Result<(), PartitionError> {
        let mut rx = self.committed.subscribe();
        let c = rx
            .wait_for(|c| c.next_index > index || c.poisoned)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if c.next_index > index {
            Ok(())
        } else {
            Err(PartitionError::Storage(keel_log::LogError::Poisoned(
                "fsync failed".into(),
            )))
        }
    }

    /// Performs one fsync covering everything appended so far.
    pub async fn sync_now(&self) {
        let taken = {
            let g = self.read_inner();
            g.log.sync_handle().map(|h| (h, g.log.next_offset()))
        };
        let (handle, next_offset) = match taken {
            Ok(x) => x,
            Err(_) => {
                self.committed.send_modify(|c| c.poisoned = true);
                return;
            }
        };
        if handle.next_index <= self.committed().next_index && self.settings().fsync == FsyncPolicy::Always {
            return;
        }
        let next_index = handle.next_index;
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || handle.sync()).await;
        self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(())) => self.advance_committed(Committed {
                next_index,
                next_offset,
                poisoned: false,
            }),
            Ok(Err(e)) => self.poison(format!("fsync failed: {e}")),
            Err(e) => self.poison(format!("fsync task failed: {e}")),
        }
    }

    fn poison(&self, reason: String) {
        error!(topic = %self.topic, partition = self.index, %reason, "partition poisoned");
        self.write_inner().log.poison(reason);
        self.metrics.poisoned_partitions.inc();
        self.committed.send_modify(|c| c.poisoned = true);
    }

    /// Reads committed records from `offset`, at most `max_bytes`, except that the first
    /// batch comes whole even when larger (so a large batch still makes progress).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, PartitionError> {
        self.read_bounded(offset, max_bytes, true)
    }

    /// As [`Partition::read`]; with `oversized_first` false, `max_bytes` is a hard limit
    /// (KIP-74: only the first partition of a Fetch response may exceed the budget).
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        oversized_first: bool,
    ) -> Result<ReadResult, PartitionError> {
        let g = self.read_inner();
        let hw = self.high_watermark();
        let start = g.log.start_offset();
        if offset < start || offset > hw {
            return Err(PartitionError::OffsetOutOfRange { offset, start, end: hw });
        }
        let mut out = BytesMut::new();
        if offset < hw {
            for e in g.log.read_from_offset(offset, max_bytes)? {
                if e.offset >= hw {
                    break;
                }
                let fits = out.len() + e.payload.len() <= max_bytes;
                let may_exceed = out.is_empty() && oversized_first;
                if !(fits || may_exceed) {
                    break;
                }
                out.extend_from_slice(&e.payload);
            }
        }
        Ok(ReadResult {
            records: out.freeze(),
            high_watermark: hw,
            log_start_offset: start,
        })
    }

    /// The earliest offset whose record timestamp is at least `ts`, or `None`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, PartitionError> {
        let g = self.read_inner();
        let hw = self.high_watermark();
        match g.log.entry_for_timestamp(ts)? {
            Some(e) if e.offset < hw => Ok(Some(
                exact_offset_for_timestamp(&e.payload, ts).unwrap_or((e.offset, e.max_timestamp)),
            )),
            _ => Ok(None),
        }
    }

    /// Removes whole segments that hold only offsets below `offset`. Returns entries removed.
    pub fn purge_before_offset(&self, offset: i64) -> Result<u64, PartitionError> {
        let mut g = self.write_inner();
        let index = match g.log.read_from_offset(offset, 1)?.first() {
            Some(e) => e.index,
            None => g.log.next_index(),
        };
        let removed = g.log.purge_before(index)?;
        drop(g);
        self.update_size_metric();
        Ok(removed)
    }

    /// Deletes segments past retention.
    pub fn apply_retention(&self, now_ms: i64) {
        let r = self.write_inner().log.apply_retention(now_ms);
        match r {
            Ok(n) if n > 0 => {
                tracing::info!(topic = %self.topic, partition = self.index, entries = n, "retention removed segments");
                self.update_size_metric();
            }
            Ok(_) => {}
            Err(e) => {
                warn!(topic = %self.topic, partition = self.index, error = %e, "retention failed")
            }
        }
    }

    /// Stops the flusher; the partition refuses further appends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush.notify_one();
        self.metrics.forget_partition(&self.topic, self.index);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

async fn flusher(p: Arc<Partition>, interval: Duration) {
    loop {
        if p.is_closed() {
            return;
        }
        match p.settings().fsync {
            FsyncPolicy::Always => p.flush.notified().await,
            FsyncPolicy::Interval => {
                let _ = tokio::time::timeout(interval, p.flush.notified()).await;
            }
            FsyncPolicy::Never => {
                // Only a shutdown or a policy change wakes it.
                let _ = tokio::time::timeout(interval, p.flush.notified()).await;
                if p.settings().fsync == FsyncPolicy::Never {
                    continue;
                }
            }
        }
        if p.is_closed() {
            return;
        }
        p.sync_now().await;
    }
}

/// Rebuilds idempotent-producer state from the newest entries of the log, so that a
/// producer retrying across a broker restart is still deduplicated.
fn rebuild_producers(log: &DiskLog) -> ProducerStates {
    const ENTRIES_SCANNED: u64 = 20_000;
    const BYTES_SCANNED: usize = 256 * 1024 * 1024;
    let mut states = ProducerStates::default();
    let from = log.first_index().max(log.next_index().saturating_sub(ENTRIES_SCANNED));
    match log.read(from, BYTES_SCANNED) {
        Ok(entries) => {
            for e in entries {
                if let Ok(h) = BatchHeader::parse(&e.payload) {
                    if h.producer_id >= 0 {
                        states.record(
                            h.producer_id,
                            h.producer_epoch,
                            h.base_sequence,
                            h.record_count,
                            h.base_offset,
                        );
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "could not rebuild producer state from the log tail"),
    }
    states
}

/// For an uncompressed batch, the offset and timestamp of the first record at or after
/// `ts`, walking the records' timestamp and offset deltas. Compressed batches are not
/// decompressed here; the caller falls back to the batch's first offset.
fn exact_offset_for_timestamp(payload: &[u8], ts: i64) -> Option<(i64, i64)> {
    let h = BatchHeader::parse(payload).ok()?;
    if h.compression() != 0 || h.is_log_append_time() {
        return None;
    }
    let mut rest = payload.get(batch::HEADER_LEN..)?;
    for _ in 0..h.record_count {
        let len = batch::read_varint(&mut rest).ok()? as usize;
        let mut rec = rest.get(..len)?;
        rest = rest.get(len..)?;
        rec = rec.get(1..)?; // attributes
        let ts_delta = batch::read_varint(&mut rec).ok()?;
        let off_delta = batch::read_varint(&mut rec).ok()?;
        let rts = h.base_timestamp.saturating_add(ts_delta);
        if rts >= ts {
            return Some((h.base_offset + off_delta, rts));
        }
    }
    None
}
