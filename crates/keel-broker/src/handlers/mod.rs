//! One module per Kafka API. Each takes the decoded request and returns the response;
//! partition- and topic-level failures are error codes inside the response.

pub mod acls;
pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod client_quotas;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod elect_leaders;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod raft_voters;
pub mod sasl;
pub mod scram_credentials;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod unregister_broker;

use kafka_protocol::protocol::StrBytes;

/// A response string from a Rust string.
/// The error for a partition this node holds no replica of: NOT_LEADER_OR_FOLLOWER when
/// the partition exists (it lives on other nodes, or just moved away: the client refreshes
/// its metadata and asks the leader, as Kafka's brokers answer), UNKNOWN_TOPIC_OR_PARTITION
/// when it does not. librdkafka takes the latter as final for ListOffsets, and would reset
/// a consumer's position.
pub(crate) fn not_hosted(topic: Option<&std::sync::Arc<crate::cluster::topics::Topic>>, index: i32) -> i16 {
    match topic {
        Some(t) if index >= 0 && index < t.meta().partitions => {
            kafka_protocol::ResponseError::NotLeaderOrFollower.code()
        }
        _ => kafka_protocol::ResponseError::UnknownTopicOrPartition.code(),
    }
}

pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}
