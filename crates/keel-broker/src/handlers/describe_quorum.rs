//! DescribeQuorum (KIP-595, KIP-853): the controller's Raft group as Kafka 4's
//! `kafka-metadata-quorum describe --status/--replication` shows a KRaft quorum. Keel's
//! controller is the Raft group that holds the cluster's metadata; it answers as the
//! partition `__cluster_metadata`-0, its leader epoch the group's term and its offsets the
//! Raft log's indexes. Replication progress is known on the controller's leader, so
//! another node asks the leader over the node transport ([`QUORUM_ROUTE`]), as Kafka's
//! brokers forward the request to the active controller.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_quorum_response::{PartitionData, ReplicaState, TopicData};
use kafka_protocol::messages::{BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName};
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

use super::s;
use crate::Broker;

const METADATA_TOPIC: &str = "__cluster_metadata";

/// The node-to-node route asking the controller's leader for its view of the quorum.
pub const QUORUM_ROUTE: &str = "controller/quorum";

/// One replica of the controller group: node id, log end offset (-1 unknown) and when it
/// was last seen caught up (ms since the epoch, -1 unknown).
#[derive(Serialize, Deserialize)]
struct Replica {
    id: u64,
    log_end: i64,
    caught_up_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Quorum {
    leader: i32,
    epoch: i32,
    high_watermark: i64,
    voters: Vec<Replica>,
    observers: Vec<Replica>,
}

/// This node's view of the controller group.
fn local(b: &Broker) -> Quorum {
    let m = b.controller.group.metrics();
    let me = b.controller.node_id;
    let last = m.last_log_index.map(|i| i as i64).unwrap_or(-1);
    let now_ms = keel_log::disk::now_ms();
    let replica = |id: u64| {
        let mut r = Replica {
            id,
            log_end: -1,
            caught_up_ms: -1,
        };
        if id == me {
            r.log_end = last + 1;
            if m.current_leader == Some(me) {
                r.caught_up_ms = now_ms;
            }
        } else if let Some(matched) = m.replication.as_ref().and_then(|rep| rep.get(&id)) {
            let at = matched.map(|l| l.index as i64).unwrap_or(-1);
            r.log_end = at + 1;
            if at == last {
                r.caught_up_ms = now_ms;
            }
        }
        r
    };
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    Quorum {
        leader: m.current_leader.map(|l| l as i32).unwrap_or(-1),
        epoch: m.current_term.min(i32::MAX as u64) as i32,
        high_watermark: m.last_applied.map(|l| l.index as i64 + 1).unwrap_or(0),
        voters: voters.iter().map(|id| replica(*id)).collect(),
        observers: b
            .controller
            .meta()
            .nodes
            .keys()
            .filter(|n| !voters.contains(n))
            .map(|n| replica(*n))
            .collect(),
    }
}

/// Serves [`QUORUM_ROUTE`].
pub fn handle_route(b: &Broker) -> Result<Bytes, String> {
    serde_json::to_vec(&local(b))
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

async fn quorum(b: &Broker) -> Quorum {
    let here = local(b);
    let me = b.controller.node_id as i32;
    if here.leader < 0 || here.leader == me {
        return here;
    }
    match b
        .controller
        .transport
        .call_app(here.leader as u64, QUORUM_ROUTE, &[], Duration::from_secs(5))
        .await
    {
        Ok(body) => serde_json::from_slice(&body).unwrap_or(here),
        Err(_) => here,
    }
}

fn state(r: &Replica) -> ReplicaState {
    let mut s = ReplicaState::default();
    s.replica_id = BrokerId(r.id as i32);
    s.log_end_offset = r.log_end;
    s.last_fetch_timestamp = r.caught_up_ms;
    s.last_caught_up_timestamp = r.caught_up_ms;
    s
}

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeQuorumRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeQuorumResponse {
    let mut r = DescribeQuorumResponse::default();
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        r.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    let asked = req
        .topics
        .iter()
        .any(|t| t.topic_name.0.as_str() == METADATA_TOPIC && t.partitions.iter().any(|p| p.partition_index == 0));
    if !asked {
        r.error_code = ResponseError::UnknownTopicOrPartition.code();
        return r;
    }
    let q = quorum(b).await;
    let mut part = PartitionData::default();
    part.partition_index = 0;
    // During an election, or while a leader that left the voters hands over, there is no
    // leader among the voters to describe: a retriable error, which Kafka's admin client
    // retries (`kafka-metadata-quorum` expects the leader among the voters).
    if q.leader < 0 || !q.voters.iter().any(|v| v.id as i32 == q.leader) {
        part.error_code = ResponseError::NotLeaderOrFollower.code();
        part.error_message = Some(s("the controller has no leader among its voters right now"));
    }
    part.leader_id = BrokerId(q.leader);
    part.leader_epoch = q.epoch;
    part.high_watermark = q.high_watermark;
    part.current_voters = q.voters.iter().map(state).collect();
    part.observers = q.observers.iter().map(state).collect();
    let mut topic = TopicData::default();
    topic.topic_name = TopicName(s(METADATA_TOPIC));
    topic.partitions = vec![part];
    r.topics = vec![topic];
    r
}
