//! Moving partitions between nodes (AlterPartitionReassignments), and forgetting a node
//! that was drained (UnregisterBroker), and maintenance: functions over [`Topics`], which
//! they change only through controller commands.
//!
//! A move is recorded in the controller (the partition's target replicas beside its
//! current ones); the partition's Raft leader carries it out ([`drive_moves`]): it adds the
//! new replicas as learners under new replica ids, waits until they have caught up, makes
//! the target the group's voters through a joint configuration, and records the move done.
//! Nodes then close and delete the replicas moved off them (see [`crate::cluster::topics`]).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use tracing::{info, warn};

use crate::cluster::meta::{Command, TopicRecord};
use crate::cluster::partition::Partition;
use crate::cluster::topics::{AdminError, Topics, ADMIN_TIMEOUT};

/// A partition move in progress, as ListPartitionReassignments reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    /// Replicas and target together, the target first (as Kafka lists them).
    pub replicas: Vec<u64>,
    pub adding: Vec<u64>,
    pub removing: Vec<u64>,
}

/// Starts moving `partition` of `name` to `target` (the first is the preferred leader);
/// `None` cancels a move not yet done. The move itself is carried out by the partition's
/// leader (see [`drive_moves`]): it adds the new replicas as learners, waits until they
/// have caught up, makes the target the group's voters, and then records it.
pub async fn reassign(
    t: &Topics,
    name: &str,
    partition: i32,
    target: Option<Vec<u64>>,
    allow_replication_factor_change: bool,
) -> Result<(), AdminError> {
    let _guard = t.admin.lock().await;
    t.wait_caught_up(ADMIN_TIMEOUT).await?;
    let meta = t.controller.meta();
    let record = meta
        .topics
        .get(name)
        .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
    let current = record
        .replicas
        .get(partition.max(0) as usize)
        .filter(|_| partition >= 0)
        .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "no such partition"))?;
    match &target {
        None if !record.reassigning.contains_key(&partition) => {
            return Err(AdminError::new(
                E::NoReassignmentInProgress,
                "the partition is not being moved",
            ))
        }
        None => {}
        Some(goal) => {
            let known = t.node_ids();
            let mut distinct = goal.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if goal.is_empty() || distinct.len() != goal.len() {
                return Err(AdminError::new(
                    E::InvalidReplicaAssignment,
                    "the target must name distinct nodes",
                ));
            }
            if let Some(n) = goal.iter().find(|n| !known.contains(n)) {
                return Err(AdminError::new(
                    E::InvalidReplicaAssignment,
                    format!("node {n} is not part of the cluster"),
                ));
            }
            if !allow_replication_factor_change && goal.len() != current.len() {
                return Err(AdminError::new(
                    E::InvalidReplicationFactor,
                    format!(
                        "the partition has {} replicas; the target has {}",
                        current.len(),
                        goal.len()
                    ),
                ));
            }
        }
    }
    t.commit(Command::Reassign {
        name: name.to_string(),
        partition,
        target: target.clone(),
    })
    .await?;
    info!(topic = name, partition, target = ?target, "partition move requested");
    Ok(())
}

/// Puts node `id` in maintenance or takes it out (see [`Command::SetMaintenance`]).
pub async fn set_maintenance(t: &Topics, id: u64, on: bool) -> Result<(), AdminError> {
    let _guard = t.admin.lock().await;
    if !t.node_ids().contains(&id) {
        return Err(AdminError::new(
            E::InvalidRequest,
            format!("node {id} is not in the cluster"),
        ));
    }
    t.commit(Command::SetMaintenance { id, on }).await?;
    info!(node = id, on, "node maintenance set");
    Ok(())
}

/// Removes node `id` from the cluster's registry: it must hold no replica, not answer
/// (it was stopped), and not be a controller voter.
pub async fn unregister_node(t: &Topics, id: u64) -> Result<(), AdminError> {
    let _guard = t.admin.lock().await;
    if t.controller.voters().contains(&id) {
        return Err(AdminError::new(
            E::InvalidRequest,
            format!("node {id} is a controller voter: remove it from the voters first"),
        ));
    }
    if t.controller.transport.is_alive(id) {
        return Err(AdminError::new(
            E::InvalidRequest,
            format!("node {id} is still running: stop it first"),
        ));
    }
    let meta = t.controller.meta();
    for (name, t) in &meta.topics {
        for p in 0..t.replicas.len() as i32 {
            if t.hosts(p).contains(&id) {
                return Err(AdminError::new(
                    E::InvalidRequest,
                    format!("node {id} holds a replica of {name}/{p}: drain it first"),
                ));
            }
        }
    }
    t.commit(Command::UnregisterNode { id }).await?;
    if let Err(e) = t.controller.remove_learner(id, ADMIN_TIMEOUT).await {
        warn!(node = id, error = %e, "unregistered, but its controller learner stays");
    }
    info!(node = id, "node unregistered");
    Ok(())
}

/// The partition moves in progress.
pub fn in_progress(t: &Topics) -> Vec<Move> {
    let meta = t.controller.meta();
    let mut out = Vec::new();
    for (name, t) in &meta.topics {
        for (p, target) in &t.reassigning {
            let current = t.replicas.get(*p as usize).cloned().unwrap_or_default();
            let mut replicas = target.clone();
            replicas.extend(current.iter().filter(|n| !target.contains(n)));
            out.push(Move {
                topic: name.clone(),
                partition: *p,
                replicas,
                adding: target.iter().filter(|n| !current.contains(n)).copied().collect(),
                removing: current.iter().filter(|n| !target.contains(n)).copied().collect(),
            });
        }
    }
    out
}

