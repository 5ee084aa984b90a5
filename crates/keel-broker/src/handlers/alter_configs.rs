//! AlterConfigs (replace a topic's overrides) and IncrementalAlterConfigs (set, delete,
//! append to or subtract from single configs). Broker configs are static: they come from
//! the config file, environment and flags, and are refused here.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::cluster::topic_config::TOPIC_CONFIGS;
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Applies `new` to `topic`, or explains why not: (error code, message).
async fn apply(
    b: &Broker,
    resource_type: i8,
    name: &str,
    new: Result<BTreeMap<String, String>, String>,
    validate_only: bool,
    who: &crate::handlers::sasl::Session,
) -> (i16, Option<StrBytes>) {
    // ALTER_CONFIGS on the topic, or on the cluster for a broker's configs.
    let allowed = match resource_type {
        RESOURCE_TOPIC => b.authorize(who, crate::acl::op::ALTER_CONFIGS, crate::acl::resource::TOPIC, name),
        _ => b.authorize_cluster(who, crate::acl::op::ALTER_CONFIGS),
    };
    if !allowed {
        let e = if resource_type == RESOURCE_TOPIC {
            ResponseError::TopicAuthorizationFailed
        } else {
            ResponseError::ClusterAuthorizationFailed
        };
        return (e.code(), None);
    }
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return (
                ResponseError::InvalidRequest.code(),
                Some(s(
                    "broker configs are static: set them in the config file, KEEL_* variables or flags",
                )),
            )
        }
        other => {
            return (
                ResponseError::InvalidRequest.code(),
                Some(s(format!("resource type {other} is not alterable"))),
            )
        }
    }
    let configs = match new {
        Ok(c) => c,
        Err(m) => return (ResponseError::InvalidConfig.code(), Some(s(m))),
    };
    match b.topics.alter_configs(name, configs, validate_only).await {
        Ok(()) => (0, None),
        Err(e) => (e.code, Some(s(e.message))),
    }
}

/// The audit log's resource type of a config resource.
fn config_resource(resource_type: i8) -> &'static str {
    if resource_type == RESOURCE_TOPIC {
        "TOPIC"
    } else {
        "BROKER"
    }
}

fn current(b: &Broker, name: &str) -> BTreeMap<String, String> {
    b.topics.get(name).map(|t| t.meta().configs).unwrap_or_default()
}

pub async fn handle(
    b: &Arc<Broker>,
    req: AlterConfigsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> AlterConfigsResponse {
    let mut r = AlterConfigsResponse::default();
    for res in req.resources {
        let configs: BTreeMap<String, String> = res
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let (code, msg) = apply(
            b,
            res.resource_type,
            res.resource_name.as_str(),
            Ok(configs),
            req.validate_only,
            who,
        )
        .await;
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = msg;
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    for res in &r.responses {
        b.audit.change(
            who,
            "AlterConfigs",
            config_resource(res.resource_type),
            res.resource_name.as_str(),
            res.error_code,
        );
    }
    r
}

/// Default value of a list config, for APPEND/SUBTRACT on a config not yet set.
fn list_default(name: &str) -> Option<&'static str> {
    match name {
        "cleanup.policy" => Some("delete"),
        _ => None,
    }
}

pub async fn handle_incremental(
    b: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let name = res.resource_name.to_string();
        let mut configs = current(b, &name);
        let mut problem = None;
        for c in &res.configs {
            let key = c.name.to_string();
            if !TOPIC_CONFIGS.iter().any(|(k, _)| *k == key) {
                problem = Some(format!("unknown topic config {key:?}"));
                break;
            }
            let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            match c.config_operation {
                OP_SET => {
                    configs.insert(key, value);
                }
                OP_DELETE => {
                    configs.remove(&key);
                }
                OP_APPEND | OP_SUBTRACT => {
                    let Some(default) = list_default(&key) else {
                        problem = Some(format!("{key} is not a list config"));
                        break;
                    };
                    let cur = configs.get(&key).cloned().unwrap_or_else(|| default.to_string());
                    let mut items: Vec<String> = cur.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect();
                    for v in value.split(',').filter(|x| !x.is_empty()) {
                        if c.config_operation == OP_APPEND {
                            if !items.iter().any(|i| i == v) {
                                items.push(v.to_string());
                            }
                        } else {
                            items.retain(|i| i != v);
                        }
                    }
                    configs.insert(key, items.join(","));
                }
                other => {
                    problem = Some(format!("unknown config operation {other}"));
                    break;
                }
            }
        }
        let new = match problem {
            Some(p) => Err(p),
            None => Ok(configs),
        };
        let (code, msg) = apply(b, res.resource_type, &name, new, req.validate_only, who).await;
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = msg;
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        r.responses.push(out);
    }
    for res in &r.responses {
        b.audit.change(
            who,
            "IncrementalAlterConfigs",
            config_resource(res.resource_type),
            res.resource_name.as_str(),
            res.error_code,
        );
    }
    r
}
