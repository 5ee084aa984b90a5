//! Produce: validate each partition's batches, replicate every partition's batches
//! concurrently (offsets assigned as the leader's log appends them), and answer once all
//! are committed, bounded by the request's timeout. acks=0 gets no response.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::ResponseError;
use keel_proto::batch;
use tracing::warn;

use super::s;
use crate::cluster::partition::{Acks, AppendWait, Appended};
use crate::error::PartitionError;
use crate::metrics::ErrorLabels;
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

/// Most bytes a compressed batch may inflate to when its records must be looked at.
const INFLATED_BATCH_MAX: usize = 64 << 20;

/// A compacted topic takes only records with keys. Returns the refusal (INVALID_RECORD,
/// naming each keyless record by its index in the batch, as Kafka does) when a batch
/// holds one.
fn keyless(
    topic: &str,
    index: i32,
    batches: &[(batch::BatchHeader, bytes::Bytes)],
) -> Option<PartitionProduceResponse> {
    for (_, bytes) in batches {
        let bad = match batch::keyless_records(bytes, INFLATED_BATCH_MAX) {
            Ok(bad) if bad.is_empty() => continue,
            Ok(bad) => bad,
            Err(e) => return Some(failed(index, e.error_code(), Some(e.to_string()))),
        };
        let message = format!("Compacted topic cannot accept message without key in topic partition {topic}-{index}.");
        let mut p = failed(index, ResponseError::InvalidRecord.code(), Some(message.clone()));
        p.record_errors = bad
            .into_iter()
            .map(|i| {
                let mut e = BatchIndexAndErrorMessage::default();
                e.batch_index = i;
                e.batch_index_error_message = Some(s(message.clone()));
                e
            })
            .collect();
        return Some(p);
    }
    None
}

/// The batches recompressed with `codec` (a topic's compression.type), off the async
/// workers; batches already in `codec` are kept as sent.
async fn recompressed(
    batches: Vec<(batch::BatchHeader, bytes::Bytes)>,
    codec: i16,
) -> Result<Vec<(batch::BatchHeader, bytes::Bytes)>, keel_proto::ProtoError> {
    if batches.iter().all(|(h, _)| h.compression() == codec) {
        return Ok(batches);
    }
    let work = move || {
        batches
            .into_iter()
            .map(|(_, b)| {
                let out = batch::recompress(&b, codec, INFLATED_BATCH_MAX)?;
                Ok((batch::BatchHeader::parse(&out)?, out))
            })
            .collect()
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(keel_proto::ProtoError::Malformed(format!("recompression failed: {e}"))))
}

/// Produce v0-2: each partition's legacy message set becomes one v2 batch (see
/// `keel_proto::legacy`), then the request is served as a v3 one; a set that cannot be
/// converted gets its error code. Returns (topic, answers) in the request's order, or
/// `None` for acks=0.
pub async fn handle_legacy(
    b: &Arc<Broker>,
    req: keel_proto::legacy::ProduceV0,
    who: &crate::handlers::sasl::Session,
) -> Option<Vec<(String, Vec<keel_proto::legacy::PartitionAnswer>)>> {
    use keel_proto::legacy::{upconvert, PartitionAnswer};
    let mut refused: std::collections::HashMap<(String, i32), i16> = Default::default();
    let mut topic_data = Vec::new();
    for (name, parts) in &req.topics {
        let mut partition_data = Vec::new();
        for (index, set) in parts {
            match upconvert(set, INFLATED_BATCH_MAX) {
                Ok(batch) => {
                    let mut pd = PartitionProduceData::default();
                    pd.index = *index;
                    pd.records = Some(batch);
                    partition_data.push(pd);
                }
                Err(e) => {
                    warn!(topic = %name, partition = index, error = %e, "legacy produce refused");
                    refused.insert((name.clone(), *index), e.error_code());
                }
            }
        }
        let mut td = TopicProduceData::default();
        td.name = TopicName(s(name.clone()));
        td.partition_data = partition_data;
        topic_data.push(td);
    }
    let mut v3 = ProduceRequest::default();
    v3.acks = req.acks;
    v3.timeout_ms = req.timeout_ms;
    v3.topic_data = topic_data;
    let resp = handle(b, v3, 3, who).await?;
    let answered: std::collections::HashMap<(String, i32), &PartitionProduceResponse> = resp
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(move |p| ((t.name.0.to_string(), p.index), p))
        })
        .collect();
    Some(
        req.topics
            .iter()
            .map(|(name, parts)| {
                let answers = parts
                    .iter()
                    .map(|(index, _)| {
                        let key = (name.clone(), *index);
                        match (refused.get(&key), answered.get(&key)) {
                            (None, Some(p)) => PartitionAnswer {
                                partition: *index,
                                error_code: p.error_code,
                                base_offset: p.base_offset,
                                log_append_time: p.log_append_time_ms,
                            },
                            (code, _) => PartitionAnswer {
                                partition: *index,
                                error_code: code.copied().unwrap_or(ResponseError::UnknownServerError.code()),
                                base_offset: -1,
                                log_append_time: -1,
                            },
                        }
                    })
                    .collect();
                (name.clone(), answers)
            })
            .collect(),
    )
}

