//! One transactional id's state at its coordinator, and the rules that move it: a pure
//! core (no I/O, no clock), as Kafka's `TransactionMetadata`.
//!
//! ```text
//!  Empty ──AddPartitions──▶ Ongoing ──EndTxn(commit)──▶ PrepareCommit ──markers──▶ CompleteCommit
//!    ▲                        │  └──EndTxn(abort), timeout, fencing──▶ PrepareAbort ──markers──▶ CompleteAbort
//!    └──InitProducerId────────┴── (from Empty or Complete*; from Ongoing it aborts first)
//! ```
//!
//! A state is durable before it is acted on: the coordinator writes the next state to
//! `__transaction_state` and only then answers, or writes markers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const INVALID_TXN_STATE: i16 = 48;
pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
pub const CONCURRENT_TRANSACTIONS: i16 = 51;
pub const PRODUCER_FENCED: i16 = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// The name Kafka's admin tools show (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written: the transaction has been decided and is not over.
    pub fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions in the current transaction (the offsets partition for
    /// AddOffsetsToTxn).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the current transaction began (its first AddPartitionsToTxn), in ms.
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The epoch before the last bump at EndTxn (transaction version 2, KIP-890 part 2):
    /// a retried EndTxn carries it. -1 when there was none.
    #[serde(default = "no_epoch")]
    pub last_epoch: i16,
}

fn no_epoch() -> i16 {
    -1
}

/// What InitProducerId does for an existing transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Write this state and answer with its producer id and epoch.
    Ready(TxnMeta),
    /// The current transaction must be aborted first: write this PrepareAbort state (the
    /// epoch bumped, fencing the old producer), write its markers, and answer
    /// CONCURRENT_TRANSACTIONS; the client retries.
    AbortFirst(TxnMeta),
    Refuse(i16),
}

/// Epochs stop short of i16::MAX; past it the id gets a new producer id.
const EPOCH_MAX: i16 = i16::MAX - 1;

