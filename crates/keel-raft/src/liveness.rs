//! Node-level liveness and quiescent groups.
//!
//! Every node pings every other node (one message per node pair, whatever the number of
//! groups); every few pings carry a *leadership report*: the groups the sender leads, with
//! their terms, each marked quiet or not. This module keeps what those messages tell and
//! decides, for every replica on this node, whether its own Raft timers need to run:
//!
//! - **A leader quiesces** a group that took no proposal for [`QUIESCE_AFTER`] once every
//!   member has matched its whole log: it claims the group quiet in its next report and,
//!   once every voter's node has acknowledged a report with that claim, stops the group's
//!   heartbeats and ticks (openraft's `runtime_config().heartbeat(false)/tick(false)`).
//!   The next proposal wakes it ([`GroupQuiet::wake`]) before the entry is appended.
//! - **A follower sleeps** (openraft's `elect(false)/tick(false)`) while the node of its
//!   leader is alive (heard within [`QUIET_DEAD_AFTER`]) and its fresh report claims the
//!   group quiet at the follower's term. When the leader's node goes silent or the claim
//!   goes away, the follower's election timer runs again: the lowest live voter at once
//!   (its timer has long expired, so it stands within a tick), the others staggered.
//! - **The node-level lease.** A sleeping follower refuses vote requests, as openraft's
//!   leader lease does for an active group ([`Liveness::may_vote`]); so does a replica that
//!   restarted from a stored vote, for [`QUIET_DEAD_AFTER`]. A quiet leader therefore
//!   serves reads only while a majority of its voters' nodes answered its pings recently
//!   enough that they still refuse votes ([`GroupQuiet::lease_holds`]); the safety
//!   argument is in `docs/design/replication.md`.
//!
//! Nothing here changes Raft: a claim only switches timers off and refuses votes, both of
//! which Raft's safety does not depend on. Writes of a quiet group are committed by Raft
//! as any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::{NodeId, Raft};

/// A leader quiesces a group after this long without a proposal.
pub const QUIESCE_AFTER: Duration = Duration::from_millis(1000);
/// How often nodes ping each other.
pub const PING_INTERVAL: Duration = Duration::from_millis(100);
/// Every this many pings carries a leadership report.
pub const REPORT_EVERY_PINGS: u64 = 3;
/// A node silent this long counts as gone for the groups it leads quietly: their
/// followers' election timers run again. (Active groups keep openraft's own timers.)
pub const QUIET_DEAD_AFTER: Duration = Duration::from_millis(500);
/// A node silent this long counts as gone for everything else (metadata, placement).
pub const ALIVE_WITHIN: Duration = Duration::from_millis(1500);
/// How long a leadership report stands.
pub const CLAIM_FRESH: Duration = Duration::from_millis(1200);
/// Taken off a quiet leader's lease for the drift of the voters' clocks against its own.
const LEASE_MARGIN: Duration = Duration::from_millis(100);
/// Between the followers of a group whose quiet leader is gone, in their order of
/// standing for election after the first.
const ELECT_STAGGER: Duration = Duration::from_millis(3000);
/// Most elections this node starts per ping round for groups whose quiet leader is gone:
/// a node that led thousands of groups dies, and the survivor that stands for all of them
/// must not ask its peers for more votes than they save and answer within a vote's time
/// limit, or every election times out and is retried (a storm that feeds itself). Votes
/// share fsyncs in the node's vote journal, so a round's worth costs a peer about one
/// fsync; 200 a round lets a survivor stand for 3,333 groups (a third of 10,000) in 1.7 s.
const ELECTIONS_PER_ROUND: usize = 200;
/// Most elections this node has standing (started, no leader known yet) at once, whatever
/// the rate allows: a window, as TCP's, so that when the peers answer slower than
/// elections start (a survivor standing for thousands of groups on a loaded machine) the
/// votes queue here, not in the peers, where each would outlast openraft's vote time
/// limit and be retried in a higher term: a storm that feeds itself.
const ELECTIONS_IN_FLIGHT: usize = 64;
/// Elections a replica stands through the paced queue (one per [`ELECTION_RECHECK`])
/// before it is handed back to openraft's own randomized election timer.
const QUEUED_ATTEMPTS_MAX: u32 = 4;
/// How long after standing a group is looked at again (and stands again if still
/// leaderless).
const ELECTION_RECHECK: Duration = Duration::from_millis(1500);
/// How long a replica that started from a stored vote waits for a report before its
/// election timer runs (it may follow a quiet leader that it has not heard from yet).
const STARTUP_QUIET: Duration = Duration::from_millis(2 * 100 * REPORT_EVERY_PINGS + 100);
/// Every this many ping rounds, every replica's timers are re-evaluated (and at once
/// when a peer falls silent).
const SWEEP_EVERY_ROUNDS: u64 = 5;
/// Most groups one leadership report names.
pub const REPORT_GROUPS_MAX: usize = 200_000;