/// One partition's replication in flight: where its answer goes and what it carries.
struct Pending {
    topic: usize,
    slot: usize,
    wait: Result<AppendWait, PartitionError>,
    records: u64,
    bytes: u64,
}

/// Serves a Produce request whole.
pub async fn handle(
    b: &Arc<Broker>,
    req: ProduceRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> Option<ProduceResponse> {
    start(b, req, v, who).await.await
}

/// Validates every partition's batches and hands them to the partitions' logs, in the
/// request's order, then returns the wait for their acknowledgements (bounded by the
/// request's timeout), which yields the response (`None` for acks=0). A connection may
/// start its next Produce request while this one's wait is pending: its batches are logged
/// after this one's.
pub async fn start(
    b: &Arc<Broker>,
    req: ProduceRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> impl std::future::Future<Output = Option<ProduceResponse>> + Send + 'static {
    let acks = req.acks;
    let mut responses = Vec::with_capacity(req.topic_data.len());
    // (response slot, partition slot, replication task) for the commit wait.
    let mut pending: Vec<Pending> = Vec::new();
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    // A transactional producer needs WRITE on its transactional id; every topic, WRITE.
    let txn_allowed = req.transactional_id.as_ref().is_none_or(|id| {
        b.authorize(
            who,
            crate::acl::op::WRITE,
            crate::acl::resource::TRANSACTIONAL_ID,
            id.as_str(),
        )
    });
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        tr.name = topic.name.clone();
        let found = if acks != 0 && acks != 1 && acks != -1 {
            Err(ResponseError::InvalidRequiredAcks.code())
        } else if !txn_allowed {
            Err(ResponseError::TransactionalIdAuthorizationFailed.code())
        } else if !b.authorize(who, crate::acl::op::WRITE, crate::acl::resource::TOPIC, &name) {
            Err(ResponseError::TopicAuthorizationFailed.code())
        } else if crate::is_internal_topic(&name) {
            Err(ResponseError::InvalidTopicException.code())
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
                    .push(failed(index, super::not_hosted(Some(topic), index), None));
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
            if let Some(refused) = transactional_check(b, &req.transactional_id, &name, index, &part, &batches, v).await
            {
                tr.partition_responses.push(refused);
                continue;
            }
            let settings = part.settings();
            if settings.compacted {
                if let Some(refused) = keyless(&name, index, &batches) {
                    tr.partition_responses.push(refused);
                    continue;
                }
            }
            let batches = match settings.compression {
                None => batches,
                Some(codec) => match recompressed(batches, codec).await {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(topic = %name, partition = index, error = %e, "produce refused");
                        tr.partition_responses
                            .push(failed(index, e.error_code(), Some(e.to_string())));
                        continue;
                    }
                },
            };
            let count: i64 = batches.iter().map(|(h, _)| h.record_count as i64).sum();
            let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
            let wait = part.append_start(batches, Acks::from_kafka(acks)).await;
            pending.push(Pending {
                topic: responses.len(),
                slot: tr.partition_responses.len(),
                wait,
                records: count as u64,
                bytes: bytes as u64,
            });
            tr.partition_responses
                .push(failed(index, ResponseError::RequestTimedOut.code(), None));
        }
        responses.push(tr);
    }
    let b = b.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    async move {
        if acks == 0 {
            return None;
        }
        answer(&b, responses, pending, deadline).await
    }
}

