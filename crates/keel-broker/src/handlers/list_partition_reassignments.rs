//! ListPartitionReassignments: the partition moves in progress (all, or those of the
//! partitions asked for), each with its replicas, the nodes being added and those being
//! removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: ListPartitionReassignmentsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> ListPartitionReassignmentsResponse {
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        let mut r = ListPartitionReassignmentsResponse::default();
        r.error_code = kafka_protocol::ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let ids = |v: &[u64]| v.iter().map(|n| BrokerId(*n as i32)).collect::<Vec<_>>();
    let mut topics: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for m in crate::cluster::moves::in_progress(&b.topics) {
        let asked = match &wanted {
            None => true,
            Some(w) => w.get(&m.topic).map(|ps| ps.contains(&m.partition)).unwrap_or(false),
        };
        if !asked {
            continue;
        }
        let mut p = OngoingPartitionReassignment::default();
        p.partition_index = m.partition;
        p.replicas = ids(&m.replicas);
        p.adding_replicas = ids(&m.adding);
        p.removing_replicas = ids(&m.removing);
        topics.entry(m.topic).or_default().push(p);
    }
    let mut r = ListPartitionReassignmentsResponse::default();
    r.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = OngoingTopicReassignment::default();
            t.name = TopicName(s(name));
            t.partitions = partitions;
            t
        })
        .collect();
    r
}
