//! ListTransactions: transactional ids this node coordinates (none on a node that does not
//! coordinate), filtered by state, producer id and (v1) how long they have been running.

use std::sync::Arc;

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse, ProducerId};

use super::s;
use crate::txn::state::TxnState;
use crate::Broker;

const STATES: [TxnState; 6] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
];

pub async fn handle(
    b: &Arc<Broker>,
    req: ListTransactionsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> ListTransactionsResponse {
    let mut r = ListTransactionsResponse::default();
    // Admin clients ask every broker and merge the answers: a node that coordinates no
    // transactions answers with none, as Kafka's brokers do.
    match b.txns.coordinator_error() {
        Some(code) if code == kafka_protocol::ResponseError::NotCoordinator.code() => return r,
        Some(code) => {
            r.error_code = code;
            return r;
        }
        None => {}
    }
    r.unknown_state_filters = req
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let now = keel_log::disk::now_ms();
    for (id, meta) in b.txns.all() {
        if !b.authorize(
            who,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TRANSACTIONAL_ID,
            &id,
        ) {
            continue;
        }
        if !req.state_filters.is_empty() && !req.state_filters.iter().any(|f| f.as_str() == meta.state.name()) {
            continue;
        }
        if !req.producer_id_filters.is_empty() && !req.producer_id_filters.contains(&ProducerId(meta.producer_id)) {
            continue;
        }
        if req.duration_filter >= 0 && (meta.started_ms < 0 || now - meta.started_ms < req.duration_filter) {
            continue;
        }
        let mut ts = TransactionState::default();
        ts.transactional_id = s(id).into();
        ts.producer_id = ProducerId(meta.producer_id);
        ts.transaction_state = s(meta.state.name());
        r.transaction_states.push(ts);
    }
    r
}
