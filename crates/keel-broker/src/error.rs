//! Broker errors and the one place they become Kafka error codes.

use kafka_protocol::ResponseError as E;
use keel_log::LogError;
use keel_proto::ProtoError;

/// Why a partition-level operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The request was bad (bytes, sizes, sequence numbers).
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    BatchTooLarge { size: usize, max: usize },
    #[error("offset {offset} is outside [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("producer rejected with error code {0}")]
    Producer(i16),
    /// This node's storage failed; the partition refuses writes.
    #[error("storage error: {0}")]
    Storage(#[from] LogError),
    #[error("partition was deleted")]
    Deleted,
    /// This replica does not lead the partition (or has lost its quorum).
    #[error("this node is not the partition's leader")]
    NotLeader,
    /// The write may or may not have been replicated (leadership lost, timeout).
    #[error("replication failed: {0}")]
    Replication(String),
}

impl PartitionError {
    pub fn code(&self) -> i16 {
        match self {
            PartitionError::Proto(p) => p.error_code(),
            PartitionError::BatchTooLarge { .. } => E::MessageTooLarge.code(),
            PartitionError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
            PartitionError::Producer(code) => *code,
            // Damage in this node's own log (the replica is being repaired): as Kafka
            // answers for a log directory that went offline, so clients retry elsewhere.
            PartitionError::Storage(LogError::Corrupt { .. }) => E::KafkaStorageError.code(),
            PartitionError::Storage(LogError::EntryTooLarge(_)) => E::MessageTooLarge.code(),
            PartitionError::Storage(_) => E::KafkaStorageError.code(),
            PartitionError::Deleted => E::UnknownTopicOrPartition.code(),
            PartitionError::NotLeader => E::NotLeaderOrFollower.code(),
            PartitionError::Replication(_) => E::RequestTimedOut.code(),
        }
    }
}
