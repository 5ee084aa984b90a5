//! Kafka transactions.
//!
//! - [`crate::cluster::txn_index`] (in the cluster layer, a replica's state): one
//!   partition's open and aborted transactions, and its last stable offset.
//! - [`state`]: one transactional id's state at its coordinator, and its transitions.
//! - [`coordinator`]: the transaction coordinator, durable in `__transaction_state`, and
//!   the writing of markers to the partitions of a transaction.

pub mod coordinator;
pub mod state;
