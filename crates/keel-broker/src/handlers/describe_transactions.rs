//! DescribeTransactions: the state of transactional ids this node coordinates.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId};

use super::s;
use crate::Broker;

const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeTransactionsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeTransactionsResponse {
    let mut r = DescribeTransactionsResponse::default();
    let not_here = b.txns.coordinator_error();
    for id in req.transactional_ids {
        let mut ts = TransactionState::default();
        ts.transactional_id = id.clone();
        ts.producer_id = ProducerId(-1);
        ts.producer_epoch = -1;
        ts.transaction_start_time_ms = -1;
        if !b.authorize(
            who,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TRANSACTIONAL_ID,
            id.0.as_str(),
        ) {
            ts.error_code = kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();
            r.transaction_states.push(ts);
            continue;
        }
        match (not_here, b.txns.get(id.0.as_str())) {
            (Some(code), _) => ts.error_code = code,
            (None, None) => ts.error_code = TRANSACTIONAL_ID_NOT_FOUND,
            (None, Some(meta)) => {
                ts.transaction_state = s(meta.state.name());
                ts.transaction_timeout_ms = meta.timeout_ms;
                ts.transaction_start_time_ms = meta.started_ms;
                ts.producer_id = ProducerId(meta.producer_id);
                ts.producer_epoch = meta.epoch;
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in &meta.partitions {
                    by_topic.entry(t.clone()).or_default().push(*p);
                }
                ts.topics = by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        let mut td = TopicData::default();
                        td.topic = s(t).into();
                        td.partitions = parts;
                        td
                    })
                    .collect();
            }
        }
        r.transaction_states.push(ts);
    }
    r
}
