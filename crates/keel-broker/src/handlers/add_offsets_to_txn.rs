//! AddOffsetsToTxn: a transaction will commit a group's offsets (TxnOffsetCommit); the
//! offsets partition joins the transaction, so its marker makes them visible.

use std::sync::Arc;

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::group::offsets::OFFSETS_TOPIC;
use crate::txn::{coordinator, state};
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: AddOffsetsToTxnRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> AddOffsetsToTxnResponse {
    let mut r = AddOffsetsToTxnResponse::default();
    let fenced = if v >= 2 {
        state::PRODUCER_FENCED
    } else {
        state::INVALID_PRODUCER_EPOCH
    };
    if !b.authorize(
        who,
        crate::acl::op::WRITE,
        crate::acl::resource::TRANSACTIONAL_ID,
        req.transactional_id.0.as_str(),
    ) {
        r.error_code = kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();
        return r;
    }
    if !b.authorize(
        who,
        crate::acl::op::READ,
        crate::acl::resource::GROUP,
        req.group_id.0.as_str(),
    ) {
        r.error_code = kafka_protocol::ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    r.error_code = coordinator::add_partitions(
        b,
        req.transactional_id.0.as_str(),
        req.producer_id.0,
        req.producer_epoch,
        &[(OFFSETS_TOPIC.to_string(), 0)],
        fenced,
    )
    .await
    .err()
    .unwrap_or(0);
    r
}
