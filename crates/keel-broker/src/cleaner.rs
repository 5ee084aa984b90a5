//! The log cleaner for compacted topics (`cleanup.policy=compact`): keeps the latest record
//! of each key. See `docs/design/compaction.md` for why it fits a partition log that is
//! also the Raft log.
//!
//! Each replica cleans its own committed, closed prefix, by itself: no cleaning decision
//! goes through Raft. A cleaned segment keeps every entry with its Raft index, term and
//! offset range, and every batch with its base offset and offset span, so replication,
//! truncation and readers see the same log ids and offsets as before; only records go.
//!
//! A pass over a partition:
//! 1. The cleanable range: closed segments wholly applied, below the last stable offset
//!    (no open transaction's records) and older than `min.compaction.lag.ms`.
//! 2. Skipped unless the dirty part (segments after the last pass's end) is at least
//!    `min.cleanable.dirty.ratio` of it, or older than `max.compaction.lag.ms`.
//! 3. [`Plan`]: the offset of every key's latest record in the range (aborted records do
//!    not count) and each producer's last batch.
//! 4. Every segment of the range that loses records is rewritten ([`clean_entry`]) and
//!    swapped in durably (`keel_log::CleanedWriter`, `DiskLog::swap_cleaned`).
//!
//! What goes: records whose key has a later record in the range; tombstones (null values)
//! whose batch is older than `delete.retention.ms`; records of aborted transactions; and a
//! transaction marker once no record of its transaction is left and it is older than
//! `delete.retention.ms`. What stays: every record without a key, each producer's last
//! batch (emptied if need be, so its sequence numbers survive), and a batch's span (an
//! emptied batch stays as a header, runs of them merged into one). Cleaning never moves
//! the log start offset, as Kafka's cleaner does not: a consumer positioned in a range the
//! cleaner emptied reads on from the next record instead of being reset.

use std::collections::HashMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use keel_log::{Entry, EntryKind};
use keel_proto::batch::{self, BatchHeader};

use crate::cluster::txn_index::Aborted;

/// The largest batch the cleaner inflates (larger ones are kept as they are).
const INFLATED_MAX: usize = 64 * 1024 * 1024;
/// Keys one pass keeps in its map at most; a range with more is cleaned up to where the
/// map filled (the rest in a later pass), as Kafka's dedupe buffer bounds it.
pub const PLAN_KEYS_MAX: usize = 4_000_000;

/// Which records of the cleanable range are the latest of their key.
#[derive(Debug, Default)]
pub struct Plan {
    latest: HashMap<Bytes, i64>,
    /// Producer id -> base offset of its last batch in the range.
    last_batch: HashMap<i64, i64>,
    /// Producer id -> its aborted transactions' (first offset, marker offset).
    aborted: HashMap<i64, Vec<(i64, i64)>>,
    /// The map filled: entries from this index on were not planned.
    pub full_at: Option<u64>,
}

