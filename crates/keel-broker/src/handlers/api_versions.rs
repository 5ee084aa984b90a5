//! ApiVersions: exactly the APIs and versions Keel serves.

use std::sync::Arc;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;
use keel_proto::versions::SUPPORTED;

use crate::Broker;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect()
}

pub async fn handle(_b: &Arc<Broker>, _req: ApiVersionsRequest, _v: i16) -> ApiVersionsResponse {
    // No tagged fields: librdkafka before 2.2 mis-parses them in a v3 response.
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

/// The KIP-511 answer to an ApiVersions request of a version Keel does not know: encoded
/// as v0, UNSUPPORTED_VERSION, with the supported ranges so the client can retry.
pub fn unsupported() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys())
}
