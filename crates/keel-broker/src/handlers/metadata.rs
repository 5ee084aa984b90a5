//! Metadata: the cluster's nodes, and the requested topics (auto-creating them when the
//! client allows it and the broker is configured to) with each partition's leader, leader
//! epoch (its Raft term), replicas and in-sync replicas as this node's replicas see them;
//! for partitions this node hosts no replica of, as their leaders report themselves.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::cluster::topics::Topic;
use crate::Broker;

/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
pub const TOPIC_OPS: i32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

pub(crate) fn topic_entry(b: &Broker, t: &Topic, ops: bool) -> MetadataResponseTopic {
    let meta = t.meta();
    let me = b.config.node_id;
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(s(meta.name.clone())));
    out.topic_id = meta.id;
    out.is_internal = crate::is_internal_topic(&meta.name);
    out.topic_authorized_operations = if ops { TOPIC_OPS } else { i32::MIN };
    out.partitions = (0..meta.partitions)
        .map(|i| {
            let replicas: Vec<BrokerId> = match meta.replicas.get(i as usize) {
                Some(r) => r.iter().map(|n| BrokerId(*n as i32)).collect(),
                None => vec![BrokerId(me)],
            };
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.replica_nodes = replicas.clone();
            let alive = |n: &u64| b.controller.transport.is_alive(*n);
            // The leader as it reports itself in its pings: for a partition not hosted
            // here, and for a local replica that knows of no live leader (it is catching
            // up, reopening, or missed the election) while the others have one.
            let reported = || {
                b.controller
                    .transport
                    .reported_leader(&crate::cluster::partition::group_name(&meta.name, i))
                    .map(|(leader, term)| PartitionView {
                        leader: Some(leader),
                        epoch: term.min(i32::MAX as u64) as i32,
                        in_sync: None,
                    })
            };
            let view = match t.partition(i) {
                Some(part) => {
                    let local = partition_view(&part);
                    if local.leader.as_ref().map(alive).unwrap_or(false) {
                        Some(local)
                    } else {
                        reported().or(Some(local))
                    }
                }
                None => reported(),
            };
            match view {
                Some(view) if view.leader.as_ref().map(alive).unwrap_or(false) => {
                    p.leader_id = BrokerId(view.leader.map(|l| l as i32).unwrap_or(-1));
                    p.leader_epoch = view.epoch;
                    p.isr_nodes = match view.in_sync {
                        Some(isr) => isr.into_iter().filter(alive).map(|n| BrokerId(n as i32)).collect(),
                        None => replicas
                            .into_iter()
                            .filter(|n| b.controller.transport.is_alive(n.0.max(0) as u64))
                            .collect(),
                    };
                }
                _ => {
                    p.error_code = ResponseError::LeaderNotAvailable.code();
                    p.leader_id = BrokerId(-1);
                    p.leader_epoch = -1;
                    p.isr_nodes = replicas;
                }
            }
            p
        })
        .collect();
    out
}

/// A partition as this node's replica sees it.
pub(crate) struct PartitionView {
    pub leader: Option<u64>,
    pub epoch: i32,
    /// Known on the leader: replicas whose log is within reach of the leader's.
    pub in_sync: Option<Vec<u64>>,
}

/// Replicas more than this many entries behind the leader are out of sync.
const IN_SYNC_ENTRIES: u64 = 1000;

pub(crate) fn partition_view(p: &crate::cluster::partition::Partition) -> PartitionView {
    let m = p.group().metrics();
    let in_sync = m.replication.as_ref().map(|rep| {
        let last = m.last_log_index.unwrap_or(0);
        rep.iter()
            .filter(|(_, matched)| matched.map(|l| l.index + IN_SYNC_ENTRIES >= last).unwrap_or(false))
            .map(|(id, _)| keel_raft::node_of(*id))
            .collect()
    });
    PartitionView {
        leader: m.current_leader.map(keel_raft::node_of),
        epoch: m.current_term.min(i32::MAX as u64) as i32,
        in_sync,
    }
}

