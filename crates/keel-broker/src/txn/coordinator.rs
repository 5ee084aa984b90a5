//! The transaction coordinator: every transactional id's state, durable in the internal
//! topic `__transaction_state`, and the writing of a decided transaction's markers.
//!
//! The leader of `__transaction_state`'s one partition coordinates every transactional id,
//! as the leader of `__consumer_offsets` coordinates every group. Each state change is one
//! record (key: the id; value: the state as JSON, see [`TxnMeta`]) appended through the
//! partition's Raft group and answered only once committed; a new leader replays the
//! partition and finishes every transaction it finds decided (PrepareCommit or
//! PrepareAbort) by writing its markers again. Markers carry the coordinator epoch (the
//! partition's Raft term), so a partition ignores a late marker from a deposed coordinator.
//!
//! Markers go to each partition's leader: written directly when it is this node, else sent
//! over the node-to-node transport ([`MARKERS_ROUTE`]). Partition leaders ask the
//! coordinator, over [`VERIFY_ROUTE`], whether a producer's first transactional write to
//! them belongs to its ongoing transaction (KIP-890 part 1).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use keel_proto::batch::NewRecord;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state::{self, Init, TxnMeta, TxnState};
use crate::cluster::partition::Partition;
use crate::error::PartitionError;
use crate::group::offsets::OFFSETS_TOPIC;
use crate::Broker;

pub const TXN_TOPIC: &str = "__transaction_state";
pub const MARKERS_ROUTE: &str = "txn/markers";
pub const VERIFY_ROUTE: &str = "txn/verify";
/// Longest transaction timeout a producer may ask for (Kafka's
/// `transaction.max.timeout.ms`).
pub const TIMEOUT_MAX_MS: i32 = 900_000;
/// Transactional ids one coordinator keeps at most.
pub const IDS_MAX: usize = 1_000_000;

const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;

/// One marker for one partition, as sent to its leader's node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkerRequest {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A partition leader's question: is this partition in the producer's ongoing
/// transaction? With `add` (transaction version 2, where producers do not send
/// AddPartitionsToTxn), the coordinator adds it, beginning the transaction if need be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub topic: String,
    pub partition: i32,
    #[serde(default)]
    pub add: bool,
}

pub struct TxnStore {
    partition: RwLock<Arc<Partition>>,
    map: RwLock<BTreeMap<String, TxnMeta>>,
    /// Serialises state changes (read, decide, write) so each sees the one before.
    write: tokio::sync::Mutex<()>,
    /// The leader term whose state is loaded here.
    loaded_term: Mutex<Option<u64>>,
    /// Ids whose markers a task of this node is writing now.
    completing: Mutex<HashSet<String>>,
}

