//! FindCoordinator: the leader of `__consumer_offsets` coordinates every group (v0-3 one
//! key, v4 a batch of keys).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;

/// (error code, message) for a coordinator key of `key_type`.
fn check(key_type: i8) -> (i16, Option<&'static str>) {
    if key_type == KEY_TYPE_GROUP {
        (0, None)
    } else {
        (
            ResponseError::CoordinatorNotAvailable.code(),
            Some("transactions are not supported"),
        )
    }
}

pub async fn handle(b: &Arc<Broker>, req: FindCoordinatorRequest, v: i16) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    let coordinator = b.coordinator_node();
    let node = BrokerId(coordinator.as_ref().map(|c| c.0).unwrap_or(-1));
    let (host, port) = match &coordinator {
        Some((_, h, p)) => (s(h.clone()), *p),
        None => (s(""), -1),
    };
    let check = |key_type: i8| match check(key_type) {
        (0, _) if coordinator.is_none() => (
            ResponseError::CoordinatorNotAvailable.code(),
            Some("the group coordinator has no leader yet"),
        ),
        other => other,
    };
    if v >= 4 {
        r.coordinators = req
            .coordinator_keys
            .iter()
            .map(|key: &StrBytes| {
                let (code, msg) = check(req.key_type);
                let mut c = Coordinator::default();
                c.key = key.clone();
                c.error_code = code;
                c.error_message = msg.map(s);
                if code == 0 {
                    c.node_id = node;
                    c.host = host.clone();
                    c.port = port;
                } else {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                }
                c
            })
            .collect();
        return r;
    }
    let (code, msg) = check(req.key_type);
    r.error_code = code;
    if v >= 1 {
        r.error_message = msg.map(s);
    }
    if code == 0 {
        r.node_id = node;
        r.host = host;
        r.port = port;
    } else {
        r.node_id = BrokerId(-1);
        r.port = -1;
    }
    r
}
