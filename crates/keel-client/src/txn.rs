//! A transactional producer (Kafka's transaction protocol, version 1), for `keel chaos`'s
//! transactional workload: InitProducerId with a transactional id at its coordinator,
//! AddPartitionsToTxn, transactional batches with sequence numbers, EndTxn.
//!
//! It does the least a correct client must: every error ends the transaction (the caller
//! aborts it, or starts over with [`TxnProducer::init`], which fences this instance and
//! aborts whatever it left open).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_proto::batch::NewRecord;

use crate::{kafka_err, Client, KafkaError};

const KEY_TYPE_TRANSACTION: i8 = 1;
/// Errors after which the coordinator is looked up again or the request retried.
fn retriable(code: i16) -> bool {
    // COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
    // CONCURRENT_TRANSACTIONS, REQUEST_TIMED_OUT.
    matches!(code, 14 | 15 | 16 | 51 | 7)
}

fn code_of(e: &anyhow::Error) -> Option<i16> {
    e.downcast_ref::<KafkaError>().map(|k| k.code)
}

pub struct TxnProducer {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    timeout_ms: i32,
    /// Next sequence number per (topic, partition) in this epoch.
    sequences: HashMap<(String, i32), i32>,
}

impl TxnProducer {
    /// The coordinator's address for `id`.
    async fn coordinator(client: &mut Client, id: &str) -> Result<String> {
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(id.to_string()))
            .with_key_type(KEY_TYPE_TRANSACTION);
        let resp = client.call_at(&req, 3).await?;
        if resp.error_code != 0 {
            return Err(kafka_err(
                format!("FindCoordinator {id}"),
                resp.error_code,
                String::new(),
            ));
        }
        Ok(format!("{}:{}", resp.host.as_str(), resp.port))
    }

    /// Sends a coordinator request, retrying (bounded by `deadline`) while the coordinator
    /// moves, loads or finishes the previous transaction.
    async fn at_coordinator<T>(
        client: &mut Client,
        id: &str,
        deadline: tokio::time::Instant,
        mut op: impl for<'c> FnMut(&'c mut Client) -> crate::RoutedFuture<'c, T>,
    ) -> Result<T> {
        loop {
            let r = match Self::coordinator(client, id).await {
                Ok(addr) => match client.at(&addr).await {
                    Ok(c) => op(c).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match r {
                Err(e) if code_of(&e).is_some_and(retriable) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// InitProducerId for `id`: fences any earlier instance and aborts what it left open.
    pub async fn init(client: &mut Client, id: &str, timeout_ms: i32, wait: Duration) -> Result<TxnProducer> {
        let deadline = tokio::time::Instant::now() + wait;
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.to_string()))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let (producer_id, epoch) = Self::at_coordinator(client, id, deadline, |c| {
            let req = req.clone();
            Box::pin(async move {
                let r = c.call_at(&req, 3).await?;
                if r.error_code != 0 {
                    return Err(kafka_err("InitProducerId".into(), r.error_code, String::new()));
                }
                Ok((r.producer_id.0, r.producer_epoch))
            })
        })
        .await?;
        Ok(TxnProducer {
            transactional_id: id.to_string(),
            producer_id,
            epoch,
            timeout_ms,
            sequences: HashMap::new(),
        })
    }

    pub fn timeout_ms(&self) -> i32 {
        self.timeout_ms
    }

    /// AddPartitionsToTxn for `partitions` of `topic`.
    pub async fn add_partitions(
        &mut self,
        client: &mut Client,
        topic: &str,
        partitions: &[i32],
        wait: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        let req = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(self.transactional_id.clone())))
            .with_v3_and_below_producer_id(ProducerId(self.producer_id))
            .with_v3_and_below_producer_epoch(self.epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(partitions.to_vec())]);
        Self::at_coordinator(client, &self.transactional_id.clone(), deadline, |c| {
            let req = req.clone();
            Box::pin(async move {
                let r = c.call_at(&req, 3).await?;
                for t in &r.results_by_topic_v3_and_below {
                    for p in &t.results_by_partition {
                        if p.partition_error_code != 0 {
                            return Err(kafka_err(
                                format!("AddPartitionsToTxn {}-{}", t.name.0.as_str(), p.partition_index),
                                p.partition_error_code,
                                String::new(),
                            ));
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Produces `records` to `topic`-`partition` in the transaction (acks=all); returns the
    /// base offset. Retried only when the request certainly did not store them.
    pub async fn produce(
        &mut self,
        client: &mut Client,
        topic: &str,
        partition: i32,
        records: &[NewRecord],
    ) -> Result<i64> {
        let key = (topic.to_string(), partition);
        let seq = self.sequences.get(&key).copied().unwrap_or(0);
        let batch: Bytes = keel_proto::batch::encode_producer_batch(records, (self.producer_id, self.epoch), seq)?;
        let id = self.transactional_id.clone();
        let t = topic.to_string();
        fn refused(e: &anyhow::Error) -> bool {
            code_of(e).is_some_and(|c| matches!(c, 6 | 5))
        }
        let base = client
            .routed(topic, partition, refused, |c| {
                let (t, batch, id) = (t.clone(), batch.clone(), id.clone());
                Box::pin(async move {
                    let req = ProduceRequest::default()
                        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id))))
                        .with_acks(-1)
                        .with_timeout_ms(10_000)
                        .with_topic_data(vec![TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(t.clone())))
                            .with_partition_data(vec![PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(batch))])]);
                    let resp = c.call(&req).await?;
                    let p = resp
                        .responses
                        .first()
                        .and_then(|t| t.partition_responses.first())
                        .ok_or_else(|| anyhow!("empty produce response"))?;
                    if p.error_code != 0 {
                        return Err(kafka_err(
                            format!("produce to {t}-{partition}"),
                            p.error_code,
                            String::new(),
                        ));
                    }
                    Ok(p.base_offset)
                })
            })
            .await?;
        self.sequences.insert(key, seq.wrapping_add(records.len() as i32));
        Ok(base)
    }

    /// EndTxn: commits or aborts the transaction.
    pub async fn end(&mut self, client: &mut Client, commit: bool, wait: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(self.transactional_id.clone())))
            .with_producer_id(ProducerId(self.producer_id))
            .with_producer_epoch(self.epoch)
            .with_committed(commit);
        Self::at_coordinator(client, &self.transactional_id.clone(), deadline, |c| {
            let req = req.clone();
            Box::pin(async move {
                let r = c.call_at(&req, 3).await?;
                if r.error_code != 0 {
                    return Err(kafka_err("EndTxn".into(), r.error_code, String::new()));
                }
                Ok(())
            })
        })
        .await
    }
}

