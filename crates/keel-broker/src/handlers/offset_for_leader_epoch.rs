//! OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ended, so a consumer that
//! sees a new leader can check that the records it read are still in the log (and detect
//! truncation when they are not). Leader epochs are Raft terms, as in record batches and
//! Metadata.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> OffsetForLeaderEpochResponse {
    let mut r = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic.clone();
        let topic = b.topics.get(t.topic.0.as_str());
        let allowed = b.authorize(
            who,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TOPIC,
            t.topic.0.as_str(),
        );
        for p in t.partitions {
            let mut pr = EpochEndOffset::default();
            pr.partition = p.partition;
            pr.leader_epoch = -1;
            pr.end_offset = -1;
            if !allowed {
                pr.error_code = ResponseError::TopicAuthorizationFailed.code();
                tr.partitions.push(pr);
                continue;
            }
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                pr.error_code = super::not_hosted(topic.as_ref(), p.partition);
                tr.partitions.push(pr);
                continue;
            };
            let term = part.group().term().min(i32::MAX as u64) as i32;
            if p.current_leader_epoch >= 0 && p.current_leader_epoch < term {
                pr.error_code = ResponseError::FencedLeaderEpoch.code();
            } else if p.current_leader_epoch > term {
                pr.error_code = ResponseError::UnknownLeaderEpoch.code();
            } else {
                match part.end_offset_for_epoch(p.leader_epoch) {
                    Ok((epoch, end)) => {
                        pr.leader_epoch = epoch;
                        pr.end_offset = end;
                    }
                    Err(e) => pr.error_code = e.code(),
                }
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}
