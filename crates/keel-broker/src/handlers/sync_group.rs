//! SyncGroup: the leader hands in assignments; every member receives its own.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: SyncGroupRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> SyncGroupResponse {
    if !b.authorize(
        who,
        crate::acl::op::READ,
        crate::acl::resource::GROUP,
        req.group_id.0.as_str(),
    ) {
        let mut r = SyncGroupResponse::default();
        r.error_code = kafka_protocol::ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    if let Some(code) = b.coordinator_error() {
        let mut r = SyncGroupResponse::default();
        r.error_code = code;
        return r;
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let res = b
        .groups
        .sync(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|i| i.as_str()),
            req.generation_id,
            assignments,
        )
        .await;
    let mut r = SyncGroupResponse::default();
    r.error_code = res.error;
    r.assignment = res.assignment;
    if v >= 5 {
        r.protocol_type = res.protocol_type.map(s);
        r.protocol_name = res.protocol_name.map(s);
    }
    r
}