fn encode_key(id: &str) -> Bytes {
    let mut k = Vec::with_capacity(id.len() + 2);
    k.extend_from_slice(&1u16.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    Bytes::from(k)
}

fn decode_key(k: &[u8]) -> Option<String> {
    match k {
        [0, 1, rest @ ..] => String::from_utf8(rest.to_vec()).ok(),
        _ => None,
    }
}

impl TxnStore {
    pub fn load(partition: Arc<Partition>) -> TxnStore {
        let map = replay(&partition);
        let term = partition.is_leader().then(|| partition.group().term());
        TxnStore {
            partition: RwLock::new(partition),
            map: RwLock::new(map),
            write: tokio::sync::Mutex::new(()),
            loaded_term: Mutex::new(term),
            completing: Mutex::new(HashSet::new()),
        }
    }

    pub fn partition(&self) -> Arc<Partition> {
        self.partition.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_partition(&self, partition: Arc<Partition>) {
        *self.partition.write().unwrap_or_else(|e| e.into_inner()) = partition;
    }

    /// `None` when this node coordinates transactions now; else the error to answer with.
    pub fn coordinator_error(&self) -> Option<i16> {
        let p = self.partition();
        if !p.is_leader() {
            return Some(NOT_COORDINATOR);
        }
        if *self.loaded_term.lock().unwrap_or_else(|e| e.into_inner()) != Some(p.group().term()) {
            return Some(COORDINATOR_LOAD_IN_PROGRESS);
        }
        None
    }

    /// The epoch markers carry: the term of the leadership this coordinator holds.
    fn coordinator_epoch(&self) -> i32 {
        self.loaded_term
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(0)
            .min(i32::MAX as u64) as i32
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    pub fn all(&self) -> Vec<(String, TxnMeta)> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes `meta` as `id`'s state (the caller holds the write turn), then keeps it.
    async fn persist(&self, id: &str, meta: &TxnMeta) -> Result<(), PartitionError> {
        let value = serde_json::to_vec(meta).map_err(|e| PartitionError::Replication(e.to_string()))?;
        let rec = NewRecord {
            key: Some(encode_key(id)),
            value: Some(Bytes::from(value)),
            timestamp: keel_log::disk::now_ms(),
        };
        let batch = keel_proto::batch::encode_batch(&[rec], Compression::None)?;
        let batches = keel_proto::batch::split_batches(&batch)?;
        self.partition().append(batches, true).await?;
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), meta.clone());
        Ok(())
    }
}

fn replay(partition: &Partition) -> BTreeMap<String, TxnMeta> {
    let mut map = BTreeMap::new();
    if !partition.is_leader() {
        return map;
    }
    let mut pos = partition.log_start_offset();
    loop {
        let read = match partition.read(pos, 8 << 20) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not replay transaction state past offset {pos}");
                break;
            }
        };
        if read.records.is_empty() {
            break;
        }
        let mut buf = read.records.clone();
        let before = pos;
        while buf.has_remaining() {
            let set = match RecordBatchDecoder::decode(&mut buf) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "undecodable batch in {TXN_TOPIC}");
                    break;
                }
            };
            for r in set.records {
                pos = pos.max(r.offset + 1);
                let Some(id) = r.key.as_deref().and_then(decode_key) else {
                    continue;
                };
                match r.value.as_deref().map(serde_json::from_slice::<TxnMeta>) {
                    Some(Ok(meta)) => {
                        map.insert(id, meta);
                    }
                    Some(Err(e)) => warn!(id, error = %e, "unreadable transaction state"),
                    None => {
                        map.remove(&id);
                    }
                }
            }
        }
        if pos == before {
            break;
        }
    }
    info!(transactional_ids = map.len(), "transaction state loaded");
    map
}

fn now_ms() -> i64 {
    keel_log::disk::now_ms()
}

fn fail_code(e: &PartitionError) -> i16 {
    match e {
        PartitionError::NotLeader => NOT_COORDINATOR,
        _ => state::COORDINATOR_NOT_AVAILABLE,
    }
}

/// InitProducerId with a transactional id: the producer id and epoch to use.
pub async fn init_producer_id(
    b: &Arc<Broker>,
    id: &str,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    fenced_code: i16,
) -> Result<(i64, i16), i16> {
    let store = &b.txns;
    if let Some(code) = store.coordinator_error() {
        return Err(code);
    }
    if timeout_ms <= 0 || timeout_ms > TIMEOUT_MAX_MS {
        return Err(state::INVALID_TRANSACTION_TIMEOUT);
    }
    let _turn = store.write.lock().await;
    let now = now_ms();
    let Some(current) = store.get(id) else {
        if store.map.read().unwrap_or_else(|e| e.into_inner()).len() >= IDS_MAX {
            return Err(state::COORDINATOR_NOT_AVAILABLE);
        }
        if expected.is_some() {
            return Err(state::INVALID_PRODUCER_ID_MAPPING);
        }
        let pid = b.producer_ids.allocate().map_err(|e| {
            warn!(error = %e, "could not persist the producer id block");
            state::COORDINATOR_NOT_AVAILABLE
        })?;
        let meta = TxnMeta::new(pid, timeout_ms, now);
        store.persist(id, &meta).await.map_err(|e| fail_code(&e))?;
        return Ok((meta.producer_id, meta.epoch));
    };
    match current.init(
        timeout_ms,
        expected,
        now,
        || b.producer_ids.allocate().ok(),
        fenced_code,
    ) {
        Init::Ready(meta) => {
            store.persist(id, &meta).await.map_err(|e| fail_code(&e))?;
            Ok((meta.producer_id, meta.epoch))
        }
        Init::AbortFirst(meta) => {
            store.persist(id, &meta).await.map_err(|e| fail_code(&e))?;
            info!(
                transactional_id = id,
                "aborting the ongoing transaction of a new producer instance"
            );
            complete(b, id);
            Err(state::CONCURRENT_TRANSACTIONS)
        }
        Init::Refuse(code) => Err(code),
    }
}

