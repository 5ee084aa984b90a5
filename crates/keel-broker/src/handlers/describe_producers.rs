//! DescribeProducers (KIP-664): the producers a partition leader remembers, with their
//! epoch, last sequence and the start of an open transaction, as
//! `kafka-transactions describe-producers` and admin clients' `describeProducers` show
//! them (a hanging transaction shows as an old `current_txn_start_offset`). Keel keeps no
//! per-producer timestamp or coordinator epoch: those answer -1.

use std::sync::Arc;

use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeProducersRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeProducersResponse {
    let mut r = DescribeProducersResponse::default();
    for t in req.topics {
        let mut tr = TopicResponse::default();
        tr.name = t.name.clone();
        let topic = b.topics.get(t.name.0.as_str());
        let allowed = b.authorize(
            who,
            crate::acl::op::READ,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        );
        for p in t.partition_indexes {
            let mut pr = PartitionResponse::default();
            pr.partition_index = p;
            match topic.as_ref().and_then(|t| t.partition(p)) {
                _ if !allowed => pr.error_code = ResponseError::TopicAuthorizationFailed.code(),
                None => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(part) => match part.active_producers() {
                    Ok(list) => {
                        pr.active_producers = list
                            .into_iter()
                            .map(|(id, epoch, seq, txn_start)| {
                                let mut ps = ProducerState::default();
                                ps.producer_id = ProducerId(id);
                                ps.producer_epoch = epoch as i32;
                                ps.last_sequence = seq;
                                ps.last_timestamp = -1;
                                ps.coordinator_epoch = -1;
                                ps.current_txn_start_offset = txn_start;
                                ps
                            })
                            .collect();
                    }
                    Err(e) => pr.error_code = e.code(),
                },
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}