/// Most wake requests ([`Liveness::tick`]) this node sends per sweep.
const WAKES_PER_SWEEP: usize = 512;
/// How long a replica waits for a woken leader to bring it up to date before it asks again.
const WAKE_RETRY: Duration = Duration::from_millis(3000);

const FLAG_QUIET: u8 = 1;
/// The claim carries the leader's last log index.
const FLAG_INDEX: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Heartbeats and timers run as openraft runs them.
    Active,
    /// Idle and caught up: claimed quiet in reports from `round` on, heartbeats still on.
    Claimed { round: u64 },
    /// Heartbeats and ticks off.
    Quiet { round: u64 },
}

#[derive(Debug)]
struct QuietInner {
    last_write: Instant,
    phase: Phase,
    /// This replica's election timer is off (a quiet follower, or just started).
    elect_off: bool,
    /// When a follower whose leader went away runs its election timer again.
    reenable_at: Option<Instant>,
    /// Queued to stand for election (the leader's node is gone).
    queued: bool,
    /// Stood back once for another candidate's campaign (see [`Liveness::run_elections`]);
    /// the next time it stands regardless, in case that candidate cannot win.
    deferred: bool,
    /// Elections stood through the queue since a leader was last known.
    attempts: u32,
    /// Until when this replica refuses every vote request (restarted from a stored vote).
    vote_hold_until: Option<Instant>,
    /// When this replica, asleep behind a quiet leader's log, last asked it to wake.
    wake_asked: Option<Instant>,
}

/// One replica's quiescence, shared by its [`crate::Group`] and this node's [`Liveness`].
pub struct GroupQuiet {
    /// Whether the group may quiesce at all (the controller's group never does).
    enabled: bool,
    raft: Raft,
    /// The group's metrics, held: the node's loops read every replica's several times a
    /// second, and cloning a receiver each time costs more than the read.
    metrics: tokio::sync::watch::Receiver<crate::RaftMetrics>,
    inner: Mutex<QuietInner>,
    /// Mirrors `phase == Quiet`, for the hot path.
    quiet: AtomicBool,
    /// The node's view of how long each peer refuses votes for this node's quiet groups
    /// (set when the replica is registered with a [`Liveness`]).
    leases: std::sync::OnceLock<(NodeId, Arc<PeerLeases>)>,
    /// The replica the broker wants to lead (`u64::MAX`: none): the one candidate a quiet
    /// leader grants its vote to, so leadership can move back to it.
    preferred: AtomicU64,
}

/// For each peer: the newest of this node's reports it acknowledged, and until when it
/// refuses votes for the groups that report claimed quiet.
pub type PeerLeases = RwLock<HashMap<NodeId, (u64, Instant)>>;

