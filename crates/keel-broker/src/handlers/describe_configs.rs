//! DescribeConfigs: topic configs (overrides and defaults) and this broker's settings.

use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::cluster::topic_config::{self, TOPIC_CONFIGS};
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's ConfigType for a config name.
fn config_type(name: &str) -> i8 {
    const BOOLEAN: i8 = 1;
    const STRING: i8 = 2;
    const INT: i8 = 3;
    const LONG: i8 = 5;
    const SHORT: i8 = 4;
    const DOUBLE: i8 = 6;
    const LIST: i8 = 7;
    match name {
        "cleanup.policy" | "log.cleanup.policy" | "listeners" | "advertised.listeners" | "process.roles" => LIST,
        "retention.ms"
        | "retention.bytes"
        | "segment.ms"
        | "delete.retention.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "file.delete.delay.ms"
        | "log.retention.ms"
        | "log.retention.bytes"
        | "log.roll.ms"
        | "log.cleaner.backoff.ms"
        | "keel.fsync.interval.ms" => LONG,
        "segment.bytes"
        | "max.message.bytes"
        | "min.insync.replicas"
        | "num.partitions"
        | "message.max.bytes"
        | "socket.request.max.bytes"
        | "log.segment.bytes"
        | "broker.id"
        | "node.id"
        | "default.replication.factor"
        | "group.initial.rebalance.delay.ms"
        | "fetch.max.bytes"
        | "max.connections" => INT,
        "offsets.topic.replication.factor" | "transaction.state.log.replication.factor" => SHORT,
        "min.cleanable.dirty.ratio" => DOUBLE,
        "auto.create.topics.enable"
        | "log.cleaner.enable"
        | "delete.topic.enable"
        | "unclean.leader.election.enable" => BOOLEAN,
        _ => STRING,
    }
}

fn entry(
    name: String,
    value: String,
    source: i8,
    read_only: bool,
    synonyms: bool,
    docs: Option<&str>,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.config_type = config_type(&name);
    if synonyms {
        let mut syn = DescribeConfigsSynonym::default();
        syn.name = s(name.clone());
        syn.value = Some(s(value.clone()));
        syn.source = source;
        c.synonyms = vec![syn];
    }
    c.name = s(name);
    c.value = Some(s(value));
    c.config_source = source;
    c.read_only = read_only;
    c.documentation = docs.map(s);
    c
}

fn broker_configs(b: &Broker) -> Vec<(String, String)> {
    let c = &b.config;
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-1".into());
    vec![
        ("broker.id".into(), c.node_id.to_string()),
        ("log.dirs".into(), c.data_dir.display().to_string()),
        ("num.partitions".into(), c.default_partitions.to_string()),
        ("auto.create.topics.enable".into(), c.auto_create_topics.to_string()),
        ("log.retention.ms".into(), opt(c.log.retention_ms)),
        ("log.retention.bytes".into(), opt(c.log.retention_bytes)),
        ("log.segment.bytes".into(), c.log.segment_bytes.to_string()),
        ("log.roll.ms".into(), c.log.segment_ms.to_string()),
        ("message.max.bytes".into(), c.message_bytes_max.to_string()),
        ("socket.request.max.bytes".into(), c.request_bytes_max.to_string()),
        ("max.connections".into(), c.connections_max.to_string()),
        ("keel.fsync.policy".into(), c.fsync.as_str().to_string()),
        ("keel.fsync.interval.ms".into(), c.fsync_interval_ms.to_string()),
        // Kafka's names for what Keel does by design or by its own settings.
        ("node.id".into(), c.node_id.to_string()),
        ("process.roles".into(), "broker,controller".into()),
        ("listeners".into(), format!("PLAINTEXT://{}", c.kafka_listen)),
        (
            "advertised.listeners".into(),
            format!("PLAINTEXT://{}:{}", b.advertised.0, b.advertised.1),
        ),
        (
            "default.replication.factor".into(),
            c.default_replication_factor.to_string(),
        ),
        (
            "offsets.topic.replication.factor".into(),
            c.default_replication_factor.to_string(),
        ),
        (
            "transaction.state.log.replication.factor".into(),
            c.default_replication_factor.to_string(),
        ),
        (
            "group.initial.rebalance.delay.ms".into(),
            c.group_initial_rebalance_delay_ms.to_string(),
        ),
        ("log.cleanup.policy".into(), "delete".into()),
        ("log.cleaner.enable".into(), "true".into()),
        ("log.cleaner.backoff.ms".into(), c.log_cleaner_interval_ms.to_string()),
        ("log.message.timestamp.type".into(), "CreateTime".into()),
        ("compression.type".into(), "producer".into()),
        ("delete.topic.enable".into(), "true".into()),
        // Raft elects only a replica holding every committed entry.
        ("unclean.leader.election.enable".into(), "false".into()),
        ("fetch.max.bytes".into(), c.fetch_bytes_max.to_string()),
    ]
}

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeConfigsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeConfigsResponse {
    let mut r = DescribeConfigsResponse::default();
    let docs = req.include_documentation;
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let wanted = |name: &str| match &res.configuration_keys {
            Some(keys) if !keys.is_empty() => keys.iter().any(|k| k.as_str() == name),
            _ => true,
        };
        let allowed = match res.resource_type {
            RESOURCE_TOPIC => b.authorize(
                who,
                crate::acl::op::DESCRIBE_CONFIGS,
                crate::acl::resource::TOPIC,
                res.resource_name.as_str(),
            ),
            _ => b.authorize_cluster(who, crate::acl::op::DESCRIBE_CONFIGS),
        };
        if !allowed {
            out.error_code = if res.resource_type == RESOURCE_TOPIC {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                ResponseError::ClusterAuthorizationFailed.code()
            };
            r.results.push(out);
            continue;
        }
        match res.resource_type {
            RESOURCE_TOPIC => match b.topics.get(res.resource_name.as_str()) {
                Some(t) => {
                    let meta = t.meta();
                    out.configs = topic_config::describe(&b.config, &meta.configs)
                        .into_iter()
                        .filter(|(n, _, _)| wanted(n))
                        .map(|(n, v, set)| {
                            let doc = TOPIC_CONFIGS
                                .iter()
                                .find(|(k, _)| *k == n)
                                .map(|(_, d)| *d)
                                .filter(|_| docs);
                            entry(
                                n,
                                v,
                                if set { SOURCE_DYNAMIC_TOPIC } else { SOURCE_DEFAULT },
                                false,
                                req.include_synonyms,
                                doc,
                            )
                        })
                        .collect();
                }
                None => {
                    out.error_code = ResponseError::UnknownTopicOrPartition.code();
                    out.error_message = Some(s(format!("topic '{}' does not exist", res.resource_name.as_str())));
                }
            },
            RESOURCE_BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != b.config.node_id.to_string() {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(s(format!("this is broker {}, not {name}", b.config.node_id)));
                } else {
                    out.configs = broker_configs(b)
                        .into_iter()
                        .filter(|(n, _)| wanted(n))
                        .map(|(n, v)| entry(n, v, SOURCE_STATIC_BROKER, true, req.include_synonyms, None))
                        .collect();
                }
            }
            other => {
                out.error_code = ResponseError::InvalidRequest.code();
                out.error_message = Some(s(format!("resource type {other} is not described by Keel")));
            }
        }
        r.results.push(out);
    }
    r
}
