//! Committed offsets, durable in the internal topic `__consumer_offsets`.
//!
//! Every commit is one record batch appended to the topic's partition through the same
//! partition machinery as user data (checksummed, fsynced before the commit is answered,
//! replicated once partitions are). Each record is keyed by (group, topic, partition); a
//! null value is a tombstone (deleted group, deleted topic, OffsetDelete). At start-up the
//! partition is replayed into memory, newest record per key winning.
//!
//! Record key:   u16 version=1, u16 len + group, u16 len + topic, i32 partition
//! Record value: u16 version=1, i64 offset, i32 leader epoch, i64 commit time ms,
//!               i32 len (-1 = null) + metadata

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use keel_proto::batch::NewRecord;
use tracing::{info, warn};

use crate::cluster::partition::Partition;
use crate::error::PartitionError;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Longest commit metadata string stored (Kafka's `offset.metadata.max.bytes`).
pub const METADATA_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;
/// Offsets committed inside a producer's open transaction: (group, (topic, partition),
/// offset), visible once its COMMIT marker is written.
type PendingCommits = std::collections::HashMap<i64, Vec<(String, (String, i32), CommittedOffset)>>;

pub struct OffsetStore {
    /// This node's replica of the internal partition; replaced when the replica is reopened
    /// (repaired, or moved off this node and back).
    partition: RwLock<Arc<Partition>>,
    map: RwLock<BTreeMap<String, GroupOffsets>>,
    pending: std::sync::Mutex<PendingCommits>,
    /// Serialises writes so that memory is updated in log order.
    write: tokio::sync::Mutex<()>,
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len().min(u16::MAX as usize) as u16);
    b.put_slice(s.as_bytes().get(..s.len().min(u16::MAX as usize)).unwrap_or_default());
}

fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

fn decode_key(mut b: Bytes) -> Option<(String, String, i32)> {
    if b.remaining() < 2 || b.get_u16() != 1 {
        return None;
    }
    let group = get_str(&mut b)?;
    let topic = get_str(&mut b)?;
    if b.remaining() < 4 {
        return None;
    }
    Some((group, topic, b.get_i32()))
}

fn encode_value(c: &CommittedOffset) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    b.put_i64(c.commit_ms);
    match &c.metadata {
        Some(m) => {
            b.put_i32(m.len() as i32);
            b.put_slice(m.as_bytes());
        }
        None => b.put_i32(-1),
    }
    b.freeze()
}

fn decode_value(mut b: Bytes) -> Option<CommittedOffset> {
    if b.remaining() < 2 + 8 + 4 + 8 + 4 || b.get_u16() != 1 {
        return None;
    }
    let offset = b.get_i64();
    let leader_epoch = b.get_i32();
    let commit_ms = b.get_i64();
    let len = b.get_i32();
    let metadata = if len < 0 {
        None
    } else {
        if b.remaining() < len as usize {
            return None;
        }
        Some(String::from_utf8_lossy(&b.split_to(len as usize)).into_owned())
    };
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_ms,
    })
}

