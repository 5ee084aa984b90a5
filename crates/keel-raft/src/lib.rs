//! Keel's replication layer: every partition is its own Raft group (openraft), and the
//! partition log is the Raft log.
//!
//! - [`store`]: openraft's log storage over a [`keel_log::LogStore`] (one entry per data
//!   entry, fsync with group commit before an append counts as durable), the offset
//!   translator (offsets are assigned as entries are appended, skipping non-data entries;
//!   the [`Apply`] hook says how many an entry covers), the controller's vote file, and the
//!   state machine, whose "applied" position is the high watermark.
//! - [`votes`]: the node's vote journal: every partition replica's vote in one file, saved
//!   with one fsync for all the votes asked for at once.
//! - [`transport`]: node-to-node TCP, one connection per node pair carrying the RPCs of
//!   every group, with its own framing and a switch to cut links in tests.
//! - [`liveness`]: node-level liveness (one ping per node pair for all groups), the
//!   leadership reports the pings carry, and quiescence: an idle group stops its own
//!   heartbeats and election timers, and the node-level lease stands in for them.
//! - [`group`]: one running Raft group (a partition replica or the controller) and what the
//!   broker asks of it: propose, wait for commit, who leads, read committed entries.
//!
//! Nothing here knows Kafka: the broker supplies an [`Apply`] hook per group, which places
//! a data entry's offsets and applies committed entries.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
// openraft's StorageError is large and is the error type its traits require.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod group;
pub mod liveness;
pub mod store;
pub mod throttle;
pub mod transport;
pub mod votes;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use group::{Group, GroupOptions, ProposeError};
pub use store::VoteSlot;
pub use transport::{Transport, TransportError};
pub use votes::VoteStore;

/// A node's id in the cluster (`keel serve --node-id`), or a replica's id in its Raft
/// group (see [`replica_id`]).
pub type NodeId = u64;

/// A replica's id in its Raft group: the node's id, with the replica's incarnation in the
/// high 32 bits. A node's replicas of a partition created with it are incarnation 0 (the
/// node's own id). A replica a partition move adds gets a new incarnation: if the node
/// held one before (a partition moved off it and back), a replica that missed the moves
/// may still count the old one as a voter in an old configuration, and a fresh replica
/// answering under the old id could help elect a leader lacking committed entries. Under
/// its new id it never receives what was meant for the old one.
pub fn replica_id(node: NodeId, incarnation: u32) -> NodeId {
    (node & 0xFFFF_FFFF) | (u64::from(incarnation) << 32)
}

/// The node a replica id belongs to.
pub fn node_of(replica: NodeId) -> NodeId {
    replica & 0xFFFF_FFFF
}

/// The name under which a replica of `group` receives its RPCs on its node's transport.
pub fn group_key(group: &str, replica: NodeId) -> String {
    match replica >> 32 {
        0 => group.to_string(),
        incarnation => format!("{group}#{incarnation}"),
    }
}

/// The address a node's transport listens on, as the other nodes reach it.
pub type Node = openraft::BasicNode;

/// What is proposed and replicated: a Kafka record batch for a partition group, an
/// encoded command for the controller group. The other fields are never replicated or
/// stored: the leader's local-acknowledgement ticket (acks=1), under which the log store
/// reports the entry's position once the leader's own copy is durable; and, once the
/// entry is in this replica's log, how many offsets it covers (so applying it needs no
/// second look at the payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(
    pub Bytes,
    #[serde(skip)] pub Option<u64>,
    #[serde(skip)] pub Option<u32>,
);

impl Payload {
    /// A payload to propose.
    pub fn new(bytes: Bytes) -> Payload {
        Payload(bytes, None, None)
    }
}

/// A data entry as the log stores it, as [`Apply::place`] prepares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The payload to store (with its offsets written in, if it carries them).
    pub payload: Bytes,
    /// How many offsets the entry covers.
    pub offsets: u32,
    /// Its largest timestamp (-1 for none): the log's time index.
    pub max_timestamp: i64,
}

/// Where the leader's log put an entry: its log index and first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub index: u64,
    pub base_offset: i64,
}

/// What applying an entry returns to its proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Log position of the entry.
    pub index: u64,
    /// First offset the entry covers (for a partition batch, its Kafka base offset).
    pub base_offset: i64,
    /// The offset after the entry: the high watermark once it is applied.
    pub next_offset: i64,
}

/// A snapshot carries no records: a partition's records stay in its log. It says where
/// the log continues (`next_offset` after the snapshot's last entry) and, for the
/// controller, the encoded metadata at that point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub next_offset: i64,
    pub state: Vec<u8>,
}

openraft::declare_raft_types!(
    /// openraft's types for every Keel group.
    pub TypeConfig:
        D = Payload,
        R = Applied,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotBody,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

/// The application side of one group: called for each committed entry, in order, on every
/// replica. Implementations must be deterministic in the entry bytes.
pub trait Apply: Send + Sync + 'static {
    /// Prepares a data entry for the log, which gives it offsets from `base_offset` on, in
    /// Raft term `term`. Every replica calls it on the same entry with the same arguments,
    /// so it must be deterministic; an error fails the append (the entry is not stored).
    /// Where a data entry's offsets go is the application's business (a partition writes
    /// them into the Kafka batch header); by default an entry is stored as proposed and
    /// covers one offset (the controller's commands).
    fn place(&self, payload: Bytes, _base_offset: i64, _term: u64) -> Result<Stored, String> {
        Ok(Stored {
            payload,
            offsets: 1,
            max_timestamp: -1,
        })
    }
    /// A data entry at `index` covering `base_offset .. next_offset` was committed. An
    /// error means this replica cannot apply what the group decided: the group stops here
    /// (openraft treats it as a storage failure) rather than carry on with state that
    /// differs from its peers'.
    fn apply(&self, index: u64, base_offset: i64, next_offset: i64, payload: &Bytes) -> Result<(), String>;
    /// The application state to put in a snapshot (empty for partitions).
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Replaces the application state with a snapshot's (a replica that caught up from a
    /// leader's purge point).
    fn restore(&self, _state: &[u8]) {}
    /// The group's log was fsynced (group commit), taking `seconds`.
    fn fsynced(&self, _seconds: f64) {}
}
