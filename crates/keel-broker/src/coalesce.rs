//! Several Produce requests for one partition, carried by one Raft entry.
//!
//! A client that sends many small requests (librdkafka with `linger.ms=0`, one record per
//! request) would otherwise cost a Raft entry per request: an openraft round, a log
//! append, a replication message slot, a commit and an apply each. acks=all batches of a
//! partition queue here while at most [`ENTRIES_IN_FLIGHT`] entries of this partition are
//! being replicated; when one commits, everything queued since goes out as the next entry
//! (the batches back to back, which is also how Kafka stores and serves them). A request
//! that finds nothing in flight is proposed at once, so an idle partition adds no wait.
//!
//! This module is the queue's bookkeeping, free of I/O; [`crate::cluster::partition::Partition`]
//! proposes what [`Coalescer::take`] hands it, in order, under its proposal lock.

use bytes::{Bytes, BytesMut};
use keel_raft::ProposeError;
use tokio::sync::oneshot;

/// Entries of one partition being replicated at once, before further batches wait to be
/// coalesced into the next one.
pub const ENTRIES_IN_FLIGHT: usize = 2;
/// Most payload bytes coalesced into one entry (a single larger batch still goes alone).
pub const ENTRY_BYTES_MAX: usize = 1 << 20;
/// Most bytes queued per partition; beyond this, new batches are refused as the log's
/// other limits refuse them (the client retries). Bounds the queue, as every queue on the
/// produce path is bounded.
pub const QUEUED_BYTES_MAX: usize = 64 << 20;

/// Where one queued batch landed: its base offset, or why it did not.
pub type Landed = Result<i64, ProposeError>;

struct Queued {
    payload: Bytes,
    records: u32,
    done: oneshot::Sender<Landed>,
}

/// The batches of one entry being proposed, and who waits for each.
pub struct Take {
    pub payload: Bytes,
    waiters: Vec<(u32, oneshot::Sender<Landed>)>,
}

impl Take {
    /// The entry committed at `base_offset`: each batch learns its own base offset (the
    /// batches' records follow each other in the entry).
    pub fn landed(self, base_offset: i64) {
        let mut next = base_offset;
        for (records, done) in self.waiters {
            let _ = done.send(Ok(next));
            next = next.saturating_add(records as i64);
        }
    }

    /// The entry failed: every batch in it gets the error.
    pub fn failed(self, e: &ProposeError) {
        for (_, done) in self.waiters {
            let _ = done.send(Err(copy(e)));
        }
    }

    pub fn batches(&self) -> usize {
        self.waiters.len()
    }
}

fn copy(e: &ProposeError) -> ProposeError {
    match e {
        ProposeError::NotLeader(l) => ProposeError::NotLeader(*l),
        ProposeError::Failed(m) => ProposeError::Failed(m.clone()),
    }
}

/// One partition's queue of acks=all batches waiting for an entry.
#[derive(Default)]
pub struct Coalescer {
    queue: std::collections::VecDeque<Queued>,
    queued_bytes: usize,
    in_flight: usize,
}

impl Coalescer {
    /// Queues a validated batch of `records` records; the receiver gets its base offset
    /// once the entry carrying it commits. `None` when the queue is full.
    pub fn push(&mut self, payload: Bytes, records: u32) -> Option<oneshot::Receiver<Landed>> {
        if self.queued_bytes + payload.len() > QUEUED_BYTES_MAX && !self.queue.is_empty() {
            return None;
        }
        let (done, rx) = oneshot::channel();
        self.queued_bytes += payload.len();
        self.queue.push_back(Queued { payload, records, done });
        Some(rx)
    }

