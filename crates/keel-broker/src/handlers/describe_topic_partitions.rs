//! DescribeTopicPartitions (KIP-966): topics and their partitions as Metadata describes
//! them, in name order and paged (at most `response_partition_limit` partitions per
//! response, continued from a cursor). Kafka 4's admin clients describe topics with it.

use std::sync::Arc;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName};
use kafka_protocol::ResponseError;

use super::metadata::topic_entry;
use super::s;
use crate::Broker;

/// Kafka's default and maximum partitions per response.
const PARTITION_LIMIT: i32 = 2000;

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeTopicPartitionsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeTopicPartitionsResponse {
    let limit = match req.response_partition_limit {
        n if n > 0 => n.min(PARTITION_LIMIT),
        _ => PARTITION_LIMIT,
    } as usize;
    let all = req.topics.is_empty();
    let mut names: Vec<String> = if all {
        // Topics the principal may not describe are left out.
        b.topics
            .list()
            .iter()
            .map(|t| t.meta().name.clone())
            .filter(|n| b.authorize(who, crate::acl::op::DESCRIBE, crate::acl::resource::TOPIC, n))
            .collect()
    } else {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (from_topic, from_partition) = match &req.cursor {
        Some(c) => (Some(c.topic_name.0.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    let mut r = DescribeTopicPartitionsResponse::default();
    let mut left = limit;
    for name in names {
        let first = match &from_topic {
            Some(t) if name < *t => continue,
            Some(t) if name == *t => from_partition,
            _ => 0,
        };
        let mut out = DescribeTopicPartitionsResponseTopic::default();
        out.name = Some(TopicName(s(name.clone())));
        if !all && !b.authorize(who, crate::acl::op::DESCRIBE, crate::acl::resource::TOPIC, &name) {
            out.error_code = ResponseError::TopicAuthorizationFailed.code();
            r.topics.push(out);
            continue;
        }
        let Some(t) = b.topics.get(&name) else {
            out.error_code = ResponseError::UnknownTopicOrPartition.code();
            r.topics.push(out);
            continue;
        };
        if left == 0 {
            r.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(s(name)))
                    .with_partition_index(first),
            );
            break;
        }
        let entry = topic_entry(b, &t, true);
        out.topic_id = entry.topic_id;
        out.is_internal = entry.is_internal;
        out.topic_authorized_operations = entry.topic_authorized_operations;
        let partitions: Vec<_> = entry
            .partitions
            .into_iter()
            .filter(|p| p.partition_index >= first)
            .collect();
        let total = partitions.len();
        for p in partitions.into_iter().take(left) {
            let mut q = DescribeTopicPartitionsResponsePartition::default();
            q.error_code = p.error_code;
            q.partition_index = p.partition_index;
            q.leader_id = p.leader_id;
            q.leader_epoch = p.leader_epoch;
            q.replica_nodes = p.replica_nodes;
            q.isr_nodes = p.isr_nodes;
            q.eligible_leader_replicas = Some(Vec::new());
            q.last_known_elr = Some(Vec::new());
            q.offline_replicas = p.offline_replicas;
            out.partitions.push(q);
        }
        let taken = out.partitions.len();
        let next = out.partitions.last().map(|p| p.partition_index + 1).unwrap_or(first);
        r.topics.push(out);
        left -= taken;
        if taken < total {
            r.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(s(name)))
                    .with_partition_index(next),
            );
            break;
        }
    }
    r
}
