//! Fetch: committed records from many partitions, with long polling.
//!
//! Budgets: `max_bytes` for the response (capped by `fetch_bytes_max`) and
//! `partition_max_bytes` per partition; the first non-empty partition always returns at
//! least one whole batch so a batch larger than the limits still makes progress (KIP-74).
//! The request waits up to `max_wait_ms` (capped by `fetch_wait_ms_max`) until `min_bytes`
//! are available or a partition reports an error. A `read_committed` fetch reads only below
//! each partition's last stable offset and names the aborted transactions it overlaps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use crate::error::PartitionError;
use crate::metrics::ErrorLabels;
use crate::Broker;

/// `isolation_level` of a consumer that reads only committed transactions.
const READ_COMMITTED: i8 = 1;

fn partition_error(index: i32, code: i16, hw: i64, start: i64) -> PartitionData {
    let mut p = PartitionData::default();
    p.partition_index = index;
    p.error_code = code;
    p.high_watermark = hw;
    p.last_stable_offset = hw;
    p.log_start_offset = start;
    p.records = Some(Bytes::new());
    p
}

/// One pass over the requested partitions. Returns the response, its record bytes and
/// whether it must be answered at once (a partition reported an error, or sent the consumer
/// to another replica).
fn read_once(
    b: &Broker,
    req: &FetchRequest,
    v: i16,
    max_bytes: usize,
    denied: &std::collections::HashSet<&str>,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    // Fetch v11 brought KIP-392: consumers name their rack, leaders may name a replica to
    // read from, and followers serve the consumers sent to them.
    let follower_reads = v >= FOLLOWER_FETCH_MIN_VERSION && req.replica_id.0 < 0 && req.replica_state.replica_id.0 < 0;
    let client_rack = req.rack_id.as_str();
    let mut budget = max_bytes;
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(req.topics.len());
    let committed_only = req.isolation_level == READ_COMMITTED;
    for t in &req.topics {
        let mut tr = FetchableTopicResponse::default();
        tr.topic = t.topic.clone();
        tr.topic_id = t.topic_id;
        if denied.contains(t.topic.0.as_str()) {
            any_error = true;
            for fp in &t.partitions {
                tr.partitions.push(partition_error(
                    fp.partition,
                    ResponseError::TopicAuthorizationFailed.code(),
                    -1,
                    -1,
                ));
            }
            out.push(tr);
            continue;
        }
        let topic = b.topics.get(t.topic.0.as_str());
        for fp in &t.partitions {
            let Some(part) = topic.as_ref().and_then(|topic| topic.partition(fp.partition)) else {
                any_error = true;
                tr.partitions.push(partition_error(
                    fp.partition,
                    super::not_hosted(topic.as_ref(), fp.partition),
                    -1,
                    -1,
                ));
                continue;
            };
            if follower_reads && !client_rack.is_empty() && b.config.fetch_from_follower {
                if let Some(node) = preferred_replica(b, &part, client_rack) {
                    // The consumer is sent to a replica in its rack: no records from here.
                    let mut p = partition_error(fp.partition, 0, part.high_watermark(), part.log_start_offset());
                    p.last_stable_offset = part.last_stable_offset();
                    p.preferred_read_replica = kafka_protocol::messages::BrokerId(node);
                    tr.partitions.push(p);
                    b.metrics.fetch_redirects.inc();
                    // Answered at once, not after the long poll.
                    any_error = true;
                    continue;
                }
            }
            // Once the response budget is spent, remaining partitions report their
            // watermarks without records.
            let want = (fp.partition_max_bytes.max(0) as usize).min(budget);
            // Only the first batch of the response may exceed the limits (KIP-74); after
            // that the remaining budget is a hard limit, or the response outgrows what
            // the client agreed to receive.
            let result = if want == 0 && total > 0 {
                Ok(None)
            } else {
                part.read_as(fp.fetch_offset, want.max(1), total == 0, committed_only, follower_reads)
                    .map(Some)
            };
            match result {
                Ok(read) => {
                    let mut p = PartitionData::default();
                    p.partition_index = fp.partition;
                    p.high_watermark = part.high_watermark();
                    p.last_stable_offset = part.last_stable_offset();
                    p.log_start_offset = part.log_start_offset();
                    p.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
                    if committed_only {
                        p.aborted_transactions = Some(
                            read.as_ref()
                                .map(|r| r.aborted.as_slice())
                                .unwrap_or_default()
                                .iter()
                                .map(|a| {
                                    let mut t = AbortedTransaction::default();
                                    t.producer_id = ProducerId(a.producer_id);
                                    t.first_offset = a.first_offset;
                                    t
                                })
                                .collect(),
                        );
                    }
                    let records = read.map(|r| r.records).unwrap_or_default();
                    if follower_reads && !records.is_empty() && !part.is_leader() {
                        b.metrics.follower_fetched_bytes.inc_by(records.len() as u64);
                    }
                    budget = budget.saturating_sub(records.len());
                    total += records.len();
                    p.records = Some(records);
                    tr.partitions.push(p);
                }
                Err(e) => {
                    any_error = true;
                    let (hw, start) = (part.high_watermark(), part.log_start_offset());
                    if !matches!(e, PartitionError::OffsetOutOfRange { .. } | PartitionError::NotLeader) {
                        tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "fetch failed");
                    }
                    b.metrics
                        .request_errors
                        .get_or_create(&ErrorLabels {
                            api: "Fetch".into(),
                            code: e.code(),
                        })
                        .inc();
                    tr.partitions.push(partition_error(fp.partition, e.code(), hw, start));
                }
            }
        }
        out.push(tr);
    }
    (out, total, any_error)
}

