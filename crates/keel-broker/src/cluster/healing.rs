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
//! The moves are ordinary reassignments (see [`crate::cluster::moves`]): the new replicas catch up
//! as learners, then replace the lost ones; `keel cluster moves` lists them, each decision
//! is logged and counted (`keel_self_healing_moves`). A few moves start per round, so a
//! dead node's thousands of partitions move at a pace the live nodes can copy. The
//! internal topics, which every node holds, have nowhere to move a lost replica: theirs is
//! dropped instead ([`internal_shrink_plan`]), and comes back if the node ever returns.
//!
//! Replica balancing (`balance_replicas`, on by default) evens the replica counts of the
//! nodes out when they drift apart: a node that joined takes replicas by itself, and the
//! nodes left after a drain share them evenly. Its plan is pure too ([`balance_plan`]):
//! each move takes a replica from the node holding the most to the one holding the
//! fewest, in a partition the latter lacks, at the same place in the replica list (so the
//! new node also becomes some partitions' preferred leader, and leadership follows, see
//! [`crate::cluster::topics::balance_leaders`]). Balancing waits while any move is under way, while
//! any node holding a replica is unreachable (self-healing's turn), and gives nothing to a
//! node that held replicas and holds none now (it was drained on purpose). Once the counts
//! are even, disk balancing evens out the bytes the nodes hold by exchanging a large
//! replica on the fullest node for a small one on the emptiest ([`disk_balance_plan`],
//! pure too; the sizes come from every node over [`SIZES_ROUTE`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cluster::topics::Topics;

/// A partition's new replica list: (topic, partition, target).
pub type Move = (String, i32, Vec<u64>);

/// Most moves one round starts.
const MOVES_PER_ROUND: usize = 32;
/// No new moves while this many are under way.
const MOVES_IN_FLIGHT_MAX: usize = 64;

