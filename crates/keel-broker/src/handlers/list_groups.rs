//! ListGroups: every group with members or committed offsets, filtered by state (v4+).

use std::sync::Arc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: ListGroupsRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    // Each node lists the groups it coordinates; the others list none.
    if b.coordinator_error().is_some() {
        return r;
    }
    // DESCRIBE on the cluster lists every group; else those the principal may describe.
    let all = b.authorize_cluster(who, crate::acl::op::DESCRIBE);
    for (id, protocol_type, state) in b.groups.list().await {
        if !all && !b.authorize(who, crate::acl::op::DESCRIBE, crate::acl::resource::GROUP, &id) {
            continue;
        }
        if !req.states_filter.is_empty() && !req.states_filter.iter().any(|f| f.as_str().eq_ignore_ascii_case(state)) {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(s(id));
        g.protocol_type = s(protocol_type);
        if v >= 4 {
            g.group_state = s(state);
        }
        r.groups.push(g);
    }
    r
}