/// The first Fetch version of KIP-392 (rack id, preferred read replica).
const FOLLOWER_FETCH_MIN_VERSION: i16 = 11;

/// For a consumer in `rack` fetching from this leader: an in-sync, reachable follower in
/// that rack to read from instead (the first by node id), unless this node is in it.
fn preferred_replica(b: &Broker, part: &crate::cluster::partition::Partition, rack: &str) -> Option<i32> {
    if !part.is_leader() || b.config.rack.as_deref() == Some(rack) {
        return None;
    }
    let in_sync = super::metadata::partition_view(part).in_sync?;
    let me = b.config.node_id as u64;
    let mut candidates: Vec<u64> = in_sync
        .into_iter()
        .filter(|n| *n != me && b.controller.transport.is_alive(*n))
        .filter(|n| super::metadata::rack_of(b, *n as i32).as_deref() == Some(rack))
        .collect();
    candidates.sort_unstable();
    candidates.first().map(|n| *n as i32)
}

pub async fn handle(b: &Arc<Broker>, req: FetchRequest, v: i16, who: &crate::handlers::sasl::Session) -> FetchResponse {
    let max_wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(b.config.fetch_wait_ms_max));
    let max_bytes = (req.max_bytes.max(0) as usize).min(b.config.fetch_bytes_max);
    let min_bytes = req.min_bytes.max(0) as usize;
    let deadline = Instant::now() + max_wait;
    let mut changed = b.data_changed.subscribe();
    // Topics this consumer may not READ: answered TOPIC_AUTHORIZATION_FAILED.
    let denied: std::collections::HashSet<&str> = req
        .topics
        .iter()
        .map(|t| t.topic.0.as_str())
        .filter(|t| !b.authorize(who, crate::acl::op::READ, crate::acl::resource::TOPIC, t))
        .collect();
    let responses = loop {
        changed.borrow_and_update();
        let (responses, total, any_error) = read_once(b, &req, v, max_bytes, &denied);
        if total >= min_bytes.max(1) || any_error || Instant::now() >= deadline {
            b.metrics.fetched_bytes.inc_by(total as u64);
            break responses;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break responses },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    let mut r = FetchResponse::default();
    r.responses = responses;
    r
}
