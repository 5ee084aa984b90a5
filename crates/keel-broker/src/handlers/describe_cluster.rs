//! DescribeCluster: the cluster's nodes, the cluster id and the controller's leader.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::Broker;

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeClusterRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    // Endpoint type 2 asks for controllers, which a single node does not list separately.
    if req.endpoint_type != 1 {
        r.error_code = ResponseError::UnsupportedEndpointType.code();
        r.error_message = Some(s("only broker endpoints are described"));
        return r;
    }
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        r.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    r.cluster_id = s(b.config.cluster_id.clone());
    r.controller_id = BrokerId(b.controller_id());
    r.endpoint_type = 1;
    r.brokers = super::metadata::nodes(b, &who.listener)
        .into_iter()
        .map(|(id, host, port)| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(id);
            broker.host = s(host);
            broker.port = port;
            broker.rack = super::metadata::rack_of(b, id).map(s);
            broker
        })
        .collect();
    r.cluster_authorized_operations = if req.include_cluster_authorized_operations {
        CLUSTER_OPS
    } else {
        i32::MIN
    };
    r
}

/// ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE, CREATE.
const CLUSTER_OPS: i32 = (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
