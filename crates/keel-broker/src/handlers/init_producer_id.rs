//! InitProducerId: ids for idempotent producers, and for transactional ones the id and
//! epoch their coordinator keeps (fencing the previous instance of the transactional id).

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tracing::error;

use crate::txn::{coordinator, state};
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: InitProducerIdRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if let Some(id) = req.transactional_id.as_ref().filter(|id| !id.0.is_empty()) {
        if !b.authorize(
            who,
            crate::acl::op::WRITE,
            crate::acl::resource::TRANSACTIONAL_ID,
            id.0.as_str(),
        ) {
            r.error_code = kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();
            return r;
        }
        let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        let fenced = if v >= 4 {
            state::PRODUCER_FENCED
        } else {
            state::INVALID_PRODUCER_EPOCH
        };
        match coordinator::init_producer_id(b, id.0.as_str(), req.transaction_timeout_ms, expected, fenced).await {
            Ok((pid, epoch)) => {
                r.producer_id = ProducerId(pid);
                r.producer_epoch = epoch;
            }
            Err(code) => r.error_code = code,
        }
        return r;
    }
    // An idempotent producer: IDEMPOTENT_WRITE on the cluster, or WRITE on some topic
    // (KIP-679).
    if !(b.authorize_cluster(who, crate::acl::op::IDEMPOTENT_WRITE)
        || b.authorize_any(who, crate::acl::op::WRITE, crate::acl::resource::TOPIC))
    {
        r.error_code = kafka_protocol::ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    // KIP-360: a producer that knows its id asks for the next epoch.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        r.producer_id = req.producer_id;
        r.producer_epoch = req.producer_epoch + 1;
        return r;
    }
    match b.producer_ids.allocate() {
        Ok(id) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Err(e) => {
            error!(error = %e, "could not persist the producer id block");
            r.error_code = ResponseError::KafkaStorageError.code();
        }
    }
    r
}