    /// The next entry to propose, if one may go now: the queued batches from the front, up
    /// to [`ENTRY_BYTES_MAX`] (at least one), while fewer than [`ENTRIES_IN_FLIGHT`] are
    /// being replicated, or regardless with `force` (a write that bypasses the queue must
    /// not overtake it). The caller proposes it and reports with [`Coalescer::settled`].
    pub fn take(&mut self, force: bool) -> Option<Take> {
        if (self.in_flight >= ENTRIES_IN_FLIGHT && !force) || self.queue.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let mut n = 0usize;
        for q in &self.queue {
            if n > 0 && bytes + q.payload.len() > ENTRY_BYTES_MAX {
                break;
            }
            bytes += q.payload.len();
            n += 1;
        }
        let taken: Vec<Queued> = self.queue.drain(..n).collect();
        self.queued_bytes -= bytes;
        self.in_flight += 1;
        let payload = match taken.as_slice() {
            [one] => one.payload.clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(bytes);
                for q in &taken {
                    joined.extend_from_slice(&q.payload);
                }
                joined.freeze()
            }
        };
        Some(Take {
            payload,
            waiters: taken.into_iter().map(|q| (q.records, q.done)).collect(),
        })
    }

    /// An entry from [`Coalescer::take`] committed or failed: room for the next.
    pub fn settled(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Fails everything queued (the partition is closing or lost its leadership).
    pub fn fail_all(&mut self, e: &ProposeError) {
        for q in self.queue.drain(..) {
            let _ = q.done.send(Err(copy(e)));
        }
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    /// The first batch goes alone at once; batches queued while two entries are in flight
    /// go together as the next entry, each told its own base offset.
    #[tokio::test]
    async fn queued_batches_share_the_next_entry() {
        let mut c = Coalescer::default();
        let r1 = c.push(batch(10), 3).unwrap();
        let t1 = c.take(false).unwrap();
        assert_eq!((t1.batches(), t1.payload.len()), (1, 10));
        let r2 = c.push(batch(20), 1).unwrap();
        let t2 = c.take(false).unwrap();
        assert_eq!(t2.batches(), 1);
        let r3 = c.push(batch(5), 2).unwrap();
        let r4 = c.push(batch(6), 4).unwrap();
        assert!(c.take(false).is_none(), "two entries in flight: the rest waits");
        t1.landed(100);
        c.settled();
        let t3 = c.take(false).unwrap();
        assert_eq!((t3.batches(), t3.payload.len()), (2, 11));
        t2.failed(&ProposeError::NotLeader(None));
        c.settled();
        t3.landed(200);
        c.settled();
        assert_eq!(r1.await.unwrap().unwrap(), 100);
        assert!(matches!(r2.await.unwrap(), Err(ProposeError::NotLeader(None))));
        assert_eq!(r3.await.unwrap().unwrap(), 200);
        assert_eq!(r4.await.unwrap().unwrap(), 202);
        assert!(c.take(false).is_none());
    }

    /// A forced take (a write bypassing the queue must not overtake it) goes past the
    /// in-flight limit.
    #[tokio::test]
    async fn a_forced_take_ignores_the_in_flight_limit() {
        let mut c = Coalescer::default();
        for _ in 0..ENTRIES_IN_FLIGHT {
            drop(c.push(batch(1), 1).unwrap());
            assert!(c.take(false).is_some());
        }
        let r = c.push(batch(1), 1).unwrap();
        assert!(c.take(false).is_none());
        let forced = c.take(true).unwrap();
        forced.landed(9);
        assert_eq!(r.await.unwrap().unwrap(), 9);
    }

    /// An entry holds at most ENTRY_BYTES_MAX of batches (a larger one alone), and the
    /// queue refuses batches beyond QUEUED_BYTES_MAX.
    #[test]
    fn entries_and_the_queue_are_bounded() {
        let mut c = Coalescer {
            in_flight: ENTRIES_IN_FLIGHT,
            ..Default::default()
        };
        let _big = c.push(batch(ENTRY_BYTES_MAX + 1), 1).unwrap();
        let mut rs = Vec::new();
        for _ in 0..3 {
            rs.push(c.push(batch(ENTRY_BYTES_MAX / 2), 1).unwrap());
        }
        c.in_flight = 0;
        assert_eq!(c.take(false).unwrap().batches(), 1, "an oversized batch goes alone");
        assert_eq!(c.take(false).unwrap().batches(), 2, "two halves fill an entry");
        c.settled();
        assert_eq!(c.take(false).unwrap().batches(), 1);
        let mut c = Coalescer::default();
        let mut kept = Vec::new();
        while let Some(r) = c.push(batch(1 << 20), 1) {
            kept.push(r);
        }
        assert_eq!(kept.len(), QUEUED_BYTES_MAX >> 20);
    }
}
