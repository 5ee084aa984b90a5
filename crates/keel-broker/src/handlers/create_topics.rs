//! CreateTopics: one partition replica per partition on this node.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::topic_config;
use crate::Broker;

pub async fn handle(b: &Arc<Broker>, req: CreateTopicsRequest, _v: i16) -> CreateTopicsResponse {
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
        if seen.get(&name).copied().unwrap_or(0) > 1 {
            fail(
                &mut res,
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            );
            r.topics.push(res);
            continue;
        }
        if t.replication_factor != -1 && t.replication_factor != 1 {
            fail(
                &mut res,
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is larger than the 1 available broker",
                    t.replication_factor
                ),
            );
            r.topics.push(res);
            continue;
        }
        let mut partitions = t.num_partitions;
        if !t.assignments.is_empty() {
            let node = b.config.node_id;
            if t.num_partitions != -1 || t.replication_factor != -1 {
                fail(
                    &mut res,
                    ResponseError::InvalidRequest,
                    "assignments require num_partitions and replication_factor of -1".into(),
                );
                r.topics.push(res);
                continue;
            }
            let mut idx: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
            idx.sort_unstable();
            let contiguous = idx.iter().enumerate().all(|(i, p)| *p == i as i32);
            let on_this_node = t
                .assignments
                .iter()
                .all(|a| a.broker_ids.len() == 1 && a.broker_ids[0].0 == node);
            if !contiguous || !on_this_node {
                fail(
                    &mut res,
                    ResponseError::InvalidReplicaAssignment,
                    format!("every partition must be assigned to broker {node} alone"),
                );
                r.topics.push(res);
                continue;
            }
            partitions = t.assignments.len() as i32;
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        match b
            .topics
            .create(&name, partitions, configs.clone(), req.validate_only)
            .await
        {
            Ok(topic) => {
                let meta = topic.meta();
                res.topic_id = if req.validate_only { uuid::Uuid::nil() } else { meta.id };
                res.num_partitions = meta.partitions;
                res.replication_factor = 1;
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
    r
}
