//! The group coordinator: every group of this broker, their clock, and committed offsets.
//!
//! Each group's state machine sits behind its own async mutex. A request handler locks it,
//! feeds the event in with a oneshot sender as the reply token, sends every reply the
//! machine hands back, and then awaits its own. A ticker expires sessions and completes
//! rebalances whose time is up, and refreshes the lag metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::offsets::OffsetStore;
use super::state::{Group, GroupState, GroupTiming, JoinRequest, JoinResult, Reply, SyncResult};
use crate::cluster::topics::Topics;
use crate::metrics::Metrics;

pub type Token = oneshot::Sender<Reply>;
type SharedGroup = Arc<tokio::sync::Mutex<Group<Token>>>;

/// Groups one broker coordinates at most.
pub const GROUPS_MAX: usize = 100_000;

pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;

/// A snapshot of one group for DescribeGroups and the CLI.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub struct Coordinator {
    groups: Mutex<HashMap<String, SharedGroup>>,
    pub offsets: OffsetStore,
    timing: GroupTiming,
    epoch: Instant,
    reported_rebalances: Mutex<HashMap<String, u64>>,
}

impl Coordinator {
    pub fn new(offsets: OffsetStore, timing: GroupTiming) -> Coordinator {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            offsets,
            timing,
            epoch: Instant::now(),
            reported_rebalances: Mutex::new(HashMap::new()),
        }
    }

    /// Milliseconds on the coordinator's monotonic clock.
    /// Forgets every group's membership (coordination moved to or from this node; members
    /// rejoin). Committed offsets stay.
    /// Forgets every group (this node stops coordinating, or reloads for a new term),
    /// answering the members waiting in a rebalance NOT_COORDINATOR.
    pub async fn reset(&self) {
        let groups = std::mem::take(&mut *self.groups.lock().unwrap_or_else(|e| e.into_inner()));
        for g in groups.into_values() {
            let replies = g.lock().await.unload();
            Self::send_all(replies);
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn group(&self, id: &str, create: bool) -> Option<SharedGroup> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get(id) {
            return Some(g.clone());
        }
        if !create || groups.len() >= GROUPS_MAX {
            return None;
        }
        let g = Arc::new(tokio::sync::Mutex::new(Group::new(id, self.timing)));
        groups.insert(id.to_string(), g.clone());
        Some(g)
    }

    fn send_all(replies: Vec<(Token, Reply)>) {
        for (t, r) in replies {
            let _ = t.send(r);
        }
    }

    pub async fn join(&self, group_id: &str, req: JoinRequest) -> JoinResult {
        let wait = Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) + 5_000);
        let member_id = req.member_id.clone();
        let Some(group) = self.group(group_id, true) else {
            return join_failure(COORDINATOR_NOT_AVAILABLE, &member_id);
        };
        let (tx, rx) = oneshot::channel();
        let replies = group.lock().await.join(self.now_ms(), req, tx);
        Self::send_all(replies);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Reply::Join(j))) => j,
            _ => join_failure(super::state::REBALANCE_IN_PROGRESS, &member_id),
        }
    }

    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let Some(group) = self.group(group_id, false) else {
            return sync_failure(super::state::UNKNOWN_MEMBER_ID);
        };
        let (tx, rx) = oneshot::channel();
        let (replies, wait) = {
            let mut g = group.lock().await;
            let wait = g.members.values().map(|m| m.session_timeout_ms).max().unwrap_or(0) + 5_000;
            (
                g.sync(self.now_ms(), member_id, instance_id, generation, assignments, tx),
                wait,
            )
        };
        Self::send_all(replies);
        match tokio::time::timeout(Duration::from_millis(wait), rx).await {
            Ok(Ok(Reply::Sync(s))) => s,
            _ => sync_failure(super::state::REBALANCE_IN_PROGRESS),
        }
    }

    pub async fn heartbeat(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        match self.group(group_id, false) {
            Some(g) => g
                .lock()
                .await
                .heartbeat(self.now_ms(), member_id, instance_id, generation),
            None => super::state::UNKNOWN_MEMBER_ID,
        }
    }

    pub async fn leave(&self, group_id: &str, member_id: &str, instance_id: Option<&str>) -> i16 {
        let Some(group) = self.group(group_id, false) else {
            return super::state::UNKNOWN_MEMBER_ID;
        };
        let (code, replies) = group.lock().await.leave(self.now_ms(), member_id, instance_id);
        Self::send_all(replies);
        code
    }

    /// Error code for an OffsetCommit from this member.
    pub async fn commit_allowed(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        match self.group(group_id, generation < 0 && member_id.is_empty()) {
            Some(g) => g.lock().await.commit_allowed(member_id, instance_id, generation),
            None => super::state::UNKNOWN_MEMBER_ID,
        }
    }

    /// (group id, protocol type, state) of every known group, including groups that have
    /// only committed offsets.
    pub async fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut out: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
        for g in self.offsets.groups() {
            out.insert(g, ("consumer".to_string(), GroupState::Empty.name()));
        }
        let groups: Vec<(String, SharedGroup)> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, g) in groups {
            let g = g.lock().await;
            if g.is_empty() && !out.contains_key(&id) && g.generation == 0 {
                continue;
            }
            out.insert(
                id,
                (
                    g.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
                    g.state.name(),
                ),
            );
        }
        out.into_iter().map(|(id, (pt, st))| (id, pt, st)).collect()
    }

    pub async fn describe(&self, group_id: &str) -> Option<GroupView> {
        let known_offsets = !self.offsets.group_offsets(group_id).is_empty();
        let Some(g) = self.group(group_id, false) else {
            return known_offsets.then(|| GroupView {
                state: GroupState::Empty.name(),
                protocol_type: "consumer".into(),
                protocol: String::new(),
                generation: 0,
                members: Vec::new(),
            });
        };
        let g = g.lock().await;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            generation: g.generation,
            members: g
                .members
                .values()
                .map(|m| {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        meta,
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        let group = self.group(group_id, false);
        if let Some(g) = &group {
            if !g.lock().await.is_empty() {
                return NON_EMPTY_GROUP;
            }
        }
        if group.is_none() && self.offsets.group_offsets(group_id).is_empty() {
            return GROUP_ID_NOT_FOUND;
        }
        if self.offsets.delete_group(group_id).await.is_err() {
            return COORDINATOR_NOT_AVAILABLE;
        }
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).remove(group_id);
        0
    }

    /// Whether the group currently has members (it is "active").
    pub async fn is_active(&self, group_id: &str) -> bool {
        match self.group(group_id, false) {
            Some(g) => !g.lock().await.is_empty(),
            None => false,
        }
    }

    /// Expires sessions and finishes due rebalances in every group.
    pub async fn tick(&self) {
        let groups: Vec<SharedGroup> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let now = self.now_ms();
        for g in groups {
            let replies = g.lock().await.tick(now);
            Self::send_all(replies);
        }
    }

    /// Refreshes member counts, rebalance counts and consumer lag in the metrics.
    pub async fn refresh_metrics(&self, metrics: &Metrics, topics: &Topics) {
        let groups: Vec<(String, SharedGroup)> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, g) in groups {
            let g = g.lock().await;
            metrics.group_members(&id).set(g.members.len() as i64);
            let mut reported = self.reported_rebalances.lock().unwrap_or_else(|e| e.into_inner());
            let seen = reported.entry(id.clone()).or_insert(0);
            if g.rebalances > *seen {
                metrics.group_rebalances(&id).inc_by(g.rebalances - *seen);
                *seen = g.rebalances;
            }
        }
        for l in self.lag(topics) {
            if let Some(hw) = l.high_watermark {
                metrics
                    .consumer_lag(&l.group, &l.topic, l.partition)
                    .set((hw - l.committed).max(0));
            }
        }
    }

    /// Every committed offset this node knows, with the partition's high watermark where
    /// this node holds a replica of it.
    pub fn lag(&self, topics: &Topics) -> Vec<Lag> {
        let mut out = Vec::new();
        for group in self.offsets.groups() {
            for ((topic, partition), c) in self.offsets.group_offsets(&group) {
                let high_watermark = topics
                    .get(&topic)
                    .and_then(|t| t.partition(partition))
                    .map(|p| p.high_watermark());
                out.push(Lag {
                    group: group.clone(),
                    topic,
                    partition,
                    committed: c.offset,
                    high_watermark,
                });
            }
        }
        out
    }
}

/// A group's committed offset in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub high_watermark: Option<i64>,
}

fn join_failure(code: i16, member_id: &str) -> JoinResult {
    JoinResult {
        error: code,
        generation: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn sync_failure(code: i16) -> SyncResult {
    SyncResult {
        error: code,
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
    }
}