impl GroupQuiet {
    /// A replica's quiescence. `had_vote`: it started from a stored vote, so it may have
    /// been a follower whose acknowledgements hold up a quiet leader's lease.
    pub fn new(raft: Raft, enabled: bool, multi_voter: bool, had_vote: bool) -> Arc<GroupQuiet> {
        let now = Instant::now();
        let start_quiet = enabled && multi_voter && had_vote;
        if start_quiet {
            raft.runtime_config().elect(false);
        }
        Arc::new(GroupQuiet {
            enabled,
            metrics: raft.metrics(),
            raft,
            inner: Mutex::new(QuietInner {
                last_write: now,
                phase: Phase::Active,
                elect_off: start_quiet,
                reenable_at: start_quiet.then(|| now + STARTUP_QUIET),
                queued: false,
                deferred: false,
                attempts: 0,
                vote_hold_until: (enabled && had_vote).then(|| now + QUIET_DEAD_AFTER),
                wake_asked: None,
            }),
            quiet: AtomicBool::new(false),
            leases: std::sync::OnceLock::new(),
            preferred: AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuietInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A proposal or membership change is about to be made: heartbeats run again.
    pub fn wake(&self) {
        let mut q = self.lock();
        q.last_write = Instant::now();
        self.to_active(&mut q);
    }

    /// Whether this replica, restarted from a stored vote, still refuses votes (for
    /// [`QUIET_DEAD_AFTER`] after it started).
    pub fn holds_votes(&self) -> bool {
        self.lock().vote_hold_until.is_some_and(|t| Instant::now() < t)
    }

    /// Whether this replica leads the group quietly (heartbeats off).
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// A quiet leader may serve reads: a majority of its voters answered pings recently
    /// enough that they still refuse to vote for anyone else.
    pub fn lease_holds(&self) -> bool {
        if !self.is_quiet() {
            return false;
        }
        let Phase::Quiet { round } = self.lock().phase else {
            return false;
        };
        let Some((me, leases)) = self.leases.get() else {
            return false;
        };
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let now = Instant::now();
        let leases = leases.read().unwrap_or_else(|e| e.into_inner());
        let holding = voters
            .iter()
            .filter(|v| {
                let n = crate::node_of(**v);
                n == *me
                    || leases
                        .get(&n)
                        .map(|(acked, until)| *acked >= round && now + LEASE_MARGIN < *until)
                        .unwrap_or(false)
            })
            .count();
        holding > voters.len() / 2
    }

    /// The replica that should lead the group (leadership balancing), if any.
    pub fn set_preferred(&self, replica: Option<NodeId>) {
        self.preferred.store(replica.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Whether the replica's election timer is off.
    pub fn sleeping(&self) -> bool {
        self.lock().elect_off
    }

    fn to_active(&self, q: &mut QuietInner) {
        if q.phase != Phase::Active {
            q.phase = Phase::Active;
            self.quiet.store(false, Ordering::Release);
            self.raft.runtime_config().tick(true);
            self.raft.runtime_config().heartbeat(true);
        }
    }

    /// Every voter has the claim: heartbeats and ticks off.
    fn to_quiet(&self, q: &mut QuietInner, round: u64) {
        q.phase = Phase::Quiet { round };
        self.quiet.store(true, Ordering::Release);
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().tick(false);
    }

    fn elect_on(&self, q: &mut QuietInner) {
        q.queued = false;
        if q.elect_off {
            q.elect_off = false;
            q.reenable_at = None;
            self.raft.runtime_config().tick(true);
            self.raft.runtime_config().elect(true);
        }
    }

    fn elect_off(&self, q: &mut QuietInner) {
        q.reenable_at = None;
        q.queued = false;
        if !q.elect_off {
            q.elect_off = true;
            self.raft.runtime_config().elect(false);
            self.raft.runtime_config().tick(false);
        }
    }
}

/// A claim in a peer's leadership report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub term: u64,
    pub quiet: bool,
    /// The leader's last log index, when it has one.
    pub last_index: Option<u64>,
}

/// A replica registered on this node, under its transport key ([`crate::group_key`]).
#[derive(Clone)]
pub struct Replica {
    pub raft: Raft,
    /// Non-zero while the replica repairs a damaged log (see [`crate::Group::hold_votes`]).
    pub hold_votes: Arc<AtomicU64>,
    pub quiet: Arc<GroupQuiet>,
}

#[derive(Default)]
struct PeerState {
    /// Last frame received from the peer.
    heard: Option<Instant>,
    /// Its last leadership report, and when it came.
    report: Option<(Instant, HashMap<String, Claim>)>,
    /// The newest of this node's reports the peer acknowledged, and when it was sent.
    report_acked: Option<(u64, Instant)>,
    /// When the newest ping the peer answered was sent.
    ping_acked: Option<Instant>,
    /// Whether the peer counted as alive (for quiet groups) at the last round.
    was_alive: bool,
}

impl PeerState {
    fn heard_within(&self, now: Instant, within: Duration) -> bool {
        self.heard.map(|t| now.duration_since(t) <= within).unwrap_or(false)
    }
}

/// What one node knows of the others' liveness and claims, and the quiescence of its own
/// replicas.
pub struct Liveness {
    me: NodeId,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    replicas: RwLock<HashMap<String, Replica>>,
    leases: Arc<PeerLeases>,
    report_round: AtomicU64,
    round: AtomicU64,
    /// Replicas to stand for election, and when: paced, [`ELECTIONS_PER_ROUND`] a round.
    elections: Mutex<std::collections::VecDeque<(String, Instant)>>,
    /// Elections started and not yet decided (no leader known), with when they started: at
    /// most [`ELECTIONS_IN_FLIGHT`] at once.
    standing: Mutex<Vec<(String, Instant)>>,
}

/// The group a transport key names (a moved replica is `group#incarnation`).
pub fn base_name(key: &str) -> &str {
    key.split('#').next().unwrap_or(key)
}

impl Liveness {
    pub fn new(me: NodeId) -> Liveness {
        Liveness {
            me,
            peers: Mutex::new(HashMap::new()),
            replicas: RwLock::new(HashMap::new()),
            leases: Arc::new(RwLock::new(HashMap::new())),
            report_round: AtomicU64::new(0),
            round: AtomicU64::new(0),
            elections: Mutex::new(std::collections::VecDeque::new()),
            standing: Mutex::new(Vec::new()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerState>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, key: &str, replica: Replica) {
        let _ = replica.quiet.leases.set((self.me, self.leases.clone()));
        self.replicas
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), replica);
    }

    pub fn unregister(&self, key: &str) {
        self.replicas.write().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    pub fn replica(&self, key: &str) -> Option<Replica> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// How many of this node's replicas lead quietly, and how many follow with their
    /// election timer asleep (for the metrics endpoint).
    pub fn quiet_counts(&self) -> (usize, usize) {
        let replicas = self.replicas.read().unwrap_or_else(|e| e.into_inner());
        replicas.values().fold((0, 0), |(leaders, followers), r| {
            let q = r.quiet.lock();
            (
                leaders + usize::from(matches!(q.phase, Phase::Quiet { .. })),
                followers + usize::from(q.elect_off),
            )
        })
    }

    /// A frame came from `node`.
    pub fn heard_from(&self, node: NodeId) {
        self.peers().entry(node).or_default().heard = Some(Instant::now());
    }

    /// A connection to `node` failed: it counts as gone until it is heard from again.
    /// Counts `node` gone (its connection was refused); true if it was heard from before.
    pub fn forget(&self, node: NodeId) -> bool {
        self.peers()
            .get_mut(&node)
            .map(|p| p.heard.take().is_some())
            .unwrap_or(false)
    }

    /// Whether `node` was heard from within `within` (this node always is).
    pub fn alive_within(&self, node: NodeId, within: Duration) -> bool {
        node == self.me
            || self
                .peers()
                .get(&node)
                .map(|p| p.heard_within(Instant::now(), within))
                .unwrap_or(false)
    }

    pub fn is_alive(&self, node: NodeId) -> bool {
        self.alive_within(node, ALIVE_WITHIN)
    }

    /// Starts a ping round; returns the report to carry in it (every few rounds) with its
    /// number.
    pub fn next_round(&self) -> Option<(u64, Bytes)> {
        let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
        if !round.is_multiple_of(REPORT_EVERY_PINGS) {
            return None;
        }
        let number = self.report_round.fetch_add(1, Ordering::AcqRel) + 1;
        Some((number, encode_report(&self.led())))
    }

    /// `peer` answered a ping sent at `sent`, which carried report `report` (if any).
    pub fn ping_answered(&self, peer: NodeId, sent: Instant, report: Option<u64>) {
        let mut peers = self.peers();
        let p = peers.entry(peer).or_default();
        p.ping_acked = p.ping_acked.max(Some(sent));
        if let Some(n) = report {
            if p.report_acked.map(|(r, _)| r < n).unwrap_or(true) {
                p.report_acked = Some((n, sent));
            }
        }
        // The peer heard from this node no earlier than the newest answered ping's send,
        // and got the newest acknowledged report no earlier than its send: it refuses
        // votes for the groups claimed quiet until both its liveness window and the
        // report's freshness have run out.
        if let (Some(ping), Some((n, report_sent))) = (p.ping_acked, p.report_acked) {
            let until = (ping + QUIET_DEAD_AFTER).min(report_sent + CLAIM_FRESH);
            self.leases
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer, (n, until));
        }
    }

    /// The groups this node leads, their terms and whether each is claimed quiet.
    fn led(&self) -> Vec<(String, Claim)> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(key, r)| {
                let m = &r.quiet.metrics;
                let m = m.borrow();
                let leads = m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id);
                let quiet = !matches!(r.quiet.lock().phase, Phase::Active);
                leads.then(|| {
                    (
                        base_name(key).to_string(),
                        Claim {
                            term: m.current_term,
                            quiet,
                            last_index: m.last_log_index,
                        },
                    )
                })
            })
            .take(REPORT_GROUPS_MAX)
            .collect()
    }

    /// A leadership report came from `from`. Followers of groups it claims quiet put their
    /// timers to sleep at once (the leader stops heartbeats only after this is answered).
    pub fn on_report(&self, from: NodeId, body: &[u8]) -> Result<(), String> {
        let claims = decode_report(body)?;
        // Only claims new since the sender's last report need a follower's attention now;
        // the periodic sweep covers the rest.
        let quiet: Vec<(String, u64)> = {
            let mut peers = self.peers();
            let p = peers.entry(from).or_default();
            let before = p.report.as_ref().map(|(_, c)| c);
            let new: Vec<(String, u64)> = claims
                .iter()
                .filter(|(g, c)| c.quiet && before.and_then(|b| b.get(*g)) != Some(*c))
                .map(|(g, c)| (g.clone(), c.term))
                .collect();
            p.heard = Some(Instant::now());
            p.report = Some((Instant::now(), claims));
            new
        };
        if quiet.is_empty() {
            return Ok(());
        }
        let quiet: HashMap<String, u64> = quiet.into_iter().collect();
        for (key, r) in self.replicas.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let Some(term) = quiet.get(base_name(key)) else {
                continue;
            };
            if !r.quiet.enabled {
                continue;
            }
            let m = &r.quiet.metrics;
            let m = m.borrow();
            let follows = matches!(
                m.state,
                openraft::ServerState::Follower | openraft::ServerState::Candidate
            ) && m.membership_config.membership().voter_ids().any(|v| v == m.id)
                && match m.current_leader {
                    Some(l) => crate::node_of(l) == from && *term == m.current_term,
                    None => true,
                };
            if follows {
                let mut q = r.quiet.lock();
                r.quiet.elect_off(&mut q);
            }
        }
        Ok(())
    }

