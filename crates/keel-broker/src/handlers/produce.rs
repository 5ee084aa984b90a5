//! Produce: validate each partition's batches, append them (offsets assigned by the
//! partition), then wait for durability of all partitions together, bounded by the
//! request's timeout. acks=0 gets no response.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use keel_proto::batch;
use tracing::warn;

use super::s;
use crate::metrics::ErrorLabels;
use crate::partition::{Appended, Partition};
use crate::Broker;

fn failed(index: i32, code: i16, message: Option<String>) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code;
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    p.error_message = message.map(s);
    p
}

fn ok(index: i32, a: &Appended) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.base_offset = a.base_offset;
    p.log_append_time_ms = a.log_append_time;
    p.log_start_offset = a.log_start_offset;
    p
}

pub async fn handle(b: &Arc<Broker>, req: ProduceRequest, _v: i16) -> Option<ProduceResponse> {
    let acks = req.acks;
    let mut responses = Vec::with_capacity(req.topic_data.len());
    // (response slot, partition, last index written) for the durability wait.
    let mut pending: Vec<(usize, usize, Arc<Partition>, u64)> = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        tr.name = topic.name.clone();
        let found = if acks != 0 && acks != 1 && acks != -1 {
            Err(ResponseError::InvalidRequiredAcks.code())
        } else if crate::is_internal_topic(&name) {
            Err(ResponseError::InvalidTopicException.code())
        } else if req.transactional_id.is_some() {
            Err(ResponseError::TransactionalIdAuthorizationFailed.code())
        } else {
            b.topics.get_or_auto_create(&name).await.map_err(|e| e.code)
        };
        for pd in topic.partition_data {
            let index = pd.index;
            let topic = match &found {
                Ok(t) => t,
                Err(code) => {
                    tr.partition_responses.push(failed(index, *code, None));
                    continue;
                }
            };
            let Some(part) = topic.partition(index) else {
                tr.partition_responses
                    .push(failed(index, ResponseError::UnknownTopicOrPartition.code(), None));
                continue;
            };
            let records = pd.records.unwrap_or_default();
            let batches = match batch::split_batches(&records) {
                Ok(x) => x,
                Err(e) => {
                    warn!(topic = %name, partition = index, error = %e, "produce refused");
                    tr.partition_responses
                        .push(failed(index, e.error_code(), Some(e.to_string())));
                    continue;
                }
            };
            if batches.iter().any(|(h, _)| h.is_transactional() || h.is_control()) {
                tr.partition_responses.push(failed(
                    index,
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                    Some("transactional batches are not supported".into()),
                ));
                continue;
            }
            let count: i64 = batches.iter().map(|(h, _)| h.record_count as i64).sum();
            let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
            match part.append(batches, false).await {
                Ok(a) => {
                    b.metrics.produced_records.inc_by(count as u64);
                    b.metrics.produced_bytes.inc_by(bytes as u64);
                    if let Some(last) = a.last_index {
                        pending.push((responses.len(), tr.partition_responses.len(), part.clone(), last));
                    }
                    tr.partition_responses.push(ok(index, &a));
                }
                Err(e) => {
                    warn!(topic = %name, partition = index, error = %e, "append failed");
                    tr.partition_responses
                        .push(failed(index, e.code(), Some(e.to_string())));
                }
            }
        }
        responses.push(tr);
    }
    if acks == 0 {
        return None;
    }
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    for (t, p, part, last) in pending {
        let code = match tokio::time::timeout(timeout, part.wait_durable(last)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.code(),
            Err(_) => ResponseError::RequestTimedOut.code(),
        };
        if let Some(slot) = responses.get_mut(t).and_then(|tr| tr.partition_responses.get_mut(p)) {
            *slot = failed(slot.index, code, None);
        }
    }
    for tr in &responses {
        for p in &tr.partition_responses {
            if p.error_code != 0 {
                b.metrics
                    .request_errors
                    .get_or_create(&ErrorLabels {
                        api: "Produce".into(),
                        code: p.error_code,
                    })
                    .inc();
            }
        }
    }
    let mut r = ProduceResponse::default();
    r.responses = responses;
    Some(r)
}
