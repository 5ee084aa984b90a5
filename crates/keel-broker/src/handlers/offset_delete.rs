//! OffsetDelete: removes committed offsets of partitions the group no longer consumes.

use std::sync::Arc;

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: OffsetDeleteRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let mut r = OffsetDeleteResponse::default();
    if !b.authorize(who, crate::acl::op::DELETE, crate::acl::resource::GROUP, &group) {
        r.error_code = ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    if let Some(code) = b.coordinator_error() {
        r.error_code = code;
        return r;
    }
    if b.groups.describe(&group).await.is_none() {
        r.error_code = ResponseError::GroupIdNotFound.code();
        return r;
    }
    // Offsets of partitions the group is consuming right now are kept (Kafka's
    // GROUP_SUBSCRIBED_TO_TOPIC); a group with members is treated as consuming all it has.
    let active = b.groups.is_active(&group).await;
    let mut keys = Vec::new();
    for t in &req.topics {
        let mut tr = OffsetDeleteResponseTopic::default();
        tr.name = t.name.clone();
        let readable = b.authorize(
            who,
            crate::acl::op::READ,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        );
        for p in &t.partitions {
            let mut pr = OffsetDeleteResponsePartition::default();
            pr.partition_index = p.partition_index;
            if !readable {
                pr.error_code = ResponseError::TopicAuthorizationFailed.code();
            } else if active {
                pr.error_code = ResponseError::GroupSubscribedToTopic.code();
            } else {
                keys.push((t.name.0.to_string(), p.partition_index));
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    if let Err(e) = b.groups.offsets.delete(&group, keys).await {
        tracing::warn!(group = %group, error = %e, "offset delete could not be written");
        r.error_code = ResponseError::CoordinatorNotAvailable.code();
    }
    b.audit.change(who, "OffsetDelete", "GROUP", &group, r.error_code);
    r
}
