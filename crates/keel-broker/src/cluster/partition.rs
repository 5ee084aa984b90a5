//! One partition replica: a Raft group (keel-raft) over the partition's log, the high
//! watermark, and idempotent-producer dedup.
//!
//! Writes go through the group's leader: each record batch is proposed as one Raft entry
//! and acknowledged once a majority of replicas has it durably (fsync with group commit on
//! each replica under the `always` policy) and it is applied here. Kafka offsets are
//! assigned as entries are appended to the log (see `keel_raft::store`), so every replica
//! gives every batch the same offsets. The high watermark is the offset after the last
//! applied entry: consumers never see a record a failover could take back.
//!
//! Producer dedup state is built from applied entries only, on every replica, so a new
//! leader knows what the old one committed; a leader accepts writes only once it has
//! applied an entry of its own term (everything earlier leaders committed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use keel_log::{DiskLog, LogStore};
use keel_proto::batch::{self, BatchHeader};
use keel_raft::{Apply, Group, GroupOptions, ProposeError, VoteSlot};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cleaner;
use crate::cluster::topic_config::{TimestampType, TopicSettings};
use crate::cluster::txn_index::{Aborted, TxnIndex};
use crate::coalesce::Coalescer;
use crate::config::FsyncPolicy;
use crate::error::PartitionError;
use crate::metrics::Metrics;
use crate::producer_state::{Check, ProducerStates};

/// Where a replica saves its transaction index (see [`crate::cluster::txn_index`]).
const TXN_CHECKPOINT: &str = "txn-index.json";
/// The transaction index is saved at most this often while it changes.
const TXN_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Producers a partition remembers verifications for at most.
const VERIFIED_MAX: usize = 100_000;
const INVALID_TXN_STATE: i16 = 48;

/// The committed (visible, acknowledged) end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub next_offset: i64,
    pub poisoned: bool,
}

/// What applying committed entries maintains on every replica.
struct PartitionHook {
    producers: Mutex<ProducerStates>,
    txns: Mutex<TxnIndex>,
    /// When the transaction index was last saved, and whether it changed since.
    txn_saved: Mutex<(Instant, bool)>,
    dir: std::path::PathBuf,
    /// Producers whose transaction the coordinator confirmed includes this partition
    /// (KIP-890 verification): producer id -> (token, epoch, confirmed). A marker for the
    /// producer removes its entry, so a confirmation that arrives after the transaction
    /// ended finds no entry and a late batch cannot open a transaction that hangs.
    verified: Mutex<std::collections::HashMap<i64, (u64, i16, bool)>>,
    data_changed: Arc<watch::Sender<u64>>,
    metrics: Arc<Metrics>,
}

impl Apply for PartitionHook {
    /// A Kafka batch gets its offsets written into its header, and the Raft term as its
    /// partition leader epoch.
    fn place(&self, payload: Bytes, base_offset: i64, term: u64) -> Result<keel_raft::Stored, String> {
        let (payload, offsets, max_timestamp) =
            batch::place(payload, base_offset, term.min(i32::MAX as u64) as i32).map_err(|e| e.to_string())?;
        Ok(keel_raft::Stored {
            payload,
            offsets,
            max_timestamp,
        })
    }

    fn apply(&self, _index: u64, base_offset: i64, _next_offset: i64, payload: &Bytes) -> Result<(), String> {
        // An entry holds one batch or several (coalesced requests), placed back to back.
        let mut next = base_offset;
        let mut txns_changed = false;
        for (pos, h) in batch::batches(payload).map_while(Result::ok) {
            // One lock at a time: a produce holds the producers' lock while it asks the
            // transaction index, so holding both here would deadlock.
            let (changed, marker) = self.txns.lock().unwrap_or_else(|e| e.into_inner()).feed(
                payload.get(pos..).unwrap_or_default(),
                &h,
                next,
            );
            txns_changed |= changed;
            if marker {
                self.producers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fence(h.producer_id, h.producer_epoch);
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&h.producer_id);
            } else if !h.is_control() && h.producer_id >= 0 && h.base_sequence >= 0 {
                self.producers.lock().unwrap_or_else(|e| e.into_inner()).record(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.record_count,
                    next,
                );
            }
            next = next.saturating_add(h.offset_span());
        }
        if txns_changed {
            self.txns_changed();
        }
        self.data_changed.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    /// The transaction index is the replica's application state: a replica that catches
    /// up from a snapshot (the leader purged what it lacks) takes the leader's.
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.txns.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }

    fn restore(&self, state: &[u8]) {
        let index = if state.is_empty() {
            TxnIndex::default()
        } else {
            match serde_json::from_slice::<TxnIndex>(state) {
                Ok(ix) => ix,
                Err(e) => {
                    warn!(error = %e, "a snapshot's transaction index is unreadable; starting empty");
                    TxnIndex::default()
                }
            }
        };
        *self.txns.lock().unwrap_or_else(|e| e.into_inner()) = index;
        self.txns_changed();
    }

    fn fsynced(&self, seconds: f64) {
        self.metrics.fsync_seconds.observe(seconds);
    }
}

impl PartitionHook {
    /// Saves the transaction index when it changed and the last save is old enough; the
    /// periodic [`Partition::save_txn_index`] saves what this skipped.
    fn txns_changed(&self) {
        let mut saved = self.txn_saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.1 = true;
        if saved.0.elapsed() >= TXN_CHECKPOINT_INTERVAL {
            self.save_txns(&mut saved);
        }
    }

