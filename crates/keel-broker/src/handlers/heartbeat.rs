//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: HeartbeatRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    if !b.authorize(
        who,
        crate::acl::op::READ,
        crate::acl::resource::GROUP,
        req.group_id.0.as_str(),
    ) {
        r.error_code = kafka_protocol::ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    if let Some(code) = b.coordinator_error() {
        r.error_code = code;
        return r;
    }
    let instance = req.group_instance_id.as_ref().map(|i| i.as_str());
    r.error_code = b
        .groups
        .heartbeat(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            instance,
            req.generation_id,
        )
        .await;
    r
}
