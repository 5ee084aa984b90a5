//! FindCoordinator: the leader of `__consumer_offsets` coordinates every group, the leader
//! of `__transaction_state` every transactional id (v0-3 one key, v4 a batch of keys).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    b: &Arc<Broker>,
    req: FindCoordinatorRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    let coordinator = match req.key_type {
        KEY_TYPE_GROUP => Ok(b.coordinator_node(&who.listener)),
        KEY_TYPE_TRANSACTION => {
            Ok(b.leader_node_of(crate::txn::coordinator::TXN_TOPIC, &b.txns.partition(), &who.listener))
        }
        _ => Err(ResponseError::InvalidRequest.code()),
    };
    let (code, msg) = match &coordinator {
        Err(code) => (*code, Some("unknown coordinator key type")),
        Ok(None) => (
            ResponseError::CoordinatorNotAvailable.code(),
            Some("the coordinator has no leader yet"),
        ),
        Ok(Some(_)) => (0, None),
    };
    let coordinator = coordinator.ok().flatten();
    let node = BrokerId(coordinator.as_ref().map(|c| c.0).unwrap_or(-1));
    let (host, port) = match &coordinator {
        Some((_, h, p)) => (s(h.clone()), *p),
        None => (s(""), -1),
    };
    let (resource, denied) = match req.key_type {
        KEY_TYPE_TRANSACTION => (
            crate::acl::resource::TRANSACTIONAL_ID,
            ResponseError::TransactionalIdAuthorizationFailed.code(),
        ),
        _ => (
            crate::acl::resource::GROUP,
            ResponseError::GroupAuthorizationFailed.code(),
        ),
    };
    if v >= 4 {
        r.coordinators = req
            .coordinator_keys
            .iter()
            .map(|key: &StrBytes| {
                let mut c = Coordinator::default();
                c.key = key.clone();
                let allowed = b.authorize(who, crate::acl::op::DESCRIBE, resource, key.as_str());
                let code = if allowed { code } else { denied };
                c.error_code = code;
                c.error_message = if allowed { msg.map(s) } else { None };
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
    let allowed = b.authorize(who, crate::acl::op::DESCRIBE, resource, req.key.as_str());
    let (code, msg) = if allowed { (code, msg) } else { (denied, None) };
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
