//! The API versions Keel advertises in ApiVersions: exactly those its handlers serve.

use kafka_protocol::messages::ApiKey;

/// One advertised API: key and inclusive version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

/// The lowest Produce version the message crate decodes; versions 0-2 (the pre-0.11
/// message format) are decoded and converted by [`crate::legacy`].
pub const PRODUCE_DECODE_MIN: i16 = 3;

const fn s(key: ApiKey, min: i16, max: i16) -> Supported {
    Supported { key, min, max }
}

/// Every API Keel serves. Produce v0-2 carry the pre-0.11 message format, which is
/// converted to v2 batches on the way in (see [`crate::legacy`]).
pub const SUPPORTED: &[Supported] = &[
    s(ApiKey::Produce, 0, 12),
    s(ApiKey::Fetch, 4, 12),
    s(ApiKey::ListOffsets, 1, 6),
    s(ApiKey::Metadata, 0, 12),
    s(ApiKey::ApiVersions, 0, 3),
    s(ApiKey::CreateTopics, 2, 7),
    s(ApiKey::DeleteTopics, 1, 6),
    s(ApiKey::InitProducerId, 0, 4),
    s(ApiKey::DescribeConfigs, 1, 4),
    s(ApiKey::CreatePartitions, 0, 3),
    s(ApiKey::DescribeCluster, 0, 1),
    s(ApiKey::FindCoordinator, 0, 4),
    s(ApiKey::JoinGroup, 0, 7),
    s(ApiKey::SyncGroup, 0, 5),
    s(ApiKey::Heartbeat, 0, 4),
    s(ApiKey::LeaveGroup, 0, 4),
    s(ApiKey::OffsetCommit, 2, 8),
    s(ApiKey::OffsetFetch, 1, 7),
    s(ApiKey::ListGroups, 0, 4),
    s(ApiKey::DescribeGroups, 0, 5),
    s(ApiKey::DeleteGroups, 0, 2),
    s(ApiKey::OffsetDelete, 0, 0),
    s(ApiKey::AlterConfigs, 0, 2),
    s(ApiKey::IncrementalAlterConfigs, 0, 1),
    s(ApiKey::AlterPartitionReassignments, 0, 1),
    s(ApiKey::ListPartitionReassignments, 0, 0),
    s(ApiKey::UnregisterBroker, 0, 0),
    s(ApiKey::DeleteRecords, 0, 2),
    s(ApiKey::OffsetForLeaderEpoch, 2, 4),
    s(ApiKey::DescribeLogDirs, 1, 4),
    s(ApiKey::ElectLeaders, 0, 2),
    s(ApiKey::DescribeProducers, 0, 0),
    s(ApiKey::DescribeQuorum, 0, 2),
    s(ApiKey::AddRaftVoter, 0, 0),
    s(ApiKey::RemoveRaftVoter, 0, 0),
    s(ApiKey::DescribeTopicPartitions, 0, 0),
    // ACLs (v1+: resource patterns, KIP-290).
    s(ApiKey::CreateAcls, 1, 3),
    s(ApiKey::DescribeAcls, 1, 3),
    s(ApiKey::DeleteAcls, 1, 3),
    // Client quotas (KIP-546).
    s(ApiKey::DescribeClientQuotas, 0, 1),
    s(ApiKey::AlterClientQuotas, 0, 1),
    // SCRAM users (KIP-554).
    s(ApiKey::DescribeUserScramCredentials, 0, 0),
    s(ApiKey::AlterUserScramCredentials, 0, 0),
    // Transactions, versions 1 and 2 (KIP-890: partition leaders verify, and from Produce
    // v12, EndTxn v5 and TxnOffsetCommit v5 add partitions themselves and bump the epoch
    // at every end).
    s(ApiKey::AddPartitionsToTxn, 0, 5),
    s(ApiKey::AddOffsetsToTxn, 0, 4),
    s(ApiKey::EndTxn, 0, 5),
    s(ApiKey::TxnOffsetCommit, 0, 5),
    s(ApiKey::DescribeTransactions, 0, 0),
    s(ApiKey::ListTransactions, 0, 1),
    // SaslHandshake v0 hands the connection to bare SASL tokens (Kafka 0.10's clients;
    // librdkafka 2.0 looks for v0 before it offers SASL at all), v1 to SaslAuthenticate.
    s(ApiKey::SaslHandshake, 0, 1),
    s(ApiKey::SaslAuthenticate, 0, 2),
];

/// The advertised range for `api_key`, if Keel serves it.
pub fn supported(api_key: i16) -> Option<Supported> {
    SUPPORTED.iter().copied().find(|s| s.key as i16 == api_key)
}

/// Whether a request of this key and version can be decoded and served.
pub fn is_servable(api_key: i16, version: i16) -> bool {
    match supported(api_key) {
        Some(s) => (s.min..=s.max).contains(&version),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    /// Every advertised maximum is one the message crate can decode and encode.
    #[test]
    fn advertised_versions_are_decodable() {
        for s in SUPPORTED {
            let r = s.key.valid_versions();
            assert!(s.max <= r.max, "{:?} advertises {} > {}", s.key, s.max, r.max);
            if s.key != ApiKey::Produce {
                assert!(s.min >= r.min, "{:?} advertises min {} < {}", s.key, s.min, r.min);
            }
        }
        assert_eq!(ProduceRequest::VERSIONS.min, PRODUCE_DECODE_MIN);
    }

    /// Produce v0-2 are served (converted), Fetch below 4 is not.
    #[test]
    fn servable_ranges() {
        assert!(is_servable(0, 0));
        assert!(is_servable(0, 2));
        assert!(is_servable(0, 3));
        assert!(!is_servable(1, 3));
        assert!(is_servable(18, 3));
        assert!(!is_servable(18, 4));
        assert!(!is_servable(999, 0));
    }
}
