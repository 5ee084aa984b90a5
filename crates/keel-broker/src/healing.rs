//! Self-healing placement: when a node has been unreachable longer than
//! `replica_replace_after_ms` (five minutes by default), the controller's leader moves
//! every replica it held onto live nodes, so its partitions have their full replication
//! factor again without anyone running `keel cluster reassign`.
//!
//! The plan is a pure function ([`replacement_plan`]): in each partition with a replica on
//! a node that is gone, that replica's place goes to the live node holding the fewest
//! replicas among those holding none of the partition (no two replicas of a partition on
//! one node). A partition is moved only while a majority of its replicas is alive (the
//! move's joint configuration needs the old majority) and not while it is already moving.
//! The moves are ordinary reassignments (see [`crate::moves`]): the new replicas catch up
//! as learners, then replace the lost ones; `keel cluster moves` lists them, each decision
//! is logged and counted (`keel_self_healing_moves`). A few moves start per round, so a
//! dead node's thousands of partitions move at a pace the live nodes can copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::topics::Topics;

/// A partition's new replica list: (topic, partition, target).
pub type Move = (String, i32, Vec<u64>);

/// Most moves one round starts.
const MOVES_PER_ROUND: usize = 32;
/// No new moves while this many are under way.
const MOVES_IN_FLIGHT_MAX: usize = 64;

