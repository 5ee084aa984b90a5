//! ListOffsets: earliest (-2), latest (-1: the high watermark, or the last stable offset
//! for `read_committed`) and by timestamp.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// `isolation_level` of a consumer that reads only committed transactions: its latest
/// offset is the last stable offset.
const READ_COMMITTED: i8 = 1;

pub async fn handle(
    b: &Arc<Broker>,
    req: ListOffsetsRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for t in req.topics {
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        let topic = b.topics.get(t.name.0.as_str());
        let allowed = b.authorize(
            who,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        );
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            if !allowed {
                pr.error_code = ResponseError::TopicAuthorizationFailed.code();
                tr.partitions.push(pr);
                continue;
            }
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                pr.error_code = super::not_hosted(topic.as_ref(), p.partition_index);
                tr.partitions.push(pr);
                continue;
            };
            if !part.is_leader() {
                pr.error_code = ResponseError::NotLeaderOrFollower.code();
                tr.partitions.push(pr);
                continue;
            }
            if v >= 4 {
                pr.leader_epoch = part.group().term().min(i32::MAX as u64) as i32;
            }
            match p.timestamp {
                LATEST if req.isolation_level == READ_COMMITTED => pr.offset = part.last_stable_offset(),
                LATEST => pr.offset = part.high_watermark(),
                EARLIEST => pr.offset = part.log_start_offset(),
                ts if ts >= 0 => match part.offset_for_timestamp(ts) {
                    Ok(Some((offset, found_ts))) => {
                        pr.offset = offset;
                        pr.timestamp = found_ts;
                    }
                    Ok(None) => {}
                    Err(e) => pr.error_code = e.code(),
                },
                _ => pr.error_code = ResponseError::UnsupportedVersion.code(),
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}
