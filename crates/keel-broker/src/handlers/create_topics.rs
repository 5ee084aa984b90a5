//! CreateTopics: one partition replica per partition on this node.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::cluster::topic_config;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: CreateTopicsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> CreateTopicsResponse {
    let mut r = CreateTopicsResponse::default();
    let mut seen = std::collections::HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.0.to_string()).or_insert(0) += 1;
    }
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut res = CreatableTopicResult::default();
        res.name = t.name.clone();
        res.num_partitions = -1;
        res.replication_factor = -1;
        let fail = |res: &mut CreatableTopicResult, e: ResponseError, m: String| {
            res.error_code = e.code();
            res.error_message = Some(s(m));
        };
        // CREATE on the cluster, or on the topic.
        if !(b.authorize_cluster(who, crate::acl::op::CREATE)
            || b.authorize(who, crate::acl::op::CREATE, crate::acl::resource::TOPIC, &name))
        {
            fail(
                &mut res,
                ResponseError::TopicAuthorizationFailed,
                "Authorization failed.".to_string(),
            );
            r.topics.push(res);
            continue;
        }
        if seen.get(&name).copied().unwrap_or(0) > 1 {
            fail(
                &mut res,
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            );
            r.topics.push(res);
            continue;
        }
        let nodes = b.topics.node_ids();
        if t.replication_factor != -1 && (t.replication_factor < 1 || t.replication_factor as usize > nodes.len()) {
            fail(
                &mut res,
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is not between 1 and the {} available nodes",
                    t.replication_factor,
                    nodes.len()
                ),
            );
            r.topics.push(res);
            continue;
        }
        let rf = (t.replication_factor > 0).then_some(t.replication_factor as usize);
        let mut explicit: Option<Vec<Vec<u64>>> = None;
        let mut partitions = t.num_partitions;
        if !t.assignments.is_empty() {
            if t.num_partitions != -1 || t.replication_factor != -1 {
                fail(
                    &mut res,
                    ResponseError::InvalidRequest,
                    "assignments require num_partitions and replication_factor of -1".into(),
                );
                r.topics.push(res);
                continue;
            }
            let mut assignments: Vec<_> = t.assignments.iter().collect();
            assignments.sort_by_key(|a| a.partition_index);
            let contiguous = assignments
                .iter()
                .enumerate()
                .all(|(i, a)| a.partition_index == i as i32);
            let valid = assignments.iter().all(|a| {
                let mut ids: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
                ids.sort_unstable();
                ids.dedup();
                !ids.is_empty()
                    && ids.len() == a.broker_ids.len()
                    && ids.iter().all(|id| *id >= 0 && nodes.contains(&(*id as u64)))
            });
            if !contiguous || !valid {
                fail(
                    &mut res,
                    ResponseError::InvalidReplicaAssignment,
                    "partitions must be numbered from 0, each on distinct known nodes".into(),
                );
                r.topics.push(res);
                continue;
            }
            partitions = assignments.len() as i32;
            explicit = Some(
                assignments
                    .iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0 as u64).collect())
                    .collect(),
            );
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        match b
            .topics
            .create_placed(&name, partitions, rf, explicit, configs.clone(), req.validate_only)
            .await
        {
            Ok(topic) => {
                let meta = topic.meta();
                res.topic_id = if req.validate_only { uuid::Uuid::nil() } else { meta.id };
                res.num_partitions = meta.partitions;
                res.replication_factor = meta.replicas.first().map(|r| r.len() as i16).unwrap_or(1);
                res.configs = Some(
                    topic_config::describe(&b.config, &configs)
                        .into_iter()
                        .map(|(name, value, set)| {
                            let mut c = CreatableTopicConfigs::default();
                            c.name = s(name);
                            c.value = Some(s(value));
                            c.config_source = if set { 1 } else { 5 };
                            c
                        })
                        .collect(),
                );
            }
            Err(e) => {
                res.error_code = e.code;
                res.error_message = Some(s(e.message));
            }
        }
        r.topics.push(res);
    }
    for t in &r.topics {
        b.audit
            .change(who, "CreateTopics", "TOPIC", t.name.0.as_str(), t.error_code);
    }
    r
}
