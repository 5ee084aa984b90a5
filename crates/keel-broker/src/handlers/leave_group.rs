//! LeaveGroup: one member (v0-2) or a batch of members by id or instance id (v3+).

use std::sync::Arc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: LeaveGroupRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> LeaveGroupResponse {
    let mut r = LeaveGroupResponse::default();
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
    let group = req.group_id.0.as_str();
    if v < 3 {
        r.error_code = b.groups.leave(group, req.member_id.as_str(), None).await;
        return r;
    }
    for m in &req.members {
        let code = b
            .groups
            .leave(
                group,
                m.member_id.as_str(),
                m.group_instance_id.as_ref().map(|i| i.as_str()),
            )
            .await;
        let mut mr = MemberResponse::default();
        mr.member_id = m.member_id.clone();
        mr.group_instance_id = m.group_instance_id.clone();
        mr.error_code = code;
        r.members.push(mr);
    }
    r
}
