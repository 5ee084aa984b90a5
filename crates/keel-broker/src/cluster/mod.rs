//! The cluster layer: what the nodes agree on and how this node's replicas follow it,
//! beside the Kafka API layer (the server, dispatch, handlers and groups) that serves
//! clients from it.
//!
//! - [`meta`]: the replicated metadata as a pure state machine: nodes, topics, partition
//!   placement, configs, ACLs, credentials and quotas, the commands that change them and
//!   the deterministic [`meta::apply`], with the placement functions. No I/O.
//! - [`controller`]: its runtime, a Raft group every node takes part in: proposing and
//!   forwarding commands, joining, voter changes.
//! - [`topics`]: this node's replicas, opened and closed as the metadata says, and the
//!   admin operations that change topics.
//! - [`partition`]: one replica: a Raft group whose log is the partition's log.
//! - [`topic_config`]: topic configs and the settings they give a replica.
//! - [`moves`]: partition reassignment, maintenance and node removal.
//! - [`healing`]: self-healing and continuous balancing of replicas and disk use.
//! - [`handover`]: leadership hand-over (shutdown, maintenance, preferred leaders).
//! - [`txn_index`]: a replica's transactions as its log tells them (pure), for its last
//!   stable offset and `read_committed` reads.

pub mod controller;
pub mod handover;
pub mod healing;
pub mod meta;
pub mod moves;
pub mod partition;
pub mod topic_config;
pub mod topics;
pub mod txn_index;
