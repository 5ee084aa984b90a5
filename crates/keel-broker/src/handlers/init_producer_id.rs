//! InitProducerId: ids for idempotent producers (transactions are not served).

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tracing::{error, warn};

use crate::Broker;

pub async fn handle(b: &Arc<Broker>, req: InitProducerIdRequest, _v: i16) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        warn!("InitProducerId with a transactional id refused: transactions are not supported");
        r.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        r.producer_id = ProducerId(-1);
        r.producer_epoch = -1;
        return r;
    }
    // KIP-360: a producer that knows its id asks for the next epoch.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        r.producer_id = req.producer_id;
        r.producer_epoch = req.producer_epoch + 1;
        return r;
    }
    match b.producer_ids.allocate() {
        Ok(id) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Err(e) => {
            error!(error = %e, "could not persist the producer id block");
            r.error_code = ResponseError::KafkaStorageError.code();
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
        }
    }
    r
}