    /// The leader of `group` and its term as the nodes that lead groups report it: for a
    /// node that hosts no replica of the group. Only fresh reports of nodes alive now count;
    /// the highest term wins.
    pub fn reported_leader(&self, group: &str) -> Option<(NodeId, u64)> {
        let peers = self.peers();
        let now = Instant::now();
        peers
            .iter()
            .filter(|(_, p)| {
                p.heard_within(now, ALIVE_WITHIN)
                    && p.report
                        .as_ref()
                        .map(|(at, _)| at.elapsed() <= CLAIM_FRESH)
                        .unwrap_or(false)
            })
            .filter_map(|(node, p)| {
                let (_, claims) = p.report.as_ref()?;
                claims.get(group).map(|c| (*node, c.term))
            })
            .max_by_key(|(_, term)| *term)
    }

    /// Whether a fresh report of a node alive now claims `group` quiet: the leader's node
    /// at `term` when `leader` is known; otherwise any node at any term (a replica that
    /// restarted, or stood for election in vain while the leader was merely slow to
    /// answer, sleeps under the live claim; the leader's next write meets its term and a
    /// new election follows).
    fn claim_holds(
        peers: &HashMap<NodeId, PeerState>,
        now: Instant,
        group: &str,
        leader: Option<NodeId>,
        term: u64,
    ) -> bool {
        Self::holding_claim(peers, now, group, leader, term).is_some()
    }