/// On a partition's leader: takes the partition's move one step further, or finishes
/// it. Returns when this attempt is over (a later round retries what is not done).
async fn carry_out_move(t: &Topics, name: &str, part: Arc<Partition>) {
    const CAUGHT_UP_ENTRIES: u64 = 64;
    let target = |topics: &Topics| {
        topics
            .controller
            .meta()
            .topics
            .get(name)
            .and_then(|t| t.reassigning.get(&part.index).cloned())
    };
    let Some(goal) = target(t) else { return };
    let Some(record) = t.controller.meta().topics.get(name).cloned() else {
        return;
    };
    let group = part.group();
    let learners = t.members(&record, part.index, &goal);
    let ids: Vec<u64> = learners.keys().copied().collect();
    if let Err(e) = group.add_learners(learners).await {
        warn!(topic = name, partition = part.index, error = %e, "could not add the new replicas");
        return;
    }
    // Wait (bounded) until every new replica has caught up with the leader's log. (A
    // replica that stays needs not: the new voters' majority may do without one that
    // is down, as the old voters' may.)
    let voters_now = group.voters();
    let new: Vec<u64> = ids.iter().copied().filter(|id| !voters_now.contains(id)).collect();
    let throttle = &t.controller.transport.move_throttle;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Catching up is throttled (the mark lapses unless renewed: here, while this
        // node leads the move).
        for n in &new {
            throttle.mark(&group.name, *n);
        }
        let behind: Vec<u64> = new
            .iter()
            .filter(|n| group.lag_of(**n).map(|lag| lag > CAUGHT_UP_ENTRIES).unwrap_or(true))
            .map(|n| keel_raft::node_of(*n))
            .collect();
        if behind.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline || !group.is_leader() || part.is_closed() {
            info!(topic = name, partition = part.index, behind = ?behind, "new replicas not caught up yet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The move may have been cancelled or changed meanwhile.
    if target(t).as_ref() != Some(&goal) {
        return;
    }
    for n in &new {
        throttle.unmark(&group.name, *n);
    }
    let voters: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    if let Err(e) = group.set_voters(voters).await {
        warn!(topic = name, partition = part.index, error = %e, "could not change the replicas");
        return;
    }
    let done = Command::CompleteReassignment {
        name: name.to_string(),
        partition: part.index,
        replicas: goal.clone(),
    };
    match t.controller.propose(&done, ADMIN_TIMEOUT).await {
        Ok(_) => {
            t.metrics.partition_moves_done.inc();
            info!(topic = name, partition = part.index, replicas = ?goal, "partition moved")
        }
        Err(e) => warn!(topic = name, partition = part.index, error = %e, "moved, but not yet recorded"),
    }
}

/// On a partition's leader: removes learners that no move needs any more (a cancelled
/// move's new replicas).
async fn tidy_learners(name: &str, part: &Partition, record: &TopicRecord) {
    let hosts: Vec<u64> = record
        .hosts(part.index)
        .into_iter()
        .map(|n| record.replica_id(part.index, n))
        .collect();
    let stray: std::collections::BTreeSet<u64> = part
        .group()
        .members()
        .into_iter()
        .filter(|n| !hosts.contains(n))
        .collect();
    if !stray.is_empty() {
        match part.group().remove_learners(stray.clone()).await {
            Ok(()) => {
                info!(topic = name, partition = part.index, nodes = ?stray, "removed replicas of a cancelled move")
            }
            Err(e) => warn!(topic = name, partition = part.index, error = %e, "could not remove stray learners"),
        }
    }
}

/// Carries out partition moves on the partitions this node leads (one task per partition),
/// and, when a moved partition's metadata lags its group (a leader that failed between
/// changing the voters and recording it), records what is done.
pub async fn drive_moves(topics: std::sync::Weak<Topics>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = topics.upgrade() else { return };
        let meta = t.controller.meta();
        let moving: usize = meta.topics.values().map(|r| r.reassigning.len()).sum();
        t.metrics.partition_moves.set(moving as i64);
        for (name, record) in &meta.topics {
            if record.reassigning.is_empty() && record.moved.is_empty() {
                continue;
            }
            let Some(topic) = t.get(name).filter(|x| x.meta().id == record.id) else {
                continue;
            };
            for part in topic.partition_list() {
                // The set lookups first: this runs for every partition every round.
                let (moving, moved) = (
                    record.reassigning.contains_key(&part.index),
                    record.moved.contains(&part.index),
                );
                if !(moving || moved) || !part.group().is_ready_leader() {
                    continue;
                }
                if !moving {
                    if record.moved.contains(&part.index) {
                        tidy_learners(name, &part, record).await;
                    }
                    continue;
                }
                let key = (name.clone(), part.index);
                if !t.moving.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
                    continue;
                }
                let (weak, name) = (topics.clone(), name.clone());
                tokio::spawn(async move {
                    if let Some(t) = weak.upgrade() {
                        carry_out_move(&t, &name, part).await;
                        t.moving.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    }
                });
            }
        }
    }
}
