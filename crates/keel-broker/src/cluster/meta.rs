//! The cluster's metadata as a pure state machine: the nodes, topics with their partition
//! placement and configs, ACLs, SCRAM credentials and client quotas ([`ClusterMeta`]), the
//! commands that change them ([`Command`], JSON in the controller's log) and [`apply`],
//! which every node runs on the same commands in the same order to reach the same state.
//! Also the placement functions new topics and partitions use. Nothing here does I/O: the
//! controller ([`super::controller`]) is the runtime that replicates the commands.

use std::collections::{BTreeMap, BTreeSet};

use keel_raft::NodeId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub kafka_host: String,
    pub kafka_port: u16,
    pub raft_addr: String,
    /// Every Kafka listener's advertised host and port, by listener name (the main one,
    /// `kafka_host:kafka_port`, included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, (String, u16)>,
    /// The node's rack (a zone, say): a partition's replicas go to different racks first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: Uuid,
    /// Replica node ids per partition; the first is the preferred leader.
    pub replicas: Vec<Vec<NodeId>>,
    pub configs: BTreeMap<String, String>,
    /// Target replica lists of partitions being moved (AlterPartitionReassignments). While a
    /// partition moves, its replicas are both lists; the move completes when its Raft
    /// group's voters are the target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<i32, Vec<NodeId>>,
    /// Partitions whose replica set has changed since the topic was created. A replica of
    /// one of them that starts with an empty log never initializes its Raft group (it would
    /// write a membership of its own): it waits for the leader to add it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub moved: BTreeSet<i32>,
    /// The incarnation of each replica a move added, by partition and node (see
    /// [`keel_raft::replica_id`]); replicas not listed are incarnation 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incarnations: BTreeMap<i32, BTreeMap<NodeId, u32>>,
}

impl TopicRecord {
    pub fn new(replicas: Vec<Vec<NodeId>>, configs: BTreeMap<String, String>) -> TopicRecord {
        TopicRecord {
            id: Uuid::new_v4(),
            replicas,
            configs,
            reassigning: BTreeMap::new(),
            moved: BTreeSet::new(),
            incarnations: BTreeMap::new(),
        }
    }

    /// Whether the topic has at least one partition and every partition at least one
    /// replica.
    pub fn is_placed(&self) -> bool {
        !self.replicas.is_empty() && self.replicas.iter().all(|r| !r.is_empty())
    }

    /// The Raft id of `node`'s replica of `partition`.
    pub fn replica_id(&self, partition: i32, node: NodeId) -> NodeId {
        let incarnation = self
            .incarnations
            .get(&partition)
            .and_then(|m| m.get(&node))
            .copied()
            .unwrap_or(0);
        keel_raft::replica_id(node, incarnation)
    }

    /// The nodes that hold, or are to hold, a replica of `partition`: its replicas and the
    /// target of its reassignment, if one is under way.
    pub fn hosts(&self, partition: i32) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .replicas
            .get(partition.max(0) as usize)
            .cloned()
            .unwrap_or_default();
        for n in self.reassigning.get(&partition).into_iter().flatten() {
            if !out.contains(n) {
                out.push(*n);
            }
        }
        out
    }
}

/// The cluster's metadata, identical on every node up to the controller's applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Controller log index of the last applied command.
    pub applied_index: u64,
    /// SCRAM credentials by user and mechanism (salted: no password is kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scram: BTreeMap<String, BTreeMap<crate::scram::Mechanism, crate::scram::Credential>>,
    /// ACL bindings (CreateAcls, DeleteAcls).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub acls: BTreeSet<crate::acl::Binding>,
    /// Client quotas by entity (AlterClientQuotas).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "quota_entries")]
    pub quotas: crate::quota::Quotas,
    /// Every registered node that has ever been given a replica. One of them holding none
    /// was drained: replica balancing gives it none (see [`crate::cluster::healing`]), while a node
    /// that joined and never held one is filled.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub placed: BTreeSet<NodeId>,
    /// Nodes in maintenance (`keel cluster maintenance`): they lead nothing while others can.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub maintenance: BTreeSet<NodeId>,
}