/// Node `id`'s rack, if it has one.
pub(crate) fn rack_of(b: &Broker, id: i32) -> Option<String> {
    if id == b.config.node_id {
        return b.config.rack.clone();
    }
    b.controller.meta().nodes.get(&(id as u64)).and_then(|n| n.rack.clone())
}

/// The cluster's nodes as Metadata and DescribeCluster list them to a client of
/// `listener`: every registered node this node hears from (a stopped or cut-off node
/// drops out, so clients stop sending to it) with its address on that listener (a node
/// without one is left out, as Kafka does), and this one even before its registration is
/// committed.
pub(crate) fn nodes(b: &Broker, listener: &str) -> Vec<(i32, String, i32)> {
    let meta = b.controller.meta();
    let mut out: Vec<(i32, String, i32)> = meta
        .nodes
        .iter()
        .filter(|(id, _)| b.controller.transport.is_alive(**id))
        .filter_map(|(id, n)| {
            let (host, port) = match n.listeners.get(listener) {
                Some((h, p)) => (h.clone(), *p),
                // Registered before listeners were recorded: its only listener is the main one.
                None if n.listeners.is_empty() && listener == b.main_listener => (n.kafka_host.clone(), n.kafka_port),
                None => return None,
            };
            Some((*id as i32, host, port as i32))
        })
        .collect();
    if !out.iter().any(|(id, _, _)| *id == b.config.node_id) {
        if let Some((host, port)) = b.endpoints.get(listener) {
            out.push((b.config.node_id, host.clone(), *port as i32));
        }
    }
    out.sort();
    out
}

fn error_entry(name: Option<&str>, id: uuid::Uuid, code: i16) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = name.map(|n| TopicName(s(n)));
    out.topic_id = id;
    out.error_code = code;
    out
}

/// `listener` is the listener the client connected through.
use crate::acl::op::DESCRIBE;
use crate::acl::resource::TOPIC;

pub async fn handle(
    b: &Arc<Broker>,
    req: MetadataRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    r.brokers = nodes(b, &who.listener)
        .into_iter()
        .map(|(id, host, port)| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(id);
            broker.host = s(host);
            broker.port = port;
            broker.rack = rack_of(b, id).map(s);
            broker
        })
        .collect();
    r.cluster_id = Some(s(b.config.cluster_id.clone()));
    r.controller_id = BrokerId(b.controller_id());
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
            // Topics the principal may not describe are left out.
            r.topics = b
                .topics
                .list()
                .iter()
                .filter(|t| b.authorize(who, DESCRIBE, TOPIC, &t.meta().name))
                .map(|t| topic_entry(b, t, ops))
                .collect();
        }
        Some(wanted) => {
            for want in wanted {
                let entry = match &want.name {
                    Some(name) if !b.authorize(who, DESCRIBE, TOPIC, name.0.as_str()) => error_entry(
                        Some(name.0.as_str()),
                        uuid::Uuid::nil(),
                        ResponseError::TopicAuthorizationFailed.code(),
                    ),
                    Some(name) => {
                        let name = name.0.as_str();
                        // Auto-creation needs CREATE on the cluster or on the topic.
                        let may_create = allow_create
                            && b.topics.get(name).is_none()
                            && (b.authorize_cluster(who, crate::acl::op::CREATE)
                                || b.authorize(who, crate::acl::op::CREATE, TOPIC, name));
                        let found = if may_create {
                            b.topics.get_or_auto_create(name).await
                        } else {
                            b.topics.get(name).ok_or(crate::cluster::topics::AdminError {
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
                        Some(t) if !b.authorize(who, DESCRIBE, TOPIC, &t.meta().name) => {
                            error_entry(None, want.topic_id, ResponseError::TopicAuthorizationFailed.code())
                        }
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
