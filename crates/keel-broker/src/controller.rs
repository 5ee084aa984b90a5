//! The controller: a Raft group every node takes part in (its voters are the configured
//! peers; a single node is its only voter), holding the cluster's metadata: nodes,
//! topics, partition replica assignments, topic configs.
//!
//! Commands are JSON; applying them is deterministic and happens on every node, which then
//! serves Metadata from its own copy. Applying also queues [`Event`]s for this node's
//! [`crate::topics::Topics`], which opens and closes its local partition replicas to match.
//! A node that is not the controller's leader forwards proposals to it over the transport.
//!
//! The controller's log is small (one entry per admin operation) and is replayed in full
//! at every start, so its state needs no snapshot file of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_log::{DiskLog, LogConfig};
use keel_raft::{Apply, EntryFormat, Group, GroupOptions, Node, NodeId, ProposeError, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;

pub const CONTROLLER_GROUP: &str = "__controller";
/// Transport requests (kind "app") that carry a proposal to the controller's leader.
const PROPOSE_ROUTE: &str = "controller/propose";

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub kafka_host: String,
    pub kafka_port: u16,
    pub raft_addr: String,
}

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: Uuid,
    /// Replica node ids per partition; the first is the preferred leader.
    pub replicas: Vec<Vec<NodeId>>,
    pub configs: BTreeMap<String, String>,
}

/// The cluster's metadata, identical on every node up to the controller's applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Controller log index of the last applied command.
    pub applied_index: u64,
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
}

/// What applying a command asks of this node's topics.
#[derive(Debug, Clone)]
pub struct Event {
    pub index: u64,
    /// False when the command changed nothing (e.g. creating a topic that exists).
    pub applies: bool,
    pub command: Command,
    /// The topic after the command (absent once deleted).
    pub topic: Option<TopicRecord>,
}

struct Hook {
    meta: watch::Sender<Arc<ClusterMeta>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Apply for Hook {
    fn apply(&self, index: u64, _base: i64, _next: i64, payload: &Bytes) {
        let command: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                warn!(index, error = %e, "undecodable controller command skipped");
                return;
            }
        };
        let mut meta = (**self.meta.borrow()).clone();
        meta.applied_index = index;
        let applies = match &command {
            Command::RegisterNode { id, info } => {
                meta.nodes.insert(*id, info.clone());
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
            Command::DeleteTopic { name } => meta.topics.remove(name).is_some(),
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
        };
        let topic = match &command {
            Command::CreateTopic { name, .. }
            | Command::DeleteTopic { name }
            | Command::AddPartitions { name, .. }
            | Command::AlterConfigs { name, .. } => meta.topics.get(name).cloned(),
            Command::RegisterNode { .. } => None,
        };
        let _ = self.events.send(Event {
            index,
            applies,
            command,
            topic,
        });
        self.meta.send_replace(Arc::new(meta));
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
    /// The controller's voters and their transport addresses.
    pub voters: BTreeMap<NodeId, Node>,
    meta: watch::Receiver<Arc<ClusterMeta>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl Controller {
    /// Opens the controller's log under `dir` and joins the group.
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
            hook,
            GroupOptions {
                format: EntryFormat::Commands,
                fsync: true,
                ..options
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if fresh {
            group.initialize(voters.clone()).await.map_err(anyhow::Error::msg)?;
        }
        let c = Arc::new(Controller {
            node_id,
            transport: transport.clone(),
            group,
            voters,
            meta: meta_rx,
            events: Mutex::new(Some(ev_rx)),
        });
        let weak = Arc::downgrade(&c);
        transport.set_app_handler(Arc::new(move |_from, route, body| {
            let weak = weak.clone();
            Box::pin(async move {
                let c = weak.upgrade().ok_or_else(|| "controller stopped".to_string())?;
                if route != PROPOSE_ROUTE {
                    return Err(format!("unknown route {route}"));
                }
                match c.group.propose(body).await {
                    Ok(a) => Ok(Bytes::from(a.index.to_be_bytes().to_vec())),
                    Err(ProposeError::NotLeader(l)) => Err(format!("not leader; leader is {l:?}")),
                    Err(e) => Err(e.to_string()),
                }
            })
        }));
        if c.voters.len() == 1 && c.voters.contains_key(&node_id) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !c.group.is_ready_leader() && Instant::now() < deadline {
                if c.group.leader().is_none() {
                    c.group.elect().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        info!(node = node_id, voters = c.voters.len(), "controller started");
        Ok(c)
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
                        ControllerError::NoQuorum(self.voters.len())
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
        let mut nodes: Vec<NodeId> = self.voters.keys().copied().collect();
        for id in self.meta().nodes.keys() {
            if !nodes.contains(id) {
                nodes.push(*id);
            }
        }
        nodes.sort_unstable();
        assign(&nodes, name, first, count, rf)
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
}