/// Quotas as a list of (entity, values): JSON map keys are strings, entities are not.
mod quota_entries {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::quota::Quotas;

    pub fn serialize<S: Serializer>(q: &Quotas, s: S) -> Result<S::Ok, S::Error> {
        q.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Quotas, D::Error> {
        type Entries = Vec<(
            crate::quota::Entity,
            std::collections::BTreeMap<String, crate::quota::Value>,
        )>;
        Ok(Entries::deserialize(d)?.into_iter().collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterNode {
        id: NodeId,
        info: NodeInfo,
    },
    CreateTopic {
        name: String,
        record: TopicRecord,
    },
    DeleteTopic {
        name: String,
    },
    AddPartitions {
        name: String,
        replicas: Vec<Vec<NodeId>>,
    },
    AlterConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Starts moving a partition to `target` replicas (the first is the preferred leader),
    /// or with `None` cancels a move not yet done.
    Reassign {
        name: String,
        partition: i32,
        target: Option<Vec<NodeId>>,
    },
    /// A partition's Raft group now has `replicas` as its voters: the move is done.
    CompleteReassignment {
        name: String,
        partition: i32,
        replicas: Vec<NodeId>,
    },
    /// Forgets a node that holds no replicas (it was drained and shut down).
    UnregisterNode {
        id: NodeId,
    },
    /// Puts a node in maintenance (`on`) or takes it out: a node in maintenance hands the
    /// leadership of its partitions and of the controller to other nodes and is given
    /// none back; its replicas stay (see [`crate::cluster::topics::balance_leaders`]).
    SetMaintenance {
        id: NodeId,
        on: bool,
    },
    /// Adds ACL bindings (CreateAcls).
    CreateAcls {
        acls: Vec<crate::acl::Binding>,
    },
    /// Removes ACL bindings (DeleteAcls: the bindings its filters matched).
    DeleteAcls {
        acls: Vec<crate::acl::Binding>,
    },
    /// Replaces entities' client quotas (an entity with no values left is removed).
    AlterClientQuotas {
        changes: Vec<(crate::quota::Entity, BTreeMap<String, crate::quota::Value>)>,
    },
    /// Sets and removes users' SCRAM credentials (AlterUserScramCredentials).
    AlterScramCredentials {
        upsert: Vec<(String, crate::scram::Mechanism, crate::scram::Credential)>,
        delete: Vec<(String, crate::scram::Mechanism)>,
    },
}

/// What applying a command asks of this node's topics.
#[derive(Debug, Clone)]
pub struct Event {
    pub index: u64,
    /// False when the command changed nothing (e.g. creating a topic that exists).
    pub applies: bool,
    pub command: Command,
    /// The topic after the command; for a deletion, the topic deleted.
    pub topic: Option<TopicRecord>,
}

/// Applies `command` to `meta`: whether it changed a topic, and the topic concerned.
pub fn apply(meta: &mut ClusterMeta, command: &Command) -> (bool, Option<TopicRecord>) {
    let index = meta.applied_index;
    fn partition_of<'a>(meta: &'a mut ClusterMeta, name: &str, partition: i32) -> Option<(&'a mut TopicRecord, i32)> {
        meta.topics
            .get_mut(name)
            .filter(|t| partition >= 0 && (partition as usize) < t.replicas.len())
            .map(|t| (t, partition))
    }
    let applies = match command {
        Command::RegisterNode { id, info } => {
            meta.nodes.insert(*id, info.clone());
            false
        }
        Command::UnregisterNode { id } => {
            meta.nodes.remove(id);
            meta.placed.remove(id);
            meta.maintenance.remove(id);
            false
        }
        Command::SetMaintenance { id, on } => {
            if *on {
                meta.maintenance.insert(*id);
            } else {
                meta.maintenance.remove(id);
            }
            false
        }
        Command::AlterClientQuotas { changes } => {
            for (entity, values) in changes {
                if values.is_empty() {
                    meta.quotas.remove(entity);
                } else {
                    meta.quotas.insert(entity.clone(), values.clone());
                }
            }
            false
        }
        Command::CreateAcls { acls } => {
            meta.acls.extend(acls.iter().cloned());
            false
        }
        Command::DeleteAcls { acls } => {
            for a in acls {
                meta.acls.remove(a);
            }
            false
        }
        Command::AlterScramCredentials { upsert, delete } => {
            for (user, mechanism) in delete {
                if let Some(m) = meta.scram.get_mut(user) {
                    m.remove(mechanism);
                    if m.is_empty() {
                        meta.scram.remove(user);
                    }
                }
            }
            for (user, mechanism, credential) in upsert {
                meta.scram
                    .entry(user.clone())
                    .or_default()
                    .insert(*mechanism, credential.clone());
            }
            false
        }
        Command::CreateTopic { name, record } => {
            // A topic without partitions, or with a partition placed nowhere, would never
            // serve: such a record (a placement made before any node was known) is not
            // applied, so the name stays free for a correct one.
            if meta.topics.contains_key(name) || !record.is_placed() {
                false
            } else {
                meta.topics.insert(name.clone(), record.clone());
                true
            }
        }
        Command::DeleteTopic { name } => {
            return match meta.topics.remove(name) {
                Some(t) => (true, Some(t)),
                None => (false, None),
            }
        }
        Command::AddPartitions { name, replicas } => match meta.topics.get_mut(name) {
            Some(t) => {
                t.replicas.extend(replicas.iter().cloned());
                true
            }
            None => false,
        },
        Command::AlterConfigs { name, configs } => match meta.topics.get_mut(name) {
            Some(t) => {
                t.configs = configs.clone();
                true
            }
            None => false,
        },
        Command::Reassign {
            name,
            partition,
            target,
        } => match partition_of(meta, name, *partition) {
            Some((t, p)) => {
                match target {
                    Some(target) if Some(target) != t.replicas.get(p as usize) => {
                        // Each replica the move adds is a new incarnation, numbered by this
                        // command's index (unique, never 0).
                        let incarnation = (index % u64::from(u32::MAX - 1)) as u32 + 1;
                        let hosts = t.hosts(p);
                        for n in target.iter().filter(|n| !hosts.contains(n)) {
                            t.incarnations.entry(p).or_default().insert(*n, incarnation);
                        }
                        t.reassigning.insert(p, target.clone());
                        t.moved.insert(p);
                    }
                    _ => {
                        t.reassigning.remove(&p);
                    }
                }
                true
            }
            None => false,
        },
        Command::CompleteReassignment {
            name,
            partition,
            replicas,
        } => match partition_of(meta, name, *partition) {
            Some((t, p)) => {
                if t.reassigning.get(&p) == Some(replicas) {
                    t.reassigning.remove(&p);
                }
                t.moved.insert(p);
                if let Some(r) = t.replicas.get_mut(p as usize) {
                    *r = replicas.clone();
                }
                let hosts = t.hosts(p);
                if let Some(m) = t.incarnations.get_mut(&p) {
                    m.retain(|n, _| hosts.contains(n));
                    if m.is_empty() {
                        t.incarnations.remove(&p);
                    }
                }
                true
            }
            None => false,
        },
    };
    let topic = match command {
        Command::CreateTopic { name, .. }
        | Command::DeleteTopic { name }
        | Command::AddPartitions { name, .. }
        | Command::AlterConfigs { name, .. }
        | Command::Reassign { name, .. }
        | Command::CompleteReassignment { name, .. } => meta.topics.get(name).cloned(),
        Command::RegisterNode { .. }
        | Command::UnregisterNode { .. }
        | Command::SetMaintenance { .. }
        | Command::AlterScramCredentials { .. }
        | Command::CreateAcls { .. }
        | Command::DeleteAcls { .. }
        | Command::AlterClientQuotas { .. } => None,
    };
    if let Some(t) = &topic {
        if !matches!(command, Command::DeleteTopic { .. }) {
            let given = t.replicas.iter().flatten().chain(t.reassigning.values().flatten());
            meta.placed.extend(given);
        }
    }
    (applies, topic)
}

/// `nodes` (sorted) reordered so that racks alternate: the first node of each rack (racks
/// by name, nodes without a rack as one more rack), then the second of each, and so on,
/// as Kafka's rack-aware assignment orders its brokers. Consecutive nodes of the result
/// are in different racks while every rack has nodes left, so [`assign`]'s runs of
/// consecutive nodes spread each partition's replicas over racks.
pub fn rack_alternated(nodes: &[NodeId], rack_of: impl Fn(NodeId) -> Option<String>) -> Vec<NodeId> {
    let mut racks: BTreeMap<Option<String>, Vec<NodeId>> = BTreeMap::new();
    for n in nodes {
        racks.entry(rack_of(*n)).or_default().push(*n);
    }
    if racks.len() < 2 {
        return nodes.to_vec();
    }
    let longest = racks.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| racks.values().filter_map(move |r| r.get(i).copied()))
        .collect()
}

/// Round-robin placement: partition `p`'s replicas are `rf` consecutive nodes starting at
/// `(p + offset(name)) mod n`, so no two replicas share a node and leaders spread evenly.
pub fn assign(nodes: &[NodeId], name: &str, first: i32, count: i32, rf: usize) -> Vec<Vec<NodeId>> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let n = nodes.len();
    let rf = rf.clamp(1, n);
    let offset = name
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
    (first..first + count)
        .map(|p| {
            let start = (p.max(0) as usize).wrapping_add(offset) % n;
            (0..rf).filter_map(|k| nodes.get((start + k) % n).copied()).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassign(partition: i32, target: Option<Vec<NodeId>>) -> Command {
        Command::Reassign {
            name: "t".into(),
            partition,
            target,
        }
    }

    /// A move records its target next to the replicas (both host the partition meanwhile)
    /// and marks the partition moved; completing it makes the target the replicas; a target
    /// equal to the replicas or null cancels; moves of unknown partitions change nothing.
    #[test]
    fn moves_are_recorded_completed_and_cancelled() {
        let mut meta = ClusterMeta::default();
        let create = Command::CreateTopic {
            name: "t".into(),
            record: TopicRecord::new(vec![vec![1, 2, 3], vec![2, 3, 1]], BTreeMap::new()),
        };
        assert!(apply(&mut meta, &create).0);
        let (applies, t) = apply(&mut meta, &reassign(0, Some(vec![4, 2, 3])));
        let t = t.unwrap();
        assert!(applies);
        assert_eq!(t.reassigning.get(&0), Some(&vec![4, 2, 3]));
        assert_eq!(t.hosts(0), vec![1, 2, 3, 4]);
        assert!(t.moved.contains(&0) && !t.moved.contains(&1));
        assert_eq!(t.replica_id(0, 2), 2, "a replica that stays keeps its id");
        let four = t.replica_id(0, 4);
        assert_eq!(keel_raft::node_of(four), 4);
        assert_ne!(four, 4, "a replica a move adds is a new incarnation");

        let done = Command::CompleteReassignment {
            name: "t".into(),
            partition: 0,
            replicas: vec![4, 2, 3],
        };
        let t = apply(&mut meta, &done).1.unwrap();
        assert_eq!(t.replicas[0], vec![4, 2, 3]);
        assert!(t.reassigning.is_empty());
        assert_eq!(t.hosts(0), vec![4, 2, 3]);
        assert!(t.moved.contains(&0), "a moved partition stays moved");
        assert_eq!(t.replica_id(0, 4), four);
        // Back to node 1, which held a replica before: a new incarnation.
        meta.applied_index += 1;
        let t = apply(&mut meta, &reassign(0, Some(vec![1, 2, 3]))).1.unwrap();
        let one = t.replica_id(0, 1);
        assert!(one != 1 && one != four && keel_raft::node_of(one) == 1);

        apply(&mut meta, &reassign(0, None));
        let t = apply(&mut meta, &reassign(1, Some(vec![1, 2, 4]))).1.unwrap();
        assert_eq!(t.reassigning.len(), 1);
        let t = apply(&mut meta, &reassign(1, None)).1.unwrap();
        assert!(t.reassigning.is_empty(), "a null target cancels");
        apply(&mut meta, &reassign(1, Some(vec![1, 2, 4])));
        let t = apply(&mut meta, &reassign(1, Some(vec![2, 3, 1]))).1.unwrap();
        assert!(t.reassigning.is_empty(), "the current replicas as target cancel");

        let before = meta.clone();
        assert!(!apply(&mut meta, &reassign(2, Some(vec![1]))).0);
        assert!(!apply(&mut meta, &reassign(-1, Some(vec![1]))).0);
        assert_eq!(meta, before);

        let (applies, deleted) = apply(&mut meta, &Command::DeleteTopic { name: "t".into() });
        assert!(applies);
        assert_eq!(deleted.map(|d| d.id), before.topics.get("t").map(|t| t.id));
    }

    /// A placement made before any node was known (no partitions, or a partition on no
    /// node) is not applied, and the name stays free for a placed topic.
    #[test]
    fn a_topic_placed_nowhere_is_not_created() {
        let mut meta = ClusterMeta::default();
        for replicas in [vec![], vec![vec![]], vec![vec![1, 2], vec![]]] {
            let create = Command::CreateTopic {
                name: "t".into(),
                record: TopicRecord::new(replicas.clone(), BTreeMap::new()),
            };
            assert_eq!(apply(&mut meta, &create), (false, None), "{replicas:?}");
            assert!(!meta.topics.contains_key("t"));
        }
        assert!(assign(&[], "t", 0, 1, 3).is_empty());
        let create = Command::CreateTopic {
            name: "t".into(),
            record: TopicRecord::new(vec![vec![1]], BTreeMap::new()),
        };
        assert!(apply(&mut meta, &create).0);
        assert!(meta.topics.contains_key("t"));
    }

    /// Every partition gets rf distinct nodes; preferred leaders are spread evenly.
    #[test]
    fn placement_is_distinct_and_balanced() {
        let nodes = [1, 2, 3];
        let a = assign(&nodes, "orders", 0, 6, 3);
        assert_eq!(a.len(), 6);
        for r in &a {
            let mut d = r.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3, "{r:?}");
        }
        for n in nodes {
            assert_eq!(a.iter().filter(|r| r[0] == n).count(), 2, "{a:?}");
        }
        let two = assign(&nodes, "x", 0, 3, 5);
        assert!(two.iter().all(|r| r.len() == 3), "rf is capped at the node count");
        assert!(assign(&[], "x", 0, 1, 1).is_empty());
    }

    /// Six nodes in three racks: every partition's three replicas are in three racks,
    /// and its two in two, whatever the topic's name.
    #[test]
    fn placement_spreads_replicas_over_racks() {
        let rack = |n: NodeId| Some(["a", "b", "c"][((n - 1) / 2) as usize].to_string());
        let nodes = rack_alternated(&[1, 2, 3, 4, 5, 6], rack);
        assert_eq!(nodes, vec![1, 3, 5, 2, 4, 6]);
        for name in ["orders", "x", "payments-eu"] {
            for rf in [2, 3] {
                for r in assign(&nodes, name, 0, 12, rf) {
                    let mut racks: Vec<_> = r.iter().map(|n| rack(*n)).collect();
                    racks.sort();
                    racks.dedup();
                    assert_eq!(racks.len(), rf, "{name}: {r:?}");
                }
            }
        }
        // No racks, or one: the order is the nodes'.
        assert_eq!(rack_alternated(&[1, 2, 3], |_| None), vec![1, 2, 3]);
        assert_eq!(rack_alternated(&[1, 2], |_| Some("a".into())), vec![1, 2]);
    }
}
