//! DescribeClientQuotas and AlterClientQuotas (KIP-546): byte-rate quotas per user, client
//! id or both, kept in the controller (see [`crate::quota`]). Keys served:
//! `producer_byte_rate` and `consumer_byte_rate`. Describing needs DESCRIBE_CONFIGS on the
//! cluster, altering ALTER_CONFIGS, as in Kafka.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::alter_client_quotas_response;
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};
use kafka_protocol::ResponseError as E;

use super::s;
use crate::cluster::meta::Command;
use crate::quota::{Entity, Value, CLIENT_ID, KEYS, USER};
use crate::Broker;

const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// The entity's (type, name) pairs, as the responses list them.
fn parts(e: &Entity) -> Vec<(&'static str, Option<String>)> {
    let mut out = Vec::new();
    if let Some(u) = &e.user {
        out.push((USER, u.clone()));
    }
    if let Some(c) = &e.client_id {
        out.push((CLIENT_ID, c.clone()));
    }
    out
}

pub async fn describe(
    b: &Arc<Broker>,
    req: DescribeClientQuotasRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeClientQuotasResponse {
    let mut r = DescribeClientQuotasResponse::default();
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE_CONFIGS) {
        r.error_code = E::ClusterAuthorizationFailed.code();
        return r;
    }
    for c in &req.components {
        let known = matches!(c.entity_type.as_str(), USER | CLIENT_ID);
        let valid = match c.match_type {
            MATCH_EXACT => c._match.is_some(),
            MATCH_DEFAULT | MATCH_SPECIFIED => c._match.is_none(),
            _ => false,
        };
        if !known || !valid {
            r.error_code = E::InvalidRequest.code();
            r.error_message = Some(s(format!(
                "bad filter component {} (match type {})",
                c.entity_type.as_str(),
                c.match_type
            )));
            return r;
        }
    }
    let meta = b.controller.meta();
    let mut entries = Vec::new();
    for (entity, values) in &meta.quotas {
        let ps = parts(entity);
        let fits = req.components.iter().all(|c| {
            ps.iter().any(|(t, name)| {
                *t == c.entity_type.as_str()
                    && match c.match_type {
                        MATCH_EXACT => name.as_deref() == c._match.as_ref().map(|m| m.as_str()),
                        MATCH_DEFAULT => name.is_none(),
                        _ => name.is_some(),
                    }
            })
        });
        let strict_ok = !req.strict || ps.len() == req.components.len();
        if !fits || !strict_ok || values.is_empty() {
            continue;
        }
        let mut entry = EntryData::default();
        entry.entity = ps
            .into_iter()
            .map(|(t, name)| {
                let mut d = EntityData::default();
                d.entity_type = s(t);
                d.entity_name = name.map(s);
                d
            })
            .collect();
        entry.values = values
            .iter()
            .map(|(k, v)| {
                let mut d = ValueData::default();
                d.key = s(k.clone());
                d.value = v.0;
                d
            })
            .collect();
        entries.push(entry);
    }
    r.entries = Some(entries);
    r
}

pub async fn alter(
    b: &Arc<Broker>,
    req: AlterClientQuotasRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> AlterClientQuotasResponse {
    let allowed = b.authorize_cluster(who, crate::acl::op::ALTER_CONFIGS);
    let meta = b.controller.meta();
    let mut results = Vec::new();
    let mut changes: Vec<(Entity, BTreeMap<String, Value>)> = Vec::new();
    for entry in &req.entries {
        let mut out = alter_client_quotas_response::EntryData::default();
        out.entity = entry
            .entity
            .iter()
            .map(|e| {
                let mut d = alter_client_quotas_response::EntityData::default();
                d.entity_type = e.entity_type.clone();
                d.entity_name = e.entity_name.clone();
                d
            })
            .collect();
        let outcome = (|| -> Result<(Entity, BTreeMap<String, Value>), (E, String)> {
            if !allowed {
                return Err((E::ClusterAuthorizationFailed, String::new()));
            }
            let mut entity = Entity::default();
            for e in &entry.entity {
                let name = e.entity_name.as_ref().map(|n| n.to_string());
                let slot = match e.entity_type.as_str() {
                    USER => &mut entity.user,
                    CLIENT_ID => &mut entity.client_id,
                    other => return Err((E::InvalidRequest, format!("unsupported quota entity type {other:?}"))),
                };
                if slot.is_some() {
                    return Err((E::InvalidRequest, "an entity type appears twice".into()));
                }
                *slot = Some(name);
            }
            if entity == Entity::default() {
                return Err((E::InvalidRequest, "the entity is empty".into()));
            }
            let mut values = meta.quotas.get(&entity).cloned().unwrap_or_default();
            for op in &entry.ops {
                let key = op.key.as_str();
                if !KEYS.contains(&key) {
                    return Err((
                        E::InvalidRequest,
                        format!("quota key {key:?} is not served (only {KEYS:?})"),
                    ));
                }
                if op.remove {
                    values.remove(key);
                } else if !(op.value.is_finite() && op.value > 0.0) {
                    return Err((E::InvalidRequest, format!("{key} must be a positive number")));
                } else {
                    values.insert(key.to_string(), Value(op.value));
                }
            }
            Ok((entity, values))
        })();
        match outcome {
            Ok(change) => changes.push(change),
            Err((e, msg)) => {
                out.error_code = e.code();
                out.error_message = (!msg.is_empty()).then(|| s(msg));
            }
        }
        results.push(out);
    }
    if !changes.is_empty() && !req.validate_only {
        let cmd = Command::AlterClientQuotas { changes };
        if let Err(e) = b.controller.propose(&cmd, crate::cluster::topics::ADMIN_TIMEOUT).await {
            for r in results.iter_mut().filter(|r| r.error_code == 0) {
                r.error_code = E::RequestTimedOut.code();
                r.error_message = Some(s(e.to_string()));
            }
        }
    }
    for r in &results {
        let entity: Vec<String> = r
            .entity
            .iter()
            .map(|e| {
                format!(
                    "{}={}",
                    e.entity_type.as_str(),
                    e.entity_name.as_ref().map(|n| n.as_str()).unwrap_or("<default>")
                )
            })
            .collect();
        b.audit
            .change(who, "AlterClientQuotas", "QUOTA", &entity.join(","), r.error_code);
    }
    let mut resp = AlterClientQuotasResponse::default();
    resp.entries = results;
    resp
}
