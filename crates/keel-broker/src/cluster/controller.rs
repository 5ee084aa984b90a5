//! The controller: the runtime of the cluster's metadata, a Raft group every node takes
//! part in. Its state machine is [`super::meta`] (pure: commands and `apply`); this module
//! replicates the commands. Its first voters are the configured peers (a single node is its
//! only voter); other nodes join as learners, and voters can be added and removed on the
//! running cluster ([`Controller::change_voter`], as KIP-853's AddRaftVoter and
//! RemoveRaftVoter), so any node, a voter included, can be replaced without stopping the
//! cluster.
//!
//! Commands are JSON; applying them is deterministic and happens on every node, which then
//! serves Metadata from its own copy. Applying also queues [`Event`]s for this node's
//! [`super::topics::Topics`], which opens and closes its local partition replicas to match.
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
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::meta::{apply, assign, rack_alternated, ClusterMeta, Command, Event};

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
/// How long a leader that removed itself from the voters tries to hand the leadership
/// over.
const RESIGN_WITHIN: Duration = Duration::from_secs(10);
/// How far (in log entries) a learner may be behind the leader and still be made a voter.
const VOTER_CATCH_UP: u64 = 100;

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
        if !add && id == self.node_id {
            self.resign().await;
        }
        Ok(())
    }

    /// A leader that removed itself from the voters hands the leadership to a voter, as
    /// Kafka's removed controller resigns (KIP-853). openraft would keep it leading as a
    /// learner, and the voters would not elect another while its node is alive: clients
    /// would see a controller leader outside the quorum they describe.
    async fn resign(&self) {
        let deadline = Instant::now() + RESIGN_WITHIN;
        let outcome = super::handover::hand_over(
            &self.transport,
            &self.group,
            None,
            "",
            -1,
            None,
            deadline,
            super::handover::Then::Follow,
        )
        .await;
        match outcome {
            super::handover::Outcome::Moved => {
                info!(node = self.node_id, "controller leadership handed to a voter")
            }
            outcome => warn!(
                node = self.node_id,
                ?outcome,
                "this node left the controller's voters and still leads it"
            ),
        }
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
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left.max(Duration::from_millis(1)), self.group.propose(body.clone())).await {
                    Ok(Ok(a)) => Ok(a.index),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("not committed in time".to_string()),
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
