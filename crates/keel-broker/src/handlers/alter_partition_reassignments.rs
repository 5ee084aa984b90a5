//! AlterPartitionReassignments: move partitions to other nodes (a list of target replicas,
//! the first the preferred leader), or cancel a move (no list). Any node takes the request
//! and commits it through the controller; each partition's leader carries out its move
//! (see [`crate::cluster::topics::Topics::reassign`]).

use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

/// Most partitions one request may move.
const PARTITIONS_MAX: usize = 10_000;

pub async fn handle(
    b: &Arc<Broker>,
    req: AlterPartitionReassignmentsRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> AlterPartitionReassignmentsResponse {
    let mut r = AlterPartitionReassignmentsResponse::default();
    // v0 has no such field: its requests may always change the replication factor.
    let allow_rf_change = v == 0 || req.allow_replication_factor_change;
    r.allow_replication_factor_change = allow_rf_change;
    if !b.authorize_cluster(who, crate::acl::op::ALTER) {
        r.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    let count: usize = req.topics.iter().map(|t| t.partitions.len()).sum();
    if count > PARTITIONS_MAX {
        r.error_code = ResponseError::PolicyViolation.code();
        r.error_message = Some(s(format!("at most {PARTITIONS_MAX} partitions per request")));
        return r;
    }
    for t in req.topics {
        let mut topic = ReassignableTopicResponse::default();
        topic.name = t.name.clone();
        for p in t.partitions {
            let mut out = ReassignablePartitionResponse::default();
            out.partition_index = p.partition_index;
            let target = p.replicas.map(|ids| ids.iter().map(|n| n.0).collect::<Vec<i32>>());
            let result = match target {
                Some(ids) if ids.iter().any(|n| *n < 0) => Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    "node ids are not negative".to_string(),
                )),
                target => crate::cluster::moves::reassign(
                    &b.topics,
                    t.name.0.as_str(),
                    p.partition_index,
                    target.map(|ids| ids.into_iter().map(|n| n as u64).collect()),
                    allow_rf_change,
                )
                .await
                .map_err(|e| (e.code, e.message)),
            };
            if let Err((code, message)) = result {
                out.error_code = code;
                out.error_message = Some(s(message));
            }
            topic.partitions.push(out);
        }
        r.responses.push(topic);
    }
    for t in &r.responses {
        for p in &t.partitions {
            let resource = format!("{}-{}", t.name.0.as_str(), p.partition_index);
            let code = if r.error_code != 0 { r.error_code } else { p.error_code };
            b.audit
                .change(who, "AlterPartitionReassignments", "TOPIC", &resource, code);
        }
    }
    if r.responses.is_empty() && r.error_code != 0 {
        b.audit.change(
            who,
            "AlterPartitionReassignments",
            "CLUSTER",
            crate::acl::CLUSTER_NAME,
            r.error_code,
        );
    }
    r
}
