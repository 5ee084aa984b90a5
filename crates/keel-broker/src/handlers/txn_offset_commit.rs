//! TxnOffsetCommit: a transaction's consumed offsets, logged at the group coordinator as
//! part of the transaction and visible to the group only once it commits. From v5
//! (transaction version 2) the offsets partition joins the transaction here, without an
//! AddOffsetsToTxn first.

use std::sync::Arc;

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::group::offsets::{CommittedOffset, METADATA_BYTES_MAX, OFFSETS_TOPIC};
use crate::txn::coordinator::{self, VerifyRequest};
use crate::Broker;

const OFFSET_METADATA_TOO_LARGE: i16 = 12;

pub async fn handle(
    b: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> TxnOffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // WRITE on the transactional id, READ on the group and on every topic.
    let mut code = if !b.authorize(
        who,
        crate::acl::op::WRITE,
        crate::acl::resource::TRANSACTIONAL_ID,
        req.transactional_id.0.as_str(),
    ) {
        kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code()
    } else if !b.authorize(who, crate::acl::op::READ, crate::acl::resource::GROUP, &group) {
        kafka_protocol::ResponseError::GroupAuthorizationFailed.code()
    } else if req.topics.iter().any(|t| {
        !b.authorize(
            who,
            crate::acl::op::READ,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        )
    }) {
        kafka_protocol::ResponseError::TopicAuthorizationFailed.code()
    } else {
        b.coordinator_error().unwrap_or(0)
    };
    if code == 0 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
        code = b
            .groups
            .commit_allowed(
                &group,
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|s| s.as_str()),
                req.generation_id,
            )
            .await;
    }
    let now = keel_log::disk::now_ms();
    let mut offsets = Vec::new();
    let mut too_large = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            if metadata.as_ref().is_some_and(|m| m.len() > METADATA_BYTES_MAX) {
                too_large.push((t.name.0.to_string(), p.partition_index));
                continue;
            }
            offsets.push((
                (t.name.0.to_string(), p.partition_index),
                CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                    commit_ms: now,
                },
            ));
        }
    }
    if code == 0 {
        // The offsets partition writes this producer's transactional batch only once the
        // coordinator confirms the transaction includes it (AddOffsetsToTxn).
        let partition = b.groups.offsets.partition();
        if partition.txn_needs_verification(req.producer_id.0, req.producer_epoch) {
            code = coordinator::verify_write(
                b,
                &partition,
                VerifyRequest {
                    transactional_id: req.transactional_id.0.to_string(),
                    producer_id: req.producer_id.0,
                    producer_epoch: req.producer_epoch,
                    topic: OFFSETS_TOPIC.to_string(),
                    partition: 0,
                    // v5 (transaction version 2): no AddOffsetsToTxn came first.
                    add: v >= 5,
                },
            )
            .await;
        }
    }
    if code == 0 {
        if let Err(e) = b
            .groups
            .offsets
            .commit_transactional(&group, (req.producer_id.0, req.producer_epoch), offsets)
            .await
        {
            tracing::warn!(group = %group, error = %e, "transactional offset commit failed");
            code = e.code();
        }
    }
    let mut r = TxnOffsetCommitResponse::default();
    r.topics = req
        .topics
        .iter()
        .map(|t| {
            let mut tr = TxnOffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = TxnOffsetCommitResponsePartition::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = if too_large.contains(&(t.name.0.to_string(), p.partition_index)) {
                        OFFSET_METADATA_TOO_LARGE
                    } else {
                        code
                    };
                    pr
                })
                .collect();
            tr
        })
        .collect();
    r
}
