//! ElectLeaders (KIP-183, KIP-460): preferred leader election, as
//! `kafka-leader-election --election-type preferred` and admin clients' `electLeaders` ask
//! for it. The first replica of a partition's assignment is its preferred leader; the node
//! holding it stands for election in the partition's Raft group (this node itself, or
//! another over the node transport's [`ELECT_ROUTE`]), and the answer comes once it leads.
//! Raft never elects a replica that lacks committed entries, so an unclean election is
//! never performed: it answers ELECTION_NOT_NEEDED where there is a leader and
//! ELIGIBLE_LEADERS_NOT_AVAILABLE where there is none.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

use super::s;
use crate::Broker;

/// The node-to-node route asking a node to make its replica the leader.
pub const ELECT_ROUTE: &str = "partition/elect";

const PREFERRED: i8 = 0;

#[derive(Serialize, Deserialize)]
struct ElectRequest {
    topic: String,
    partition: i32,
    timeout_ms: u64,
}

/// Stands this node's replica for election if it is the preferred one; waits (up to the
/// timeout) for it to lead. Returns a Kafka error code.
async fn elect_here(b: &Broker, req: &ElectRequest) -> i16 {
    let Some(part) = b.topics.get(&req.topic).and_then(|t| t.partition(req.partition)) else {
        return ResponseError::UnknownTopicOrPartition.code();
    };
    if part.preferred_leader() != Some(part.replica_id()) {
        return ResponseError::PreferredLeaderNotAvailable.code();
    }
    if part.is_leader() {
        return ResponseError::ElectionNotNeeded.code();
    }
    part.group().elect().await;
    let me = part.replica_id();
    let mut rx = part.group().raft.metrics();
    let won = tokio::time::timeout(
        Duration::from_millis(req.timeout_ms),
        rx.wait_for(|m| m.current_leader == Some(me)),
    )
    .await;
    match won {
        Ok(Ok(_)) => 0,
        _ => ResponseError::PreferredLeaderNotAvailable.code(),
    }
}

/// Serves [`ELECT_ROUTE`].
pub async fn handle_route(b: &Arc<Broker>, body: &[u8]) -> Result<Bytes, String> {
    let req: ElectRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let code = elect_here(b, &req).await;
    Ok(Bytes::copy_from_slice(&code.to_be_bytes()))
}

/// The leader of each partition of `topic` as Metadata reports it (-1: none), once per
/// topic rather than per partition.
fn leaders(b: &Broker, topic: &str) -> Option<(Arc<crate::cluster::topics::Topic>, Vec<i32>)> {
    let t = b.topics.get(topic)?;
    let mut leaders = vec![-1; t.meta().partitions.max(0) as usize];
    for p in super::metadata::topic_entry(b, &t, false).partitions {
        if let Some(slot) = leaders.get_mut(p.partition_index as usize) {
            *slot = p.leader_id.0;
        }
    }
    Some((t, leaders))
}

async fn elect(
    b: &Arc<Broker>,
    topic: &str,
    known: Option<&(Arc<crate::cluster::topics::Topic>, Vec<i32>)>,
    partition: i32,
    election_type: i8,
    timeout_ms: u64,
) -> i16 {
    let Some((t, leaders)) = known else {
        return ResponseError::UnknownTopicOrPartition.code();
    };
    let meta = t.meta();
    let Some(&leader) = usize::try_from(partition).ok().and_then(|i| leaders.get(i)) else {
        return ResponseError::UnknownTopicOrPartition.code();
    };
    if election_type != PREFERRED {
        return if leader >= 0 {
            ResponseError::ElectionNotNeeded.code()
        } else {
            ResponseError::EligibleLeadersNotAvailable.code()
        };
    }
    let preferred = match meta.replicas.get(partition as usize).and_then(|r| r.first()) {
        Some(n) => *n,
        None => b.config.node_id as u64,
    };
    if leader == preferred as i32 {
        return ResponseError::ElectionNotNeeded.code();
    }
    let req = ElectRequest {
        topic: topic.to_string(),
        partition,
        timeout_ms,
    };
    if preferred == b.config.node_id as u64 {
        return elect_here(b, &req).await;
    }
    if !b.controller.transport.is_alive(preferred) {
        return ResponseError::PreferredLeaderNotAvailable.code();
    }
    let Ok(body) = serde_json::to_vec(&req) else {
        return ResponseError::UnknownServerError.code();
    };
    match b
        .controller
        .transport
        .call_app(preferred, ELECT_ROUTE, &body, Duration::from_millis(timeout_ms + 1000))
        .await
    {
        Ok(r) if r.len() == 2 => i16::from_be_bytes([r[0], r[1]]),
        _ => ResponseError::PreferredLeaderNotAvailable.code(),
    }
}

pub async fn handle(
    b: &Arc<Broker>,
    req: ElectLeadersRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> ElectLeadersResponse {
    let timeout_ms = req.timeout_ms.clamp(1000, 60_000) as u64;
    // No list: every partition of every topic, reporting only those where an election
    // was tried (as Kafka's controller does).
    let all = req.topic_partitions.is_none();
    let wanted: Vec<(String, Vec<i32>)> = match req.topic_partitions {
        Some(tps) => tps.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect(),
        None => b
            .topics
            .list()
            .into_iter()
            .map(|t| {
                let m = t.meta();
                (m.name.clone(), (0..m.partitions).collect())
            })
            .collect(),
    };
    let mut r = ElectLeadersResponse::default();
    if !b.authorize_cluster(who, crate::acl::op::ALTER) {
        r.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    for (topic, partitions) in wanted {
        let mut tr = ReplicaElectionResult::default();
        tr.topic = TopicName(s(topic.clone()));
        let known = leaders(b, &topic);
        for p in partitions {
            let code = elect(b, &topic, known.as_ref(), p, req.election_type, timeout_ms).await;
            if all && code == ResponseError::ElectionNotNeeded.code() {
                continue;
            }
            let mut pr = PartitionResult::default();
            pr.partition_id = p;
            pr.error_code = code;
            if code != 0 {
                pr.error_message = ResponseError::try_from_code(code).map(|e| s(e.to_string()));
            }
            tr.partition_result.push(pr);
        }
        if !tr.partition_result.is_empty() || !all {
            r.replica_election_results.push(tr);
        }
    }
    b.audit
        .change(who, "ElectLeaders", "CLUSTER", crate::acl::CLUSTER_NAME, r.error_code);
    r
}
