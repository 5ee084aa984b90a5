//! UnregisterBroker: forget a node that was drained and stopped. Refused while the node
//! holds (or is to hold) a replica, while it still answers, and while it is a controller
//! voter (RemoveRaftVoter first).

use std::sync::Arc;

use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};
use kafka_protocol::ResponseError as E;

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: UnregisterBrokerRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> UnregisterBrokerResponse {
    let mut r = UnregisterBrokerResponse::default();
    let id = req.broker_id.0;
    if !b.authorize_cluster(who, crate::acl::op::ALTER) {
        r.error_code = E::ClusterAuthorizationFailed.code();
        return r;
    }
    let refuse = |r: &mut UnregisterBrokerResponse, code: E, message: String| {
        r.error_code = code.code();
        r.error_message = Some(s(message));
    };
    if id < 0 || !b.controller.meta().nodes.contains_key(&(id as u64)) {
        refuse(&mut r, E::BrokerIdNotRegistered, format!("node {id} is not registered"));
        return r;
    }
    match crate::cluster::moves::unregister_node(&b.topics, id as u64).await {
        Ok(()) => {}
        Err(e) => {
            r.error_code = e.code;
            r.error_message = Some(s(e.message));
        }
    }
    b.audit
        .change(who, "UnregisterBroker", "NODE", &id.to_string(), r.error_code);
    r
}
