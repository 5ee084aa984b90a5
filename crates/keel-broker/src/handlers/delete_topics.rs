//! DeleteTopics: by name (v1-5) or by name or id (v6).

use std::sync::Arc;

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: DeleteTopicsRequest,
    v: i16,
    who: &crate::handlers::sasl::Session,
) -> DeleteTopicsResponse {
    let mut r = DeleteTopicsResponse::default();
    let targets: Vec<(Option<String>, uuid::Uuid)> = if v >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    for (name, id) in targets {
        let mut res = DeletableTopicResult::default();
        res.topic_id = id;
        let name = match name {
            Some(n) => Some(n),
            None => b.topics.by_id(id).map(|t| t.meta().name),
        };
        res.name = name.clone().map(|n| TopicName(s(n)));
        match name {
            None => res.error_code = ResponseError::UnknownTopicId.code(),
            Some(n) if !b.authorize(who, crate::acl::op::DELETE, crate::acl::resource::TOPIC, &n) => {
                res.error_code = ResponseError::TopicAuthorizationFailed.code()
            }
            Some(n) => match b.topics.delete(&n).await {
                Ok(deleted_id) => {
                    res.topic_id = deleted_id;
                    if let Err(e) = b.groups.offsets.delete_topic(&n).await {
                        tracing::warn!(topic = %n, error = %e, "could not remove committed offsets of the deleted topic");
                    }
                }
                Err(e) => {
                    res.error_code = e.code;
                    res.error_message = Some(s(e.message));
                }
            },
        }
        r.responses.push(res);
    }
    for t in &r.responses {
        let name = t
            .name
            .as_ref()
            .map(|n| n.0.to_string())
            .unwrap_or_else(|| t.topic_id.to_string());
        b.audit.change(who, "DeleteTopics", "TOPIC", &name, t.error_code);
    }
    r
}
