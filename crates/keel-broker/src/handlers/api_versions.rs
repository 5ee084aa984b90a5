//! ApiVersions: exactly the APIs and versions Keel serves, and (to Apache Kafka's Java
//! client) the `transaction.version` feature at 2, so its 4.x releases use transaction
//! version 2 (KIP-890 part 2).

use std::sync::Arc;

use kafka_protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey, SupportedFeatureKey};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;
use keel_proto::versions::SUPPORTED;

use super::s;
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

/// The feature telling clients transaction version 2 (KIP-890 part 2) is on.
const TRANSACTION_VERSION: &str = "transaction.version";
/// Clients told about features: Apache Kafka's Java client, whose 4.x releases use
/// transaction version 2 when it is finalized.
const FEATURE_CLIENTS: &[&str] = &["apache-kafka-java"];

pub async fn handle(
    _b: &Arc<Broker>,
    req: ApiVersionsRequest,
    v: i16,
    _who: &crate::handlers::sasl::Session,
) -> ApiVersionsResponse {
    let r = ApiVersionsResponse::default().with_api_keys(api_keys());
    // Features are tagged fields of v3, which librdkafka before 2.2 mis-parses (Debian's
    // kcat links 2.0.2): they go only to clients known to read them.
    if v < 3 || !FEATURE_CLIENTS.contains(&req.client_software_name.as_str()) {
        return r;
    }
    let name = s(TRANSACTION_VERSION);
    r.with_supported_features(vec![SupportedFeatureKey::default()
        .with_name(name.clone())
        .with_min_version(0)
        .with_max_version(2)])
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(name)
            .with_min_version_level(2)
            .with_max_version_level(2)])
        .with_finalized_features_epoch(1)
}

/// The KIP-511 answer to an ApiVersions request of a version Keel does not know: encoded
/// as v0, UNSUPPORTED_VERSION, with the supported ranges so the client can retry.
pub fn unsupported() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys())
}
