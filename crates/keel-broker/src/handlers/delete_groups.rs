//! DeleteGroups: removes empty groups and their committed offsets.

use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: DeleteGroupsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DeleteGroupsResponse {
    let mut r = DeleteGroupsResponse::default();
    for id in req.groups_names {
        let mut res = DeletableGroupResult::default();
        res.error_code = if !b.authorize(who, crate::acl::op::DELETE, crate::acl::resource::GROUP, id.0.as_str()) {
            kafka_protocol::ResponseError::GroupAuthorizationFailed.code()
        } else {
            match b.coordinator_error() {
                Some(code) => code,
                None => b.groups.delete_group(id.0.as_str()).await,
            }
        };
        res.group_id = id;
        r.results.push(res);
    }
    for g in &r.results {
        b.audit
            .change(who, "DeleteGroups", "GROUP", g.group_id.0.as_str(), g.error_code);
    }
    r
}
