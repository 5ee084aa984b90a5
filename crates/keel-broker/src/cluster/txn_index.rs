//! One partition's transactions, as its log tells them: a pure core.
//!
//! Every replica feeds it the batches it applies, in log order. A transactional batch of a
//! producer with no open transaction here opens one at its offset; a control batch (a
//! COMMIT or ABORT marker from the transaction coordinator) closes it, and an aborted one is
//! remembered as (producer id, first offset, marker offset) so that `read_committed`
//! consumers can drop its records. The last stable offset (LSO) is the first offset of the
//! oldest open transaction, or the high watermark when none is open: `read_committed`
//! readers see nothing at or past it.
//!
//! The index is saved as a checkpoint (see [`TxnCheckpoint`]); what the log holds past the
//! checkpoint is fed again at start-up, and feeding an offset twice changes nothing.

use std::collections::{BTreeMap, HashMap};

use keel_proto::batch::BatchHeader;
use serde::{Deserialize, Serialize};

/// An aborted transaction's span in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of its ABORT marker.
    pub last_offset: i64,
}

/// Aborted transactions kept per partition at most; older ones are forgotten first (a
/// reader that far behind sees their records as if committed). Kafka keeps them per
/// segment until the segment is deleted; this bound keeps memory per partition bounded.
pub const ABORTED_KEPT_MAX: usize = 100_000;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnIndex {
    /// Producer id -> (first offset, producer epoch) of its open transaction here.
    open: BTreeMap<i64, (i64, i16)>,
    /// Aborted transactions, in marker order (so sorted by `last_offset`).
    aborted: Vec<Aborted>,
    /// Every offset below this has been fed.
    through: i64,
    /// Producer id -> the epoch of the last marker: a marker fences older epochs.
    #[serde(default)]
    marker_epochs: HashMap<i64, i16>,
    /// Producer id -> the newest coordinator epoch of its markers. A marker from an older
    /// coordinator (one deposed while its marker was in flight) is ignored: it could
    /// otherwise end the producer's next transaction, which a newer coordinator runs.
    #[serde(default)]
    coordinator_epochs: HashMap<i64, i32>,
    /// Records before this offset were deleted (DeleteRecords): the partition's log start
    /// offset, whatever its segments still hold. Kept here as part of the replica's
    /// applied state.
    #[serde(default)]
    deleted_before: i64,
}

/// What the saved checkpoint holds.
pub type TxnCheckpoint = TxnIndex;

