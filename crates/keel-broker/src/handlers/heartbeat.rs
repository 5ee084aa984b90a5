//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::Broker;

pub async fn handle(b: &Arc<Broker>, req: HeartbeatRequest, _v: i16) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    r.error_code = b
        .groups
        .heartbeat(req.group_id.0.as_str(), req.member_id.as_str(), req.generation_id)
        .await;
    r
}