impl OffsetStore {
    /// Replays the internal partition into memory (empty if this replica does not lead).
    pub fn load(partition: Arc<Partition>) -> OffsetStore {
        let (map, pending) = replay(&partition);
        OffsetStore {
            partition: RwLock::new(partition),
            map: RwLock::new(map),
            pending: std::sync::Mutex::new(pending),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Replays the internal partition again: this replica has just become its leader, and
    /// the offsets other coordinators committed are in its log.
    pub async fn reload(&self) {
        let _turn = self.write.lock().await;
        let (map, pending) = replay(&self.partition());
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = pending;
    }

    pub fn partition(&self) -> Arc<Partition> {
        self.partition.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Works on `partition` from now on (this node's replica was reopened).
    pub fn set_partition(&self, partition: Arc<Partition>) {
        *self.partition.write().unwrap_or_else(|e| e.into_inner()) = partition;
    }
}

fn apply_record(
    map: &mut BTreeMap<String, GroupOffsets>,
    group: String,
    key: (String, i32),
    value: Option<CommittedOffset>,
) {
    match value {
        Some(c) => {
            map.entry(group).or_default().insert(key, c);
        }
        None => {
            if let Some(g) = map.get_mut(&group) {
                g.remove(&key);
                if g.is_empty() {
                    map.remove(&group);
                }
            }
        }
    }
}

/// The committed offsets in the partition, newest per key, and the transactional commits
/// still waiting for their marker.
fn replay(partition: &Partition) -> (BTreeMap<String, GroupOffsets>, PendingCommits) {
    let mut pending = PendingCommits::new();
    if !partition.is_leader() {
        return (BTreeMap::new(), pending);
    }
    {
        let mut map: BTreeMap<String, GroupOffsets> = BTreeMap::new();
        let mut pos = partition.log_start_offset();
        let mut records = 0usize;
        loop {
            let read = match partition.read(pos, 8 << 20) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "could not replay committed offsets past offset {pos}");
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
                        warn!(error = %e, "undecodable batch in {OFFSETS_TOPIC}");
                        break;
                    }
                };
                for r in set.records {
                    pos = pos.max(r.offset + 1);
                    records += 1;
                    if r.control {
                        // A transaction marker: the producer's pending commits take effect
                        // (COMMIT) or are dropped (ABORT).
                        let commit = r.key.as_ref().and_then(|k| k.get(2..4)) == Some(&[0, 1][..]);
                        for (group, key, c) in pending.remove(&r.producer_id).unwrap_or_default() {
                            if commit {
                                apply_record(&mut map, group, key, Some(c));
                            }
                        }
                        continue;
                    }
                    let Some((group, topic, part)) = r.key.and_then(decode_key) else {
                        continue;
                    };
                    let value = r.value.and_then(decode_value);
                    if r.transactional {
                        if let Some(c) = value {
                            pending
                                .entry(r.producer_id)
                                .or_default()
                                .push((group, (topic, part), c));
                        }
                        continue;
                    }
                    apply_record(&mut map, group, (topic, part), value);
                }
            }
            if pos == before {
                break;
            }
        }
        info!(
            groups = map.len(),
            records,
            open_transactions = pending.len(),
            "committed offsets loaded"
        );
        (map, pending)
    }
}

impl OffsetStore {
    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, GroupOffsets>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `records` (key, value-or-tombstone) durably, then applies them in memory.
    async fn write(
        &self,
        group: &str,
        records: Vec<((String, i32), Option<CommittedOffset>)>,
    ) -> Result<(), PartitionError> {
        let _turn = self.write.lock().await;
        self.write_locked(group, records).await
    }

