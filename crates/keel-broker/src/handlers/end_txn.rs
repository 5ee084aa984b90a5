//! EndTxn: commit or abort. The decision is durable at the coordinator before the answer;
//! the markers are written to the transaction's partitions after it.

use std::sync::Arc;

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::txn::{coordinator, state};
use crate::Broker;

pub async fn handle(b: &Arc<Broker>, req: EndTxnRequest, v: i16) -> EndTxnResponse {
    let mut r = EndTxnResponse::default();
    let fenced = if v >= 2 {
        state::PRODUCER_FENCED
    } else {
        state::INVALID_PRODUCER_EPOCH
    };
    r.error_code = coordinator::end_txn(
        b,
        req.transactional_id.0.as_str(),
        req.producer_id.0,
        req.producer_epoch,
        req.committed,
        fenced,
    )
    .await
    .err()
    .unwrap_or(0);
    r.producer_id = req.producer_id;
    r.producer_epoch = req.producer_epoch;
    r
}
