//! OffsetFetch: committed offsets of a group (all of them when no topics are named). With
//! `require_stable` (v7+, KIP-447), a partition whose offset an open transaction has
//! committed answers UNSTABLE_OFFSET_COMMIT until the transaction ends; the client retries.

use std::sync::Arc;

use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::s;
use crate::Broker;

const UNSTABLE_OFFSET_COMMIT: i16 = 88;

pub async fn handle(
    b: &Arc<Broker>,
    req: OffsetFetchRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> OffsetFetchResponse {
    let group = req.group_id.0.as_str();
    let mut r = OffsetFetchResponse::default();
    if !b.authorize(who, crate::acl::op::DESCRIBE, crate::acl::resource::GROUP, group) {
        r.error_code = kafka_protocol::ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    let not_coordinator = b.coordinator_error();
    if let (Some(code), true) = (not_coordinator, v >= 2) {
        r.error_code = code;
        return r;
    }
    let wanted: Vec<(String, Vec<i32>)> = match &req.topics {
        Some(topics) => topics
            .iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
            for (topic, part) in b.groups.offsets.group_offsets(group).into_keys() {
                by_topic.entry(topic).or_default().push(part);
            }
            by_topic.into_iter().collect()
        }
    };
    let all_topics = req.topics.is_none();
    for (topic, parts) in wanted {
        // Asked for all: topics it may not describe are left out; asked by name: refused.
        let describable = b.authorize(who, crate::acl::op::DESCRIBE, crate::acl::resource::TOPIC, &topic);
        if !describable && all_topics {
            continue;
        }
        let mut tr = OffsetFetchResponseTopic::default();
        tr.name = TopicName(s(topic.clone()));
        for part in parts {
            let mut pr = OffsetFetchResponsePartition::default();
            pr.partition_index = part;
            if !describable {
                pr.error_code = kafka_protocol::ResponseError::TopicAuthorizationFailed.code();
                pr.committed_offset = -1;
                tr.partitions.push(pr);
                continue;
            }
            if let Some(code) = not_coordinator {
                pr.error_code = code;
                pr.committed_offset = -1;
                tr.partitions.push(pr);
                continue;
            }
            if req.require_stable && b.groups.offsets.has_pending(group, &topic, part) {
                pr.error_code = UNSTABLE_OFFSET_COMMIT;
                pr.committed_offset = -1;
                tr.partitions.push(pr);
                continue;
            }
            match b.groups.offsets.fetch(group, &topic, part) {
                Some(c) => {
                    pr.committed_offset = c.offset;
                    if v >= 5 {
                        pr.committed_leader_epoch = c.leader_epoch;
                    }
                    pr.metadata = Some(s(c.metadata.unwrap_or_default()));
                }
                None => {
                    pr.committed_offset = -1;
                    pr.committed_leader_epoch = -1;
                    pr.metadata = Some(s(""));
                }
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}