    /// Whether a live node's fresh report says it leads `group`, quiet or not.
    fn leads_reported(peers: &HashMap<NodeId, PeerState>, now: Instant, group: &str) -> bool {
        peers.values().any(|p| {
            p.heard_within(now, QUIET_DEAD_AFTER)
                && p.report
                    .as_ref()
                    .is_some_and(|(at, c)| now.duration_since(*at) <= CLAIM_FRESH && c.contains_key(group))
        })
    }

    /// The claim (and its node) that [`Liveness::claim_holds`] finds, if one holds.
    fn holding_claim(
        peers: &HashMap<NodeId, PeerState>,
        now: Instant,
        group: &str,
        leader: Option<NodeId>,
        term: u64,
    ) -> Option<(NodeId, Claim)> {
        let holds = |p: &PeerState, any_term: bool| {
            if !p.heard_within(now, QUIET_DEAD_AFTER) {
                return None;
            }
            p.report
                .as_ref()
                .filter(|(at, _)| now.duration_since(*at) <= CLAIM_FRESH)
                .and_then(|(_, c)| c.get(group))
                .filter(|c| c.quiet && (any_term || c.term == term))
                .copied()
        };
        match leader {
            Some(l) => peers.get(&l).and_then(|p| holds(p, false)).map(|c| (l, c)),
            None => peers
                .iter()
                .filter_map(|(n, p)| holds(p, true).map(|c| (*n, c)))
                .max_by_key(|(_, c)| c.term),
        }
    }

    /// Whether the replica under `key` may grant a vote to `candidate` now. A sleeping
    /// follower of a quiet leader that is alive and still claims the group refuses, as
    /// openraft's leader lease makes an active follower refuse; so does a replica
    /// restarted from a stored vote, for a moment (it may have acknowledged a quiet
    /// leader's lease before it stopped). A quiet leader refuses every candidate but the
    /// preferred replica: a follower that wrongly took this node for gone (a busy moment)
    /// must not depose it, while leadership balancing must still move.
    pub fn may_vote(&self, key: &str, candidate: NodeId) -> Result<(), String> {
        let Some(r) = self.replica(key) else { return Ok(()) };
        let now = Instant::now();
        let (hold, asleep, quiet_leader) = {
            let q = r.quiet.lock();
            (
                q.vote_hold_until.map(|t| now < t).unwrap_or(false),
                q.elect_off,
                matches!(q.phase, Phase::Quiet { .. }),
            )
        };
        if hold {
            return Err(format!("group {key} has just restarted and votes after its lease"));
        }
        if quiet_leader && candidate != r.quiet.preferred.load(Ordering::Acquire) {
            return Err(format!("group {key} is led quietly by this node"));
        }
        if !asleep {
            return Ok(());
        }
        let (leader, term, follower) = {
            let m = &r.quiet.metrics;
            let m = m.borrow();
            (
                m.current_leader.map(crate::node_of),
                m.current_term,
                m.state != openraft::ServerState::Leader,
            )
        };
        if follower && Self::claim_holds(&self.peers(), now, base_name(key), leader, term) {
            return Err(format!("group {key} follows a live quiet leader"));
        }
        Ok(())
    }

    /// One round of the node's liveness loop: leaders quiesce idle groups, followers whose
    /// quiet leader went away run their election timers again. Cheap per round; every
    /// replica is looked at every few rounds, and at once when a peer falls silent.
    pub fn tick(&self) -> Vec<(NodeId, String)> {
        let now = Instant::now();
        let round = self.round.load(Ordering::Acquire);
        let peer_died = {
            let mut peers = self.peers();
            let mut died = false;
            for p in peers.values_mut() {
                let alive = p.heard_within(now, QUIET_DEAD_AFTER);
                died |= p.was_alive && !alive;
                p.was_alive = alive;
            }
            died
        };
        let wakes = if peer_died || round.is_multiple_of(SWEEP_EVERY_ROUNDS) {
            self.sweep(now)
        } else {
            Vec::new()
        };
        self.run_elections(now);
        wakes
    }

