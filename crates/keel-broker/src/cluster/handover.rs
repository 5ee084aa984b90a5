//! Graceful handover: before a node stops (SIGTERM), it hands the leadership of every
//! partition it leads, and the controller's, to caught-up replicas on live nodes, so that
//! clients move to the new leaders at once (NOT_LEADER_OR_FOLLOWER, then fresh metadata)
//! instead of waiting out an election timeout after the node is gone.
//!
//! For each group this node leads, the successor is a voter on another live node whose
//! log matches the leader's (the least behind otherwise). The leader lets that candidate's
//! vote through its quiet-group lease ([`keel_raft::liveness::GroupQuiet::set_preferred`])
//! and asks the successor's node, over the node transport's [`TAKE_OVER_ROUTE`], to stand
//! for election; Raft elects it only if its log holds everything committed, so a handover
//! never loses an acknowledged record. The answer comes once the successor leads. While it
//! hands over, the node reports itself not ready (`/health/ready`) and does not take
//! leadership back as a preferred replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use keel_raft::transport::Transport;

use crate::cluster::topics::Topics;

/// The node-to-node route asking a node to make its replica of a group the leader.
pub const TAKE_OVER_ROUTE: &str = "group/take-over";

/// Groups handed over at once.
const HANDOVERS_IN_FLIGHT: usize = 64;

#[derive(Serialize, Deserialize)]
struct TakeOver {
    /// The partition's topic; empty for the controller's group.
    topic: String,
    partition: i32,
    timeout_ms: u64,
}

/// What a handover did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// Groups led here when it began (the controller's included).
    pub led: usize,
    /// Groups now led by another node.
    pub moved: usize,
    /// Groups with no caught-up replica on a live node to take over.
    pub no_successor: usize,
    /// Groups whose successor did not lead in time.
    pub failed: usize,
}

/// Serves [`TAKE_OVER_ROUTE`]: this node's replica stands for election and the answer (a
/// Kafka error code) comes once it leads, or when the timeout passes.
pub async fn handle_route(t: &Topics, body: &[u8]) -> Result<Bytes, String> {
    let req: TakeOver = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let timeout = Duration::from_millis(req.timeout_ms.min(60_000));
    let code = if req.topic.is_empty() {
        stand(&t.controller.group, timeout).await
    } else {
        match t.get(&req.topic).and_then(|t| t.partition(req.partition)) {
            Some(p) => stand(p.group(), timeout).await,
            None => ResponseError::UnknownTopicOrPartition.code(),
        }
    };
    Ok(Bytes::copy_from_slice(&code.to_be_bytes()))
}

async fn stand(group: &keel_raft::Group, timeout: Duration) -> i16 {
    let me = group.metrics().id;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = group.raft.metrics();
    // A leader elected moments ago refuses the first campaign's vote while its lease runs;
    // it steps down on seeing the higher term, and the next campaign gets its vote.
    while tokio::time::Instant::now() < deadline {
        if group.leader() == Some(me) {
            return 0;
        }
        group.elect().await;
        let round = (tokio::time::Instant::now() + CAMPAIGN).min(deadline);
        let led = matches!(
            tokio::time::timeout_at(round, rx.wait_for(|m| m.current_leader == Some(me))).await,
            Ok(Ok(_))
        );
        if led {
            return 0;
        }
    }
    ResponseError::NotLeaderOrFollower.code()
}

/// How long the successor waits for one campaign to elect it before it stands again.
const CAMPAIGN: Duration = Duration::from_millis(300);

/// The voter that should take over `group` from this node: on a live node, its log
/// matching the leader's or the least behind.
fn successor(transport: &Transport, group: &keel_raft::Group) -> Option<u64> {
    successor_avoiding(transport, group, &Default::default())
}

/// As [`successor`], never on one of the `avoid` nodes (those in maintenance).
pub fn successor_avoiding(
    transport: &Transport,
    group: &keel_raft::Group,
    avoid: &std::collections::BTreeSet<u64>,
) -> Option<u64> {
    let me = group.metrics().id;
    group
        .voters()
        .into_iter()
        .filter(|r| {
            let node = keel_raft::node_of(*r);
            *r != me && transport.is_alive(node) && !avoid.contains(&node)
        })
        .filter_map(|r| group.lag_of(r).map(|lag| (lag, r)))
        .min()
        .map(|(_, r)| r)
}