impl TxnIndex {
    /// Whether the index knows anything worth saving.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
            && self.aborted.is_empty()
            && self.marker_epochs.is_empty()
            && self.coordinator_epochs.is_empty()
    }

    /// Offsets below this have been fed.
    pub fn through(&self) -> i64 {
        self.through
    }

    /// Feeds a data batch of `count` records at `base_offset` from `producer_id` at
    /// `epoch`. Returns whether it changed the open transactions.
    pub fn on_data(&mut self, producer_id: i64, epoch: i16, transactional: bool, base_offset: i64, count: i64) -> bool {
        if base_offset < self.through {
            return false;
        }
        self.through = base_offset + count.max(1);
        if !transactional || producer_id < 0 || self.open.contains_key(&producer_id) {
            return false;
        }
        self.open.insert(producer_id, (base_offset, epoch));
        true
    }

    /// Feeds a marker at `offset` written by the coordinator of `coordinator_epoch`.
    /// Returns whether it changed the index.
    pub fn on_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        offset: i64,
    ) -> bool {
        if offset < self.through {
            return false;
        }
        self.through = offset + 1;
        let known = self.coordinator_epochs.entry(producer_id).or_insert(coordinator_epoch);
        if coordinator_epoch < *known {
            return true;
        }
        *known = coordinator_epoch;
        let e = self.marker_epochs.entry(producer_id).or_insert(epoch);
        *e = (*e).max(epoch);
        let Some((first_offset, _)) = self.open.remove(&producer_id) else {
            return true;
        };
        if !commit {
            self.aborted.push(Aborted {
                producer_id,
                first_offset,
                last_offset: offset,
            });
            if self.aborted.len() > ABORTED_KEPT_MAX {
                self.aborted.remove(0);
            }
        }
        true
    }

    /// Feeds DeleteRecords' control record at `offset`: records before `before` are
    /// deleted. Returns whether it moved the log start.
    pub fn on_log_start(&mut self, before: i64, offset: i64) -> bool {
        if offset < self.through {
            return false;
        }
        self.through = offset + 1;
        if before <= self.deleted_before {
            return false;
        }
        self.deleted_before = before;
        true
    }

    /// Records before this offset were deleted.
    pub fn deleted_before(&self) -> i64 {
        self.deleted_before
    }

    /// Feeds the batch at the start of `batch` (header `h`) placed at `offset`, whatever
    /// it is: data, a transaction marker, or DeleteRecords' log-start record. Returns
    /// (whether the index changed, whether it was a transaction marker).
    pub fn feed(&mut self, batch: &[u8], h: &BatchHeader, offset: i64) -> (bool, bool) {
        if !h.is_control() {
            let changed = self.on_data(
                h.producer_id,
                h.producer_epoch,
                h.is_transactional(),
                offset,
                h.offset_span(),
            );
            return (changed, false);
        }
        if let Some(before) = keel_proto::batch::log_start_of(batch) {
            return (self.on_log_start(before, offset), false);
        }
        match keel_proto::batch::control_record(batch) {
            Some((kind, coordinator_epoch)) => {
                let commit = kind == keel_proto::batch::CONTROL_COMMIT;
                let changed = self.on_marker(h.producer_id, h.producer_epoch, commit, coordinator_epoch, offset);
                (changed, true)
            }
            None => (false, false),
        }
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// Whether `producer_id` has a transaction open here that it began at `epoch` (with
    /// an epoch bump per transaction, a batch at a newer epoch belongs to the next one).
    pub fn is_open_at(&self, producer_id: i64, epoch: i16) -> bool {
        self.open.get(&producer_id).is_some_and(|(_, e)| *e == epoch)
    }

    /// The newest marker epoch seen for `producer_id`.
    pub fn marker_epoch(&self, producer_id: i64) -> Option<i16> {
        self.marker_epochs.get(&producer_id).copied()
    }

    /// The last stable offset given the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.open
            .values()
            .map(|(o, _)| *o)
            .min()
            .unwrap_or(high_watermark)
            .min(high_watermark)
    }

    /// Open transactions: (producer id, first offset).
    pub fn open(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open.iter().map(|(p, (o, _))| (*p, *o))
    }

    /// Aborted transactions a reader of offsets `[from, to)` must know about: those whose
    /// span overlaps it.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<Aborted> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .get(start..)
            .unwrap_or_default()
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below `log_start` (their records are gone).
    pub fn forget_before(&mut self, log_start: i64) -> bool {
        let n = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..n);
        n > 0
    }

    /// A checkpoint that claims more than the log holds (the log lost its tail) is not
    /// usable: start from an empty index and feed the whole log.
    pub fn usable_with(&self, log_end: i64) -> bool {
        self.through <= log_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transactions open at their first batch, hold the LSO there until their marker, and
    /// aborted ones are returned to readers whose range overlaps them.
    #[test]
    fn lso_and_aborted_ranges() {
        let mut ix = TxnIndex::default();
        assert!(!ix.on_data(-1, -1, false, 0, 5));
        assert_eq!(ix.last_stable_offset(5), 5);
        assert!(ix.on_data(7, 0, true, 5, 2)); // txn of 7 opens at 5
        assert!(!ix.on_data(7, 0, true, 7, 1));
        assert!(ix.on_data(8, 0, true, 8, 1)); // txn of 8 opens at 8
                                               // A batch at a newer epoch (the next transaction, under version 2) does not count
                                               // as part of the open one.
        assert!(ix.is_open_at(8, 0) && !ix.is_open_at(8, 1));
        assert_eq!(ix.last_stable_offset(9), 5);
        assert!(ix.on_marker(7, 0, false, 1, 9)); // 7 aborts
        assert_eq!(ix.last_stable_offset(10), 8);
        assert!(ix.on_marker(8, 0, true, 1, 10)); // 8 commits
        assert_eq!(ix.last_stable_offset(11), 11);
        let a = Aborted {
            producer_id: 7,
            first_offset: 5,
            last_offset: 9,
        };
        assert_eq!(ix.aborted_between(0, 11), vec![a]);
        assert_eq!(ix.aborted_between(9, 11), vec![a]);
        assert_eq!(ix.aborted_between(10, 11), vec![]);
        assert_eq!(ix.aborted_between(0, 5), vec![]);
        assert_eq!(ix.marker_epoch(7), Some(0));
        // Fed again (re-applied after a restart): nothing changes.
        let before = ix.clone();
        assert!(!ix.on_data(7, 0, true, 5, 2));
        assert!(!ix.on_marker(7, 0, false, 1, 9));
        assert_eq!(ix, before);
        // A marker for a producer with nothing open here only records its epoch.
        assert!(ix.on_marker(9, 4, false, 1, 11));
        assert_eq!(ix.aborted_between(0, 20).len(), 1);
        assert_eq!(ix.marker_epoch(9), Some(4));
        // A marker from a deposed coordinator does not end the transaction a newer one runs.
        assert!(ix.on_data(7, 0, true, 12, 1));
        assert!(ix.on_marker(7, 0, true, 0, 13));
        assert!(ix.is_open(7));
        assert!(ix.on_marker(7, 0, false, 2, 14));
        assert!(!ix.is_open(7));
        assert_eq!(ix.aborted_between(12, 20).len(), 1);
        assert!(ix.forget_before(10));
        assert_eq!(ix.aborted_between(0, 20).len(), 1);
    }

    /// A checkpoint round-trips through JSON, and one past the log's end is refused.
    #[test]
    fn checkpoint_round_trip() {
        let mut ix = TxnIndex::default();
        ix.on_data(3, 0, true, 0, 1);
        ix.on_marker(3, 1, false, 1, 1);
        ix.on_data(4, 0, true, 2, 1);
        let json = serde_json::to_vec(&ix).unwrap();
        let back: TxnIndex = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, ix);
        assert!(back.usable_with(3));
        assert!(!back.usable_with(2));
    }
}
