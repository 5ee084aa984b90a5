//! JoinGroup: waits until the group's rebalance completes (or this member is refused).

use std::sync::Arc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::group::state::JoinRequest;
use crate::Broker;

/// Session timeouts a member may ask for (Kafka's group.min/max.session.timeout.ms).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;

/// Who sent the JoinGroup: the request header's client id and the connection's address.
pub struct Client {
    pub id: String,
    pub host: String,
}

pub async fn handle(
    b: &Arc<Broker>,
    req: JoinGroupRequest,
    v: i16,
    client: Client,
    who: &crate::handlers::sasl::Session,
) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.member_id = req.member_id.clone();
    r.generation_id = -1;
    if !b.authorize(
        who,
        crate::acl::op::READ,
        crate::acl::resource::GROUP,
        req.group_id.0.as_str(),
    ) {
        r.error_code = ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    if let Some(code) = b.coordinator_error() {
        r.error_code = code;
        return r;
    }
    if req.group_id.0.is_empty() {
        r.error_code = ResponseError::InvalidGroupId.code();
        return r;
    }
    if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&req.session_timeout_ms) {
        r.error_code = ResponseError::InvalidSessionTimeout.code();
        return r;
    }
    let rebalance_timeout = if v >= 1 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: client.id,
        client_host: client.host,
        session_timeout_ms: req.session_timeout_ms as u64,
        rebalance_timeout_ms: rebalance_timeout.max(0) as u64,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
    };
    let j = b.groups.join(req.group_id.0.as_str(), join).await;
    r.error_code = j.error;
    r.generation_id = j.generation;
    r.member_id = s(j.member_id);
    r.leader = s(j.leader);
    r.protocol_name = j.protocol_name.map(s);
    if v >= 7 {
        r.protocol_type = j.protocol_type.map(s);
    }
    r.members = j
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = s(id);
            if v >= 5 {
                m.group_instance_id = instance.map(s);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    r
}