impl TxnMeta {
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
        TxnMeta {
            producer_id,
            epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
            updated_ms: now_ms,
            last_epoch: -1,
        }
    }

    /// InitProducerId for this id. `expected` is the producer id and epoch a producer that
    /// had them sends (KIP-360); `fresh_id` hands out a new producer id when the epoch is
    /// exhausted. `fenced_code` is the error for a stale producer at the request's version.
    pub fn init(
        &self,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        fresh_id: impl FnOnce() -> Option<i64>,
        fenced_code: i16,
    ) -> Init {
        if self.state.is_prepared() {
            return Init::Refuse(CONCURRENT_TRANSACTIONS);
        }
        if let Some((pid, epoch)) = expected {
            if pid != self.producer_id || epoch != self.epoch {
                return Init::Refuse(fenced_code);
            }
        }
        if self.state == TxnState::Ongoing {
            let mut next = self.clone();
            next.epoch = self.epoch.saturating_add(1).min(EPOCH_MAX);
            next.state = TxnState::PrepareAbort;
            next.updated_ms = now_ms;
            return Init::AbortFirst(next);
        }
        let mut next = self.clone();
        if self.epoch >= EPOCH_MAX - 1 {
            let Some(pid) = fresh_id() else {
                return Init::Refuse(crate::txn::state::COORDINATOR_NOT_AVAILABLE);
            };
            next.producer_id = pid;
            next.epoch = 0;
        } else {
            next.epoch = self.epoch + 1;
        }
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.started_ms = -1;
        next.updated_ms = now_ms;
        Init::Ready(next)
    }

    /// Checks a request's producer id and epoch against this id's.
    pub fn check_producer(&self, producer_id: i64, epoch: i16, fenced_code: i16) -> Result<(), i16> {
        if producer_id != self.producer_id {
            return Err(INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != self.epoch {
            return Err(fenced_code);
        }
        Ok(())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the state with `partitions` in the
    /// transaction (`None`: nothing to write, they are in it already).
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
        fenced_code: i16,
    ) -> Result<Option<TxnMeta>, i16> {
        self.check_producer(producer_id, epoch, fenced_code)?;
        if self.state.is_prepared() {
            return Err(CONCURRENT_TRANSACTIONS);
        }
        if self.state == TxnState::Ongoing && partitions.iter().all(|p| self.partitions.contains(p)) {
            return Ok(None);
        }
        let mut next = self.clone();
        if self.state != TxnState::Ongoing {
            next.partitions.clear();
            next.started_ms = now_ms;
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(partitions.iter().cloned());
        next.updated_ms = now_ms;
        Ok(Some(next))
    }

    /// Whether `partition` is in the producer's ongoing transaction (KIP-890
    /// verification of a partition leader's first write).
    pub fn verify(&self, producer_id: i64, epoch: i16, partition: &(String, i32)) -> Result<(), i16> {
        self.check_producer(producer_id, epoch, INVALID_PRODUCER_EPOCH)?;
        if self.state != TxnState::Ongoing || !self.partitions.contains(partition) {
            return Err(INVALID_TXN_STATE);
        }
        Ok(())
    }

    /// EndTxn: `Ok(Some(prepared))` to write and then complete with markers; `Ok(None)`
    /// when the same outcome is already complete (a retried EndTxn).
    pub fn end(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
        fenced_code: i16,
    ) -> Result<Option<TxnMeta>, i16> {
        self.check_producer(producer_id, epoch, fenced_code)?;
        let (prepare, complete) = if commit {
            (TxnState::PrepareCommit, TxnState::CompleteCommit)
        } else {
            (TxnState::PrepareAbort, TxnState::CompleteAbort)
        };
        match self.state {
            TxnState::Ongoing => {
                let mut next = self.clone();
                next.state = prepare;
                next.updated_ms = now_ms;
                Ok(Some(next))
            }
            s if s == prepare => Err(CONCURRENT_TRANSACTIONS),
            s if s == complete => Ok(None),
            // Nothing was added: aborting an empty transaction is a no-op.
            TxnState::Empty if !commit => Ok(None),
            _ => Err(INVALID_TXN_STATE),
        }
    }

    /// EndTxn of transaction version 2 (KIP-890 part 2): the epoch is bumped at every end,
    /// and the markers carry the new epoch, so nothing the producer wrote at the old one can
    /// land after them. Returns the state to write (none for a retry of an end already
    /// decided) and the producer id and epoch to answer with. An abort with nothing in the
    /// transaction still bumps the epoch (and completes at once).
    pub fn end_v2(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
        fenced_code: i16,
    ) -> Result<(Option<TxnMeta>, i16), i16> {
        let same_outcome = if commit {
            matches!(self.state, TxnState::PrepareCommit | TxnState::CompleteCommit)
        } else {
            matches!(self.state, TxnState::PrepareAbort | TxnState::CompleteAbort)
        };
        if producer_id == self.producer_id && epoch == self.last_epoch && epoch >= 0 && same_outcome {
            return Ok((None, self.epoch));
        }
        self.check_producer(producer_id, epoch, fenced_code)?;
        if self.epoch >= EPOCH_MAX - 1 {
            // Kafka moves to a new producer id here; Keel asks for a new InitProducerId.
            return Err(fenced_code);
        }
        let mut next = self.clone();
        next.last_epoch = self.epoch;
        next.epoch = self.epoch + 1;
        next.updated_ms = now_ms;
        match self.state {
            TxnState::Ongoing => {
                next.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                {
                    let e = next.epoch;
                    Ok((Some(next), e))
                }
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort if !commit => {
                next.state = TxnState::PrepareAbort;
                next.partitions.clear();
                {
                    let e = next.epoch;
                    Ok((Some(next), e))
                }
            }
            s if s.is_prepared() => Err(CONCURRENT_TRANSACTIONS),
            _ => Err(INVALID_TXN_STATE),
        }
    }

    /// A transaction that ran past its timeout is aborted with the epoch bumped, so the
    /// producer that left it hanging is fenced.
    pub fn expire(&self, now_ms: i64) -> Option<TxnMeta> {
        if self.state != TxnState::Ongoing || now_ms - self.started_ms <= i64::from(self.timeout_ms) {
            return None;
        }
        let mut next = self.clone();
        next.last_epoch = self.epoch;
        next.epoch = self.epoch.saturating_add(1).min(EPOCH_MAX);
        next.state = TxnState::PrepareAbort;
        next.updated_ms = now_ms;
        Some(next)
    }

    /// The markers were written: the transaction is over.
    pub fn complete(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            s => s,
        };
        next.partitions.clear();
        next.updated_ms = now_ms;
        next
    }
}

pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, i: i32) -> (String, i32) {
        (t.to_string(), i)
    }

    /// A transaction runs Empty -> Ongoing -> PrepareCommit -> CompleteCommit; a retried
    /// EndTxn is answered, a mismatched one refused; the next InitProducerId bumps the
    /// epoch and fences the old producer.
    #[test]
    fn commit_path_and_fencing() {
        let m = TxnMeta::new(10, 60_000, 0);
        let m = m
            .add_partitions(10, 0, &[p("a", 0)], 5, PRODUCER_FENCED)
            .unwrap()
            .unwrap();
        assert_eq!((m.state, m.started_ms), (TxnState::Ongoing, 5));
        assert_eq!(m.add_partitions(10, 0, &[p("a", 0)], 6, PRODUCER_FENCED), Ok(None));
        assert_eq!(m.verify(10, 0, &p("a", 0)), Ok(()));
        assert_eq!(m.verify(10, 0, &p("b", 0)), Err(INVALID_TXN_STATE));
        let prepared = m.end(10, 0, true, 7, PRODUCER_FENCED).unwrap().unwrap();
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            prepared.end(10, 0, true, 8, PRODUCER_FENCED),
            Err(CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(
            prepared.add_partitions(10, 0, &[p("b", 0)], 8, PRODUCER_FENCED),
            Err(CONCURRENT_TRANSACTIONS)
        );
        let done = prepared.complete(9);
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty());
        assert_eq!(done.end(10, 0, true, 10, PRODUCER_FENCED), Ok(None));
        assert_eq!(done.end(10, 0, false, 10, PRODUCER_FENCED), Err(INVALID_TXN_STATE));
        let Init::Ready(next) = done.init(30_000, None, 11, || None, PRODUCER_FENCED) else {
            panic!("init refused")
        };
        assert_eq!((next.producer_id, next.epoch, next.timeout_ms), (10, 1, 30_000));
        assert_eq!(
            next.add_partitions(10, 0, &[p("a", 0)], 12, PRODUCER_FENCED),
            Err(PRODUCER_FENCED)
        );
        assert_eq!(
            next.add_partitions(11, 1, &[p("a", 0)], 12, PRODUCER_FENCED),
            Err(INVALID_PRODUCER_ID_MAPPING)
        );
        assert_eq!(
            next.init(1, Some((10, 0)), 13, || None, PRODUCER_FENCED),
            Init::Refuse(PRODUCER_FENCED)
        );
    }

    /// InitProducerId during an ongoing transaction aborts it first with the epoch bumped;
    /// a timed-out transaction is aborted the same way; an exhausted epoch takes a new
    /// producer id.
    #[test]
    fn abort_on_init_timeout_and_epoch_exhaustion() {
        let m = TxnMeta::new(10, 1_000, 0)
            .add_partitions(10, 0, &[p("a", 0)], 100, PRODUCER_FENCED)
            .unwrap()
            .unwrap();
        let Init::AbortFirst(a) = m.init(1_000, None, 200, || None, PRODUCER_FENCED) else {
            panic!("expected an abort first")
        };
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(
            a.init(1_000, None, 201, || None, PRODUCER_FENCED),
            Init::Refuse(CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(m.expire(1_100), None);
        let e = m.expire(1_101).unwrap();
        assert_eq!((e.state, e.epoch), (TxnState::PrepareAbort, 1));
        let mut old = TxnMeta::new(10, 1_000, 0);
        old.epoch = EPOCH_MAX - 1;
        let Init::Ready(n) = old.init(1_000, None, 5, || Some(99), PRODUCER_FENCED) else {
            panic!("init refused")
        };
        assert_eq!((n.producer_id, n.epoch), (99, 0));
    }

    /// Version 2: every EndTxn bumps the epoch and answers the new one; a retry with the
    /// old epoch gets the same answer; the old epoch is fenced otherwise; an abort with
    /// nothing open still bumps; a commit with nothing open is refused.
    #[test]
    fn version_2_bumps_the_epoch_at_every_end() {
        let m = TxnMeta::new(10, 60_000, 0)
            .add_partitions(10, 0, &[p("a", 0)], 1, PRODUCER_FENCED)
            .unwrap()
            .unwrap();
        let (prepared, epoch) = m.end_v2(10, 0, true, 2, PRODUCER_FENCED).unwrap();
        let prepared = prepared.unwrap();
        assert_eq!(
            (prepared.state, prepared.epoch, prepared.last_epoch, epoch),
            (TxnState::PrepareCommit, 1, 0, 1)
        );
        assert_eq!(prepared.end_v2(10, 0, true, 3, PRODUCER_FENCED), Ok((None, 1)));
        let done = prepared.complete(4);
        assert_eq!(done.end_v2(10, 0, true, 5, PRODUCER_FENCED), Ok((None, 1)));
        assert_eq!(done.end_v2(10, 0, false, 5, PRODUCER_FENCED), Err(PRODUCER_FENCED));
        assert_eq!(
            done.add_partitions(10, 0, &[p("a", 0)], 6, PRODUCER_FENCED),
            Err(PRODUCER_FENCED)
        );
        let next = done
            .add_partitions(10, 1, &[p("b", 1)], 6, PRODUCER_FENCED)
            .unwrap()
            .unwrap();
        assert_eq!(next.partitions.len(), 1);
        let (aborted, epoch) = done.end_v2(10, 1, false, 7, PRODUCER_FENCED).unwrap();
        assert_eq!((aborted.unwrap().state, epoch), (TxnState::PrepareAbort, 2));
        assert_eq!(done.end_v2(10, 1, true, 7, PRODUCER_FENCED), Err(INVALID_TXN_STATE));
    }
}