    /// Starts the due elections of the queue, a bounded number per round. A replica still
    /// without a live leader stands (openraft's `trigger().elect()`, its timer stays off)
    /// and is looked at again later; one that found a leader leaves the queue.
    fn run_elections(&self, now: Instant) {
        // Elections decided (a live leader known, this replica included) or given up
        // (past the recheck, when the group is queued again) leave the window.
        let room = {
            let replicas = self.replicas.read().unwrap_or_else(|e| e.into_inner());
            let mut standing = self.standing.lock().unwrap_or_else(|e| e.into_inner());
            standing.retain(|(key, since)| {
                now.duration_since(*since) < ELECTION_RECHECK
                    && replicas.get(key).is_some_and(|r| {
                        // Copied out: no peer lock is taken under a metrics borrow.
                        let (leader, id) = {
                            let m = r.quiet.metrics.borrow();
                            (m.current_leader, m.id)
                        };
                        let leader_live = leader
                            .map(|l| l == id || self.alive_within(crate::node_of(l), QUIET_DEAD_AFTER))
                            .unwrap_or(false);
                        !leader_live
                    })
            });
            ELECTIONS_IN_FLIGHT
                .saturating_sub(standing.len())
                .min(ELECTIONS_PER_ROUND)
        };
        let mut due = Vec::new();
        {
            let mut q = self.elections.lock().unwrap_or_else(|e| e.into_inner());
            let mut later = std::collections::VecDeque::new();
            while let Some((key, at)) = q.pop_front() {
                if at <= now && due.len() < room {
                    due.push(key);
                } else {
                    later.push_back((key, at));
                }
            }
            *q = later;
        }
        let mut stood = 0usize;
        for key in due {
            let Some(r) = self.replica(&key) else { continue };
            let (leaderless, other_candidate) = {
                // Copied out: no peer lock is taken under a metrics borrow.
                let (leader, voted, committed, id, leads) = {
                    let m = r.quiet.metrics.borrow();
                    (
                        m.current_leader,
                        m.vote.leader_id().voted_for(),
                        m.vote.is_committed(),
                        m.id,
                        m.state == openraft::ServerState::Leader,
                    )
                };
                let leader_live = leader
                    .map(|l| self.alive_within(crate::node_of(l), QUIET_DEAD_AFTER))
                    .unwrap_or(false);
                // This replica voted, in a term no leader has claimed, for another live
                // candidate: its campaign is under way, and standing now would split it.
                let other = !committed
                    && voted.is_some_and(|c| c != id && self.alive_within(crate::node_of(c), QUIET_DEAD_AFTER));
                (!leads && !leader_live, other)
            };
            if !leaderless {
                let mut q = r.quiet.lock();
                q.queued = false;
                q.attempts = 0;
                continue;
            }
            {
                let mut q = r.quiet.lock();
                if !q.queued {
                    continue;
                }
                if other_candidate && !q.deferred {
                    q.deferred = true;
                    drop(q);
                    self.queue_election(&key, now + ELECTION_RECHECK);
                    continue;
                }
                q.deferred = false;
                q.attempts += 1;
                if q.attempts > QUEUED_ATTEMPTS_MAX {
                    // A last resort: a group the queue has not led after this many tries
                    // gets its own election timer back (openraft's randomized timeouts).
                    info!(group = %key, "no leader after paced elections: handing the group to its own election timer");
                    q.attempts = 0;
                    r.quiet.elect_on(&mut q);
                    continue;
                }
            }
            debug!(group = %key, "no live leader: standing for election");
            self.standing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key.clone(), now));
            stood += 1;
            let raft = r.raft.clone();
            tokio::spawn(async move {
                let _ = raft.trigger().elect().await;
            });
            self.elections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((key, now + ELECTION_RECHECK));
        }
        if stood > 0 {
            info!(groups = stood, "standing for election in groups without a live leader");
        }
    }

    fn queue_election(&self, key: &str, at: Instant) {
        self.elections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((key.to_string(), at));
    }

    /// Looks at every replica's timers now. Returns the wake requests to send: (the quiet
    /// leader's node, the group) for replicas asleep behind their leader's log.
    pub fn sweep(&self, now: Instant) -> Vec<(NodeId, String)> {
        let mut wakes = Vec::new();
        let next_report = self.report_round.load(Ordering::Acquire) + 1;
        // Under the registry's read lock (nothing here waits): no copy of thousands of
        // entries every sweep.
        let replicas = self.replicas.read().unwrap_or_else(|e| e.into_inner());
        let peers = self.peers();
        let alive = |n: NodeId| {
            n == self.me
                || peers
                    .get(&n)
                    .map(|p| p.heard_within(now, QUIET_DEAD_AFTER))
                    .unwrap_or(false)
        };
        for (key, r) in replicas.iter() {
            if !r.quiet.enabled {
                continue;
            }
            let m = &r.quiet.metrics;
            let m = m.borrow();
            // The voters of every configuration (a joint one names some twice), without
            // allocating: this runs for every replica every sweep.
            let voters = || {
                m.membership_config
                    .membership()
                    .get_joint_config()
                    .iter()
                    .flatten()
                    .copied()
            };
            let mut q = r.quiet.lock();
            if m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id) {
                r.quiet.elect_on(&mut q);
                // Replicas on nodes that are gone do not hold quiescence back: a group with
                // a dead voter would otherwise heartbeat it for good, and a node that died
                // leading thousands of groups leaves thousands of them busy on the
                // survivors. The live ones must have everything, and be a majority.
                let last = m.last_log_index;
                let rep = m.replication.as_ref();
                let live = |id: &NodeId| alive(crate::node_of(*id));
                let lagging_live = rep
                    .map(|rep| {
                        rep.iter()
                            .any(|(id, matched)| live(id) && matched.map(|l| l.index) != last)
                    })
                    .unwrap_or(true);
                if let Phase::Quiet { .. } = q.phase {
                    // Stays quiet until a proposal wakes it, or a replica that is behind asks
                    // for its entries ([`Liveness::wake`]). Not on its own when such a
                    // replica's node comes back: that node may still be opening the replica,
                    // and a node that returns to thousands of groups would wake them all at
                    // once, each heartbeating every 50 ms, on nodes busy enough already.
                    continue;
                }
                let (live_voters, all_voters) =
                    voters().fold((0usize, 0usize), |(l, a), v| (l + usize::from(live(&v)), a + 1));
                let caught_up =
                    m.last_applied.map(|l| l.index) == last && !lagging_live && live_voters * 2 > all_voters;
                match q.phase {
                    Phase::Active => {
                        if caught_up && now.duration_since(q.last_write) >= QUIESCE_AFTER {
                            debug!(group = %key, "claiming the group quiet");
                            q.phase = Phase::Claimed { round: next_report };
                        }
                    }
                    Phase::Claimed { round } => {
                        let acked = voters().filter(|v| crate::node_of(*v) != self.me && live(v)).all(|v| {
                            peers
                                .get(&crate::node_of(v))
                                .and_then(|p| p.report_acked)
                                .map(|(n, _)| n >= round)
                                .unwrap_or(false)
                        });
                        if !caught_up {
                            r.quiet.to_active(&mut q);
                        } else if acked {
                            r.quiet.to_quiet(&mut q, round);
                        }
                    }
                    Phase::Quiet { .. } => {}
                }
                continue;
            }
            // Not the leader here: nothing of this replica's own is quiet.
            r.quiet.to_active(&mut q);
            let voter = voters().any(|v| v == m.id);
            let follower = matches!(
                m.state,
                openraft::ServerState::Follower | openraft::ServerState::Candidate
            );
            if !follower || !voter {
                r.quiet.elect_on(&mut q);
                continue;
            }
            let leader = m.current_leader.map(crate::node_of);
            if let Some((node, claim)) = Self::holding_claim(&peers, now, base_name(key), leader, m.current_term) {
                r.quiet.elect_off(&mut q);
                // Asleep behind the quiet leader's log (it restarted, or was cut off while the
                // group went on): ask the leader to wake and bring it up to date, once per
                // WAKE_RETRY, a bounded number per sweep.
                let behind = claim
                    .last_index
                    .is_some_and(|l| m.last_log_index.is_none_or(|mine| mine < l));
                if behind
                    && wakes.len() < WAKES_PER_SWEEP
                    && q.wake_asked.is_none_or(|t| now.duration_since(t) >= WAKE_RETRY)
                {
                    q.wake_asked = Some(now);
                    wakes.push((node, key.clone()));
                }
                continue;
            }
            // Queues this replica to stand, paced by the node's election budget: the lowest
            // live voter first (the same choice on every node), the others later in case it
            // cannot win. `gone` is the leader's node, if one is known.
            let queue_ranked = |q: &mut QuietInner, gone: Option<NodeId>, after: Duration| {
                let mut live: Vec<NodeId> = voters()
                    .filter(|v| Some(crate::node_of(*v)) != gone && alive(crate::node_of(*v)))
                    .collect();
                live.sort_unstable();
                live.dedup();
                let rank = live.iter().position(|v| *v == m.id).unwrap_or(live.len());
                q.queued = true;
                debug!(group = %key, ?gone, rank, "no live leader: queued to stand");
                self.queue_election(key, now + after + ELECT_STAGGER * rank as u32);
            };
            if !q.elect_off {
                // A follower of an active group whose leader's node fell silent: its own
                // timer would start its election together with those of thousands of
                // other groups. Its timer stops, and it stands through the paced queue.
                // The other voters refuse votes until the leader's lease (the longest
                // election timeout since its last heartbeat) has run out.
                if let Some(l) = leader.filter(|l| !alive(*l)) {
                    r.quiet.elect_off(&mut q);
                    let lease = Duration::from_millis(r.raft.config().election_timeout_max + 20);
                    queue_ranked(&mut q, Some(l), lease);
                }
                continue;
            }
            match leader {
                // The leader is alive and not quiet: its heartbeats keep the timer fresh.
                Some(l) if alive(l) => r.quiet.elect_on(&mut q),
                Some(l) => {
                    if !q.queued {
                        queue_ranked(&mut q, Some(l), Duration::ZERO);
                    }
                }
                // Standing through the queue: it looks again itself.
                None if q.queued => {}
                // No leader known (a campaign failed, or it restarted and no claim came):
                // it stands through the queue too, never on its own timer, so that a node
                // with thousands of such replicas does not start them all at once.
                // Unless a live node reports leading the group (quiet or not): its heartbeats
                // or a woken catch-up are on their way, and standing now, in a higher term,
                // would only depose it (a replica just restarted, or behind, cannot win).
                None if Self::leads_reported(&peers, now, base_name(key)) => {}
                None => {
                    if q.reenable_at.map(|t| now >= t).unwrap_or(true) {
                        queue_ranked(&mut q, None, Duration::ZERO);
                    }
                }
            }
        }
        drop(peers);
        wakes
    }

    /// A replica asleep behind this node's quiet leadership of `key` asks for its entries:
    /// the group wakes (heartbeats and replication run) and quiesces again once every live
    /// replica has caught up.
    pub fn wake(&self, key: &str) {
        if let Some(r) = self.replica(key) {
            let mut q = r.quiet.lock();
            if matches!(q.phase, Phase::Quiet { .. } | Phase::Claimed { .. }) {
                debug!(group = %key, "a replica behind asks for its entries: waking the group");
                r.quiet.to_active(&mut q);
            }
        }
    }
}

