//! The classic consumer-group protocol as a pure state machine.
//!
//! Events (join, sync, heartbeat, leave, a clock tick) go in; what to answer comes out.
//! A JoinGroup or SyncGroup may have to wait for other members, so each takes a reply
//! token `T` (a channel in the broker, a number in tests) and the methods return the
//! tokens that can be answered now, with their answers. Nothing here does I/O or reads a
//! clock: `now_ms` is passed in.
//!
//! States follow Kafka's: Empty → PreparingRebalance (members (re)join) →
//! CompletingRebalance (the leader computes assignments) → Stable (SyncGroup delivered
//! them). A member that misses its session timeout is removed and the group rebalances;
//! a member that does not rejoin within the rebalance timeout is dropped from it.
//! Static members (KIP-345) keep their assignment across a restart within the session
//! timeout: their rejoin replaces the old member id without a rebalance.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

pub const NONE: i16 = 0;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const NOT_COORDINATOR: i16 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Kafka's name for the state, as DescribeGroups and ListGroups report it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_heartbeat_ms: u64,
}

/// A JoinGroup as the state machine sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(JoinResult),
    Sync(SyncResult),
}

/// Timing settings of the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct GroupTiming {
    /// How long a rebalance of an empty group waits for more members (Kafka's
    /// `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
}

pub struct Group<T> {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Static instance id → current member id.
    pub instances: HashMap<String, String>,
    pending_joins: BTreeMap<String, T>,
    pending_syncs: BTreeMap<String, T>,
    rebalance_deadline_ms: u64,
    /// A rebalance of an empty group may finish early only after this time.
    initial_wait_until_ms: u64,
    member_seq: u64,
    timing: GroupTiming,
    /// Rebalances completed, for metrics.
    pub rebalances: u64,
}

fn join_error<T>(token: T, error: i16, member_id: &str) -> (T, Reply) {
    (
        token,
        Reply::Join(JoinResult {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }),
    )
}

fn sync_error<T>(token: T, error: i16) -> (T, Reply) {
    (
        token,
        Reply::Sync(SyncResult {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }),
    )
}