/// The first Produce version of transaction version 2 producers (KIP-890 part 2).
const TRANSACTION_V2_PRODUCE: i16 = 12;

/// Refuses control batches (only coordinators write markers) and batches without the
/// sequence numbers idempotence needs; verifies a producer's first transactional batch to
/// the partition with its coordinator (KIP-890).
async fn transactional_check(
    b: &Arc<Broker>,
    transactional_id: &Option<kafka_protocol::messages::TransactionalId>,
    topic: &str,
    index: i32,
    part: &Arc<crate::cluster::partition::Partition>,
    batches: &[(batch::BatchHeader, bytes::Bytes)],
    v: i16,
) -> Option<PartitionProduceResponse> {
    if batches
        .iter()
        .any(|(h, _)| h.is_control() || (h.producer_id >= 0 && h.base_sequence < 0))
    {
        return Some(failed(
            index,
            ResponseError::InvalidRecord.code(),
            Some("clients may not write control batches or producer batches without sequence numbers".into()),
        ));
    }
    let (h, _) = batches.iter().find(|(h, _)| h.is_transactional())?;
    let Some(id) = transactional_id.as_ref().filter(|id| !id.0.is_empty()) else {
        return Some(failed(
            index,
            ResponseError::InvalidTxnState.code(),
            Some("a transactional batch needs the request's transactional id".into()),
        ));
    };
    if batches
        .iter()
        .any(|(o, _)| !o.is_transactional() || o.producer_id != h.producer_id || o.producer_epoch != h.producer_epoch)
    {
        return Some(failed(index, ResponseError::InvalidRecord.code(), None));
    }
    if !part.txn_needs_verification(h.producer_id, h.producer_epoch) {
        return None;
    }
    let code = crate::txn::coordinator::verify_write(
        b,
        part,
        crate::txn::coordinator::VerifyRequest {
            transactional_id: id.0.to_string(),
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            topic: topic.to_string(),
            partition: index,
            // Produce v12 comes from transaction version 2 producers, which send no
            // AddPartitionsToTxn: the partition joins the transaction here.
            add: v >= TRANSACTION_V2_PRODUCE,
        },
    )
    .await;
    // As Kafka does, the coordinator's transient answers (busy finishing the previous
    // transaction, moving, loading) reach the producer as NOT_ENOUGH_REPLICAS, which every
    // client retries.
    let code = match code {
        51 | 14 | 15 | 16 => ResponseError::NotEnoughReplicas.code(),
        c => c,
    };
    (code != 0).then(|| {
        failed(
            index,
            code,
            Some("the transaction coordinator does not confirm this partition".into()),
        )
    })
}

async fn answer(
    b: &Broker,
    mut responses: Vec<TopicProduceResponse>,
    pending: Vec<Pending>,
    deadline: tokio::time::Instant,
) -> Option<ProduceResponse> {
    for p in pending {
        let Some(slot) = responses
            .get_mut(p.topic)
            .and_then(|tr| tr.partition_responses.get_mut(p.slot))
        else {
            continue;
        };
        let result = match p.wait {
            Ok(wait) => match tokio::time::timeout_at(deadline, wait).await {
                Ok(r) => r,
                Err(_) => Err(PartitionError::Replication(
                    "not committed within the request timeout".into(),
                )),
            },
            Err(e) => Err(e),
        };
        *slot = match result {
            Ok(a) => {
                b.metrics.produced_records.inc_by(p.records);
                b.metrics.produced_bytes.inc_by(p.bytes);
                ok(slot.index, &a)
            }
            Err(e) => {
                if !matches!(e, PartitionError::NotLeader) {
                    warn!(partition = slot.index, error = %e, "produce failed");
                }
                failed(slot.index, e.code(), Some(e.to_string()))
            }
        };
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
