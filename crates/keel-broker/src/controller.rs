//! The controller: a Raft group every node takes part in, holding the cluster's metadata:
//! nodes, topics, partition replica assignments, topic configs. Its first voters are the
//! configured peers (a single node is its only voter); other nodes join as learners, and
//! voters can be added and removed on the running cluster ([`Controller::change_voter`],
//! as KIP-853's AddRaftVoter and RemoveRaftVoter), so any node, a voter included, can be
//! replaced without stopping the cluster.
//!
//! Commands are JSON; applying them is deterministic and happens on every node, which then
//! serves Metadata from its own copy. Applying also queues [`Event`]s for this node's
//! [`crate::topics::Topics`], which opens and closes its local partition replicas to match.
//! A node that is not the controller's leader forwards proposals to it over the transport.
//!
//! The controller's log is small (one entry per admin operation) and is replayed in full
//! at every start, so its state needs no snapshot file of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_log::{DiskLog, LogConfig};
use keel_raft::{Apply, Group, GroupOptions, Node, NodeId, ProposeError, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};
use uuid::Uuid;

pub const CONTROLLER_GROUP: &str = "__controller";
/// Transport requests (kind "app") that carry a proposal to the controller's leader.
const PROPOSE_ROUTE: &str = "controller/propose";
/// Transport requests from a node joining a running cluster: it asks the controller's
/// leader to add it as a learner (see [`Controller::join`]).
const JOIN_ROUTE: &str = "controller/join";
/// Transport requests that ask the controller's leader to drop an unregistered node's
/// learner.
const LEAVE_ROUTE: &str = "controller/leave";
/// Transport requests that ask the controller's leader to add or remove a voter.
const VOTERS_ROUTE: &str = "controller/voters";
/// How far (in log entries) a learner may be behind the leader and still be made a voter.
const VOTER_CATCH_UP: u64 = 100;

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
    /// was drained: replica balancing gives it none (see [`crate::healing`]), while a node
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
    /// none back; its replicas stay (see [`crate::topics::balance_leaders`]).
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
fn apply(meta: &mut ClusterMeta, command: &Command) -> (bool, Option<TopicRecord>) {
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
            if meta.topics.contains_key(name) {
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

struct Hook {
    meta: watch::Sender<Arc<ClusterMeta>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Apply for Hook {
    fn apply(&self, index: u64, _base: i64, _next: i64, payload: &Bytes) -> Result<(), String> {
        // A command this node cannot read (a newer node's, or damage that passed the
        // checksums) is not skipped: this node's metadata would silently differ from its
        // peers'. Its controller replica stops, loudly.
        let command: Command = serde_json::from_slice(payload).map_err(|e| {
            error!(index, error = %e, "undecodable controller command: this node's controller replica stops");
            format!("undecodable controller command at index {index}: {e}")
        })?;
        let mut meta = (**self.meta.borrow()).clone();
        meta.applied_index = index;
        let (applies, topic) = apply(&mut meta, &command);
        // The metadata first: whoever handles the event finds it at least this new.
        self.meta.send_replace(Arc::new(meta));
        let _ = self.events.send(Event {
            index,
            applies,
            command,
            topic,
        });
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error("the controller has no leader (no quorum of {0} voters)")]
    NoQuorum(usize),
    #[error("controller: {0}")]
    Failed(String),
}

/// This node's view of, and access to, the controller group.
pub struct Controller {
    pub node_id: NodeId,
    pub transport: Arc<Transport>,
    pub group: Group,
    /// The configured peers and their transport addresses: the controller's first voters
    /// on a new cluster, and the nodes a joining node asks first. The voters now are
    /// [`Controller::voters`].
    pub bootstrap: BTreeMap<NodeId, Node>,
    meta: watch::Receiver<Arc<ClusterMeta>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// The broker's own node-to-node routes (transaction markers and verification): every
    /// route that is not the controller's goes here.
    routes: std::sync::RwLock<Option<keel_raft::transport::AppHandler>>,
}

impl Controller {
    /// Opens the controller's log under `dir` and joins the group. A node among `voters`
    /// initializes the group when its log is new; a node that is not (one joining a
    /// running cluster) waits to be added as a learner: see [`Controller::join`].
    pub async fn start(
        dir: &Path,
        node_id: NodeId,
        transport: Arc<Transport>,
        voters: BTreeMap<NodeId, Node>,
        options: GroupOptions,
    ) -> anyhow::Result<Arc<Controller>> {
        for (id, n) in &voters {
            if !n.addr.is_empty() {
                transport.set_peer(*id, n.addr.clone());
            }
        }
        let (meta_tx, meta_rx) = watch::channel(Arc::new(ClusterMeta::default()));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let hook = Arc::new(Hook {
            meta: meta_tx,
            events: ev_tx,
        });
        let log = DiskLog::open(
            dir,
            LogConfig {
                retention_ms: None,
                ..LogConfig::default()
            },
        )?;
        let fresh = keel_log::LogStore::next_index(&log) == 0;
        // Replayed in full at every start: forget any applied position from a previous run.
        let _ = std::fs::remove_file(dir.join("raft-applied.json"));
        let group = Group::start(
            CONTROLLER_GROUP,
            node_id,
            transport.clone(),
            Box::new(log),
            Some(dir.to_path_buf()),
            // The controller keeps its vote in its own directory: one group, and its vote
            // must not depend on the partitions' journal.
            None,
            hook,
            GroupOptions {
                fsync: true,
                quiesce: false,
                ..options
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if fresh && voters.contains_key(&node_id) {
            group.initialize(voters.clone()).await.map_err(anyhow::Error::msg)?;
        }
        let c = Arc::new(Controller {
            node_id,
            transport: transport.clone(),
            group,
            bootstrap: voters,
            meta: meta_rx,
            events: Mutex::new(Some(ev_rx)),
            routes: std::sync::RwLock::new(None),
        });
        let weak = Arc::downgrade(&c);
        transport.set_app_handler(Arc::new(move |from, route, body| {
            let weak = weak.clone();
            Box::pin(async move {
                let c = weak.upgrade().ok_or_else(|| "controller stopped".to_string())?;
                if route == JOIN_ROUTE {
                    return c.admit(&body).await;
                }
                if route == VOTERS_ROUTE {
                    let (id, add): (NodeId, bool) = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    return c.change_voter_here(id, add).await.map(|()| Bytes::new());
                }
                if route == LEAVE_ROUTE {
                    let id: NodeId = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    return c
                        .group
                        .remove_learners([id].into_iter().collect())
                        .await
                        .map(|()| Bytes::new())
                        .map_err(|e| e.to_string());
                }
                if route != PROPOSE_ROUTE {
                    let other = c.routes.read().unwrap_or_else(|e| e.into_inner()).clone();
                    return match other {
                        Some(h) => h(from, route, body).await,
                        None => Err(format!("unknown route {route}")),
                    };
                }
                match c.group.propose(body).await {
                    Ok(a) => Ok(Bytes::from(a.index.to_be_bytes().to_vec())),
                    Err(ProposeError::NotLeader(l)) => Err(format!("not leader; leader is {l:?}")),
                    Err(e) => Err(e.to_string()),
                }
            })
        }));
        // A single node (by configuration on a new cluster, or by its membership since):
        // elect it straight away.
        let alone = match c.voters() {
            v if v.is_empty() => c.bootstrap.len() == 1 && c.bootstrap.contains_key(&node_id),
            v => v.len() == 1 && v.contains(&node_id),
        };
        if alone {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !c.group.is_ready_leader() && Instant::now() < deadline {
                if c.group.leader().is_none() {
                    c.group.elect().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::spawn(follow_addresses(Arc::downgrade(&c)));
        info!(node = node_id, voters = ?c.voters(), "controller started");
        Ok(c)
    }

    /// The controller's voters now (from the membership in its log; empty before this node
    /// has any).
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.group.voters().into_iter().collect()
    }

    /// Joins a running cluster as a learner of the controller group (a broker that does
    /// not vote on metadata, as Kafka's brokers are to its KRaft controllers, until it is
    /// made a voter): asks the configured peers in turn (any of them forwards to the
    /// leader) until the leader has added it, then waits until this node has applied the
    /// metadata the leader had then. A node that is a member already (it restarts) is
    /// answered at once. Retries until `timeout`.
    pub async fn join(&self, raft_addr: &str, timeout: Duration) -> Result<(), ControllerError> {
        let deadline = Instant::now() + timeout;
        let body = Bytes::from(
            serde_json::to_vec(&(self.node_id, raft_addr)).map_err(|e| ControllerError::Failed(e.to_string()))?,
        );
        let mut last = String::from("no voter answered");
        let index = 'outer: loop {
            for peer in self.bootstrap.keys().filter(|p| **p != self.node_id) {
                let call = self
                    .transport
                    .call_app(*peer, JOIN_ROUTE, &body, Duration::from_secs(10))
                    .await;
                match call {
                    Ok(b) => match <[u8; 8]>::try_from(b.as_ref()) {
                        Ok(raw) => break 'outer u64::from_be_bytes(raw),
                        Err(_) => last = "bad answer to a join".into(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(ControllerError::Failed(format!("could not join the cluster: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut rx = self.meta.clone();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        tokio::time::timeout(left, rx.wait_for(|m| m.applied_index >= index))
            .await
            .map_err(|_| ControllerError::Failed("joined, but the metadata did not arrive in time".into()))?
            .map_err(|e| ControllerError::Failed(e.to_string()))?;
        info!(node = self.node_id, index, "joined the cluster as a controller learner");
        Ok(())
    }

    /// Drops node `id`'s learner from the controller group (after it was unregistered), on
    /// the controller's leader, forwarding there if need be.
    pub async fn remove_learner(&self, id: NodeId, timeout: Duration) -> Result<(), ControllerError> {
        if self.voters().contains(&id) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = if self.group.is_leader() {
                self.group
                    .remove_learners([id].into_iter().collect())
                    .await
                    .map_err(|e| e.to_string())
            } else if let Some(leader) = self.group.leader().filter(|l| *l != self.node_id) {
                let body = serde_json::to_vec(&id).map_err(|e| ControllerError::Failed(e.to_string()))?;
                self.transport
                    .call_app(leader, LEAVE_ROUTE, &body, Duration::from_secs(5))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                Err("no leader".to_string())
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(ControllerError::Failed(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// On the controller's leader: adds a joining node as a learner. Answers with the
    /// index of the last applied metadata command. Another node forwards the request to
    /// the leader.
    async fn admit(&self, body: &[u8]) -> Result<Bytes, String> {
        let (id, addr): (NodeId, String) = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !self.group.is_leader() {
            return match self.group.leader().filter(|l| *l != self.node_id) {
                Some(leader) => self
                    .transport
                    .call_app(leader, JOIN_ROUTE, body, Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the controller has no leader".into()),
            };
        }
        if !self.group.members().contains(&id) {
            self.transport.set_peer(id, addr.clone());
            self.group
                .add_learners([(id, Node { addr })].into_iter().collect())
                .await
                .map_err(|e| e.to_string())?;
            info!(node = id, "node joined the controller group as a learner");
        }
        Ok(Bytes::from(self.meta().applied_index.to_be_bytes().to_vec()))
    }

    /// Adds node `id` to the controller's voters (`add`) or removes it (it stays a learner,
    /// so it keeps its metadata and goes on serving as a broker), on the controller's
    /// leader, forwarding there if need be. A node is made a voter only once it has joined
    /// and caught up; the last voter is never removed. Returns once the new voters are
    /// committed.
    pub async fn change_voter(&self, id: NodeId, add: bool, timeout: Duration) -> Result<(), ControllerError> {
        let body = serde_json::to_vec(&(id, add)).map_err(|e| ControllerError::Failed(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = if self.group.is_leader() {
                self.change_voter_here(id, add).await
            } else if let Some(leader) = self.group.leader().filter(|l| *l != self.node_id) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .transport
                    .call_app(leader, VOTERS_ROUTE, &body, left.max(Duration::from_millis(1)))
                    .await
                {
                    Ok(_) => Ok(()),
                    // The leader's own answer (a refusal, or "not leader" after a change).
                    Err(keel_raft::transport::TransportError::Refused(_, e)) => Err(e),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Err("the controller has no leader".to_string())
            };
            match attempt {
                Ok(()) => return Ok(()),
                // A refusal (see change_voter_here) is final; a missing leader is waited for.
                Err(e) if e.starts_with("refused") || Instant::now() >= deadline => {
                    return Err(ControllerError::Failed(e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// [`Controller::change_voter`] on the leader.
    async fn change_voter_here(&self, id: NodeId, add: bool) -> Result<(), String> {
        if !self.group.is_leader() {
            return Err(format!("not leader; leader is {:?}", self.group.leader()));
        }
        let voters = self.voters();
        if add {
            if voters.contains(&id) {
                return Err(format!("refused: node {id} is a voter already"));
            }
            if !self.group.members().contains(&id) {
                return Err(format!("refused: node {id} has not joined the cluster"));
            }
            match self.group.lag_of(id) {
                Some(lag) if lag <= VOTER_CATCH_UP => {}
                // Not a refusal: change_voter waits for it to catch up.
                Some(lag) => return Err(format!("node {id} is {lag} entries behind")),
                None => return Err(format!("node {id} has not caught up yet")),
            }
        } else {
            if !voters.contains(&id) {
                return Err(format!("refused: node {id} is not a voter"));
            }
            if voters.len() == 1 {
                return Err(format!("refused: node {id} is the only voter"));
            }
        }
        let change = async {
            if add {
                self.group.add_voter(id).await
            } else {
                self.group.remove_voter(id).await
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), change).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("refused: the new voters did not commit in 30 s (is a quorum of them up?)".into()),
        }
        info!(node = id, voters = ?self.voters(), "{}", if add { "controller voter added" } else { "controller voter removed" });
        Ok(())
    }

    /// Hands the routes the controller does not serve to `handler`.
    pub fn set_routes(&self, handler: keel_raft::transport::AppHandler) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// The events queue, taken once by the topics reconciler.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn meta(&self) -> Arc<ClusterMeta> {
        self.meta.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMeta>> {
        self.meta.clone()
    }

    /// Commits `command` through the controller's leader (forwarding if that is another
    /// node) and waits until this node has applied it. Returns its log index.
    pub async fn propose(&self, command: &Command, timeout: Duration) -> Result<u64, ControllerError> {
        let body = Bytes::from(serde_json::to_vec(command).map_err(|e| ControllerError::Failed(e.to_string()))?);
        let deadline = Instant::now() + timeout;
        let index = loop {
            let attempt = if self.group.is_leader() {
                match self.group.propose(body.clone()).await {
                    Ok(a) => Ok(a.index),
                    Err(e) => Err(e.to_string()),
                }
            } else if let Some(leader) = self.group.leader().filter(|l| *l != self.node_id) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .transport
                    .call_app(leader, PROPOSE_ROUTE, &body, left.max(Duration::from_millis(1)))
                    .await
                {
                    Ok(b) => {
                        let raw: [u8; 8] = b
                            .as_ref()
                            .try_into()
                            .map_err(|_| ControllerError::Failed("bad answer from the controller leader".into()))?;
                        Ok(u64::from_be_bytes(raw))
                    }
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Err("no leader".to_string())
            };
            match attempt {
                Ok(i) => break i,
                Err(e) if Instant::now() >= deadline => {
                    return Err(if self.group.leader().is_none() {
                        ControllerError::NoQuorum(self.voters().len())
                    } else {
                        ControllerError::Failed(e)
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut rx = self.meta.clone();
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        tokio::time::timeout(left, rx.wait_for(|m| m.applied_index >= index))
            .await
            .map_err(|_| ControllerError::Failed("command committed but not applied here in time".into()))?
            .map_err(|e| ControllerError::Failed(e.to_string()))?;
        Ok(index)
    }

    /// Replica lists for `count` new partitions starting at partition `first`: `rf` distinct
    /// nodes each, rotated so that preferred leaders spread over the nodes.
    pub fn assign(&self, name: &str, first: i32, count: i32, rf: usize) -> Vec<Vec<NodeId>> {
        let mut nodes: Vec<NodeId> = self.voters().into_iter().collect();
        for id in self.meta().nodes.keys() {
            if !nodes.contains(id) {
                nodes.push(*id);
            }
        }
        nodes.sort_unstable();
        let meta = self.meta();
        let nodes = rack_alternated(&nodes, |n| meta.nodes.get(&n).and_then(|i| i.rack.clone()));
        assign(&nodes, name, first, count, rf)
    }

    /// Every registered node's rack (nodes without one are left out).
    pub fn racks(&self) -> BTreeMap<NodeId, String> {
        self.meta()
            .nodes
            .iter()
            .filter_map(|(id, n)| n.rack.clone().map(|r| (*id, r)))
            .collect()
    }
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

/// Keeps the transport's address book in step with the registered nodes, so that every
/// node reaches (and pings) nodes that joined after it started.
async fn follow_addresses(c: std::sync::Weak<Controller>) {
    let Some(mut rx) = c.upgrade().map(|c| c.subscribe()) else {
        return;
    };
    loop {
        let Some(ctl) = c.upgrade() else { return };
        let meta = rx.borrow_and_update().clone();
        for (id, n) in &meta.nodes {
            if *id != ctl.node_id && !n.raft_addr.is_empty() {
                ctl.transport.set_peer(*id, n.raft_addr.clone());
            }
        }
        drop(ctl);
        if rx.changed().await.is_err() {
            return;
        }
    }
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