/// The moves that replace every replica on the `gone` nodes with one on a `live` node, for
/// the partitions (topic, partition, replicas) that can be moved now. `moving` partitions
/// are left alone, as are those whose live replicas are not a majority and those with no
/// live node left to take the place. A node in a rack (`racks`) none of the partition's
/// other replicas is in comes first, then the least loaded.
pub fn replacement_plan(
    gone: &BTreeSet<u64>,
    live: &[u64],
    partitions: &[(String, i32, Vec<u64>)],
    moving: &BTreeSet<(String, i32)>,
    racks: &BTreeMap<u64, String>,
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
            // Not a node the partition keeps, nor one taken for another lost replica; in a
            // rack the partition's other replicas are not in, if there is one.
            let used: BTreeSet<&String> = target
                .iter()
                .filter(|n| !gone.contains(n))
                .filter_map(|n| racks.get(n))
                .collect();
            let spare = load
                .iter()
                .filter(|(n, _)| !target.contains(n))
                .min_by_key(|(n, l)| (racks.get(n).is_some_and(|r| used.contains(r)), **l, **n))
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

/// The moves that drop the `gone` nodes' replicas of the internal topics' partitions
/// (`__consumer_offsets`, `__transaction_state`), which every node holds: every live node
/// has one already, so a lost replica has nowhere to go and is removed instead, and the
/// node holds nothing once it is gone for good (so `remove-node` can forget it). Partitions
/// without a live majority, or already moving, are left, as in [`replacement_plan`].
pub fn internal_shrink_plan(
    gone: &BTreeSet<u64>,
    partitions: &[(String, i32, Vec<u64>)],
    moving: &BTreeSet<(String, i32)>,
) -> Vec<Move> {
    partitions
        .iter()
        .filter(|(topic, partition, _)| !moving.contains(&(topic.clone(), *partition)))
        .filter_map(|(topic, partition, replicas)| {
            let target: Vec<u64> = replicas.iter().copied().filter(|n| !gone.contains(n)).collect();
            let changed = target.len() < replicas.len();
            (changed && !target.is_empty() && target.len() * 2 > replicas.len())
                .then(|| (topic.clone(), *partition, target))
        })
        .collect()
}

/// Most moves one balancing round starts (balancing waits for them all to finish before
/// its next round).
const BALANCE_MOVES_PER_ROUND: usize = 8;

/// The moves that even out how many replicas the `nodes` hold (those that may take
/// replicas). Each takes one replica from the node holding the most to the one holding
/// the fewest, in a partition the latter does not hold and not moved already in this plan,
/// keeping the replica's place in the list; it stops when the counts are within
/// [`balance_tolerance`] of each other, when no partition can move, or after `max` moves.
/// Replicas on nodes outside `nodes` stay where they are. A move never puts a replica in a
/// rack (`racks`) another replica of the partition is in, unless it leaves one there.
pub fn balance_plan(
    nodes: &[u64],
    partitions: &[(String, i32, Vec<u64>)],
    max: usize,
    racks: &BTreeMap<u64, String>,
) -> Vec<Move> {
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for (_, _, replicas) in partitions {
        for n in replicas {
            if let Some(l) = load.get_mut(n) {
                *l += 1;
            }
        }
    }
    if load.len() < 2 {
        return Vec::new();
    }
    let total: usize = load.values().sum();
    let tolerance = balance_tolerance(total, load.len());
    let mut targets: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut moved: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < max {
        let Some((lo, lo_load)) = load.iter().min_by_key(|(n, l)| (**l, **n)).map(|(n, l)| (*n, *l)) else {
            break;
        };
        // The most loaded node that has a partition the least loaded one lacks.
        let mut by_load: Vec<(u64, usize)> = load.iter().map(|(n, l)| (*n, *l)).collect();
        by_load.sort_by_key(|(n, l)| (std::cmp::Reverse(*l), *n));
        let pick = by_load
            .iter()
            .take_while(|(_, l)| *l > lo_load + tolerance)
            .find_map(|(hi, _)| {
                partitions.iter().enumerate().find_map(|(i, (_, _, replicas))| {
                    let now = targets.get(&i).unwrap_or(replicas);
                    let rack_kept = racks.get(&lo) == racks.get(hi)
                        || !now
                            .iter()
                            .any(|n| n != hi && racks.get(n).is_some() && racks.get(n) == racks.get(&lo));
                    (!moved.contains(&i) && now.contains(hi) && !now.contains(&lo) && rack_kept).then_some((i, *hi))
                })
            });
        let Some((i, hi)) = pick else { break };
        let mut target = partitions[i].2.clone();
        for n in target.iter_mut().filter(|n| **n == hi) {
            *n = lo;
        }
        load.entry(hi).and_modify(|l| *l -= 1);
        load.entry(lo).and_modify(|l| *l += 1);
        moved.insert(i);
        targets.insert(i, target.clone());
        out.push((partitions[i].0.clone(), partitions[i].1, target));
    }
    out
}

/// The moves that even out the bytes the `nodes` hold, once their replica counts are
/// even: one exchange of replicas between the node holding the most bytes and the one
/// holding the fewest, a replica of partition `a` (on the heavy node, not on the light one)
/// for one of `b` (the other way round), which leaves both counts as they are. The pair is
/// the one bringing the two nodes closest to each other; it must bring them closer (`a`
/// larger than `b`, by less than the gap). Where the heavy node holds more replicas than
/// the light one, moving `a` alone is considered too. Nothing when the gap is within
/// `tolerance` bytes. `sizes` are the partitions' sizes (missing: 0); a partition's size
/// counts on every node holding a replica. Racks are kept as in [`balance_plan`].
pub fn disk_balance_plan(
    nodes: &[u64],
    partitions: &[(String, i32, Vec<u64>)],
    sizes: &BTreeMap<(String, i32), u64>,
    tolerance: u64,
    racks: &BTreeMap<u64, String>,
) -> Vec<Move> {
    let size = |i: usize| {
        sizes
            .get(&(partitions[i].0.clone(), partitions[i].1))
            .copied()
            .unwrap_or(0)
    };
    let mut bytes: BTreeMap<u64, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut count: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for (i, (_, _, replicas)) in partitions.iter().enumerate() {
        for n in replicas {
            if let Some(b) = bytes.get_mut(n) {
                *b += size(i);
            }
            if let Some(c) = count.get_mut(n) {
                *c += 1;
            }
        }
    }
    let (Some((&hi, &hi_bytes)), Some((&lo, &lo_bytes))) = (
        bytes.iter().max_by_key(|(n, b)| (**b, std::cmp::Reverse(**n))),
        bytes.iter().min_by_key(|(n, b)| (**b, **n)),
    ) else {
        return Vec::new();
    };
    let gap = hi_bytes - lo_bytes;
    if hi == lo || gap <= tolerance {
        return Vec::new();
    }
    // Whether a replica of partition i may go from node `from` to node `to` (racks).
    let may_move = |i: usize, from: u64, to: u64| {
        let replicas = &partitions[i].2;
        replicas.contains(&from)
            && !replicas.contains(&to)
            && (racks.get(&to) == racks.get(&from)
                || !replicas
                    .iter()
                    .any(|n| *n != from && racks.get(n).is_some() && racks.get(n) == racks.get(&to)))
    };
    let from_hi: Vec<usize> = (0..partitions.len()).filter(|i| may_move(*i, hi, lo)).collect();
    let mut from_lo: Vec<(u64, usize)> = (0..partitions.len())
        .filter(|i| may_move(*i, lo, hi))
        .map(|i| (size(i), i))
        .collect();
    from_lo.sort_unstable();
    let plain_move = count[&hi] > count[&lo];
    // The gap left by an exchange moving `delta` bytes from hi to lo (None: not closer).
    let left = |delta: u64| (delta > 0 && delta < gap).then(|| gap.abs_diff(2 * delta));
    let mut best: Option<(u64, usize, Option<usize>)> = None;
    for &a in &from_hi {
        let sa = size(a);
        let mut consider = |b: Option<usize>, sb: u64| {
            if let Some(l) = sa.checked_sub(sb).and_then(left) {
                if best.is_none_or(|(bl, _, _)| l < bl) {
                    best = Some((l, a, b));
                }
            }
        };
        if plain_move {
            consider(None, 0);
        }
        // The b whose size is nearest sa - gap / 2 brings the nodes closest.
        let ideal = sa.saturating_sub(gap / 2);
        let at = from_lo.partition_point(|(sb, _)| *sb < ideal);
        for (sb, b) in from_lo.iter().skip(at.saturating_sub(1)).take(2) {
            consider(Some(*b), *sb);
        }
    }
    let Some((_, a, b)) = best else {
        return Vec::new();
    };
    let swap = |i: usize, from: u64, to: u64| {
        let target: Vec<u64> = partitions[i]
            .2
            .iter()
            .map(|n| if *n == from { to } else { *n })
            .collect();
        (partitions[i].0.clone(), partitions[i].1, target)
    };
    let mut out = vec![swap(a, hi, lo)];
    if let Some(b) = b {
        out.push(swap(b, lo, hi));
    }
    out
}

/// The bytes two nodes may differ by and still count as even: a tenth of the mean bytes a
/// node holds, and never less than `floor`.
pub fn disk_tolerance(total_bytes: u64, nodes: usize, floor: u64) -> u64 {
    (total_bytes / nodes.max(1) as u64 / 10).max(floor)
}

/// The node-to-node route that answers with the sizes of this node's replicas (JSON list of
/// topic, partition, bytes), for disk balancing.
pub const SIZES_ROUTE: &str = "cluster/sizes";

/// Serves [`SIZES_ROUTE`].
pub fn sizes_here(t: &Topics) -> Result<bytes::Bytes, String> {
    let sizes: Vec<(String, i32, u64)> = t
        .all_partitions()
        .iter()
        .map(|p| (p.topic.clone(), p.index, p.size_bytes()))
        .collect();
    serde_json::to_vec(&sizes)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

/// Every partition's size as the `nodes` report it (the largest report per partition);
/// `None` unless every node answered.
async fn gather_sizes(t: &Topics, nodes: &[u64]) -> Option<BTreeMap<(String, i32), u64>> {
    let me = t.controller.node_id;
    let mut out: BTreeMap<(String, i32), u64> = BTreeMap::new();
    for n in nodes {
        let body = if *n == me {
            sizes_here(t).ok()?
        } else {
            t.controller
                .transport
                .call_app(*n, SIZES_ROUTE, &[], Duration::from_secs(5))
                .await
                .ok()?
        };
        let list: Vec<(String, i32, u64)> = serde_json::from_slice(&body).ok()?;
        for (topic, partition, size) in list {
            let e = out.entry((topic, partition)).or_default();
            *e = (*e).max(size);
        }
    }
    Some(out)
}

/// How far apart replica counts may be and still count as even: two replicas, or a tenth
/// of the mean on large clusters (so that balancing does not chase single replicas).
pub fn balance_tolerance(replicas: usize, nodes: usize) -> usize {
    (replicas / nodes.max(1) / 10).max(2)
}

/// Runs on every node; acts while this node leads the controller: self-healing when
/// `replica_replace_after_ms` is not 0, then replica balancing when `balance_replicas`.
pub async fn heal(topics: std::sync::Weak<Topics>, every: Duration) {
    let mut down_since: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = topics.upgrade() else { return };
        if !t.controller.group.is_leader() {
            down_since.clear();
            continue;
        }
        let after = Duration::from_millis(t.config.replica_replace_after_ms);
        if after.is_zero() {
            down_since.clear();
        } else {
            round(&t, after, &mut down_since).await;
        }
        if t.config.balance_replicas {
            balance(&t).await;
        }
    }
}

/// One round of replica balancing (see the module's documentation).
async fn balance(t: &Arc<Topics>) {
    let transport = &t.controller.transport;
    let meta = t.controller.meta();
    if meta.topics.values().any(|r| !r.reassigning.is_empty()) {
        return;
    }
    let mut partitions = Vec::new();
    let mut holding = BTreeSet::new();
    for (name, record) in &meta.topics {
        for (i, replicas) in record.replicas.iter().enumerate() {
            holding.extend(replicas.iter().copied());
            partitions.push((name.clone(), i as i32, replicas.clone()));
        }
    }
    if holding.iter().any(|n| !transport.is_alive(*n)) {
        return;
    }
    let nodes: Vec<u64> = t
        .node_ids()
        .into_iter()
        .filter(|n| transport.is_alive(*n) && (holding.contains(n) || !meta.placed.contains(n)))
        .collect();
    let racks = t.controller.racks();
    let mut plan = balance_plan(&nodes, &partitions, BALANCE_MOVES_PER_ROUND, &racks);
    // Counts even: even out the bytes, at most every balance_disk_check_ms (sizes come from
    // every node). The internal topics are on every node: nothing to exchange there.
    let every = Duration::from_millis(t.config.balance_disk_check_ms);
    if plan.is_empty()
        && !every.is_zero()
        && t.disk_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= every)
    {
        *t.disk_checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        partitions.retain(|(name, _, _)| !crate::is_internal_topic(name));
        if let Some(sizes) = gather_sizes(t, &nodes).await {
            let total: u64 = partitions
                .iter()
                .map(|(n, p, r)| sizes.get(&(n.clone(), *p)).copied().unwrap_or(0) * r.len() as u64)
                .sum();
            let tolerance = disk_tolerance(total, nodes.len(), t.config.balance_disk_min_bytes);
            plan = disk_balance_plan(&nodes, &partitions, &sizes, tolerance, &racks);
            if !plan.is_empty() {
                info!(
                    tolerance,
                    "disk balancing: exchanging replicas to even out the bytes the nodes hold"
                );
            }
        }
    }
    for (topic, partition, target) in plan {
        let from = partitions
            .iter()
            .find(|(n, p, _)| *n == topic && *p == partition)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_default();
        match super::moves::reassign(t, &topic, partition, Some(target.clone()), false).await {
            Ok(()) => {
                t.metrics.replica_balance_moves.inc();
                info!(%topic, partition, ?from, ?target, "replica balancing: moving a replica to even the nodes out");
            }
            Err(e) => info!(%topic, partition, error = %e.message, "replica balancing move not started"),
        }
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
    let mut internal = Vec::new();
    let mut moving = BTreeSet::new();
    for (name, record) in &meta.topics {
        for (i, replicas) in record.replicas.iter().enumerate() {
            let p = (name.clone(), i as i32, replicas.clone());
            if crate::is_internal_topic(name) {
                internal.push(p);
            } else {
                partitions.push(p);
            }
        }
        for p in record.reassigning.keys() {
            moving.insert((name.clone(), *p));
        }
    }
    if moving.len() >= MOVES_IN_FLIGHT_MAX {
        return;
    }
    let mut plan = internal_shrink_plan(&gone, &internal, &moving);
    plan.extend(replacement_plan(
        &gone,
        &live,
        &partitions,
        &moving,
        &t.controller.racks(),
    ));
    partitions.extend(internal);
    let room = MOVES_PER_ROUND.min(MOVES_IN_FLIGHT_MAX - moving.len());
    for (topic, partition, target) in plan.into_iter().take(room) {
        let from = partitions
            .iter()
            .find(|(n, p, _)| *n == topic && *p == partition)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_default();
        // An internal partition shrinks (see internal_shrink_plan); others keep their size.
        let resize = crate::is_internal_topic(&topic);
        match super::moves::reassign(t, &topic, partition, Some(target.clone()), resize).await {
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
        let plan = replacement_plan(&gone, &[1, 2, 4], &p, &BTreeSet::new(), &BTreeMap::new());
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
        assert!(replacement_plan(&gone, &[1, 2], &p, &BTreeSet::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn an_internal_partition_drops_a_gone_node_while_a_majority_lives() {
        let gone: BTreeSet<u64> = [1].into();
        let p = parts(&[
            ("__consumer_offsets", 0, &[1, 2, 3, 4]),
            ("__transaction_state", 0, &[2, 3, 4]),
        ]);
        assert_eq!(
            internal_shrink_plan(&gone, &p, &BTreeSet::new()),
            vec![("__consumer_offsets".into(), 0, vec![2, 3, 4])]
        );
        // Two of four gone: no live majority to change the replicas with.
        let gone: BTreeSet<u64> = [1, 2].into();
        assert_eq!(
            internal_shrink_plan(&gone, &p, &BTreeSet::new()),
            vec![("__transaction_state".into(), 0, vec![3, 4])]
        );
        let moving: BTreeSet<(String, i32)> = [("__transaction_state".to_string(), 0)].into();
        assert!(internal_shrink_plan(&gone, &p, &moving).is_empty());
    }

    fn sized(list: &[(&str, i32, u64)]) -> BTreeMap<(String, i32), u64> {
        list.iter().map(|(t, p, b)| ((t.to_string(), *p), *b)).collect()
    }

    #[test]
    fn disk_balancing_exchanges_a_large_replica_for_a_small_one() {
        // Counts even (two each), bytes not: node 1 holds 200, node 2 20, node 3 110.
        let p = parts(&[
            ("t", 0, &[1]),
            ("t", 1, &[1]),
            ("u", 0, &[2]),
            ("u", 1, &[2]),
            ("v", 0, &[3]),
            ("v", 1, &[3]),
        ]);
        let s = sized(&[
            ("t", 0, 100),
            ("t", 1, 100),
            ("u", 0, 10),
            ("u", 1, 10),
            ("v", 0, 100),
            ("v", 1, 10),
        ]);
        let plan = disk_balance_plan(&[1, 2, 3], &p, &s, 5, &BTreeMap::new());
        // t/0 (100) goes to node 2 and u/0 (10) to node 1: 110 and 110.
        assert_eq!(plan, vec![("t".into(), 0, vec![2]), ("u".into(), 0, vec![1])]);
    }

    #[test]
    fn disk_balancing_leaves_even_nodes_and_exchanges_that_would_not_help() {
        let p = parts(&[("t", 0, &[1]), ("u", 0, &[2])]);
        // Within the tolerance.
        let s = sized(&[("t", 0, 100), ("u", 0, 95)]);
        assert!(disk_balance_plan(&[1, 2], &p, &s, 10, &BTreeMap::new()).is_empty());
        // One huge partition: exchanging it only moves the imbalance to the other node.
        let s = sized(&[("t", 0, 1000), ("u", 0, 0)]);
        assert!(disk_balance_plan(&[1, 2], &p, &s, 10, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn disk_balancing_moves_alone_when_counts_allow_and_keeps_racks() {
        // Node 1 holds two replicas, node 2 one: a plain move is allowed.
        let p = parts(&[("t", 0, &[1, 3]), ("t", 1, &[1, 3]), ("u", 0, &[2, 3])]);
        let s = sized(&[("t", 0, 50), ("t", 1, 50), ("u", 0, 0)]);
        let plan = disk_balance_plan(&[1, 2], &p, &s, 10, &BTreeMap::new());
        assert_eq!(plan, vec![("t".into(), 0, vec![2, 3])]);
        // Node 2 in node 3's rack: a replica of t on node 2 would share a rack with t's
        // replica on node 3, so none moves, and nothing is planned.
        let racks: BTreeMap<u64, String> = [(1, "a".into()), (2, "b".into()), (3, "b".into())].into();
        assert!(disk_balance_plan(&[1, 2], &p, &s, 10, &racks).is_empty());
    }

    #[test]
    fn two_replicas_with_one_lost_have_no_majority_to_move_with() {
        let gone: BTreeSet<u64> = [3].into();
        let p = parts(&[("t", 0, &[1, 3])]);
        assert!(replacement_plan(&gone, &[1, 2], &p, &BTreeSet::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn partitions_without_a_live_majority_or_already_moving_are_left() {
        let gone: BTreeSet<u64> = [2, 3].into();
        let p = parts(&[("t", 0, &[1, 2, 3]), ("t", 1, &[1, 4, 2])]);
        let moving: BTreeSet<(String, i32)> = [("t".to_string(), 1)].into();
        assert!(replacement_plan(&gone, &[1, 4, 5], &p, &moving, &BTreeMap::new()).is_empty());
        let plan = replacement_plan(&gone, &[1, 4, 5], &p, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(plan, vec![("t".into(), 1, vec![1, 4, 5])]);
    }

    #[test]
    fn two_lost_replicas_of_five_get_two_different_nodes() {
        let gone: BTreeSet<u64> = [4, 5].into();
        let p = parts(&[("t", 0, &[1, 2, 3, 4, 5])]);
        let plan = replacement_plan(&gone, &[1, 2, 3, 6, 7], &p, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(plan, vec![("t".into(), 0, vec![1, 2, 3, 6, 7])]);
    }

    fn loads(nodes: &[u64], p: &[(String, i32, Vec<u64>)], plan: &[Move]) -> BTreeMap<u64, usize> {
        let mut now: BTreeMap<(String, i32), Vec<u64>> =
            p.iter().map(|(t, i, r)| ((t.clone(), *i), r.clone())).collect();
        for (t, i, target) in plan {
            now.insert((t.clone(), *i), target.clone());
        }
        let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
        for r in now.values() {
            let mut distinct = r.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                r.len(),
                "two replicas of a partition on one node: {r:?}"
            );
            for n in r {
                *load.entry(*n).or_default() += 1;
            }
        }
        load
    }

    #[test]
    fn a_node_that_joined_takes_replicas_until_the_counts_are_even() {
        // Twelve partitions on three nodes, all of them on each: 12, 12, 12 and 0.
        let p: Vec<(String, i32, Vec<u64>)> = (0..12).map(|i| ("t".to_string(), i, vec![1, 2, 3])).collect();
        let plan = balance_plan(&[1, 2, 3, 4], &p, 100, &BTreeMap::new());
        let load = loads(&[1, 2, 3, 4], &p, &plan);
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= balance_tolerance(36, 4), "{load:?}");
        assert!(load[&4] >= 7, "the new node took {} of 36 replicas", load[&4]);
        // Each move takes the replica's place: some moves make node 4 a preferred leader.
        assert!(plan.iter().any(|(_, _, t)| t[0] == 4), "{plan:?}");
        // Moving more would not help: the plan of the balanced layout is empty.
        let after: Vec<(String, i32, Vec<u64>)> = p
            .iter()
            .map(|(t, i, r)| {
                let moved = plan.iter().find(|(pt, pi, _)| pt == t && pi == i);
                (t.clone(), *i, moved.map(|m| m.2.clone()).unwrap_or_else(|| r.clone()))
            })
            .collect();
        assert!(balance_plan(&[1, 2, 3, 4], &after, 100, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn even_counts_and_nodes_outside_the_plan_are_left_alone() {
        let p = parts(&[("t", 0, &[1, 2]), ("t", 1, &[2, 3]), ("t", 2, &[3, 1])]);
        assert!(balance_plan(&[1, 2, 3], &p, 10, &BTreeMap::new()).is_empty());
        // Node 4 (drained, say) is not among the nodes: it gets nothing.
        let many: Vec<(String, i32, Vec<u64>)> = (0..9).map(|i| ("t".to_string(), i, vec![1, 2])).collect();
        let plan = balance_plan(&[1, 2, 3], &many, 100, &BTreeMap::new());
        assert!(!plan.is_empty());
        assert!(plan.iter().all(|(_, _, t)| !t.contains(&4)), "{plan:?}");
        let load = loads(&[1, 2, 3], &many, &plan);
        assert!(
            load.values().max().unwrap() - load.values().min().unwrap() <= 2,
            "{load:?}"
        );
    }

    #[test]
    fn a_round_starts_at_most_max_moves_each_on_a_different_partition() {
        let p: Vec<(String, i32, Vec<u64>)> = (0..40).map(|i| ("t".to_string(), i, vec![1, 2, 3])).collect();
        let plan = balance_plan(&[1, 2, 3, 4, 5], &p, 8, &BTreeMap::new());
        assert_eq!(plan.len(), 8);
        let mut moved: Vec<i32> = plan.iter().map(|(_, i, _)| *i).collect();
        moved.dedup();
        assert_eq!(moved.len(), 8);
        assert!(
            balance_plan(&[1], &p, 8, &BTreeMap::new()).is_empty(),
            "one node has nobody to balance with"
        );
    }

    fn racks(list: &[(u64, &str)]) -> BTreeMap<u64, String> {
        list.iter().map(|(n, r)| (*n, r.to_string())).collect()
    }

    #[test]
    fn a_lost_replica_goes_to_a_rack_the_partition_lacks_before_a_less_loaded_node() {
        // Racks a: 1, 4; b: 2, 5; c: 3, 6. Node 3 (rack c) is gone; node 4 (rack a) holds
        // fewer replicas than node 6 (rack c), but the partition has a replica in rack a.
        let r = racks(&[(1, "a"), (4, "a"), (2, "b"), (5, "b"), (3, "c"), (6, "c")]);
        let gone: BTreeSet<u64> = [3].into();
        let p = parts(&[("t", 0, &[1, 2, 3]), ("u", 0, &[6, 5, 1]), ("u", 1, &[6, 2, 5])]);
        let plan = replacement_plan(&gone, &[1, 2, 4, 5, 6], &p, &BTreeSet::new(), &r);
        assert_eq!(plan, vec![("t".into(), 0, vec![1, 2, 6])]);
        // Without racks, the least loaded node takes it.
        let plan = replacement_plan(&gone, &[1, 2, 4, 5, 6], &p, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(plan, vec![("t".into(), 0, vec![1, 2, 4])]);
    }

    #[test]
    fn balancing_keeps_each_partition_s_replicas_in_different_racks() {
        // Racks a: 1, 4 (4 joined); b: 2; c: 3. Every partition is on 1, 2, 3: node 4 may
        // take only node 1's replicas (rack a for rack a).
        let r = racks(&[(1, "a"), (4, "a"), (2, "b"), (3, "c")]);
        let p: Vec<(String, i32, Vec<u64>)> = (0..12).map(|i| ("t".to_string(), i, vec![1, 2, 3])).collect();
        let plan = balance_plan(&[1, 2, 3, 4], &p, 100, &r);
        assert!(!plan.is_empty());
        for (_, _, target) in &plan {
            let mut rs: Vec<&String> = target.iter().filter_map(|n| r.get(n)).collect();
            rs.sort();
            rs.dedup();
            assert_eq!(rs.len(), 3, "two replicas in one rack: {target:?}");
            assert!(!target.contains(&1), "{target:?}");
        }
        let load = loads(&[1, 2, 3, 4], &p, &plan);
        assert_eq!(load[&1] + load[&4], 12, "{load:?}");
        assert!(load[&1].abs_diff(load[&4]) <= 2, "{load:?}");
    }

    #[test]
    fn load_spreads_over_the_live_nodes() {
        let gone: BTreeSet<u64> = [3].into();
        let p: Vec<(String, i32, Vec<u64>)> = (0..6).map(|i| ("t".to_string(), i, vec![1, 5, 3])).collect();
        let plan = replacement_plan(&gone, &[1, 2, 4, 5], &p, &BTreeSet::new(), &BTreeMap::new());
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, _, t) in &plan {
            *per.entry(t[2]).or_default() += 1;
        }
        assert_eq!(plan.len(), 6);
        assert_eq!(per, [(2, 3), (4, 3)].into());
    }
}
