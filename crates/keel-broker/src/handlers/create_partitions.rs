//! CreatePartitions: grow a topic; new partitions live on this node.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: CreatePartitionsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> CreatePartitionsResponse {
    let mut r = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut res = CreatePartitionsTopicResult::default();
        res.name = t.name.clone();
        let node = b.config.node_id;
        let bad_assignment = t
            .assignments
            .as_ref()
            .map(|a| a.iter().any(|x| x.broker_ids.len() != 1 || x.broker_ids[0].0 != node))
            .unwrap_or(false);
        if !b.authorize(
            who,
            crate::acl::op::ALTER,
            crate::acl::resource::TOPIC,
            t.name.0.as_str(),
        ) {
            res.error_code = ResponseError::TopicAuthorizationFailed.code();
        } else if bad_assignment {
            res.error_code = ResponseError::InvalidReplicaAssignment.code();
            res.error_message = Some(s(format!("new partitions must be assigned to broker {node} alone")));
        } else if let Err(e) = b
            .topics
            .create_partitions(t.name.0.as_str(), t.count, req.validate_only)
            .await
        {
            res.error_code = e.code;
            res.error_message = Some(s(e.message));
        }
        r.results.push(res);
    }
    for t in &r.results {
        b.audit
            .change(who, "CreatePartitions", "TOPIC", t.name.0.as_str(), t.error_code);
    }
    r
}
