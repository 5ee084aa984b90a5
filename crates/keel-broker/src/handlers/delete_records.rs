//! DeleteRecords: moves partitions' log start offsets forward (kafka-delete-records,
//! AdminClient.deleteRecords). The request becomes a control record in each partition's
//! log, so every replica deletes at the same offset; whole segments below it are removed.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: DeleteRecordsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DeleteRecordsResponse {
    let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
    let mut r = DeleteRecordsResponse::default();
    for t in req.topics {
        let mut tr = DeleteRecordsTopicResult::default();
        tr.name = t.name.clone();
        let topic = b.topics.get(t.name.0.as_str());
        let allowed = b.authorize(
            who,
            crate::acl::op::DELETE,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        );
        for p in t.partitions {
            let mut pr = DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            pr.low_watermark = -1;
            let part = topic.as_ref().and_then(|t| t.partition(p.partition_index));
            match part {
                _ if !allowed => pr.error_code = ResponseError::TopicAuthorizationFailed.code(),
                None => pr.error_code = super::not_hosted(topic.as_ref(), p.partition_index),
                Some(_) if crate::is_internal_topic(t.name.0.as_str()) => {
                    pr.error_code = ResponseError::PolicyViolation.code()
                }
                Some(part) if !part.is_leader() => pr.error_code = ResponseError::NotLeaderOrFollower.code(),
                Some(part) => match tokio::time::timeout(timeout, part.delete_records(p.offset)).await {
                    Ok(Ok(low)) => pr.low_watermark = low,
                    Ok(Err(e)) => pr.error_code = e.code(),
                    Err(_) => pr.error_code = ResponseError::RequestTimedOut.code(),
                },
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    for t in &r.topics {
        for p in &t.partitions {
            let resource = format!("{}-{}", t.name.0.as_str(), p.partition_index);
            b.audit.change(who, "DeleteRecords", "TOPIC", &resource, p.error_code);
        }
    }
    r
}
