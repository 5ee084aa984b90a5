//! AddPartitionsToTxn: a producer names the partitions its transaction writes to (v0-3),
//! or a partition leader verifies one (v4 with `verify_only`, KIP-890); several
//! transactions per request from v4.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use crate::txn::coordinator::{self, VerifyRequest};
use crate::txn::state;
use crate::Broker;

fn partitions_of(topics: &[AddPartitionsToTxnTopic]) -> Vec<(String, i32)> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p)))
        .collect()
}

fn results(topics: &[AddPartitionsToTxnTopic], code: impl Fn(&str, i32) -> i16) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let mut tr = AddPartitionsToTxnTopicResult::default();
            tr.name = t.name.clone();
            tr.results_by_partition = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = AddPartitionsToTxnPartitionResult::default();
                    pr.partition_index = *p;
                    pr.partition_error_code = code(t.name.0.as_str(), *p);
                    pr
                })
                .collect();
            tr
        })
        .collect()
}

pub async fn handle(
    b: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> AddPartitionsToTxnResponse {
    let mut r = AddPartitionsToTxnResponse::default();
    let fenced = if v >= 2 {
        state::PRODUCER_FENCED
    } else {
        state::INVALID_PRODUCER_EPOCH
    };
    if v <= 3 {
        let parts = partitions_of(&req.v3_and_below_topics);
        // WRITE on the transactional id and on every topic; when a topic is refused, the
        // others are not attempted (as Kafka answers).
        if !b.authorize(
            who,
            crate::acl::op::WRITE,
            crate::acl::resource::TRANSACTIONAL_ID,
            req.v3_and_below_transactional_id.0.as_str(),
        ) {
            let code = kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();
            r.results_by_topic_v3_and_below = results(&req.v3_and_below_topics, |_, _| code);
            return r;
        }
        let denied: std::collections::BTreeSet<String> = parts
            .iter()
            .map(|(t, _)| t.clone())
            .filter(|t| !b.authorize(who, crate::acl::op::WRITE, crate::acl::resource::TOPIC, t))
            .collect();
        if !denied.is_empty() {
            r.results_by_topic_v3_and_below = results(&req.v3_and_below_topics, |t, _| {
                if denied.contains(t) {
                    kafka_protocol::ResponseError::TopicAuthorizationFailed.code()
                } else {
                    kafka_protocol::ResponseError::OperationNotAttempted.code()
                }
            });
            return r;
        }
        let code = coordinator::add_partitions(
            b,
            req.v3_and_below_transactional_id.0.as_str(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &parts,
            fenced,
        )
        .await
        .err()
        .unwrap_or(0);
        r.results_by_topic_v3_and_below = results(&req.v3_and_below_topics, |_, _| code);
        return r;
    }
    // v4+ batches are brokers' verification requests: CLUSTER_ACTION.
    if !b.authorize_cluster(who, crate::acl::op::CLUSTER_ACTION) {
        r.error_code = kafka_protocol::ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    for t in &req.transactions {
        let id = t.transactional_id.0.as_str();
        let topic_results = if t.verify_only {
            results(&t.topics, |topic, p| {
                coordinator::verify_here(
                    b,
                    &VerifyRequest {
                        transactional_id: id.to_string(),
                        producer_id: t.producer_id.0,
                        producer_epoch: t.producer_epoch,
                        topic: topic.to_string(),
                        partition: p,
                        add: false,
                    },
                )
            })
        } else {
            let parts = partitions_of(&t.topics);
            let code = coordinator::add_partitions(b, id, t.producer_id.0, t.producer_epoch, &parts, fenced)
                .await
                .err()
                .unwrap_or(0);
            results(&t.topics, |_, _| code)
        };
        let mut tr = AddPartitionsToTxnResult::default();
        tr.transactional_id = t.transactional_id.clone();
        tr.topic_results = topic_results;
        r.results_by_transaction.push(tr);
    }
    r
}
