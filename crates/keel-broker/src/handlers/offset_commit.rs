//! OffsetCommit: fenced by member and generation, then written durably to
//! `__consumer_offsets` before it is acknowledged.

use std::sync::Arc;

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use crate::group::offsets::{CommittedOffset, METADATA_BYTES_MAX};
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: OffsetCommitRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let fence = if !b.authorize(who, crate::acl::op::READ, crate::acl::resource::GROUP, &group) {
        ResponseError::GroupAuthorizationFailed.code()
    } else if let Some(code) = b.coordinator_error() {
        code
    } else if group.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        let instance = req.group_instance_id.as_ref().map(|i| i.as_str());
        b.groups
            .commit_allowed(
                &group,
                req.member_id.as_str(),
                instance,
                req.generation_id_or_member_epoch,
            )
            .await
    };
    let now = keel_log::disk::now_ms();
    // (topic index, partition index) of each accepted entry, to report a write failure.
    let mut accepted = Vec::new();
    let mut to_write = Vec::new();
    let mut r = OffsetCommitResponse::default();
    for (ti, t) in req.topics.iter().enumerate() {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        let topic = b.topics.get(t.name.0.as_str());
        let readable = fence != 0
            || b.authorize(
                who,
                crate::acl::op::READ,
                crate::acl::resource::TOPIC,
                t.name.0.as_str(),
            );
        for p in &t.partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = if fence != 0 {
                fence
            } else if !readable {
                ResponseError::TopicAuthorizationFailed.code()
            } else if topic.as_ref().and_then(|t| t.partition(p.partition_index)).is_none() {
                ResponseError::UnknownTopicOrPartition.code()
            } else if p
                .committed_metadata
                .as_ref()
                .map(|m| m.len() > METADATA_BYTES_MAX)
                .unwrap_or(false)
            {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                accepted.push((ti, tr.partitions.len()));
                to_write.push((
                    (t.name.0.to_string(), p.partition_index),
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    },
                ));
                0
            };
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    if let Err(e) = b.groups.offsets.commit(&group, to_write).await {
        tracing::warn!(group = %group, error = %e, "offset commit could not be written");
        for (ti, pi) in accepted {
            if let Some(p) = r.topics.get_mut(ti).and_then(|t| t.partitions.get_mut(pi)) {
                p.error_code = ResponseError::CoordinatorNotAvailable.code();
            }
        }
    }
    r
}
