//! Metadata: this node as the only broker, and the requested topics (auto-creating them
//! when the client allows it and the broker is configured to).

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::topics::Topic;
use crate::Broker;

/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
pub const TOPIC_OPS: i32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

pub(crate) fn topic_entry(b: &Broker, t: &Topic, ops: bool) -> MetadataResponseTopic {
    let meta = t.meta();
    let node = BrokerId(b.config.node_id);
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(s(meta.name.clone())));
    out.topic_id = meta.id;
    out.is_internal = crate::is_internal_topic(&meta.name);
    out.topic_authorized_operations = if ops { TOPIC_OPS } else { i32::MIN };
    out.partitions = (0..meta.partitions)
        .map(|i| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.leader_id = node;
            p.leader_epoch = 0;
            p.replica_nodes = vec![node];
            p.isr_nodes = vec![node];
            p
        })
        .collect();
    out
}

fn error_entry(name: Option<&str>, id: uuid::Uuid, code: i16) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = name.map(|n| TopicName(s(n)));
    out.topic_id = id;
    out.error_code = code;
    out
}

pub async fn handle(b: &Arc<Broker>, req: MetadataRequest, v: i16) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(b.config.node_id);
    broker.host = s(b.advertised.0.clone());
    broker.port = b.advertised.1 as i32;
    r.brokers = vec![broker];
    r.cluster_id = Some(s(b.config.cluster_id.clone()));
    r.controller_id = BrokerId(b.config.node_id);
    r.cluster_authorized_operations = i32::MIN;
    let ops = req.include_topic_authorized_operations;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && v == 0 => None,
        Some(t) => Some(t),
    };
    let allow_create = v < 4 || req.allow_auto_topic_creation;
    match requested {
        None => {
            r.topics = b.topics.list().iter().map(|t| topic_entry(b, t, ops)).collect();
        }
        Some(wanted) => {
            for want in wanted {
                let entry = match &want.name {
                    Some(name) => {
                        let name = name.0.as_str();
                        let found = if allow_create {
                            b.topics.get_or_auto_create(name).await
                        } else {
                            b.topics.get(name).ok_or(crate::topics::AdminError {
                                code: ResponseError::UnknownTopicOrPartition.code(),
                                message: String::new(),
                            })
                        };
                        match found {
                            Ok(t) => topic_entry(b, &t, ops),
                            Err(e) => error_entry(Some(name), uuid::Uuid::nil(), e.code),
                        }
                    }
                    None => match b.topics.by_id(want.topic_id) {
                        Some(t) => topic_entry(b, &t, ops),
                        None => error_entry(None, want.topic_id, ResponseError::UnknownTopicId.code()),
                    },
                };
                r.topics.push(entry);
            }
        }
    }
    r
}
