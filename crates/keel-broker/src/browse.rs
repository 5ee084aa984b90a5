//! Reading a partition's records for people: the admin API's
//! `/api/v1/topics/{name}/partitions/{p}/records` and the console's message browser.
//!
//! A read starts at an offset, at the first record at or after a timestamp, or (neither
//! given) at the last `limit` records, and returns at most `limit` committed records with
//! their keys, values and headers (base64, so any bytes survive JSON; the console shows
//! them as text, JSON or hex). Control batches (transaction markers) are not records and
//! are skipped; records of aborted transactions are shown, as a `read_uncommitted`
//! consumer would see them. Only the partition's leader serves reads, so a node that does
//! not lead the partition asks the leader's node over the node transport
//! ([`BROWSE_ROUTE`]) and passes its answer on.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Broker;

/// The node transport's route for a read asked of the partition leader's node.
pub const BROWSE_ROUTE: &str = "records/browse";

/// Most records one read returns.
pub const LIMIT_MAX: usize = 500;
/// Most bytes of batches one read takes from the log.
const BYTES_MAX: usize = 4 << 20;
/// Largest a compressed batch may inflate to while it is decoded.
const INFLATED_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub topic: String,
    pub partition: i32,
    pub offset: Option<i64>,
    pub timestamp: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub topic: String,
    pub partition: i32,
    /// The node that read the records (the partition's leader).
    pub node: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// Where the read started.
    pub from: i64,
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    /// Base64; absent for a null key.
    pub key: Option<String>,
    /// Base64; absent for a null value (a tombstone).
    pub value: Option<String>,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub key: String,
    /// Base64; absent for a null value.
    pub value: Option<String>,
}

/// Why a read has no records to show: an HTTP status and a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// Reads records for `req` here when this node leads the partition, or from its leader.
pub async fn browse(b: &Arc<Broker>, mut req: Request) -> Result<Page, Refusal> {
    req.limit = req.limit.clamp(1, LIMIT_MAX);
    let Some(topic) = b.topics.get(&req.topic) else {
        return Err(Refusal::new(404, "no such topic"));
    };
    let leader = match topic.partition(req.partition) {
        Some(p) if p.is_leader() => return read_here(b, &req),
        Some(p) => p.group().leader().map(keel_raft::node_of),
        None => {
            let entry = crate::handlers::metadata::topic_entry(b, &topic, false);
            let Some(p) = entry.partitions.iter().find(|p| p.partition_index == req.partition) else {
                return Err(Refusal::new(404, "no such partition"));
            };
            (p.leader_id.0 >= 0).then_some(p.leader_id.0 as u64)
        }
    };
    let Some(leader) = leader.filter(|l| *l != b.config.node_id as u64) else {
        return Err(Refusal::new(503, "the partition has no leader right now"));
    };
    let body = serde_json::to_vec(&req).map_err(|e| Refusal::new(500, e.to_string()))?;
    let answer = b
        .controller
        .transport
        .call_app(leader, BROWSE_ROUTE, &body, Duration::from_secs(10))
        .await
        .map_err(|e| Refusal::new(502, format!("the leader, node {leader}, did not answer: {e}")))?;
    let answer: Result<Page, Refusal> =
        serde_json::from_slice(&answer).map_err(|e| Refusal::new(502, format!("the leader's answer: {e}")))?;
    answer
}

/// Serves [`BROWSE_ROUTE`]: the read, done here (this node is asked as the leader; it does
/// not forward again).
pub fn handle_route(b: &Arc<Broker>, body: &[u8]) -> Result<Bytes, String> {
    let req: Request = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let answer = match b.topics.get(&req.topic).and_then(|t| t.partition(req.partition)) {
        Some(_) => read_here(
            b,
            &Request {
                limit: req.limit.clamp(1, LIMIT_MAX),
                ..req
            },
        ),
        None => Err(Refusal::new(404, "the partition is not hosted on the node asked")),
    };
    serde_json::to_vec(&answer).map(Bytes::from).map_err(|e| e.to_string())
}

fn read_here(b: &Arc<Broker>, req: &Request) -> Result<Page, Refusal> {
    let p = b
        .topics
        .get(&req.topic)
        .and_then(|t| t.partition(req.partition))
        .ok_or_else(|| Refusal::new(404, "no such partition"))?;
    let not_leader = |_| Refusal::new(503, "this node stopped leading the partition; try again");
    let (start, hw) = (p.log_start_offset(), p.high_watermark());
    let from = match (req.offset, req.timestamp) {
        (Some(o), _) => o,
        (None, Some(ts)) => p
            .offset_for_timestamp(ts)
            .map_err(not_leader)?
            .map(|(o, _)| o)
            .unwrap_or(hw),
        (None, None) => hw.saturating_sub(req.limit as i64),
    }
    .clamp(start, hw);
    let mut records = Vec::new();
    let mut at = from;
    while records.len() < req.limit && at < hw {
        let read = p.read(at, BYTES_MAX).map_err(not_leader)?;
        if read.records.is_empty() {
            break;
        }
        let mut next = at;
        for batch in keel_proto::batch::split_batches(&read.records).map_err(|e| Refusal::new(500, e.to_string()))? {
            let (h, bytes) = batch;
            next = next.max(h.last_offset() + 1);
            if h.is_control() {
                continue;
            }
            let decoded = keel_proto::batch::decode_records(&bytes, INFLATED_MAX)
                .map_err(|e| Refusal::new(500, format!("a batch at offset {}: {e}", h.base_offset)))?;
            for r in decoded.into_iter().filter(|r| r.offset >= from && r.offset < hw) {
                if records.len() == req.limit {
                    break;
                }
                records.push(Record {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.as_deref().map(b64),
                    value: r.value.as_deref().map(b64),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| Header {
                            key: String::from_utf8_lossy(k).into_owned(),
                            value: v.as_deref().map(b64),
                        })
                        .collect(),
                });
            }
        }
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(Page {
        topic: req.topic.clone(),
        partition: req.partition,
        node: b.config.node_id,
        log_start_offset: start,
        high_watermark: hw,
        from,
        records,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