/// A leadership report: count, then (name length u16, name, term u64, flags u8) per group.
pub fn encode_report(led: &[(String, Claim)]) -> Bytes {
    let led: Vec<(u16, &str, Claim)> = led
        .iter()
        .filter_map(|(name, c)| Some((u16::try_from(name.len()).ok()?, name.as_str(), *c)))
        .collect();
    let mut b = BytesMut::with_capacity(4 + led.iter().map(|(l, _, _)| *l as usize + 19).sum::<usize>());
    b.put_u32(led.len() as u32);
    for (len, name, c) in led {
        b.put_u16(len);
        b.put_slice(name.as_bytes());
        b.put_u64(c.term);
        let flags = if c.quiet { FLAG_QUIET } else { 0 } | if c.last_index.is_some() { FLAG_INDEX } else { 0 };
        b.put_u8(flags);
        if let Some(i) = c.last_index {
            b.put_u64(i);
        }
    }
    b.freeze()
}

pub fn decode_report(body: &[u8]) -> Result<HashMap<String, Claim>, String> {
    let bad = || "bad leadership report".to_string();
    let mut b = body;
    if b.remaining() < 4 {
        return Err(bad());
    }
    let n = b.get_u32() as usize;
    if n > REPORT_GROUPS_MAX || n > b.remaining() / 11 {
        return Err(bad());
    }
    let mut out = HashMap::with_capacity(n);
    for _ in 0..n {
        if b.remaining() < 2 {
            return Err(bad());
        }
        let len = b.get_u16() as usize;
        if b.remaining() < len + 9 {
            return Err(bad());
        }
        let name = std::str::from_utf8(b.get(..len).ok_or_else(bad)?)
            .map_err(|_| bad())?
            .to_string();
        b.advance(len);
        let term = b.get_u64();
        let flags = b.get_u8();
        let last_index = if flags & FLAG_INDEX != 0 {
            if b.remaining() < 8 {
                return Err(bad());
            }
            Some(b.get_u64())
        } else {
            None
        };
        out.insert(
            name,
            Claim {
                term,
                quiet: flags & FLAG_QUIET != 0,
                last_index,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leadership reports round-trip with their quiet marks; truncated or inflated ones are
    /// refused.
    #[test]
    fn reports_round_trip_and_bad_ones_are_refused() {
        let led = vec![
            (
                "orders/0".to_string(),
                Claim {
                    term: 7,
                    quiet: true,
                    last_index: Some(41),
                },
            ),
            (
                "orders/3".to_string(),
                Claim {
                    term: 2,
                    quiet: false,
                    last_index: None,
                },
            ),
        ];
        let b = encode_report(&led);
        let back = decode_report(&b).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["orders/0"].last_index, Some(41));
        assert_eq!(back["orders/0"], led[0].1);
        assert_eq!(back["orders/3"], led[1].1);
        assert!(decode_report(&b[..b.len() - 1]).is_err());
        assert!(decode_report(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_report(&[]).is_err());
        assert!(decode_report(&encode_report(&[])).unwrap().is_empty());
    }
}