/// Hands one group over to `to` (or, when `None`, to the voter on a live node least
/// behind, chosen again at each try); `fence` is the partition whose writes stop meanwhile
/// (none for the controller's group). Tries again until another node leads the group or
/// `deadline` passes; on failure this replica leads and takes writes on as before. After a
/// move, `then` says whether the replica stays fenced and out of elections (the node is
/// stopping) or follows like any other, ready to lead and take writes again when elected.
#[allow(clippy::too_many_arguments)]
pub async fn hand_over(
    transport: &Transport,
    group: &keel_raft::Group,
    fence: Option<&crate::cluster::partition::Partition>,
    topic: &str,
    partition: i32,
    to: Option<u64>,
    deadline: Instant,
    then: Then,
) -> Outcome {
    let me = group.metrics().id;
    if let Some(p) = fence {
        p.set_handing_over(true);
    }
    // This replica must not win the group back by an election of its own meanwhile.
    group.raft.runtime_config().elect(false);
    let outcome = loop {
        if group.leader().is_some_and(|l| l != me) {
            break Outcome::Moved;
        }
        let Some(to) = to.or_else(|| successor(transport, group)) else {
            break Outcome::NoSuccessor;
        };
        let now = Instant::now();
        if now >= deadline {
            break Outcome::Failed;
        }
        let attempt = (now + ATTEMPT).min(deadline);
        // Writes are fenced: the successor's log catches up with this one's, so that this
        // replica's vote, which the successor needs, goes to it.
        let matched_by = (now + ATTEMPT / 2).min(attempt);
        while group.lag_of(to).is_none_or(|lag| lag > 0) && Instant::now() < matched_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A quiet leader refuses votes but its preferred replica's.
        group.quiet.set_preferred(Some(to));
        let left = attempt
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let req = TakeOver {
            topic: topic.to_string(),
            partition,
            timeout_ms: left.as_millis() as u64,
        };
        let Ok(body) = serde_json::to_vec(&req) else {
            break Outcome::Failed;
        };
        let answer = transport
            .call_app(
                keel_raft::node_of(to),
                TAKE_OVER_ROUTE,
                &body,
                left + Duration::from_millis(500),
            )
            .await;
        match answer {
            Ok(r) if r.len() == 2 && i16::from_be_bytes([r[0], r[1]]) == 0 => break Outcome::Moved,
            answer => {
                info!(
                    group = %group.name,
                    successor = to,
                    lag = ?group.lag_of(to),
                    answer = ?answer.map(|r| r.to_vec()),
                    "the successor did not take the group over; trying again"
                );
                // A leader elected moments ago still holds its lease and refuses the
                // successor's vote; the successor may not serve the route yet.
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    if !matches!(outcome, Outcome::Moved) || then == Then::Follow {
        // Still the leader here, it serves on; or another node leads and this replica
        // follows, and takes writes again should an election make it leader later.
        group.raft.runtime_config().elect(true);
        if let Some(p) = fence {
            p.set_handing_over(false);
        }
    }
    outcome
}

/// How long one attempt to hand a group over takes at most: half for the successor's log
/// to match, the rest for it to be elected (an election here takes milliseconds).
const ATTEMPT: Duration = Duration::from_secs(1);
/// The pause between attempts.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// What a replica does once its group has moved to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The node is stopping: the replica stays fenced and stands for no election.
    Stop,
    /// The node carries on: the replica follows, stands for elections and, if elected,
    /// takes writes.
    Follow,
}

/// How a handover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Another node leads the group.
    Moved,
    /// No voter on a live node to take over.
    NoSuccessor,
    /// The successor did not lead before the deadline; this replica still leads.
    Failed,
}

/// Hands every group this node leads to another node, within `within`. The node stops
/// taking leadership back as a preferred replica from here on.
pub async fn hand_over_all(t: &Arc<Topics>, within: Duration) -> Handover {
    t.set_draining(true);
    let started = Instant::now();
    let deadline = started + within;
    let mut out = Handover::default();
    let led: Vec<_> = t
        .all_partitions()
        .into_iter()
        .filter(|p| p.group().is_leader())
        .collect();
    out.led = led.len();
    let results: Vec<Outcome> = futures::stream::iter(led)
        .map(|p| {
            let t = t.clone();
            async move {
                let transport = &t.controller.transport;
                hand_over(
                    transport,
                    p.group(),
                    Some(&p),
                    &p.topic,
                    p.index,
                    None,
                    deadline,
                    Then::Stop,
                )
                .await
            }
        })
        .buffer_unordered(HANDOVERS_IN_FLIGHT)
        .collect()
        .await;
    // The controller last: the partitions' handovers need no controller, and a controller
    // that moves first would only add an election to the ones under way.
    let controller = &t.controller.group;
    let mut outcomes = results;
    if controller.is_leader() && controller.voters().len() > 1 {
        out.led += 1;
        outcomes.push(
            hand_over(
                &t.controller.transport,
                controller,
                None,
                "",
                -1,
                None,
                deadline,
                Then::Stop,
            )
            .await,
        );
    }
    for o in outcomes {
        match o {
            Outcome::Moved => out.moved += 1,
            Outcome::NoSuccessor => out.no_successor += 1,
            Outcome::Failed => out.failed += 1,
        }
    }
    t.metrics
        .handover(out.moved as u64, (out.no_successor + out.failed) as u64);
    if out.failed > 0 {
        warn!(led = out.led, moved = out.moved, failed = out.failed, no_successor = out.no_successor, took = ?started.elapsed(), "leadership handover incomplete");
    } else {
        info!(led = out.led, moved = out.moved, no_successor = out.no_successor, took = ?started.elapsed(), "leadership handed over");
    }
    out
}