    /// `write` for a caller that already holds the write turn.
    async fn write_locked(
        &self,
        group: &str,
        records: Vec<((String, i32), Option<CommittedOffset>)>,
    ) -> Result<(), PartitionError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = keel_log::disk::now_ms();
        let recs: Vec<NewRecord> = records
            .iter()
            .map(|((topic, part), value)| NewRecord {
                key: Some(encode_key(group, topic, *part)),
                value: value.as_ref().map(encode_value),
                timestamp: now,
            })
            .collect();
        let batch = keel_proto::batch::encode_batch(&recs, Compression::None)?;
        let batches = keel_proto::batch::split_batches(&batch)?;
        self.partition().append(batches, true).await?;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (key, value) in records {
            match value {
                Some(c) => {
                    map.entry(group.to_string()).or_default().insert(key, c);
                }
                None => {
                    if let Some(g) = map.get_mut(group) {
                        g.remove(&key);
                        if g.is_empty() {
                            map.remove(group);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes the internal partition holds.
    pub fn size_bytes(&self) -> u64 {
        self.partition().size_bytes()
    }

    /// Snapshots the live offsets into the log and drops the segments before the snapshot,
    /// when the partition is larger than `threshold_bytes`. Replay then reads the snapshot
    /// and what followed it: every key live at the snapshot is restated after the purge
    /// point, so nothing older is needed. Returns entries purged.
    pub async fn compact_if_larger_than(&self, threshold_bytes: u64) -> Result<u64, PartitionError> {
        if self.partition().size_bytes() <= threshold_bytes {
            return Ok(0);
        }
        let _turn = self.write.lock().await;
        if !self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            // An open transaction's commits sit in the log before the snapshot point and
            // would be purged with it; compact once none is open.
            return Ok(0);
        }
        let snapshot_start = self.partition().high_watermark();
        let live: Vec<(String, GroupOffsets)> = self.read_map().iter().map(|(g, o)| (g.clone(), o.clone())).collect();
        for (group, offsets) in live {
            // Bounded batches: a group with many partitions is written in chunks.
            let entries: Vec<_> = offsets.into_iter().map(|(k, v)| (k, Some(v))).collect();
            for chunk in entries.chunks(1000) {
                self.write_locked(&group, chunk.to_vec()).await?;
            }
        }
        let purged = self.partition().purge_before_offset(snapshot_start).await?;
        info!(
            purged,
            size = self.partition().size_bytes(),
            "compacted {OFFSETS_TOPIC}"
        );
        Ok(u64::from(purged))
    }

    /// TxnOffsetCommit: logs the offsets as part of `producer`'s (id, epoch) transaction;
    /// they take effect when its COMMIT marker is written here ([`OffsetStore::write_marker`]).
    pub async fn commit_transactional(
        &self,
        group: &str,
        producer: (i64, i16),
        offsets: Vec<((String, i32), CommittedOffset)>,
    ) -> Result<(), PartitionError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let _turn = self.write.lock().await;
        let now = keel_log::disk::now_ms();
        let recs: Vec<NewRecord> = offsets
            .iter()
            .map(|((topic, part), c)| NewRecord {
                key: Some(encode_key(group, topic, *part)),
                value: Some(encode_value(c)),
                timestamp: now,
            })
            .collect();
        let batch = keel_proto::batch::encode_transactional_batch(&recs, producer)?;
        let batches = keel_proto::batch::split_batches(&batch)?;
        self.partition().append(batches, true).await?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let list = pending.entry(producer.0).or_default();
        for (key, c) in offsets {
            // A later commit of the same partition in the transaction replaces the earlier
            // (and keeps what a transaction holds bounded by the partitions it commits).
            list.retain(|(g, k, _)| !(g == group && *k == key));
            list.push((group.to_string(), key, c));
        }
        Ok(())
    }

    /// Writes a transaction marker to the offsets partition and applies (COMMIT) or drops
    /// (ABORT) the producer's transactional commits.
    pub async fn write_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<(), PartitionError> {
        let _turn = self.write.lock().await;
        self.partition()
            .write_marker(producer_id, epoch, commit, coordinator_epoch)
            .await?;
        let done = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&producer_id)
            .unwrap_or_default();
        if commit {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            for (group, key, c) in done {
                apply_record(&mut map, group, key, Some(c));
            }
        }
        Ok(())
    }

    /// Whether an open transaction has committed an offset for this partition of `group`
    /// (OffsetFetch with `require_stable` waits for it).
    pub fn has_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .any(|(g, (t, p), _)| g == group && t == topic && *p == partition)
    }

    pub async fn commit(
        &self,
        group: &str,
        offsets: Vec<((String, i32), CommittedOffset)>,
    ) -> Result<(), PartitionError> {
        self.write(group, offsets.into_iter().map(|(k, v)| (k, Some(v))).collect())
            .await
    }

    pub async fn delete(&self, group: &str, keys: Vec<(String, i32)>) -> Result<(), PartitionError> {
        let present: Vec<_> = {
            let map = self.read_map();
            keys.into_iter()
                .filter(|k| map.get(group).map(|g| g.contains_key(k)).unwrap_or(false))
                .collect()
        };
        self.write(group, present.into_iter().map(|k| (k, None)).collect())
            .await
    }

    pub async fn delete_group(&self, group: &str) -> Result<(), PartitionError> {
        let keys: Vec<_> = self
            .read_map()
            .get(group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        self.delete(group, keys).await
    }

    /// Removes every group's offsets for a deleted topic.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), PartitionError> {
        let per_group: Vec<(String, Vec<(String, i32)>)> = self
            .read_map()
            .iter()
            .map(|(g, offs)| {
                (
                    g.clone(),
                    offs.keys().filter(|(t, _)| t == topic).cloned().collect::<Vec<_>>(),
                )
            })
            .filter(|(_, keys)| !keys.is_empty())
            .collect();
        for (group, keys) in per_group {
            self.delete(&group, keys).await?;
        }
        Ok(())
    }

    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.read_map()
            .get(group)
            .and_then(|g| g.get(&(topic.to_string(), partition)).cloned())
    }

    pub fn group_offsets(&self, group: &str) -> GroupOffsets {
        self.read_map().get(group).cloned().unwrap_or_default()
    }

    pub fn groups(&self) -> Vec<String> {
        self.read_map().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and values round-trip, null metadata included; garbage decodes to None.
    #[test]
    fn record_encoding_round_trips() {
        let k = encode_key("grp", "orders", 7);
        assert_eq!(decode_key(k), Some(("grp".into(), "orders".into(), 7)));
        for metadata in [None, Some("meta ✓".to_string()), Some(String::new())] {
            let c = CommittedOffset {
                offset: 42,
                leader_epoch: 3,
                metadata,
                commit_ms: 99,
            };
            assert_eq!(decode_value(encode_value(&c)), Some(c));
        }
        assert_eq!(decode_key(Bytes::from_static(b"\x00\x01\x00\x09ab")), None);
        assert_eq!(decode_value(Bytes::from_static(b"\x00\x01\x00")), None);
    }
}