impl Plan {
    pub fn new(aborted: &[Aborted]) -> Plan {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in aborted {
            by_producer
                .entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        Plan {
            aborted: by_producer,
            ..Plan::default()
        }
    }

    fn is_aborted(&self, h: &BatchHeader, offset: i64) -> bool {
        h.is_transactional()
            && self
                .aborted
                .get(&h.producer_id)
                .is_some_and(|spans| spans.iter().any(|(first, last)| *first <= offset && offset < *last))
    }

    /// Feeds the next entry of the range, in log order. Returns false (and feeds nothing)
    /// once the map is full.
    pub fn feed(&mut self, e: &Entry) -> bool {
        if self.full_at.is_some() {
            return false;
        }
        if e.kind != EntryKind::Data {
            return true;
        }
        let mut seen = Vec::new();
        for (pos, h) in batch::batches(&e.payload).map_while(Result::ok) {
            if h.is_control() {
                continue;
            }
            if h.producer_id >= 0 {
                self.last_batch.insert(h.producer_id, h.base_offset);
            }
            let Some(bytes) = e.payload.get(pos..pos + h.total_len()) else {
                continue;
            };
            let Ok(records) = batch::decode_records(&e.payload.slice_ref(bytes), INFLATED_MAX) else {
                continue;
            };
            for r in records {
                if let Some(k) = r.key {
                    if !self.is_aborted(&h, r.offset) {
                        seen.push((k, r.offset));
                    }
                }
            }
        }
        let new_keys = seen.iter().filter(|(k, _)| !self.latest.contains_key(k)).count();
        if self.latest.len() + new_keys > PLAN_KEYS_MAX {
            self.full_at = Some(e.index);
            return false;
        }
        for (k, o) in seen {
            self.latest.insert(k, o);
        }
        true
    }
}

/// The cleaner's settings for one pass.
#[derive(Debug, Clone, Copy)]
pub struct Cleaning {
    pub now_ms: i64,
    pub delete_retention_ms: i64,
}

impl Cleaning {
    fn expired(&self, ts: i64) -> bool {
        ts.saturating_add(self.delete_retention_ms) < self.now_ms
    }
}

/// Per-producer state carried across entries within a pass: whether a record of its
/// current transaction has been kept.
pub type TxnKept = HashMap<i64, bool>;

enum Piece {
    Bytes(Bytes),
    /// Offsets no record is left in: (base offset, span, leader epoch, timestamp).
    Empty(i64, i64, i32, i64),
}

/// A cleaned payload for `e`, or `None` when nothing of it goes.
pub fn clean_entry(e: &Entry, plan: &Plan, c: &Cleaning, txn_kept: &mut TxnKept) -> Option<Bytes> {
    if e.kind != EntryKind::Data || e.payload.is_empty() {
        return None;
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut changed = false;
    for b in batch::batches(&e.payload) {
        let Ok((pos, h)) = b else {
            // Bytes the cleaner cannot read are never rewritten.
            return None;
        };
        let raw = e.payload.slice(pos..pos + h.total_len());
        if h.is_control() {
            let kept_any = txn_kept.remove(&h.producer_id).unwrap_or(false);
            if !kept_any && c.expired(h.max_timestamp) {
                changed = true;
                pieces.push(Piece::Empty(
                    h.base_offset,
                    h.offset_span(),
                    h.partition_leader_epoch,
                    h.max_timestamp,
                ));
            } else {
                pieces.push(Piece::Bytes(raw));
            }
            continue;
        }
        let Ok(records) = batch::decode_records(&raw, INFLATED_MAX) else {
            pieces.push(Piece::Bytes(raw));
            continue;
        };
        let total = records.len();
        let kept: Vec<_> = records
            .into_iter()
            .filter(|r| {
                if plan.is_aborted(&h, r.offset) {
                    return false;
                }
                let Some(k) = &r.key else { return true };
                match plan.latest.get(k) {
                    Some(latest) if *latest != r.offset => false,
                    // The latest of its key: a tombstone goes once old enough.
                    Some(_) => !(r.value.is_none() && c.expired(h.max_timestamp)),
                    // Not planned (past a full map): kept.
                    None => true,
                }
            })
            .collect();
        if h.is_transactional() && h.producer_id >= 0 {
            let k = txn_kept.entry(h.producer_id).or_insert(false);
            *k |= !kept.is_empty();
        }
        if kept.len() == total {
            pieces.push(Piece::Bytes(raw));
            continue;
        }
        changed = true;
        let producers_last = h.producer_id >= 0 && plan.last_batch.get(&h.producer_id) == Some(&h.base_offset);
        if kept.is_empty() && !producers_last {
            pieces.push(Piece::Empty(
                h.base_offset,
                h.offset_span(),
                h.partition_leader_epoch,
                h.max_timestamp,
            ));
        } else {
            pieces.push(Piece::Bytes(batch::rewrite_batch(&h, &kept)));
        }
    }
    if !changed {
        return None;
    }
    let mut out = BytesMut::with_capacity(e.payload.len());
    let mut run: Option<(i64, i64, i32, i64)> = None;
    let flush = |run: &mut Option<(i64, i64, i32, i64)>, out: &mut BytesMut| {
        if let Some((base, span, epoch, ts)) = run.take() {
            out.extend_from_slice(&batch::empty_batch(base, span, epoch, ts));
        }
    };
    for p in pieces {
        match p {
            Piece::Bytes(b) => {
                flush(&mut run, &mut out);
                out.extend_from_slice(&b);
            }
            Piece::Empty(base, span, epoch, ts) => {
                run = Some(match run {
                    Some((b0, s0, e0, t0)) if b0 + s0 == base && s0 + span <= i64::from(i32::MAX) => {
                        (b0, s0 + span, e0, t0.max(ts))
                    }
                    Some(prev) => {
                        let mut r = Some(prev);
                        flush(&mut r, &mut out);
                        (base, span, epoch, ts)
                    }
                    None => (base, span, epoch, ts),
                });
            }
        }
    }
    flush(&mut run, &mut out);
    Some(out.freeze())
}

/// Where a replica keeps the index its cleaner cleaned through.
pub fn checkpoint_path(dir: &Path) -> std::path::PathBuf {
    dir.join("cleaner-checkpoint")
}

pub fn read_checkpoint(dir: &Path) -> u64 {
    std::fs::read_to_string(checkpoint_path(dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub segments_rewritten: u64,
    pub bytes_freed: u64,
    /// The index the partition is cleaned through now.
    pub cleaned_through: u64,
}

#[cfg(test)]
mod tests;