/// AddPartitionsToTxn (and AddOffsetsToTxn with the offsets partition): one error code for
/// every partition.
pub async fn add_partitions(
    b: &Arc<Broker>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    fenced_code: i16,
) -> Result<(), i16> {
    let store = &b.txns;
    if let Some(code) = store.coordinator_error() {
        return Err(code);
    }
    for (t, p) in partitions {
        if b.topics.get(t).and_then(|topic| topic.partition(*p)).is_none() && !known_partition(b, t, *p) {
            return Err(state::UNKNOWN_TOPIC_OR_PARTITION);
        }
    }
    let _turn = store.write.lock().await;
    let current = store.get(id).ok_or(state::INVALID_PRODUCER_ID_MAPPING)?;
    match current.add_partitions(producer_id, epoch, partitions, now_ms(), fenced_code)? {
        Some(next) => store.persist(id, &next).await.map_err(|e| fail_code(&e)),
        None => Ok(()),
    }
}

/// Whether the cluster metadata knows `topic`'s partition `p` (this node may hold no
/// replica of it).
fn known_partition(b: &Broker, topic: &str, p: i32) -> bool {
    b.controller
        .meta()
        .topics
        .get(topic)
        .is_some_and(|r| p >= 0 && (p as usize) < r.replicas.len())
}

/// EndTxn: decides the transaction and starts writing its markers. With transaction
/// version 2 (`v2`, EndTxn v5) the epoch is bumped; returns the producer id and epoch the
/// producer goes on with.
pub async fn end_txn(
    b: &Arc<Broker>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    fenced_code: i16,
    v2: bool,
) -> Result<(i64, i16), i16> {
    let store = &b.txns;
    if let Some(code) = store.coordinator_error() {
        return Err(code);
    }
    let _turn = store.write.lock().await;
    let current = store.get(id).ok_or(state::INVALID_PRODUCER_ID_MAPPING)?;
    let (prepared, answer) = if v2 {
        current.end_v2(producer_id, epoch, commit, now_ms(), fenced_code)?
    } else {
        (current.end(producer_id, epoch, commit, now_ms(), fenced_code)?, epoch)
    };
    if let Some(prepared) = prepared {
        store.persist(id, &prepared).await.map_err(|e| fail_code(&e))?;
        complete(b, id);
    }
    Ok((producer_id, answer))
}

/// Transaction version 2: a partition leader (or the group coordinator, for offsets)
/// adds a partition to the producer's transaction on its first write there, beginning the
/// transaction when none is ongoing. Returns a Kafka error code.
async fn add_implicitly(b: &Arc<Broker>, v: &VerifyRequest) -> i16 {
    add_partitions(
        b,
        &v.transactional_id,
        v.producer_id,
        v.producer_epoch,
        &[(v.topic.clone(), v.partition)],
        state::INVALID_PRODUCER_EPOCH,
    )
    .await
    .err()
    .unwrap_or(0)
}

/// Answers a partition leader's verification on this coordinator.
pub fn verify_here(b: &Broker, v: &VerifyRequest) -> i16 {
    if let Some(code) = b.txns.coordinator_error() {
        return code;
    }
    match b.txns.get(&v.transactional_id) {
        Some(meta) => meta
            .verify(v.producer_id, v.producer_epoch, &(v.topic.clone(), v.partition))
            .err()
            .unwrap_or(0),
        None => state::INVALID_PRODUCER_ID_MAPPING,
    }
}

/// Verifies a producer's first transactional write to `partition` with the coordinator,
/// wherever it is, and lets the partition take the producer's batches if it agrees.
pub async fn verify_write(b: &Arc<Broker>, partition: &Partition, v: VerifyRequest) -> i16 {
    let token = partition.begin_verification(v.producer_id, v.producer_epoch);
    let code = if b.txns.coordinator_error().is_none() {
        if v.add {
            add_implicitly(b, &v).await
        } else {
            verify_here(b, &v)
        }
    } else {
        match (txn_coordinator_node(b), serde_json::to_vec(&v)) {
            (Some(node), Ok(body)) => match b
                .controller
                .transport
                .call_app(node as u64, VERIFY_ROUTE, &body, Duration::from_secs(5))
                .await
            {
                Ok(r) if r.len() == 2 => i16::from_be_bytes([r[0], r[1]]),
                _ => NOT_COORDINATOR,
            },
            _ => NOT_COORDINATOR,
        }
    };
    if code == 0 {
        partition.confirm_verification(v.producer_id, token);
    }
    code
}

