//! EndTxn: commit or abort. The decision is durable at the coordinator before the answer;
//! the markers are written to the transaction's partitions after it. From v5 (transaction
//! version 2, KIP-890 part 2) the epoch is bumped and the answer carries the new one.

use std::sync::Arc;

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::txn::{coordinator, state};
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: EndTxnRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> EndTxnResponse {
    let mut r = EndTxnResponse::default();
    let fenced = if v >= 2 {
        state::PRODUCER_FENCED
    } else {
        state::INVALID_PRODUCER_EPOCH
    };
    r.producer_id = req.producer_id;
    r.producer_epoch = req.producer_epoch;
    if !b.authorize(
        who,
        crate::acl::op::WRITE,
        crate::acl::resource::TRANSACTIONAL_ID,
        req.transactional_id.0.as_str(),
    ) {
        r.error_code = kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();
        return r;
    }
    match coordinator::end_txn(
        b,
        req.transactional_id.0.as_str(),
        req.producer_id.0,
        req.producer_epoch,
        req.committed,
        fenced,
        v >= 5,
    )
    .await
    {
        Ok((pid, epoch)) => {
            r.producer_id = kafka_protocol::messages::ProducerId(pid);
            r.producer_epoch = epoch;
        }
        Err(code) => r.error_code = code,
    }
    r
}