    fn save_txns(&self, saved: &mut (Instant, bool)) {
        let json = serde_json::to_vec(&*self.txns.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default();
        // Not fsynced: a checkpoint lost or older after a power loss only means a longer
        // scan of the log at start-up (see `rebuild_txns`).
        let tmp = self.dir.join(format!("{TXN_CHECKPOINT}.tmp"));
        let r = std::fs::write(&tmp, &json).and_then(|()| std::fs::rename(&tmp, self.dir.join(TXN_CHECKPOINT)));
        if let Err(e) = r {
            warn!(dir = %self.dir.display(), error = %e, "could not save the transaction index");
            return;
        }
        *saved = (Instant::now(), false);
    }
}

/// Where a partition replica lives in the cluster.
#[derive(Clone)]
pub struct ReplicaContext {
    pub node_id: u64,
    pub transport: Arc<keel_raft::Transport>,
    /// The replicas' nodes (id and transport address) to initialize a new group with.
    pub members: std::collections::BTreeMap<u64, keel_raft::Node>,
    /// The replica that should lead (the first of the assignment).
    pub preferred_leader: Option<u64>,
    /// Whether a replica with an empty log initializes the group with `members`: false for
    /// a replica added to a running group (its leader adds it and replicates to it).
    pub initialize: bool,
    pub options: GroupOptions,
    pub metrics: Arc<Metrics>,
    /// Broker-wide counter bumped whenever any high watermark moves (wakes long polls).
    pub data_changed: Arc<watch::Sender<u64>>,
    /// The node's vote journal.
    pub votes: Arc<keel_raft::VoteStore>,
    /// The replica's key in the vote journal: unique to the topic's id, the partition and
    /// the replica's incarnation, so no later replica ever reads this one's vote.
    pub vote_key: String,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// The replica that should lead, `u64::MAX` for none (it changes when the partition
    /// moves).
    preferred_leader: AtomicU64,
    group: Group,
    hook: Arc<PartitionHook>,
    settings: RwLock<TopicSettings>,
    /// Orders dedup checks and proposals, so that the log holds batches in check order.
    propose: tokio::sync::Mutex<()>,
    /// acks=all batches waiting to share the next entry (see [`crate::coalesce`]).
    coalescer: std::sync::Mutex<Coalescer>,
    closed: AtomicBool,
    poisoned: AtomicBool,
    /// Leadership is being handed to another replica (see [`crate::cluster::handover`]): writes are
    /// refused as not the leader's, so the successor's log can match this one's.
    handing_over: AtomicBool,
    /// Where the replica's vote is saved, to forget it when the replica is removed.
    vote_slot: VoteSlot,
    metrics: Arc<Metrics>,
}

/// How much of a write must be in place before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: handed to the leader's log.
    None,
    /// acks=1: durable in the leader's own log (not yet committed: a leader that dies
    /// before replicating it can lose it).
    Leader,
    /// acks=all: durable on a majority of replicas, committed.
    All,
}

impl Acks {
    /// From the Produce request's acks field (0, 1 or -1).
    pub fn from_kafka(acks: i16) -> Acks {
        match acks {
            0 => Acks::None,
            1 => Acks::Leader,
            _ => Acks::All,
        }
    }
}

/// A proposal in flight; resolves to the base offset the log gave it.
type ProposalFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, ProposeError>> + Send>>;

/// What [`Partition::append_start`] returns: the wait for the acknowledgement asked for.
pub type AppendWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended, PartitionError>> + Send>>;

/// Result of an append.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
}

/// Result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// For `read_committed` reads: the aborted transactions the records overlap.
    pub aborted: Vec<Aborted>,
}

fn propose_error(e: ProposeError) -> PartitionError {
    match e {
        ProposeError::NotLeader(_) => PartitionError::NotLeader,
        ProposeError::Failed(m) => PartitionError::Replication(m),
    }
}

