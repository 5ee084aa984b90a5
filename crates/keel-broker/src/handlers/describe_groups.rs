//! DescribeGroups: state, protocol and members with their metadata and assignments.

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::s;
use crate::Broker;

/// READ, DELETE, DESCRIBE.
const GROUP_OPS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeGroupsRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        if !b.authorize(
            who,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::GROUP,
            id.0.as_str(),
        ) {
            g.error_code = kafka_protocol::ResponseError::GroupAuthorizationFailed.code();
            r.groups.push(g);
            continue;
        }
        if let Some(code) = b.coordinator_error() {
            g.error_code = code;
            r.groups.push(g);
            continue;
        }
        g.authorized_operations = if req.include_authorized_operations {
            GROUP_OPS
        } else {
            i32::MIN
        };
        match b.groups.describe(id.0.as_str()).await {
            Some(view) => {
                g.group_state = s(view.state);
                g.protocol_type = s(view.protocol_type);
                g.protocol_data = s(view.protocol);
                g.members = view
                    .members
                    .into_iter()
                    .map(|(member_id, instance, client_id, client_host, metadata, assignment)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = s(member_id);
                        if v >= 4 {
                            m.group_instance_id = instance.map(s);
                        }
                        m.client_id = s(client_id);
                        m.client_host = s(client_host);
                        m.member_metadata = metadata;
                        m.member_assignment = assignment;
                        m
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead with no members.
            None => g.group_state = s("Dead"),
        }
        r.groups.push(g);
    }
    r
}