impl<T> Group<T> {
    pub fn new(id: &str, timing: GroupTiming) -> Group<T> {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            instances: HashMap::new(),
            pending_joins: BTreeMap::new(),
            pending_syncs: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            initial_wait_until_ms: 0,
            member_seq: 0,
            timing,
            rebalances: 0,
        }
    }

    /// A new member id as Kafka makes them: the client id, a dash, a unique suffix (range
    /// and round-robin assignors order members by id, and clients expect this shape). The
    /// suffix is a per-group sequence number, zero-padded so ids sort in creation order,
    /// and a random part so ids are never reused across broker restarts.
    fn new_member_id(&mut self, client_id: &str) -> String {
        self.member_seq += 1;
        let random = uuid::Uuid::new_v4().simple().to_string();
        let prefix = if client_id.is_empty() { "member" } else { client_id };
        format!(
            "{prefix}-{:08}-{}",
            self.member_seq,
            random.get(..12).unwrap_or_default()
        )
    }

    /// Protocols every member (and `extra`, if given) supports, by votes of first choice.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&str> = match self.members.values().next() {
            Some(m) => m.protocols.iter().map(|(n, _)| n.as_str()).collect(),
            None => return None,
        };
        candidates.retain(|c| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == c)));
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n.as_str())) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| (votes.get(*c).copied().unwrap_or(0), std::cmp::Reverse(**c)))
            .map(|c| c.to_string())
    }

    fn compatible(&self, req: &JoinRequest) -> bool {
        if self.members.is_empty() {
            return !req.protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return false;
        }
        // Some protocol must be supported by every other member and the joiner.
        req.protocols.iter().any(|(n, _)| {
            self.members
                .values()
                .filter(|m| m.id != req.member_id)
                .all(|m| m.protocols.iter().any(|(p, _)| p == n))
        })
    }

    /// Handles a JoinGroup.
    pub fn join(&mut self, now_ms: u64, mut req: JoinRequest, token: T) -> Vec<(T, Reply)> {
        let mut out = Vec::new();
        if !self.compatible(&req) {
            out.push(join_error(token, INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
            return out;
        }
        // A static member rejoining: take over its old member id.
        if let Some(instance) = req.instance_id.clone() {
            if let Some(old_id) = self.instances.get(&instance).cloned() {
                if !req.member_id.is_empty() && req.member_id != old_id {
                    // An older incarnation of a static member that was replaced.
                    out.push(join_error(token, FENCED_INSTANCE_ID, &req.member_id));
                    return out;
                }
                if req.member_id.is_empty() {
                    let new_id = self.new_member_id(&req.client_id);
                    if let Some(mut m) = self.members.remove(&old_id) {
                        if let Some(t) = self.pending_joins.remove(&old_id) {
                            out.push(join_error(t, FENCED_INSTANCE_ID, &old_id));
                        }
                        if let Some(t) = self.pending_syncs.remove(&old_id) {
                            out.push(sync_error(t, FENCED_INSTANCE_ID));
                        }
                        let same_protocols = m.protocols == req.protocols;
                        m.id = new_id.clone();
                        m.protocols = req.protocols.clone();
                        m.session_timeout_ms = req.session_timeout_ms;
                        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                        m.last_heartbeat_ms = now_ms;
                        self.members.insert(new_id.clone(), m);
                        self.instances.insert(instance, new_id.clone());
                        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
                        if was_leader {
                            self.leader = Some(new_id.clone());
                        }
                        if self.state == GroupState::Stable && same_protocols {
                            // No rebalance: the member gets the current generation and
                            // fetches its unchanged assignment with SyncGroup. A returning
                            // leader also gets the member list, as Kafka gives it; the
                            // assignment it computes is ignored in Stable (KIP-345/814).
                            let members = if was_leader { self.member_metadata() } else { Vec::new() };
                            out.push((
                                token,
                                Reply::Join(JoinResult {
                                    error: NONE,
                                    generation: self.generation,
                                    protocol_type: self.protocol_type.clone(),
                                    protocol_name: self.protocol.clone(),
                                    leader: self.leader.clone().unwrap_or_default(),
                                    member_id: new_id,
                                    members,
                                }),
                            ));
                            return out;
                        }
                        req.member_id = new_id;
                    }
                }
            }
        }
        if req.member_id.is_empty() {
            let id = self.new_member_id(&req.client_id);
            if let Some(instance) = &req.instance_id {
                self.instances.insert(instance.clone(), id.clone());
            }
            req.member_id = id;
        } else if !self.members.contains_key(&req.member_id) {
            out.push(join_error(token, UNKNOWN_MEMBER_ID, &req.member_id));
            return out;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let member = self.members.entry(req.member_id.clone()).or_insert_with(|| Member {
            id: req.member_id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_heartbeat_ms: now_ms,
        });
        member.protocols = req.protocols;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        if let Some(old) = self.pending_joins.insert(req.member_id.clone(), token) {
            out.push(join_error(old, UNKNOWN_MEMBER_ID, &req.member_id));
        }
        if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now_ms, &mut out);
        }
        self.maybe_complete_join(now_ms, &mut out);
        out
    }

    fn start_rebalance(&mut self, now_ms: u64, out: &mut Vec<(T, Reply)>) {
        let from_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        let timeout = self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + timeout;
        self.initial_wait_until_ms = if from_empty {
            now_ms + self.timing.initial_rebalance_delay_ms.min(timeout)
        } else {
            now_ms
        };
        for (_, t) in std::mem::take(&mut self.pending_syncs) {
            out.push(sync_error(t, REBALANCE_IN_PROGRESS));
        }
    }

    fn maybe_complete_join(&mut self, now_ms: u64, out: &mut Vec<(T, Reply)>) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.keys().all(|id| self.pending_joins.contains_key(id));
        let deadline = now_ms >= self.rebalance_deadline_ms;
        if !(deadline || (all_joined && now_ms >= self.initial_wait_until_ms)) {
            return;
        }
        // Members that did not rejoin in time are out.
        let missing: Vec<String> = self
            .members
            .keys()
            .filter(|id| !self.pending_joins.contains_key(*id))
            .cloned()
            .collect();
        for id in missing {
            self.remove_member(&id, out);
        }
        if self.members.is_empty() {
            self.generation += 1;
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.generation += 1;
        self.rebalances += 1;
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .map(|l| self.members.contains_key(l))
            .unwrap_or(false)
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let metadata = self.member_metadata();
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            m.last_heartbeat_ms = now_ms;
        }
        for (id, t) in std::mem::take(&mut self.pending_joins) {
            let members = if id == leader { metadata.clone() } else { Vec::new() };
            out.push((
                t,
                Reply::Join(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id,
                    members,
                }),
            ));
        }
        self.state = GroupState::CompletingRebalance;
    }

    /// (member id, instance id, metadata for the selected protocol) of every member.
    fn member_metadata(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (m.id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    }

    fn remove_member(&mut self, id: &str, out: &mut Vec<(T, Reply)>) {
        if let Some(m) = self.members.remove(id) {
            if let Some(instance) = m.instance_id {
                if self.instances.get(&instance).map(|cur| cur == id).unwrap_or(false) {
                    self.instances.remove(&instance);
                }
            }
        }
        if let Some(t) = self.pending_joins.remove(id) {
            out.push(join_error(t, UNKNOWN_MEMBER_ID, id));
        }
        if let Some(t) = self.pending_syncs.remove(id) {
            out.push(sync_error(t, UNKNOWN_MEMBER_ID));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// This node stops coordinating the group (its `__consumer_offsets` leadership ended,
    /// or moves to a new term): every JoinGroup and SyncGroup waiting for the rebalance is
    /// answered NOT_COORDINATOR at once, so its member finds the new coordinator instead of
    /// waiting out its rebalance timeout (minutes) here.
    pub fn unload(&mut self) -> Vec<(T, Reply)> {
        let mut out: Vec<(T, Reply)> = std::mem::take(&mut self.pending_joins)
            .into_iter()
            .map(|(id, t)| join_error(t, NOT_COORDINATOR, &id))
            .collect();
        out.extend(
            std::mem::take(&mut self.pending_syncs)
                .into_values()
                .map(|t| sync_error(t, NOT_COORDINATOR)),
        );
        out
    }

    /// Handles a SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        now_ms: u64,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        token: T,
    ) -> Vec<(T, Reply)> {
        let mut out = Vec::new();
        if self.fenced(member_id, instance_id) {
            out.push(sync_error(token, FENCED_INSTANCE_ID));
            return out;
        }
        let Some(member) = self.members.get_mut(member_id) else {
            out.push(sync_error(token, UNKNOWN_MEMBER_ID));
            return out;
        };
        member.last_heartbeat_ms = now_ms;
        if generation != self.generation {
            out.push(sync_error(token, ILLEGAL_GENERATION));
            return out;
        }
        match self.state {
            GroupState::Empty | GroupState::PreparingRebalance => out.push(sync_error(token, REBALANCE_IN_PROGRESS)),
            GroupState::Stable => {
                let assignment = member.assignment.clone();
                out.push((
                    token,
                    Reply::Sync(SyncResult {
                        error: NONE,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol.clone(),
                        assignment,
                    }),
                ));
            }
            GroupState::CompletingRebalance => {
                self.pending_syncs.insert(member_id.to_string(), token);
                if self.leader.as_deref() == Some(member_id) {
                    for (id, a) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = a;
                        }
                    }
                    self.state = GroupState::Stable;
                    for (id, t) in std::mem::take(&mut self.pending_syncs) {
                        let assignment = self.members.get(&id).map(|m| m.assignment.clone()).unwrap_or_default();
                        out.push((
                            t,
                            Reply::Sync(SyncResult {
                                error: NONE,
                                protocol_type: self.protocol_type.clone(),
                                protocol_name: self.protocol.clone(),
                                assignment,
                            }),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Handles a Heartbeat; returns its error code.
    pub fn heartbeat(&mut self, now_ms: u64, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if self.fenced(member_id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        let state = self.state;
        let current = self.generation;
        let Some(m) = self.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        m.last_heartbeat_ms = now_ms;
        if generation != current {
            return ILLEGAL_GENERATION;
        }
        match state {
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::Empty => UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => NONE,
        }
    }

    /// Whether a request from `member_id` carries a static instance id that now belongs to
    /// another member (a newer incarnation replaced it).
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id.and_then(|i| self.instances.get(i)) {
            Some(current) => current != member_id,
            None => false,
        }
    }

    /// Handles a LeaveGroup of one member (by member id, or by instance id for static
    /// members). Returns the member's error code and replies that can now be sent.
    pub fn leave(&mut self, now_ms: u64, member_id: &str, instance_id: Option<&str>) -> (i16, Vec<(T, Reply)>) {
        let mut out = Vec::new();
        let id = match instance_id {
            Some(inst) => match self.instances.get(inst) {
                Some(cur) if member_id.is_empty() || cur == member_id => cur.clone(),
                Some(_) => return (FENCED_INSTANCE_ID, out),
                None => return (UNKNOWN_MEMBER_ID, out),
            },
            None => member_id.to_string(),
        };
        if !self.members.contains_key(&id) {
            return (UNKNOWN_MEMBER_ID, out);
        }
        self.remove_member(&id, &mut out);
        self.after_removal(now_ms, &mut out);
        (NONE, out)
    }

    fn after_removal(&mut self, now_ms: u64, out: &mut Vec<(T, Reply)>) {
        if self.members.is_empty() {
            for (_, t) in std::mem::take(&mut self.pending_syncs) {
                out.push(sync_error(t, REBALANCE_IN_PROGRESS));
            }
            self.generation += 1;
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now_ms, out);
        }
        self.maybe_complete_join(now_ms, out);
    }

    /// Expires members past their session timeout and finishes rebalances whose time is up.
    pub fn tick(&mut self, now_ms: u64) -> Vec<(T, Reply)> {
        let mut out = Vec::new();
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !self.pending_joins.contains_key(&m.id))
            .filter(|m| now_ms.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms)
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                self.remove_member(id, &mut out);
            }
            self.after_removal(now_ms, &mut out);
        }
        self.maybe_complete_join(now_ms, &mut out);
        out
    }

    /// Whether an OffsetCommit from this member and generation is allowed (error code).
    /// A commit with generation -1 and no member id comes from a client outside the group
    /// protocol (assign() users, admin tools) and is allowed while the group has no members.
    pub fn commit_allowed(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            return if self.members.is_empty() {
                NONE
            } else {
                ILLEGAL_GENERATION
            };
        }
        if self.fenced(member_id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        if !self.members.contains_key(member_id) {
            return UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        // As Kafka: members keep committing what they consumed while others (re)join (the
        // cooperative protocol depends on it); between the join and the leader's
        // assignment the generation is not settled yet.
        match self.state {
            GroupState::CompletingRebalance => REBALANCE_IN_PROGRESS,
            _ => NONE,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}