impl Partition {
    /// Opens the replica's log and starts its Raft group (initializing the group with
    /// `ctx.members` when it is new).
    pub async fn open(
        topic: &str,
        index: i32,
        log: DiskLog,
        settings: TopicSettings,
        ctx: &ReplicaContext,
    ) -> anyhow::Result<Arc<Partition>> {
        let (metrics, data_changed) = (ctx.metrics.clone(), ctx.data_changed.clone());
        let mut log = log;
        // A bad entry found by the scan is cut with everything after it: entries this replica
        // may have acknowledged. So is damage recovery cut from the active segment when
        // valid entries followed the bad one. (A torn tail, with nothing valid after it, is
        // not counted: those writes were never fsynced, hence never acknowledged.)
        let repaired = repair_log(&mut log, topic, index)?.max(log.damaged_through());
        if repaired.is_some() {
            metrics.repaired_replicas.inc();
        }
        let dir = log.dir().to_path_buf();
        let producers = rebuild_producers(&log, &dir);
        let txns = rebuild_txns(&log, &dir);
        let hook = Arc::new(PartitionHook {
            producers: Mutex::new(producers),
            txns: Mutex::new(txns),
            txn_saved: Mutex::new((Instant::now(), false)),
            dir: dir.clone(),
            verified: Mutex::new(Default::default()),
            data_changed: data_changed.clone(),
            metrics: metrics.clone(),
        });
        let options = GroupOptions {
            fsync: settings.fsync == FsyncPolicy::Always,
            ..ctx.options.clone()
        };
        let vote_slot = VoteSlot {
            store: ctx.votes.clone(),
            key: ctx.vote_key.clone(),
        };
        let fresh = ctx.initialize && log.next_index() == 0 && repaired.is_none() && !vote_slot.has_vote(&dir);
        let group = Group::start(
            &group_name(topic, index),
            ctx.node_id,
            ctx.transport.clone(),
            Box::new(log),
            Some(dir),
            Some(vote_slot.clone()),
            hook.clone(),
            options,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if let (Some(last), true) = (repaired, ctx.members.len() > 1) {
            group.hold_votes(last);
        }
        if fresh {
            // The preferred replica initializes the group (and so stands first and leads);
            // the others join when it replicates to them, or initialize it themselves if it
            // stays silent (it may be down while the topic is created).
            // The others initialize it only if the preferred replica's node is gone: while it
            // is alive it may just be slower to open its replicas, and three candidates per
            // group would split the votes of thousands of new groups.
            let preferred = ctx.preferred_leader.unwrap_or(ctx.node_id);
            if preferred == ctx.node_id || ctx.members.len() == 1 {
                group
                    .initialize_paced(ctx.members.clone())
                    .await
                    .map_err(anyhow::Error::msg)?;
            } else {
                let raft = group.raft.clone();
                let members = ctx.members.clone();
                let transport = ctx.transport.clone();
                let wait = Duration::from_millis(ctx.options.election_timeout_max_ms * 5);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(wait).await;
                        let m = raft.metrics().borrow().clone();
                        if m.current_leader.is_some() || m.last_log_index.is_some() || m.running_state.is_err() {
                            return;
                        }
                        if !transport.is_alive(keel_raft::node_of(preferred)) {
                            let _ = raft.initialize(members).await;
                            return;
                        }
                    }
                });
            }
        }
        // A replica that is its group's only voter leads it: wait for that (bounded), so
        // the partition takes writes as soon as it is open.
        if ctx.members.len() == 1 && ctx.members.contains_key(&ctx.node_id) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !group.is_ready_leader() && Instant::now() < deadline {
                if group.leader().is_none() {
                    group.elect().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        group.quiet.set_preferred(ctx.preferred_leader);
        let p = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            preferred_leader: AtomicU64::new(ctx.preferred_leader.unwrap_or(u64::MAX)),
            group,
            hook,
            settings: RwLock::new(settings),
            propose: tokio::sync::Mutex::new(()),
            coalescer: std::sync::Mutex::new(Coalescer::default()),
            closed: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            vote_slot,
            metrics,
        });
        p.update_size_metric();
        {
            // A checkpoint from the start: the next start scans only what follows it.
            let mut saved = p.hook.txn_saved.lock().unwrap_or_else(|e| e.into_inner());
            p.hook.save_txns(&mut saved);
        }
        tokio::spawn(watch_raft(Arc::downgrade(&p)));
        Ok(p)
    }

    pub fn group(&self) -> &Group {
        &self.group
    }

    /// While on, writes are refused as not the leader's (leadership is being handed over).
    pub fn set_handing_over(&self, on: bool) {
        self.handing_over.store(on, Ordering::Release);
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_settings(&self, settings: TopicSettings) {
        self.group.shared.log().set_config(settings.log.clone());
        self.group.shared.set_fsync(settings.fsync == FsyncPolicy::Always);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    pub fn committed(&self) -> Committed {
        Committed {
            next_offset: self.high_watermark(),
            poisoned: self.poisoned.load(Ordering::Acquire),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.group.shared.applied().next_offset
    }

    /// The first offset readers may fetch: where the log's segments start, or later when
    /// DeleteRecords deleted records past that.
    pub fn log_start_offset(&self) -> i64 {
        let physical = self.group.shared.log().start_offset();
        let deleted = self
            .hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deleted_before();
        physical.max(deleted.min(self.high_watermark()))
    }

    /// DeleteRecords: records before `offset` (-1: the high watermark) are deleted, on
    /// every replica (the request is a control record in the log, so every replica applies
    /// it at the same place); whole segments below it are removed. Returns the new log
    /// start offset.
    pub async fn delete_records(self: &Arc<Self>, offset: i64) -> Result<i64, PartitionError> {
        let hw = self.high_watermark();
        let target = if offset == -1 { hw } else { offset };
        let start = self.log_start_offset();
        if target < 0 || target > hw {
            return Err(PartitionError::OffsetOutOfRange {
                offset: target,
                start,
                end: hw,
            });
        }
        if target > start {
            let b = batch::encode_log_start_batch(target, keel_log::disk::now_ms())?;
            self.append_acks(batch::split_batches(&b)?, Acks::All).await?;
        }
        self.purge_deleted().await;
        Ok(self.log_start_offset())
    }

    /// Removes whole segments below the offset DeleteRecords deleted records before.
    pub async fn purge_deleted(&self) {
        // One lock at a time (a read holds the log while it asks the transaction index).
        let deleted = self
            .hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deleted_before();
        let physical = self.group.shared.log().start_offset();
        if deleted > physical {
            if let Err(e) = self.purge_before_offset(deleted).await {
                warn!(topic = %self.topic, partition = self.index, error = %e, "could not remove deleted records' segments");
            }
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.group.shared.log().size_bytes()
    }

    /// The replica leads and may serve reads and writes.
    pub fn is_leader(&self) -> bool {
        self.group.is_serving_leader() && self.group.is_ready_leader()
    }

    /// Reads are served by the leader; a poisoned replica that is its partition's only
    /// copy still serves what it committed before its storage failed.
    fn may_serve_reads(&self) -> bool {
        self.is_leader() || (self.poisoned.load(Ordering::Acquire) && self.group.voters() == [self.group_node()])
    }

    /// A follower serves consumers' reads (KIP-392) while it follows a known leader (one
    /// cut off from it stands for election and stops) and its storage is sound.
    fn may_serve_follower_reads(&self) -> bool {
        !self.poisoned.load(Ordering::Acquire)
            && self
                .group
                .metrics()
                .current_leader
                .is_some_and(|l| l != self.group_node())
    }

    fn group_node(&self) -> u64 {
        self.group.metrics().id
    }

    /// This replica's id in its Raft group (see [`keel_raft::replica_id`]).
    pub fn replica_id(&self) -> u64 {
        self.group_node()
    }

    fn update_size_metric(&self) {
        let size = self.size_bytes();
        self.metrics.log_size(&self.topic, self.index).set(size as i64);
    }

    /// Validates and replicates `batches`; with `wait`, returns once they are committed,
    /// otherwise once they are handed to the leader's log.
    pub async fn append(
        self: &Arc<Self>,
        batches: Vec<(BatchHeader, Bytes)>,
        wait: bool,
    ) -> Result<Appended, PartitionError> {
        self.append_acks(batches, if wait { Acks::All } else { Acks::None })
            .await
    }

    /// Validates and replicates `batches`, returning when `acks` says: at once (acks=0),
    /// once the leader's own log has them durably (acks=1), or once a majority of replicas
    /// has them durably and they are committed (acks=all).
    pub async fn append_acks(
        self: &Arc<Self>,
        batches: Vec<(BatchHeader, Bytes)>,
        acks: Acks,
    ) -> Result<Appended, PartitionError> {
        self.append_start(batches, acks).await?.await
    }

    /// The first half of [`Partition::append_acks`]: validates `batches` and hands them to
    /// the leader's log, in the order of the calls (so that pipelined requests of one
    /// connection are logged in the order they came); the returned future waits for what
    /// `acks` asks. acks=0 resolves at once.
    pub async fn append_start(
        self: &Arc<Self>,
        batches: Vec<(BatchHeader, Bytes)>,
        acks: Acks,
    ) -> Result<AppendWait, PartitionError> {
        let wait = acks != Acks::None;
        if self.closed.load(Ordering::Acquire) {
            return Err(PartitionError::Deleted);
        }
        if self.handing_over.load(Ordering::Acquire) {
            return Err(PartitionError::NotLeader);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(PartitionError::Storage(keel_log::LogError::Poisoned(
                "fsync failed".into(),
            )));
        }
        if self.group.shared.write_stalled() {
            return Err(PartitionError::Storage(keel_log::LogError::Io(
                std::io::Error::from_raw_os_error(28),
            )));
        }
        if !self.group.is_ready_leader() {
            self.check_poisoned();
            if self.poisoned.load(Ordering::Acquire) {
                return Err(PartitionError::Storage(keel_log::LogError::Poisoned(
                    "fsync failed".into(),
                )));
            }
            return Err(PartitionError::NotLeader);
        }
        // acks=1 does not wait for the majority, so it asks for recent word from one: a
        // leader cut off from its majority stops acknowledging within an election timeout
        // instead of acknowledging writes the new leader will never have.
        if acks == Acks::Leader && !self.group.is_serving_leader() {
            return Err(PartitionError::NotLeader);
        }
        let now = keel_log::disk::now_ms();
        let settings = self.settings();
        let max = settings.message_bytes_max;
        let log_append = settings.timestamp_type == TimestampType::LogAppendTime;
        let mut first: Option<Result<Appended, i64>> = None;
        let mut waits = Vec::new();
        {
            let _turn = self.propose.lock().await;
            // Every batch is checked before any is proposed: a request refused for its third
            // batch must not have logged its first two (the client, told it failed, would
            // send them again).
            let mut to_append = Vec::with_capacity(batches.len());
            let log_start_offset = self.log_start_offset();
            // Asked before the producers' lock is taken: applying a marker takes the
            // transaction index's lock and then the producers'; never both at once.
            if batches.iter().any(|(h, _)| {
                h.is_transactional() && !h.is_control() && !self.txn_may_write(h.producer_id, h.producer_epoch)
            }) {
                return Err(PartitionError::Producer(INVALID_TXN_STATE));
            }
            let checked = (|| {
                let term = self.group.term();
                let mut producers = self.hook.producers.lock().unwrap_or_else(|e| e.into_inner());
                for (h, bytes) in &batches {
                    if bytes.len() > max {
                        return Err(PartitionError::BatchTooLarge { size: bytes.len(), max });
                    }
                    if h.producer_id >= 0 && !h.is_control() && h.base_sequence >= 0 {
                        match producers.check(term, h.producer_id, h.producer_epoch, h.base_sequence, h.record_count) {
                            // The producer's next batch (in this request or a later one)
                            // follows this one.
                            Check::Append => {
                                producers.begin(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count)
                            }
                            Check::InFlight => {
                                return Err(PartitionError::Replication(
                                    "the same batch is still being replicated".into(),
                                ))
                            }
                            Check::Duplicate { base_offset } => {
                                if to_append.is_empty() {
                                    first.get_or_insert(Ok(Appended {
                                        base_offset,
                                        log_append_time: -1,
                                        log_start_offset,
                                    }));
                                }
                                continue;
                            }
                            Check::Reject(code) => return Err(PartitionError::Producer(code)),
                        }
                    }
                    to_append.push((h, bytes));
                }
                Ok(())
            })();
            if let Err(e) = checked {
                // Nothing of the request is proposed: its batches are not pending.
                let mut producers = self.hook.producers.lock().unwrap_or_else(|e| e.into_inner());
                for (h, _) in to_append
                    .iter()
                    .rev()
                    .filter(|(h, _)| h.producer_id >= 0 && !h.is_control() && h.base_sequence >= 0)
                {
                    producers.abandon(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count);
                }
                return Err(e);
            }
            for (h, bytes) in to_append {
                // The log store writes the base offset and leader epoch as it appends; only
                // LogAppendTime needs a copy here.
                let payload = if log_append {
                    let mut owned = BytesMut::from(&bytes[..]);
                    batch::set_log_append_time(&mut owned, now);
                    // Paired assertion: the rewritten bytes still carry a valid CRC.
                    debug_assert!(batch::verify_crc(&owned).is_ok());
                    owned.freeze()
                } else {
                    bytes.clone()
                };
                if acks != Acks::All {
                    // Writes that bypass the queue go after what is queued.
                    self.propose_queued(true).await;
                }
                let fut: ProposalFuture = if acks == Acks::Leader {
                    let f = self.group.propose_start_local(payload).await.map_err(propose_error)?;
                    Box::pin(async move { f.await.map(|p| p.base_offset) })
                } else if acks == Acks::All {
                    let rx = self
                        .coalescer()
                        .push(payload, h.record_count.max(0) as u32)
                        .ok_or_else(|| {
                            PartitionError::Replication("too many writes queued for the partition".into())
                        })?;
                    Box::pin(async move {
                        rx.await
                            .unwrap_or_else(|_| Err(ProposeError::Failed("the partition closed".into())))
                    })
                } else {
                    let f = self.group.propose_start(payload).await.map_err(propose_error)?;
                    Box::pin(async move { f.await.map(|a| a.base_offset) })
                };
                if first.is_none() {
                    first = Some(Err(waits.len() as i64));
                }
                waits.push(fut);
            }
            if acks == Acks::All {
                self.propose_queued(false).await;
            }
        }
        let first =
            first.ok_or_else(|| PartitionError::Proto(keel_proto::ProtoError::CorruptBatch("no batches".into())))?;
        if !wait {
            // acks=0: the proposals go on without us.
            for w in waits {
                tokio::spawn(async move {
                    let _ = w.await;
                });
            }
            let log_start_offset = self.log_start_offset();
            return Ok(Box::pin(std::future::ready(Ok(Appended {
                base_offset: -1,
                log_append_time: -1,
                log_start_offset,
            }))));
        }
        let this = self.clone();
        Ok(Box::pin(async move {
            this.append_wait(first, waits, log_append, now).await
        }))
    }

    /// Whether a transactional batch of `producer_id` may be written: its transaction is
    /// open here already at this epoch, or the coordinator confirmed this partition is in
    /// it. (With an epoch bump per transaction, a batch at a newer epoch than the open
    /// transaction's belongs to the next transaction, whose marker for the previous one may
    /// not be here yet: it must be verified, or it would be committed with the previous one.)
    fn txn_may_write(&self, producer_id: i64, epoch: i16) -> bool {
        if self
            .hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_open_at(producer_id, epoch)
        {
            return true;
        }
        self.hook
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&producer_id)
            .is_some_and(|(_, e, confirmed)| *confirmed && *e == epoch)
    }

    /// Whether a transactional write of `producer_id` needs the coordinator's word first.
    pub fn txn_needs_verification(&self, producer_id: i64, epoch: i16) -> bool {
        !self.txn_may_write(producer_id, epoch)
    }

    /// Starts verifying `producer_id`'s transaction (KIP-890): returns the token to confirm
    /// with once the coordinator answers.
    pub fn begin_verification(&self, producer_id: i64, epoch: i16) -> u64 {
        static TOKENS: AtomicU64 = AtomicU64::new(1);
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        let mut v = self.hook.verified.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= VERIFIED_MAX && !v.contains_key(&producer_id) {
            if let Some(k) = v.keys().next().copied() {
                v.remove(&k);
            }
        }
        v.insert(producer_id, (token, epoch, false));
        token
    }

    /// The coordinator confirmed the transaction: unless a marker ended it meanwhile (the
    /// entry is gone or newer), its batches may be written.
    pub fn confirm_verification(&self, producer_id: i64, token: u64) {
        if let Some(e) = self
            .hook
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&producer_id)
            .filter(|e| e.0 == token)
        {
            e.2 = true;
        }
    }

    /// Writes a transaction marker (COMMIT or ABORT control batch) for `producer_id` and
    /// waits until it is committed.
    pub async fn write_marker(
        self: &Arc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<(), PartitionError> {
        let marker =
            batch::encode_control_batch(producer_id, epoch, commit, coordinator_epoch, keel_log::disk::now_ms())?;
        let batches = batch::split_batches(&marker)?;
        self.append_acks(batches, Acks::All).await.map(|_| ())
    }

    /// The last stable offset: `read_committed` readers see only what is below it.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_stable_offset(hw)
    }

    /// Whether transactions ever wrote here (markers or open transactions are known).
    pub fn has_transactions(&self) -> bool {
        !self.hook.txns.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Open transactions here: (producer id, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open()
            .collect()
    }

    /// How many closed segments the replica's log has.
    pub fn closed_segment_count(&self) -> usize {
        self.group.shared.log().closed_segments().len()
    }

    /// One pass of the log cleaner over this replica (see [`crate::cleaner`]): blocking
    /// (reads and writes segments), so run on a blocking thread. `None` when the topic is
    /// not compacted or nothing was due.
    pub fn clean(&self, now_ms: i64) -> Result<Option<cleaner::Report>, PartitionError> {
        let settings = self.settings();
        if !settings.compacted || self.is_closed() {
            return Ok(None);
        }
        let cs = settings.compaction;
        let applied_end = self
            .group
            .shared
            .applied()
            .last_applied
            .map(|l| l.index + 1)
            .unwrap_or(0);
        let lso = self.last_stable_offset();
        let (closed, dir) = {
            let log = self.group.shared.log();
            let Some(dir) = log.directory() else {
                return Ok(None);
            };
            (log.closed_segments(), dir.to_path_buf())
        };
        let lag_bound = now_ms.saturating_sub(cs.min_compaction_lag_ms);
        let range: Vec<keel_log::SegmentInfo> = closed
            .into_iter()
            .take_while(|s| s.next_index <= applied_end && s.next_offset <= lso && s.max_timestamp <= lag_bound)
            .collect();
        let (Some(first), Some(last)) = (range.first(), range.last()) else {
            return Ok(None);
        };
        let checkpoint = cleaner::read_checkpoint(&dir);
        let total: u64 = range.iter().map(|s| s.bytes).sum();
        let dirty: Vec<&keel_log::SegmentInfo> = range.iter().filter(|s| s.next_index > checkpoint).collect();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.bytes).sum();
        if dirty.is_empty() {
            return Ok(None);
        }
        let overdue = dirty
            .first()
            .is_some_and(|s| now_ms.saturating_sub(s.max_timestamp) > cs.max_compaction_lag_ms);
        if !overdue && dirty_bytes * 1000 < total * u64::from(cs.min_cleanable_dirty_permille) {
            return Ok(None);
        }
        let aborted = self
            .hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .aborted_between(i64::MIN, i64::MAX);
        let mut plan = cleaner::Plan::new(&aborted);
        let end_index = last.next_index;
        let mut at = first.base_index;
        'feed: while at < end_index {
            let entries = self.group.shared.log().read(at, 16 << 20)?;
            if entries.is_empty() {
                break;
            }
            for e in entries {
                if e.index >= end_index || !plan.feed(&e) {
                    break 'feed;
                }
                at = e.index + 1;
            }
        }
        let planned_end = plan.full_at.unwrap_or(end_index);
        let cleaning = cleaner::Cleaning {
            now_ms,
            delete_retention_ms: cs.delete_retention_ms,
        };
        let mut txn_kept = cleaner::TxnKept::new();
        let mut report = cleaner::Report::default();
        for seg in range.iter().take_while(|s| s.next_index <= planned_end) {
            let mut writer = keel_log::CleanedWriter::create(&dir, seg)?;
            let mut changed = false;
            let mut at = seg.base_index;
            while at < seg.next_index {
                let entries = self.group.shared.log().read(at, 16 << 20)?;
                if entries.is_empty() {
                    break;
                }
                for mut e in entries.into_iter().take_while(|e| e.index < seg.next_index) {
                    at = e.index + 1;
                    if let Some(payload) = cleaner::clean_entry(&e, &plan, &cleaning, &mut txn_kept) {
                        e.payload = payload;
                        changed = true;
                    }
                    writer.push(&e)?;
                }
            }
            let path = writer.finish()?;
            if !changed {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let freed = self.group.shared.log().swap_cleaned(seg, &path)?;
            report.segments_rewritten += 1;
            report.bytes_freed += freed;
        }
        report.cleaned_through = planned_end;
        keel_log::durable::replace_file(&cleaner::checkpoint_path(&dir), planned_end.to_string().as_bytes())
            .map_err(keel_log::LogError::Io)?;
        self.update_size_metric();
        Ok(Some(report))
    }

    /// Saves the transaction index if it changed since the last save.
    pub fn save_txn_index(&self) {
        let mut saved = self.hook.txn_saved.lock().unwrap_or_else(|e| e.into_inner());
        if saved.1 {
            let start = self.log_start_offset();
            self.hook
                .txns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget_before(start);
            self.hook.save_txns(&mut saved);
        }
    }

    fn coalescer(&self) -> std::sync::MutexGuard<'_, Coalescer> {
        self.coalescer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proposes queued acks=all batches as entries while the coalescer has room; each
    /// entry's commit proposes what queued behind it. The caller holds the proposal lock,
    /// so entries reach the log in the order their batches were checked.
    /// With `force`, proposes everything queued whatever is in flight.
    fn propose_queued(self: &Arc<Self>, force: bool) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let Some(take) = self.coalescer().take(force) else {
                    return;
                };
                match self.group.propose_start(take.payload.clone()).await {
                    Ok(committed) => {
                        let weak = Arc::downgrade(self);
                        tokio::spawn(async move {
                            match committed.await {
                                Ok(applied) => take.landed(applied.base_offset),
                                Err(e) => take.failed(&e),
                            }
                            if let Some(p) = weak.upgrade() {
                                let _turn = p.propose.lock().await;
                                p.coalescer().settled();
                                p.propose_queued(false).await;
                            }
                        });
                    }
                    Err(e) => {
                        take.failed(&e);
                        let mut c = self.coalescer();
                        c.settled();
                        c.fail_all(&e);
                        return;
                    }
                }
            }
        })
    }

    async fn append_wait(
        &self,
        first: Result<Appended, i64>,
        waits: Vec<ProposalFuture>,
        log_append: bool,
        now: i64,
    ) -> Result<Appended, PartitionError> {
        let mut base_offset = None;
        let mut failure = None;
        for (i, w) in waits.into_iter().enumerate() {
            match w.await {
                Ok(base) => {
                    if first.as_ref().err() == Some(&(i as i64)) {
                        base_offset = Some(base);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.update_size_metric();
        if let Some(e) = failure {
            // What was pending may or may not be in the log now: checks go by what is
            // applied until new batches are accepted.
            self.hook
                .producers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear_pending();
            self.check_poisoned();
            if self.poisoned.load(Ordering::Acquire) {
                return Err(PartitionError::Storage(keel_log::LogError::Poisoned(e.to_string())));
            }
            return Err(propose_error(e));
        }
        match first {
            Ok(dup) => Ok(dup),
            Err(_) => Ok(Appended {
                base_offset: base_offset.unwrap_or(-1),
                log_append_time: if log_append { now } else { -1 },
                log_start_offset: self.log_start_offset(),
            }),
        }
    }

    fn check_poisoned(&self) {
        if self.group.shared.log().sync_handle().is_err() && !self.poisoned.swap(true, Ordering::AcqRel) {
            error!(topic = %self.topic, partition = self.index, "partition poisoned");
            self.metrics.poisoned_partitions.inc();
        }
    }

    /// fsyncs everything appended so far (the `interval` policy, clean shutdown).
    /// Whether the topic's flush policy is `interval` (a node-wide timer fsyncs it).
    pub fn fsyncs_on_interval(&self) -> bool {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).fsync == FsyncPolicy::Interval
    }

    pub async fn sync_now(&self) {
        let shared = self.group.shared.clone();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || shared.sync()).await;
        self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        let failed = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = failed {
            if !reason.contains("poisoned") {
                self.group.shared.log().poison(format!("fsync failed: {reason}"));
            }
            self.check_poisoned();
        }
    }

    /// Reads committed records from `offset`, at most `max_bytes`, except that the first
    /// batch comes whole even when larger (so a large batch still makes progress).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, PartitionError> {
        self.read_bounded(offset, max_bytes, true, false)
    }

    /// As [`Partition::read`]; with `oversized_first` false, `max_bytes` is a hard limit
    /// (KIP-74: only the first partition of a Fetch response may exceed the budget).
    /// With `committed_only` (`read_committed`), stops at the last stable offset and names
    /// the aborted transactions the records read overlap.
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        oversized_first: bool,
        committed_only: bool,
    ) -> Result<ReadResult, PartitionError> {
        self.read_as(offset, max_bytes, oversized_first, committed_only, false)
    }

    /// As [`Partition::read_bounded`]; with `follower_ok`, a follower serves it too (a
    /// consumer a leader sent here, KIP-392): what this replica knows committed, and an
    /// empty read for an offset it has logged but not yet learnt committed.
    pub fn read_as(
        &self,
        offset: i64,
        max_bytes: usize,
        oversized_first: bool,
        committed_only: bool,
        follower_ok: bool,
    ) -> Result<ReadResult, PartitionError> {
        let leader = self.may_serve_reads();
        if !(leader || (follower_ok && self.may_serve_follower_reads())) {
            return Err(PartitionError::NotLeader);
        }
        let hw = self.high_watermark();
        let lso = self.last_stable_offset();
        let upper = if committed_only { lso } else { hw };
        let start = self.log_start_offset();
        let log = self.group.shared.log();
        if !leader && offset > hw && offset <= log.next_offset() {
            return Ok(ReadResult {
                records: Bytes::new(),
                high_watermark: hw,
                last_stable_offset: lso,
                log_start_offset: start,
                aborted: Vec::new(),
            });
        }
        if offset < start || offset > hw {
            return Err(PartitionError::OffsetOutOfRange { offset, start, end: hw });
        }
        let mut out = BytesMut::new();
        let mut read_end = offset;
        if offset < upper {
            let entries = log.read_from_offset(offset, max_bytes).inspect_err(|e| {
                if matches!(e, keel_log::LogError::Corrupt { .. }) {
                    self.group.shared.note_damage();
                }
            })?;
            for e in entries {
                if e.offset >= upper {
                    break;
                }
                if e.kind != keel_log::EntryKind::Data {
                    continue;
                }
                // An entry may hold several batches: a read from inside it starts at the
                // batch that holds its offset, and a read_committed one ends before the
                // batch at the last stable offset.
                let mut payload = if e.offset < offset {
                    e.payload.slice(batch::skip_before(&e.payload, offset)..)
                } else {
                    e.payload.clone()
                };
                if committed_only {
                    payload.truncate(batch::take_before(&payload, upper));
                }
                if payload.is_empty() {
                    continue;
                }
                let fits = out.len() + payload.len() <= max_bytes;
                let may_exceed = out.is_empty() && oversized_first;
                if !(fits || may_exceed) {
                    break;
                }
                if let Some(Ok((_, last))) = batch::batches(&payload).last() {
                    read_end = read_end.max(last.last_offset() + 1);
                }
                out.extend_from_slice(&payload);
            }
        }
        let aborted = if committed_only && read_end > offset {
            self.hook
                .txns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .aborted_between(offset, read_end)
        } else {
            Vec::new()
        };
        Ok(ReadResult {
            records: out.freeze(),
            high_watermark: hw,
            last_stable_offset: lso,
            log_start_offset: start,
            aborted,
        })
    }

    /// The earliest offset whose record timestamp is at least `ts`, or `None`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, PartitionError> {
        if !self.may_serve_reads() {
            return Err(PartitionError::NotLeader);
        }
        let hw = self.high_watermark();
        let log = self.group.shared.log();
        match log.entry_for_timestamp(ts)? {
            Some(e) if e.offset < hw => Ok(Some(
                exact_offset_for_timestamp(&e.payload, ts).unwrap_or((e.offset, e.max_timestamp)),
            )),
            _ => Ok(None),
        }
    }

    /// DescribeProducers (KIP-664): the idempotent and transactional producers this
    /// replica remembers, as (id, epoch, last sequence, first offset of its open
    /// transaction or -1).
    pub fn active_producers(&self) -> Result<Vec<(i64, i16, i32, i64)>, PartitionError> {
        if !self.may_serve_reads() {
            return Err(PartitionError::NotLeader);
        }
        let producers = self.hook.producers.lock().unwrap_or_else(|e| e.into_inner()).describe();
        let open: std::collections::HashMap<i64, i64> = self
            .hook
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open()
            .collect();
        Ok(producers
            .into_iter()
            .map(|(id, epoch, seq)| (id, epoch, seq, open.get(&id).copied().unwrap_or(-1)))
            .collect())
    }

    /// OffsetForLeaderEpoch (KIP-101, KIP-279): for a leader epoch (a Raft term), the
    /// largest epoch at most `epoch` that wrote to this log and the offset where the next
    /// epoch's entries begin (the high watermark when `epoch` is the current term), so a
    /// consumer can tell whether the log it read from was truncated. `(-1, -1)` for an
    /// epoch later than the current term. Terms never decrease along the log, so the first
    /// entry of a later term is found by bisection.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Result<(i32, i64), PartitionError> {
        if !self.may_serve_reads() {
            return Err(PartitionError::NotLeader);
        }
        let hw = self.high_watermark();
        let current = self.group.term().min(i32::MAX as u64) as i32;
        if epoch == current {
            return Ok((epoch, hw));
        }
        if epoch > current || epoch < 0 {
            return Ok((-1, -1));
        }
        let log = self.group.shared.log();
        let at = |index: u64| -> Result<(u64, i64), PartitionError> {
            let entries = log.read(index, 0)?;
            let e = entries.first().ok_or(keel_log::LogError::OutOfRange(index))?;
            Ok((e.term, e.offset))
        };
        let first = log.first_index();
        let (mut lo, mut hi) = (first, log.next_index());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if at(mid)?.0 > epoch as u64 {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let end = if lo < log.next_index() { at(lo)?.1.min(hw) } else { hw };
        // The epoch of the entry before the boundary; an epoch older than the log's first
        // entry is answered with itself, as Kafka's epoch cache does.
        let floor = if lo > first {
            at(lo - 1)?.0.min(i32::MAX as u64) as i32
        } else {
            epoch
        };
        Ok((floor, end))
    }

    /// Drops whole segments that hold only offsets below `offset`, through the group (so
    /// the Raft log knows where it now starts). Returns whether anything was dropped.
    pub async fn purge_before_offset(&self, offset: i64) -> Result<bool, PartitionError> {
        let index = {
            let log = self.group.shared.log();
            match log.read_from_offset(offset, 1)?.first() {
                Some(e) => e.index,
                None => log.next_index(),
            }
        };
        self.purge_before_index(index).await
    }

    pub async fn purge_before_index(&self, index: u64) -> Result<bool, PartitionError> {
        let first = self.group.shared.log().first_index();
        tracing::debug!(topic = %self.topic, partition = self.index, index, first, "purge requested");
        if index <= first {
            return Ok(false);
        }
        let applied = self.group.shared.applied().last_applied.map(|l| l.index);
        let upto = (index - 1).min(applied.unwrap_or(0));
        if Some(upto) > applied || upto < first {
            return Ok(false);
        }
        self.group.purge_to(upto).await.map_err(PartitionError::Replication)?;
        self.update_size_metric();
        Ok(true)
    }

    /// Deletes segments past retention (through the group) and rolls an aged segment.
    pub async fn apply_retention(&self, now_ms: i64) {
        let point = {
            let mut log = self.group.shared.log();
            if let Err(e) = log.roll_if_aged(now_ms) {
                warn!(topic = %self.topic, partition = self.index, error = %e, "segment roll failed");
            }
            log.retention_point(now_ms)
        };
        if let Some(keep_from) = point {
            match self.purge_before_index(keep_from).await {
                Ok(true) => info!(topic = %self.topic, partition = self.index, keep_from, "retention removed segments"),
                Ok(false) => {}
                Err(e) => warn!(topic = %self.topic, partition = self.index, error = %e, "retention failed"),
            }
        }
    }

    /// The preferred replica this leader should hand the partition back to (leadership
    /// balancing after a node rejoins): another voter, on a live node, its log matching
    /// this one's.
    pub fn preferred_successor(&self, alive: impl Fn(u64) -> bool) -> Option<u64> {
        let preferred = self.preferred_leader()?;
        if self.is_closed() || !self.group.is_leader() || preferred == self.replica_id() {
            return None;
        }
        let voter = self.group.voters().contains(&preferred);
        (voter && alive(keel_raft::node_of(preferred)) && self.group.lag_of(preferred) == Some(0)).then_some(preferred)
    }

    /// A read met damage in this replica's log while it ran: it should be reopened, which
    /// cuts the log back at the damage and re-fetches the rest from the leader.
    pub fn damage_found(&self) -> bool {
        self.group.shared.damage_found()
    }

    pub fn preferred_leader(&self) -> Option<u64> {
        Some(self.preferred_leader.load(Ordering::Acquire)).filter(|n| *n != u64::MAX)
    }

    pub fn set_preferred_leader(&self, node: Option<u64>) {
        self.group.quiet.set_preferred(node);
        self.preferred_leader.store(node.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Stops the group; the partition refuses further appends.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.group.shutdown().await;
        self.metrics.forget_partition(&self.topic, self.index);
    }

    /// Drops the replica's vote from the node's journal: the replica is removed from this
    /// node for good (its directory goes with it).
    pub fn forget_vote(&self) {
        self.vote_slot.store.forget(&self.vote_slot.key);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The Raft group name of a partition (topic names cannot contain '/').
pub fn group_name(topic: &str, index: i32) -> String {
    format!("{topic}/{index}")
}

/// Reads every entry of the log, checking each one's checksum. At the first entry that
/// fails, the log is cut back to the entry before it (the replica re-fetches the rest from
/// the leader) and the index of the last entry it had is returned: until its log reaches
/// that index again, the replica must not vote, because some of what it lost may have been
/// committed with its acknowledgement.
fn repair_log(log: &mut DiskLog, topic: &str, index: i32) -> anyhow::Result<Option<u64>> {
    const CHUNK_BYTES: usize = 8 * 1024 * 1024;
    let (first, next) = (log.first_index(), log.next_index());
    let mut at = first;
    while at < next {
        match log.read(at, CHUNK_BYTES) {
            Ok(entries) => match entries.last() {
                Some(e) => at = e.index + 1,
                None => break,
            },
            Err(keel_log::LogError::Corrupt { .. }) => {
                // Find the first bad entry one by one from here.
                let mut bad = at;
                while bad < next && log.read(bad, 1).is_ok() {
                    bad += 1;
                }
                error!(
                    topic,
                    partition = index,
                    entry = bad,
                    last = next - 1,
                    "damaged entry in the log; cutting the log back to re-fetch the rest from the leader"
                );
                if bad > log.first_index() {
                    log.truncate_after(bad - 1)?;
                } else {
                    let start = log.start_offset();
                    log.reset(bad, start)?;
                }
                return Ok(Some(next - 1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Replicas more than this many entries behind the leader count as under-replicated.
const REPLICA_LAG_ENTRIES_MAX: u64 = 1000;

/// Keeps the partition's Raft metrics current: term, leadership, leader changes, how long
/// it was without a leader, and (on the leader) each replica's lag.
async fn watch_raft(p: std::sync::Weak<Partition>) {
    let Some(mut rx) = p.upgrade().map(|p| p.group.raft.metrics()) else {
        return;
    };
    let mut leader: Option<u64> = None;
    let mut leaderless_since: Option<Instant> = Some(Instant::now());
    while rx.changed().await.is_ok() {
        let Some(p) = p.upgrade() else { return };
        if p.is_closed() {
            return;
        }
        let m = rx.borrow_and_update().clone();
        let labels = crate::metrics::PartitionLabels {
            topic: p.topic.clone(),
            partition: p.index,
        };
        p.metrics.raft_term.get_or_create(&labels).set(m.current_term as i64);
        let leads = m.current_leader == Some(m.id);
        p.metrics.raft_leader.get_or_create(&labels).set(i64::from(leads));
        if m.current_leader != leader {
            match (leader, m.current_leader) {
                (_, None) => leaderless_since = Some(Instant::now()),
                (_, Some(_)) => {
                    if let Some(since) = leaderless_since.take() {
                        p.metrics.leaderless_seconds.observe(since.elapsed().as_secs_f64());
                    }
                    p.metrics.leader_changes.get_or_create(&labels).inc();
                }
            }
            leader = m.current_leader;
        }
        let mut behind = false;
        if let (true, Some(rep)) = (leads, m.replication.as_ref()) {
            let last = m.last_log_index.unwrap_or(0);
            for (replica, matched) in rep.iter() {
                let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                behind |= matched.is_none() || lag > REPLICA_LAG_ENTRIES_MAX;
                p.metrics
                    .replica_lag_entries
                    .get_or_create(&crate::metrics::ReplicaLabels {
                        topic: p.topic.clone(),
                        partition: p.index,
                        replica: keel_raft::node_of(*replica),
                    })
                    .set(lag as i64);
            }
        }
        let g = p.metrics.under_replicated.get_or_create(&labels);
        let was = g.get() > 0;
        if behind != was {
            g.set(i64::from(behind));
            if behind {
                p.metrics.under_replicated_partitions.inc();
            } else {
                p.metrics.under_replicated_partitions.dec();
            }
        }
    }
}

/// One past the last index the replica's group had applied when it last saved that
/// (`raft-applied.json`), within the log.
fn applied_end(log: &DiskLog, dir: &std::path::Path) -> u64 {
    std::fs::read(dir.join("raft-applied.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<keel_raft::store::AppliedState>(&b).ok())
        .and_then(|a| a.last_applied)
        .map(|l| l.index + 1)
        .unwrap_or(0)
        .min(log.next_index())
}

/// fsyncs on the `interval` policy; the `always` policy fsyncs in the group itself.
/// Rebuilds idempotent-producer state from the newest applied entries of the log, so that
/// a producer retrying across a restart is still deduplicated. Entries past the applied
/// position are applied again by the group and recorded then.
fn rebuild_producers(log: &DiskLog, dir: &std::path::Path) -> ProducerStates {
    const ENTRIES_SCANNED: u64 = 20_000;
    const BYTES_SCANNED: usize = 256 * 1024 * 1024;
    let mut states = ProducerStates::default();
    let applied_end = applied_end(log, dir);
    let from = log.first_index().max(applied_end.saturating_sub(ENTRIES_SCANNED));
    if from >= applied_end {
        return states;
    }
    match log.read(from, BYTES_SCANNED) {
        Ok(entries) => {
            for e in entries.into_iter().filter(|e| e.index < applied_end) {
                if e.kind != keel_log::EntryKind::Data {
                    continue;
                }
                let mut next = e.offset;
                for (_, h) in batch::batches(&e.payload).map_while(Result::ok) {
                    if h.is_control() {
                        states.fence(h.producer_id, h.producer_epoch);
                    } else if h.producer_id >= 0 && h.base_sequence >= 0 {
                        states.record(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count, next);
                    }
                    next = next.saturating_add(h.offset_span());
                }
            }
        }
        Err(e) => warn!(error = %e, "could not rebuild producer state from the log tail"),
    }
    states
}

/// The transaction index at the applied end of the log: the saved checkpoint, with the
/// applied entries after it fed again (entries past the applied end are applied again by
/// the group, and feeding an offset twice changes nothing). Without a usable checkpoint
/// (none yet, unreadable, or past the log's end after a power loss) the whole log is read.
fn rebuild_txns(log: &DiskLog, dir: &std::path::Path) -> TxnIndex {
    const CHUNK_BYTES: usize = 64 * 1024 * 1024;
    let applied_end = applied_end(log, dir);
    let log_end = log.next_offset();
    let mut index = std::fs::read(dir.join(TXN_CHECKPOINT))
        .ok()
        .and_then(|b| serde_json::from_slice::<TxnIndex>(&b).ok())
        .filter(|ix| ix.usable_with(log_end))
        .unwrap_or_default();
    let mut at = index.through().max(log.start_offset());
    loop {
        let entries = match log.read_from_offset(at, CHUNK_BYTES) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "could not rebuild the transaction index past offset {at}");
                break;
            }
        };
        let before = at;
        for e in entries.iter().filter(|e| e.index < applied_end) {
            if e.kind != keel_log::EntryKind::Data {
                continue;
            }
            let mut next = e.offset;
            for (pos, h) in batch::batches(&e.payload).map_while(Result::ok) {
                index.feed(e.payload.get(pos..).unwrap_or_default(), &h, next);
                next = next.saturating_add(h.offset_span());
            }
            at = at.max(next);
        }
        if at == before || entries.last().is_none_or(|e| e.index + 1 >= applied_end) {
            break;
        }
    }
    index
}

/// For an uncompressed batch, the offset and timestamp of the first record at or after
/// `ts`, walking the records' timestamp and offset deltas. Compressed batches are not
/// decompressed here; the caller falls back to the batch's first offset.
fn exact_offset_for_timestamp(payload: &[u8], ts: i64) -> Option<(i64, i64)> {
    // The first batch of the entry that reaches `ts` (an entry may hold several).
    let (pos, h) = batch::batches(payload)
        .map_while(Result::ok)
        .find(|(_, h)| h.max_timestamp >= ts)?;
    let payload = payload.get(pos..)?;
    if h.compression() != 0 || h.is_log_append_time() {
        return Some((h.base_offset, h.max_timestamp));
    }
    exact_in_batch(payload, &h, ts)
}

/// As [`exact_offset_for_timestamp`], in one uncompressed batch at the start of `payload`.
fn exact_in_batch(payload: &[u8], h: &BatchHeader, ts: i64) -> Option<(i64, i64)> {
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
