//! Consumer groups: the classic group protocol and committed offsets.
//!
//! - [`state`]: one group's membership and rebalance state machine (pure).
//! - [`offsets`]: committed offsets, durable in the internal `__consumer_offsets` topic.
//! - [`coordinator`]: the groups of this broker, the clock that expires sessions, and
//!   the glue between request handlers and the state machines.

pub mod coordinator;
pub mod offsets;
pub mod state;

#[cfg(test)]
mod state_tests;
