//! Idempotent-producer bookkeeping for one partition: a pure core.
//!
//! For each producer id the partition remembers the epoch and the last five batches'
//! sequence ranges and offsets (librdkafka and the Java client keep at most five
//! requests in flight). A retried batch is answered with its original offset instead of
//! being written twice; a gap in sequence numbers is refused.

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer, as Kafka does.
pub const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition; the least recently written are forgotten first.
pub const PRODUCERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    last_write: u64,
}

impl Producer {
    /// Where the remembered batch with exactly these sequences was logged, if it was.
    fn logged_at(&self, first_seq: i32, last_seq: i32) -> Option<i64> {
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .map(|b| b.base_offset)
    }
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Append it.
    Append,
    /// It was appended before at this base offset; answer without writing.
    Duplicate { base_offset: i64 },
    /// Refuse with this Kafka error code.
    Reject(i16),
    /// The same batch is being replicated right now (a retry that overtook it): answer
    /// with a retriable error; the client's next retry finds it applied.
    InFlight,
}

/// Batches of one producer that the leader has handed to Raft and not yet applied.
#[derive(Debug)]
struct Pending {
    epoch: i16,
    /// (first, last) sequence of each, oldest first.
    batches: VecDeque<(i32, i32)>,
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    clock: u64,
    /// On the leader: batches accepted and not yet applied, so that a producer's next
    /// batch is checked against them (it keeps several requests in flight), as Kafka's
    /// leader checks against its log, not against what is committed.
    pending: HashMap<i64, Pending>,
    /// The leader's term the pending batches were accepted in.
    pending_term: u64,
}

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    /// Decides on a batch from `producer_id` (>= 0) with `epoch` and sequences
    /// `first_seq ..= first_seq + count - 1`.
    /// `term` is the leader's current term: pending batches of an earlier term are
    /// forgotten (leadership moved away and back).
    pub fn check(&mut self, term: u64, producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Check {
        if term != self.pending_term {
            self.pending.clear();
            self.pending_term = term;
        }
        let last_seq = first_seq.wrapping_add(count - 1);
        if let Some(q) = self.pending.get(&producer_id).filter(|q| q.epoch == epoch) {
            if let Some(base_offset) = self
                .producers
                .get(&producer_id)
                .filter(|p| p.epoch == epoch)
                .and_then(|p| p.logged_at(first_seq, last_seq))
            {
                return Check::Duplicate { base_offset };
            }
            if q.batches.iter().any(|b| *b == (first_seq, last_seq)) {
                return Check::InFlight;
            }
            return match q.batches.back() {
                Some((_, last)) if first_seq == next_seq(*last) => Check::Append,
                _ => Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER),
            };
        }
        self.check_applied(producer_id, epoch, first_seq, count)
    }

    /// A batch `check` let through is being proposed: the producer's next batch follows it.
    pub fn begin(&mut self, producer_id: i64, epoch: i16, first_seq: i32, count: i32) {
        let q = self.pending.entry(producer_id).or_insert(Pending {
            epoch,
            batches: VecDeque::new(),
        });
        if q.epoch != epoch {
            q.epoch = epoch;
            q.batches.clear();
        }
        q.batches.push_back((first_seq, first_seq.wrapping_add(count - 1)));
    }

    /// Undoes the last [`ProducerStates::begin`] of this batch (its request was refused
    /// before anything of it was proposed).
    pub fn abandon(&mut self, producer_id: i64, epoch: i16, first_seq: i32, count: i32) {
        if let Some(q) = self.pending.get_mut(&producer_id) {
            if q.epoch == epoch && q.batches.back() == Some(&(first_seq, first_seq.wrapping_add(count - 1))) {
                q.batches.pop_back();
            }
            if q.batches.is_empty() {
                self.pending.remove(&producer_id);
            }
        }
    }

    /// Proposals failed (leadership lost, storage failed): what was pending may or may not
    /// be in the log; checks go by what is applied again.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    fn check_applied(&self, producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Check {
        let Some(p) = self.producers.get(&producer_id) else {
            // Unknown producer (new, or its state aged out): accept where it starts.
            return Check::Append;
        };
        if epoch < p.epoch {
            return Check::Reject(INVALID_PRODUCER_EPOCH);
        }
        if epoch > p.epoch {
            return if first_seq == 0 {
                Check::Append
            } else {
                Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        }
        let last_seq = first_seq.wrapping_add(count - 1);
        if let Some(base_offset) = p.logged_at(first_seq, last_seq) {
            return Check::Duplicate { base_offset };
        }
        match p.batches.back() {
            Some(last) if first_seq != next_seq(last.last_seq) => Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER),
            _ => Check::Append,
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, producer_id: i64, epoch: i16, first_seq: i32, count: i32, base_offset: i64) {
        self.clock += 1;
        let clock = self.clock;
        let p = self.producers.entry(producer_id).or_default();
        if epoch != p.epoch {
            p.batches.clear();
            p.epoch = epoch;
        }
        p.batches.push_back(BatchMeta {
            first_seq,
            last_seq: first_seq.wrapping_add(count - 1),
            base_offset,
        });
        // Applied: no longer pending.
        if let Some(q) = self.pending.get_mut(&producer_id) {
            let last = first_seq.wrapping_add(count - 1);
            if q.epoch == epoch {
                while let Some(front) = q.batches.pop_front() {
                    if front == (first_seq, last) {
                        break;
                    }
                }
            }
            if q.batches.is_empty() || q.epoch != epoch {
                self.pending.remove(&producer_id);
            }
        }
        while p.batches.len() > BATCHES_KEPT {
            p.batches.pop_front();
        }
        p.last_write = clock;
        if self.producers.len() > PRODUCERS_MAX {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_write)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
    }

    /// Every remembered producer: (id, epoch, last sequence written), by id.
    pub fn describe(&self) -> Vec<(i64, i16, i32)> {
        let mut out: Vec<(i64, i16, i32)> = self
            .producers
            .iter()
            .map(|(id, p)| (*id, p.epoch, p.batches.back().map(|b| b.last_seq).unwrap_or(-1)))
            .collect();
        out.sort_unstable();
        out
    }

    /// A transaction marker with `epoch` was applied: the producer's older epochs are
    /// fenced (a zombie's late batch is refused), as Kafka's partition leaders do.
    pub fn fence(&mut self, producer_id: i64, epoch: i16) {
        self.clock += 1;
        let clock = self.clock;
        let p = self.producers.entry(producer_id).or_default();
        if epoch > p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.last_write = clock;
    }

    /// Forgets everything from `offset` on (after a log truncation).
    pub fn forget_from(&mut self, offset: i64) {
        for p in self.producers.values_mut() {
            p.batches.retain(|b| b.base_offset < offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In-order batches append, a retried batch is a duplicate with its first offset,
    /// a gap is out of order, an older epoch is fenced, a new epoch restarts at 0.
    #[test]
    fn sequence_rules() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(0, 7, 0, 0, 5), Check::Append);
        s.record(7, 0, 0, 5, 100);
        assert_eq!(s.check(0, 7, 0, 5, 5), Check::Append);
        s.record(7, 0, 5, 5, 105);
        assert_eq!(s.check(0, 7, 0, 0, 5), Check::Duplicate { base_offset: 100 });
        assert_eq!(s.check(0, 7, 0, 5, 5), Check::Duplicate { base_offset: 105 });
        assert_eq!(s.check(0, 7, 0, 11, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(s.check(0, 7, 0, 10, 1), Check::Append);
        s.record(7, 1, 0, 1, 110);
        assert_eq!(s.check(0, 7, 0, 11, 1), Check::Reject(INVALID_PRODUCER_EPOCH));
        assert_eq!(s.check(0, 7, 2, 3, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(s.check(0, 7, 2, 0, 1), Check::Append);
    }

    /// Only the last five batches are remembered; sequences wrap at i32::MAX.
    #[test]
    fn window_and_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(1, 0, i, 1, i as i64);
        }
        assert_eq!(s.check(0, 1, 0, 0, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(s.check(0, 1, 0, 2, 1), Check::Duplicate { base_offset: 2 });
        let mut s = ProducerStates::default();
        s.record(2, 0, i32::MAX, 1, 0);
        assert_eq!(s.check(0, 2, 0, 0, 1), Check::Append);
    }

    /// Batches accepted and not yet applied count for the producer's next batch; a retry
    /// of one still in flight is told to retry; applying clears them; a new term, a
    /// failure or an abandoned request forgets them.
    #[test]
    fn pending_batches_count_until_applied() {
        let mut s = ProducerStates::default();
        s.record(7, 0, 0, 5, 100);
        assert_eq!(s.check(1, 7, 0, 5, 5), Check::Append);
        s.begin(7, 0, 5, 5);
        // The next one follows the pending batch, not the applied one.
        assert_eq!(s.check(1, 7, 0, 10, 5), Check::Append);
        s.begin(7, 0, 10, 5);
        assert_eq!(s.check(1, 7, 0, 15, 1), Check::Append);
        assert_eq!(s.check(1, 7, 0, 5, 5), Check::InFlight);
        assert_eq!(s.check(1, 7, 0, 0, 5), Check::Duplicate { base_offset: 100 });
        assert_eq!(s.check(1, 7, 0, 20, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        // Applied in order: the pending ones become ordinary history.
        s.record(7, 0, 5, 5, 105);
        assert_eq!(s.check(1, 7, 0, 5, 5), Check::Duplicate { base_offset: 105 });
        s.record(7, 0, 10, 5, 110);
        assert!(s.pending.is_empty());
        assert_eq!(s.check(1, 7, 0, 15, 1), Check::Append);
        // An abandoned request's batch is not pending.
        s.begin(7, 0, 15, 1);
        s.abandon(7, 0, 15, 1);
        assert!(s.pending.is_empty());
        // A new term forgets what the old one had pending.
        s.begin(7, 0, 15, 1);
        assert_eq!(s.check(2, 7, 0, 16, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(s.check(2, 7, 0, 15, 1), Check::Append);
        s.begin(7, 0, 15, 1);
        s.clear_pending();
        assert_eq!(s.check(2, 7, 0, 16, 1), Check::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
    }
}