/// The node leading `__transaction_state` (it may be this one).
pub fn txn_coordinator_node(b: &Broker) -> Option<i32> {
    b.leader_node_of(TXN_TOPIC, &b.txns.partition(), &b.main_listener)
        .map(|(id, _, _)| id)
}

/// Starts writing the markers of `id`'s decided transaction, unless a task already is.
pub fn complete(b: &Arc<Broker>, id: &str) {
    if !b
        .txns
        .completing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string())
    {
        return;
    }
    let b = b.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let r = write_markers(&b, &id).await;
        b.txns.completing.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Err(e) = r {
            warn!(transactional_id = %id, error = %e, "transaction markers not written; the next coordinator finishes them");
        }
    });
}

/// Writes the markers of `id`'s decided transaction to every partition in it, retrying
/// until each is written or this node stops coordinating, then records it complete.
async fn write_markers(b: &Arc<Broker>, id: &str) -> Result<(), String> {
    let Some(meta) = b.txns.get(id).filter(|m| m.state.is_prepared()) else {
        return Ok(());
    };
    let commit = meta.state == TxnState::PrepareCommit;
    let coordinator_epoch = b.txns.coordinator_epoch();
    let writes = meta.partitions.iter().map(|(topic, partition)| {
        let req = MarkerRequest {
            topic: topic.clone(),
            partition: *partition,
            producer_id: meta.producer_id,
            producer_epoch: meta.epoch,
            commit,
            coordinator_epoch,
        };
        async move {
            let mut delay = Duration::from_millis(20);
            loop {
                if b.txns.coordinator_error().is_some() {
                    return Err("this node no longer coordinates transactions".to_string());
                }
                match write_marker_anywhere(b, &req).await {
                    0 => return Ok(()),
                    // The partition was deleted: nothing left to mark.
                    state::UNKNOWN_TOPIC_OR_PARTITION if !known_partition(b, &req.topic, req.partition) => {
                        return Ok(())
                    }
                    code => {
                        tracing::debug!(topic = %req.topic, partition = req.partition, code, "marker not written yet");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    });
    for r in futures::future::join_all(writes).await {
        r?;
    }
    let _turn = b.txns.write.lock().await;
    let Some(current) = b
        .txns
        .get(id)
        .filter(|m| m.state == meta.state && m.epoch == meta.epoch)
    else {
        return Ok(());
    };
    b.txns
        .persist(id, &current.complete(now_ms()))
        .await
        .map_err(|e| e.to_string())?;
    b.metrics.transactions_completed(commit).inc();
    Ok(())
}

/// Writes one marker: directly when this node leads the partition, else through its
/// leader's node. Returns a Kafka error code.
async fn write_marker_anywhere(b: &Arc<Broker>, req: &MarkerRequest) -> i16 {
    let local = b.topics.get(&req.topic).and_then(|t| t.partition(req.partition));
    if let Some(p) = &local {
        if p.is_leader() {
            return write_marker_here(b, req).await;
        }
    }
    let leader = match &local {
        Some(p) => p.group().leader().map(keel_raft::node_of).or_else(|| {
            b.controller
                .transport
                .reported_leader(&crate::cluster::partition::group_name(&req.topic, req.partition))
                .map(|(n, _)| n)
        }),
        None => b
            .controller
            .transport
            .reported_leader(&crate::cluster::partition::group_name(&req.topic, req.partition))
            .map(|(n, _)| n),
    };
    let Some(node) = leader.filter(|n| *n != b.controller.node_id) else {
        return kafka_protocol::ResponseError::NotLeaderOrFollower.code();
    };
    let Ok(body) = serde_json::to_vec(req) else {
        return state::COORDINATOR_NOT_AVAILABLE;
    };
    match b
        .controller
        .transport
        .call_app(node, MARKERS_ROUTE, &body, Duration::from_secs(10))
        .await
    {
        Ok(r) if r.len() == 2 => i16::from_be_bytes([r[0], r[1]]),
        _ => kafka_protocol::ResponseError::RequestTimedOut.code(),
    }
}

/// Writes a marker to a partition this node leads.
pub async fn write_marker_here(b: &Broker, req: &MarkerRequest) -> i16 {
    let r = if req.topic == OFFSETS_TOPIC && req.partition == 0 {
        b.groups
            .offsets
            .write_marker(req.producer_id, req.producer_epoch, req.commit, req.coordinator_epoch)
            .await
    } else {
        match b.topics.get(&req.topic).and_then(|t| t.partition(req.partition)) {
            Some(p) => {
                p.write_marker(req.producer_id, req.producer_epoch, req.commit, req.coordinator_epoch)
                    .await
            }
            None => return state::UNKNOWN_TOPIC_OR_PARTITION,
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// Serves the coordinator's node-to-node routes.
pub async fn handle_route(b: &Arc<Broker>, route: &str, body: &[u8]) -> Result<Bytes, String> {
    let code = match route {
        MARKERS_ROUTE => {
            let req: MarkerRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            write_marker_here(b, &req).await
        }
        VERIFY_ROUTE => {
            let req: VerifyRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            if req.add {
                add_implicitly(b, &req).await
            } else {
                verify_here(b, &req)
            }
        }
        other => return Err(format!("unknown route {other}")),
    };
    Ok(Bytes::copy_from_slice(&code.to_be_bytes()))
}

/// Follows leadership of `__transaction_state`: on gaining it, replays the state and
/// finishes every decided transaction; on losing it, stops answering.
pub async fn follow_leadership(b: &Arc<Broker>) {
    if let Some(current) = b.topics.get(TXN_TOPIC).and_then(|t| t.partition(0)) {
        if !Arc::ptr_eq(&current, &b.txns.partition()) {
            b.txns.set_partition(current);
        }
    }
    let p = b.txns.partition();
    let leading = p.is_leader();
    let term = p.group().term();
    let loaded = *b.txns.loaded_term.lock().unwrap_or_else(|e| e.into_inner());
    if leading && loaded != Some(term) {
        let map = {
            let _turn = b.txns.write.lock().await;
            let map = replay(&p);
            *b.txns.map.write().unwrap_or_else(|e| e.into_inner()) = map.clone();
            *b.txns.loaded_term.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
            map
        };
        info!(term, "this node now coordinates transactions");
        for (id, meta) in map {
            if meta.state.is_prepared() {
                complete(b, &id);
            }
        }
    } else if !p.group().is_leader() && loaded.is_some() {
        // As for the group coordinator: only a lost Raft leadership ends coordination, not
        // a leader's moment without a quorum's acknowledgement.
        *b.txns.loaded_term.lock().unwrap_or_else(|e| e.into_inner()) = None;
        info!("this node no longer coordinates transactions");
    }
}

/// Aborts transactions that ran past their timeout (fencing their producers), and finishes
/// decided ones whose marker task stopped. Refreshes the transaction metrics.
pub async fn tick(b: &Arc<Broker>) {
    if b.txns.coordinator_error().is_some() {
        b.metrics.open_transactions.set(0);
        return;
    }
    let now = now_ms();
    let mut open = 0;
    let mut oldest_ms = 0;
    for (id, meta) in b.txns.all() {
        if meta.state == TxnState::Ongoing {
            open += 1;
            oldest_ms = oldest_ms.max(now - meta.started_ms);
        }
        if meta.state.is_prepared() {
            complete(b, &id);
            continue;
        }
        if meta.expire(now).is_none() {
            continue;
        }
        let _turn = b.txns.write.lock().await;
        let Some(expired) = b.txns.get(&id).and_then(|m| m.expire(now)) else {
            continue;
        };
        if let Err(e) = b.txns.persist(&id, &expired).await {
            warn!(transactional_id = %id, error = %e, "could not abort a timed-out transaction");
            continue;
        }
        info!(transactional_id = %id, "aborted a transaction past its timeout");
        b.metrics.transactions_timed_out.inc();
        drop(_turn);
        complete(b, &id);
    }
    b.metrics.open_transactions.set(open);
    b.metrics.oldest_open_transaction_seconds.set(oldest_ms / 1000);
}