/// The moves that replace every replica on the `gone` nodes with one on a `live` node, for
/// the partitions (topic, partition, replicas) that can be moved now. `moving` partitions
/// are left alone, as are those whose live replicas are not a majority and those with no
/// live node left to take the place.
pub fn replacement_plan(
    gone: &BTreeSet<u64>,
    live: &[u64],
    partitions: &[(String, i32, Vec<u64>)],
    moving: &BTreeSet<(String, i32)>,
) -> Vec<Move> {
    let mut load: BTreeMap<u64, usize> = live.iter().map(|n| (*n, 0)).collect();
    for (_, _, replicas) in partitions {
        for n in replicas {
            if let Some(l) = load.get_mut(n) {
                *l += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (topic, partition, replicas) in partitions {
        let lost = replicas.iter().filter(|n| gone.contains(n)).count();
        if lost == 0 || moving.contains(&(topic.clone(), *partition)) {
            continue;
        }
        let alive = replicas.iter().filter(|n| load.contains_key(n)).count();
        if alive * 2 <= replicas.len() {
            continue;
        }
        let mut target = replicas.clone();
        let mut taken = Vec::new();
        for i in 0..target.len() {
            if !gone.contains(&target[i]) {
                continue;
            }
            // Not a node the partition keeps, nor one taken for another lost replica.
            let spare = load
                .iter()
                .filter(|(n, _)| !target.contains(n))
                .min_by_key(|(n, l)| (**l, **n))
                .map(|(n, _)| *n);
            let Some(s) = spare else { break };
            target[i] = s;
            taken.push(s);
        }
        if taken.len() == lost {
            for s in &taken {
                *load.entry(*s).or_default() += 1;
            }
            out.push((topic.clone(), *partition, target));
        }
    }
    out
}

/// Runs on every node; acts while this node leads the controller and
/// `replica_replace_after_ms` is not 0.
pub async fn heal(topics: std::sync::Weak<Topics>, every: Duration) {
    let mut down_since: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = topics.upgrade() else { return };
        let after = Duration::from_millis(t.config.replica_replace_after_ms);
        if after.is_zero() || !t.controller.group.is_leader() {
            down_since.clear();
            continue;
        }
        round(&t, after, &mut down_since).await;
    }
}

async fn round(t: &Arc<Topics>, after: Duration, down_since: &mut HashMap<u64, Instant>) {
    let transport = &t.controller.transport;
    let nodes = t.node_ids();
    let now = Instant::now();
    let mut live = Vec::new();
    for n in &nodes {
        if transport.is_alive(*n) {
            down_since.remove(n);
            live.push(*n);
        } else {
            down_since.entry(*n).or_insert(now);
        }
    }
    down_since.retain(|n, _| nodes.contains(n));
    let gone: BTreeSet<u64> = down_since
        .iter()
        .filter(|(_, since)| now.duration_since(**since) >= after)
        .map(|(n, _)| *n)
        .collect();
    if gone.is_empty() {
        return;
    }
    let meta = t.controller.meta();
    let mut partitions = Vec::new();
    let mut moving = BTreeSet::new();
    for (name, record) in &meta.topics {
        for (i, replicas) in record.replicas.iter().enumerate() {
            partitions.push((name.clone(), i as i32, replicas.clone()));
        }
        for p in record.reassigning.keys() {
            moving.insert((name.clone(), *p));
        }
    }
    if moving.len() >= MOVES_IN_FLIGHT_MAX {
        return;
    }
    let plan = replacement_plan(&gone, &live, &partitions, &moving);
    let room = MOVES_PER_ROUND.min(MOVES_IN_FLIGHT_MAX - moving.len());
    for (topic, partition, target) in plan.into_iter().take(room) {
        let from = partitions
            .iter()
            .find(|(n, p, _)| *n == topic && *p == partition)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_default();
        match t.reassign(&topic, partition, Some(target.clone()), false).await {
            Ok(()) => {
                t.metrics.self_healing_moves.inc();
                warn!(%topic, partition, ?from, ?target, gone = ?gone, "self-healing: replacing replicas on unreachable nodes");
            }
            Err(e) => info!(%topic, partition, error = %e.message, "self-healing move not started"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(list: &[(&str, i32, &[u64])]) -> Vec<(String, i32, Vec<u64>)> {
        list.iter().map(|(t, p, r)| (t.to_string(), *p, r.to_vec())).collect()
    }

    #[test]
    fn a_lost_replica_goes_to_the_least_loaded_live_node_not_holding_the_partition() {
        let gone: BTreeSet<u64> = [3].into();
        let p = parts(&[("t", 0, &[1, 2, 3]), ("t", 1, &[2, 3, 4]), ("t", 2, &[1, 2, 4])]);
        let plan = replacement_plan(&gone, &[1, 2, 4], &p, &BTreeSet::new());
        // Loads: 1:2, 2:3, 4:2. t/0 may take 4 (not 1 or 2); t/1 may take 1.
        assert_eq!(
            plan,
            vec![("t".into(), 0, vec![1, 2, 4]), ("t".into(), 1, vec![2, 1, 4])]
        );
    }

    #[test]
    fn no_two_replicas_of_a_partition_share_a_node_and_full_partitions_are_left() {
        let gone: BTreeSet<u64> = [3].into();
        // Every live node already holds a replica: nowhere to go.
        let p = parts(&[("t", 0, &[1, 2, 3])]);
        assert!(replacement_plan(&gone, &[1, 2], &p, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn two_replicas_with_one_lost_have_no_majority_to_move_with() {
        let gone: BTreeSet<u64> = [3].into();
        let p = parts(&[("t", 0, &[1, 3])]);
        assert!(replacement_plan(&gone, &[1, 2], &p, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn partitions_without_a_live_majority_or_already_moving_are_left() {
        let gone: BTreeSet<u64> = [2, 3].into();
        let p = parts(&[("t", 0, &[1, 2, 3]), ("t", 1, &[1, 4, 2])]);
        let moving: BTreeSet<(String, i32)> = [("t".to_string(), 1)].into();
        assert!(replacement_plan(&gone, &[1, 4, 5], &p, &moving).is_empty());
        let plan = replacement_plan(&gone, &[1, 4, 5], &p, &BTreeSet::new());
        assert_eq!(plan, vec![("t".into(), 1, vec![1, 4, 5])]);
    }

    #[test]
    fn two_lost_replicas_of_five_get_two_different_nodes() {
        let gone: BTreeSet<u64> = [4, 5].into();
        let p = parts(&[("t", 0, &[1, 2, 3, 4, 5])]);
        let plan = replacement_plan(&gone, &[1, 2, 3, 6, 7], &p, &BTreeSet::new());
        assert_eq!(plan, vec![("t".into(), 0, vec![1, 2, 3, 6, 7])]);
    }

    #[test]
    fn load_spreads_over_the_live_nodes() {
        let gone: BTreeSet<u64> = [3].into();
        let p: Vec<(String, i32, Vec<u64>)> = (0..6).map(|i| ("t".to_string(), i, vec![1, 5, 3])).collect();
        let plan = replacement_plan(&gone, &[1, 2, 4, 5], &p, &BTreeSet::new());
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, _, t) in &plan {
            *per.entry(t[2]).or_default() += 1;
        }
        assert_eq!(plan.len(), 6);
        assert_eq!(per, [(2, 3), (4, 3)].into());
    }
}