/// One transactional id as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub partitions: Vec<(String, i32)>,
}

impl Client {
    /// ListTransactions at the transaction coordinator: (id, producer id, state), filtered by
    /// `states` (none: all).
    pub async fn list_transactions(&mut self, states: &[String]) -> Result<Vec<(String, i64, String)>> {
        let addr = TxnProducer::coordinator(self, "").await?;
        let req = ListTransactionsRequest::default()
            .with_state_filters(states.iter().map(|s| StrBytes::from_string(s.clone())).collect())
            .with_duration_filter(-1);
        let c = self.at(&addr).await?;
        let r = c.call_at(&req, 1).await?;
        if r.error_code != 0 {
            return Err(kafka_err("ListTransactions".into(), r.error_code, String::new()));
        }
        Ok(r.transaction_states
            .iter()
            .map(|t| {
                (
                    t.transactional_id.0.to_string(),
                    t.producer_id.0,
                    t.transaction_state.to_string(),
                )
            })
            .collect())
    }

    /// DescribeTransactions for one transactional id, at its coordinator.
    pub async fn describe_transaction(&mut self, id: &str) -> Result<TxnDescription> {
        let addr = TxnProducer::coordinator(self, id).await?;
        let req = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.to_string()))]);
        let c = self.at(&addr).await?;
        let r = c.call_at(&req, 0).await?;
        let t = r
            .transaction_states
            .first()
            .ok_or_else(|| anyhow!("empty DescribeTransactions response"))?;
        if t.error_code != 0 {
            return Err(kafka_err(
                format!("DescribeTransactions {id}"),
                t.error_code,
                String::new(),
            ));
        }
        Ok(TxnDescription {
            transactional_id: id.to_string(),
            state: t.transaction_state.to_string(),
            producer_id: t.producer_id.0,
            producer_epoch: t.producer_epoch,
            timeout_ms: t.transaction_timeout_ms,
            start_ms: t.transaction_start_time_ms,
            partitions: t
                .topics
                .iter()
                .flat_map(|tp| tp.partitions.iter().map(move |p| (tp.topic.0.to_string(), *p)))
                .collect(),
        })
    }
}
