//! Simulation of one partition group of three replicas on four nodes: an in-memory network
//! that drops messages, delays them and partitions nodes, replicas that crash and restart
//! from their on-disk logs, the group moving to another three of the four nodes as a
//! partition move does (new replicas added as learners under a new incarnation's id,
//! voters changed through a joint configuration, removed replicas wiped), and a client
//! proposing throughout. Time is tokio's paused clock on one
//! thread, and every fault and delay comes from one seeded generator, so a seed replays
//! its schedule of faults. openraft draws its election timeouts from its own generator, so
//! two runs of one seed can differ in which node wins an election and how many writes
//! succeed; the oracle holds for every run.
//!
//! Every node runs Keel's node-level liveness ([`keel_raft::liveness`]): pings every
//! 100 ms over the same faulty network, leadership reports, quiescence. Some steps leave
//! the group idle long enough to go quiet (heartbeats and election timers off), so
//! crashes, partitions, restarts and moves also strike a quiet group; votes pass through
//! the node-level lease as they do in the transport.
//!
//! Crashes come in two kinds: a process crash (the files keep everything written) and a
//! power loss (keel-log's model throws away what was not fsynced, sometimes leaving a torn
//! write), of one node or of every node at once. Logs and votes are fsynced as in
//! production.
//!
//! The oracle: every acknowledged proposal is in the log at the offset it was acknowledged
//! with, power losses included; once faults stop the group elects a leader, takes a write,
//! and every voter holds the same log.
//!
//! `KEEL_SIM_SEED=N` replays one seed; `KEEL_SIM_STEPS` and `KEEL_SIM_SEEDS` make a longer
//! run (e.g. `KEEL_SIM_SEEDS=50 KEEL_SIM_STEPS=2000 cargo test -p keel-raft --test simulation`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_log::{DiskLog, LogConfig};
use keel_proto::batch::{encode_batch, NewRecord};
use keel_raft::liveness::{Liveness, Replica, PING_INTERVAL};
use keel_raft::{group_key, node_of, replica_id, Apply, Group, GroupOptions, Node, NodeId, Raft, TypeConfig};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: &str = "sim/0";
const NODES: [NodeId; 4] = [1, 2, 3, 4];
/// The group's first voters; node 4 holds an empty replica until a move adds it.
const FIRST_VOTERS: [NodeId; 3] = [1, 2, 3];

/// Places Kafka batches as a partition does, and applies nothing.
struct NoApply;
impl Apply for NoApply {
    fn place(&self, payload: Bytes, base_offset: i64, term: u64) -> Result<keel_raft::Stored, String> {
        let (payload, offsets, max_timestamp) =
            keel_proto::batch::place(payload, base_offset, term as i32).map_err(|e| e.to_string())?;
        Ok(keel_raft::Stored {
            payload,
            offsets,
            max_timestamp,
        })
    }
    fn apply(&self, _index: u64, _base: i64, _next: i64, _payload: &Bytes) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Default)]
struct NetState {
    /// The running replicas by Raft id: a message for a replica id no longer running (an
    /// earlier incarnation) is lost.
    rafts: HashMap<NodeId, Raft>,
    /// Each running node's liveness (a restart starts a new one, as a process does).
    liveness: HashMap<NodeId, Arc<Liveness>>,
    cut: HashSet<(NodeId, NodeId)>,
    drop_per_mille: u32,
}

/// The simulated network: shared by all nodes, faults decided by the seeded generator.
struct Net {
    state: Mutex<NetState>,
    rng: Mutex<StdRng>,
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message dropped by the simulated network")
    }
}
impl std::error::Error for Dropped {}

impl Net {
    /// Whether a message between two nodes gets through now, and its delivery delay.
    fn link(&self, a: NodeId, b: NodeId) -> Option<Duration> {
        let s = self.state.lock().unwrap();
        let pair = (a.min(b), a.max(b));
        let mut rng = self.rng.lock().unwrap();
        if s.cut.contains(&pair) || rng.random_range(0..1000) < s.drop_per_mille {
            return None;
        }
        Some(Duration::from_micros(rng.random_range(100..3000)))
    }

    /// The target's Raft if a message from `from` gets through now, and a delivery delay.
    /// The nodes hear from each other as the transport's connections make them.
    fn route(&self, from: NodeId, to: NodeId) -> Option<(Raft, Duration)> {
        let delay = self.link(node_of(from), node_of(to))?;
        let s = self.state.lock().unwrap();
        let raft = s.rafts.get(&to).cloned()?;
        if let Some(l) = s.liveness.get(&node_of(to)) {
            l.heard_from(node_of(from));
        }
        if let Some(l) = s.liveness.get(&node_of(from)) {
            l.heard_from(node_of(to));
        }
        Some((raft, delay))
    }

    fn liveness(&self, node: NodeId) -> Option<Arc<Liveness>> {
        self.state.lock().unwrap().liveness.get(&node).cloned()
    }
}

/// A node's ping loop, as the transport runs it: every round a ping (every few rounds with
/// a leadership report) to each other node over the faulty network, then the liveness
/// tick. Ends when the node's liveness is replaced or gone (a crash).
async fn ping_loop(net: Arc<Net>, node: NodeId, me: Arc<Liveness>) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match net.liveness(node) {
            Some(l) if Arc::ptr_eq(&l, &me) => {}
            _ => return,
        }
        let report = me.next_round();
        for peer in NODES.iter().copied().filter(|p| *p != node) {
            let net = net.clone();
            let me = me.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let sent = tokio::time::Instant::now();
                let Some(there) = net.link(node, peer) else { return };
                tokio::time::sleep(there).await;
                let Some(target) = net.liveness(peer) else { return };
                target.heard_from(node);
                if let Some((_, body)) = &report {
                    target.on_report(node, body).unwrap();
                }
                let Some(back) = net.link(peer, node) else { return };
                tokio::time::sleep(back).await;
                me.heard_from(peer);
                me.ping_answered(peer, sent, report.map(|(n, _)| n));
            });
        }
        // Wake requests of replicas asleep behind a quiet leader's log travel the same
        // faulty network.
        for (peer, key) in me.tick() {
            let net = net.clone();
            tokio::spawn(async move {
                let Some(there) = net.link(node, peer) else { return };
                tokio::time::sleep(there).await;
                if let Some(target) = net.liveness(peer) {
                    target.wake(&key);
                }
            });
        }
    }
}

struct Factory {
    net: Arc<Net>,
    from: NodeId,
}

struct Conn {
    net: Arc<Net>,
    from: NodeId,
    to: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Conn {
        Conn {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

type RpcErr = RPCError<NodeId, Node, RaftError<NodeId>>;

impl Conn {
    async fn reach(&self) -> Result<Raft, RpcErr> {
        match self.net.route(self.from, self.to) {
            Some((raft, delay)) => {
                tokio::time::sleep(delay).await;
                Ok(raft)
            }
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(RPCError::Unreachable(Unreachable::new(&Dropped)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let raft = self.reach().await?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let raft = self.reach().await?;
        // The node-level lease, as the transport applies it before a vote reaches Raft.
        if let Some(l) = self.net.liveness(node_of(self.to)) {
            let candidate = rpc.vote.leader_id().voted_for().unwrap_or(u64::MAX);
            if l.may_vote(&group_key(GROUP, self.to), candidate).is_err() {
                return Err(RPCError::Unreachable(Unreachable::new(&Dropped)));
            }
        }
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: keel_raft::Vote,
        snapshot: openraft::Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let raft = match self.net.route(self.from, self.to) {
            Some((r, _)) => r,
            None => return Err(StreamingError::Network(NetworkError::new(&Dropped))),
        };
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(50)))
    }
}

fn options() -> GroupOptions {
    GroupOptions {
        // fsync as in production: power losses throw away what was not synced.
        fsync: true,
        ..GroupOptions::default()
    }
}

/// Starts replica `id` (a Raft id: node and incarnation) from its files in `dir`.
async fn start(net: &Arc<Net>, id: NodeId, dir: &Path) -> Group {
    let log = DiskLog::open(dir, LogConfig::default()).unwrap();
    let g = Group::start_with_network(
        GROUP,
        id,
        Factory {
            net: net.clone(),
            from: id,
        },
        Box::new(log),
        Some(dir.to_path_buf()),
        None,
        Arc::new(NoApply),
        options(),
    )
    .await
    .unwrap();
    let liveness = Arc::new(Liveness::new(node_of(id)));
    liveness.register(
        &group_key(GROUP, id),
        Replica {
            raft: g.raft.clone(),
            hold_votes: g.hold_votes.clone(),
            quiet: g.quiet.clone(),
        },
    );
    {
        let mut s = net.state.lock().unwrap();
        s.rafts.insert(id, g.raft.clone());
        s.liveness.insert(node_of(id), liveness.clone());
    }
    tokio::spawn(ping_loop(net.clone(), node_of(id), liveness));
    g
}

async fn stop(net: &Arc<Net>, id: NodeId, g: Group) {
    {
        let mut s = net.state.lock().unwrap();
        s.rafts.remove(&id);
        s.liveness.remove(&node_of(id));
    }
    g.shutdown().await;
}

fn batch(value: &str) -> Bytes {
    encode_batch(
        &[NewRecord {
            key: None,
            value: Some(Bytes::from(value.to_string())),
            timestamp: 1_700_000_000_000,
        }],
        kafka_protocol::records::Compression::None,
    )
    .unwrap()
}

fn leader(nodes: &BTreeMap<NodeId, Group>) -> Option<NodeId> {
    nodes.iter().find(|(_, g)| g.is_leader()).map(|(id, _)| *id)
}

/// Every data entry as (offset, payload).
fn data_of(g: &Group) -> Vec<(i64, Bytes)> {
    let log = g.shared.log();
    log.read(log.first_index(), usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == keel_log::EntryKind::Data)
        .map(|e| (e.offset, e.payload))
        .collect()
}

/// Throws away what `dir`'s files had not fsynced, as a power loss would; half the time a
/// part of each unsynced tail stays (a torn write).
fn lose_power(dir: &Path, rng: &mut StdRng) {
    let torn = rng.random_bool(0.5);
    let seed: u64 = rng.random();
    let mut keep = move |unsynced: u64| seed % (unsynced + 1);
    keel_log::fault::power_loss(dir, if torn { Some(&mut keep) } else { None }).unwrap();
}

/// What one seed's run saw.
struct Outcome {
    /// Steps after which the group's leader was quiet.
    quiet_seen: usize,
}

async fn run(seed: u64, steps: usize, root: &Path) -> Outcome {
    let net = Arc::new(Net {
        state: Mutex::new(NetState::default()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    });
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(1));
    let dirs: BTreeMap<NodeId, PathBuf> = NODES.iter().map(|id| (*id, root.join(format!("n{id}")))).collect();
    // Each node's current replica id (incarnation 0 until a move re-adds the node).
    let mut ids: BTreeMap<NodeId, NodeId> = NODES.iter().map(|n| (*n, *n)).collect();
    // Running replicas, by node.
    let mut nodes: BTreeMap<NodeId, Group> = BTreeMap::new();
    for n in NODES {
        nodes.insert(n, start(&net, ids[&n], &dirs[&n]).await);
    }
    let members: BTreeMap<NodeId, Node> = FIRST_VOTERS.iter().map(|id| (*id, Node::default())).collect();
    nodes[&1].initialize(members).await.unwrap();

    let mut acked: Vec<(String, i64)> = Vec::new();
    let mut crashes = 0;
    let mut power_losses = 0;
    let mut moves = 0;
    let mut incarnation = 0u32;
    let mut last_target: Option<BTreeSet<NodeId>> = None;
    let mut quiet_seen = 0;
    for step in 0..steps {
        match rng.random_range(0..100) {
            0..60 => {
                let Some(l) = leader(&nodes) else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let value = format!("v{step}");
                let r = tokio::time::timeout(Duration::from_secs(2), nodes[&l].propose(batch(&value))).await;
                if let Ok(Ok(a)) = r {
                    acked.push((value, a.base_offset));
                }
            }
            60..68 if nodes.len() == NODES.len() => {
                let n = NODES[rng.random_range(0..NODES.len())];
                if let Some(g) = nodes.remove(&n) {
                    stop(&net, ids[&n], g).await;
                    crashes += 1;
                    // Half the crashes are power losses.
                    if rng.random_bool(0.5) {
                        lose_power(&dirs[&n], &mut rng);
                        power_losses += 1;
                    }
                }
            }
            99 => {
                // Every node loses power at once, and comes back.
                for n in NODES {
                    if let Some(g) = nodes.remove(&n) {
                        stop(&net, ids[&n], g).await;
                    }
                    lose_power(&dirs[&n], &mut rng);
                }
                power_losses += 1;
                for n in NODES {
                    nodes.insert(n, start(&net, ids[&n], &dirs[&n]).await);
                }
            }
            68..78 => {
                for n in NODES {
                    if let std::collections::btree_map::Entry::Vacant(slot) = nodes.entry(n) {
                        slot.insert(start(&net, ids[&n], &dirs[&n]).await);
                    }
                }
            }
            78..86 => {
                let a = NODES[rng.random_range(0..NODES.len())];
                let b = NODES[rng.random_range(0..NODES.len())];
                if a != b {
                    net.state.lock().unwrap().cut.insert((a.min(b), a.max(b)));
                }
            }
            86..92 => net.state.lock().unwrap().cut.clear(),
            92..95 => net.state.lock().unwrap().drop_per_mille = rng.random_range(0..200),
            95..96 => {
                // Idle long enough for the group to go quiet, whatever else is going on.
                tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
                if nodes.values().any(|g| g.quiet.is_quiet() && g.is_leader()) {
                    quiet_seen += 1;
                }
            }
            96..99 => {
                // Move the group to three of the four nodes, as a partition move does: a
                // node that is not a member gets a fresh replica under a new id first.
                let Some(l) = leader(&nodes) else { continue };
                let left_out = NODES[rng.random_range(0..NODES.len())];
                let members = nodes[&l].members();
                for n in NODES.iter().copied().filter(|n| *n != left_out) {
                    if !members.contains(&ids[&n]) {
                        incarnation += 1;
                        if let Some(old) = nodes.remove(&n) {
                            stop(&net, ids[&n], old).await;
                        }
                        let _ = std::fs::remove_dir_all(&dirs[&n]);
                        ids.insert(n, replica_id(n, incarnation));
                        nodes.insert(n, start(&net, ids[&n], &dirs[&n]).await);
                    }
                }
                let target: BTreeSet<NodeId> = NODES.iter().filter(|n| **n != left_out).map(|n| ids[n]).collect();
                last_target = Some(target.clone());
                let Some(g) = nodes.get(&l) else { continue };
                let learners = target.iter().map(|id| (*id, Node::default())).collect();
                let change = async {
                    g.add_learners(learners).await?;
                    g.set_voters(target.clone()).await
                };
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), change).await {
                    moves += 1;
                    // The move is done: a replica that is no longer a member is wiped. (The
                    // node runs an empty replica under a new id, which nothing addresses
                    // until a move adds it.)
                    let members = g.members();
                    let gone: Vec<NodeId> = NODES.iter().copied().filter(|n| !members.contains(&ids[n])).collect();
                    for n in gone {
                        if let Some(gone) = nodes.remove(&n) {
                            stop(&net, ids[&n], gone).await;
                        }
                        let _ = std::fs::remove_dir_all(&dirs[&n]);
                        incarnation += 1;
                        ids.insert(n, replica_id(n, incarnation));
                        nodes.insert(n, start(&net, ids[&n], &dirs[&n]).await);
                    }
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(10..800))).await,
        }
    }

    // Faults stop: every node up, every link whole, nothing dropped.
    {
        let mut s = net.state.lock().unwrap();
        s.cut.clear();
        s.drop_per_mille = 0;
    }
    for n in NODES {
        if let std::collections::btree_map::Entry::Vacant(slot) = nodes.entry(n) {
            slot.insert(start(&net, ids[&n], &dirs[&n]).await);
        }
    }
    // Liveness: a leader is elected and takes a write.
    let mut last = None;
    for _ in 0..100 {
        if let Some(l) = leader(&nodes) {
            if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), nodes[&l].propose(batch("final"))).await {
                last = Some(a);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.unwrap_or_else(|| panic!("seed {seed}: no write succeeded after faults stopped"));
    acked.push(("final".into(), last.base_offset));
    // A move the faults interrupted may have left the group in a joint configuration: the
    // leader finishes it, as the partition's leader retries a move in Keel.
    finish_move(&nodes, &last_target).await;

    // Quiescence meets a crash: left idle, the group goes quiet; its leader's node then
    // dies, and the followers, whose timers were off, elect a new leader that takes a
    // write within the bounds of an active group's failover.
    let idle_until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !nodes.values().any(|g| g.quiet.is_quiet() && g.is_leader()) {
        assert!(
            tokio::time::Instant::now() < idle_until,
            "seed {seed}: the idle group never went quiet"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    quiet_seen += 1;
    let quiet_leader = leader(&nodes).unwrap();
    assert!(
        nodes
            .values()
            .filter(|g| !g.is_leader() && g.voters().contains(&g.raft.metrics().borrow().id))
            .all(|g| g.quiet.sleeping()),
        "seed {seed}: a follower of the quiet group still runs its election timer"
    );
    assert!(
        nodes[&quiet_leader].is_serving_leader(),
        "seed {seed}: the quiet leader holds no lease"
    );
    let g = nodes.remove(&quiet_leader).unwrap();
    stop(&net, ids[&quiet_leader], g).await;
    let crashed_at = tokio::time::Instant::now();
    let mut after_crash = None;
    while crashed_at.elapsed() < Duration::from_secs(10) {
        if let Some(l) = leader(&nodes) {
            if let Ok(Ok(a)) =
                tokio::time::timeout(Duration::from_secs(1), nodes[&l].propose(batch("after-crash"))).await
            {
                after_crash = Some(a);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_crash = after_crash.unwrap_or_else(|| panic!("seed {seed}: no leader after the quiet leader crashed"));
    let failover = crashed_at.elapsed();
    assert!(
        failover <= Duration::from_secs(3),
        "seed {seed}: the quiet group took {failover:?} to elect a new leader and write"
    );
    acked.push(("after-crash".into(), after_crash.base_offset));
    nodes.insert(
        quiet_leader,
        start(&net, ids[&quiet_leader], &dirs[&quiet_leader]).await,
    );
    let last = after_crash;
    let voters: BTreeSet<NodeId> = nodes
        .values()
        .find(|g| g.is_leader())
        .map(|g| g.voters().into_iter().map(node_of).collect())
        .unwrap_or_default();
    assert_eq!(voters.len(), 3, "seed {seed}: the group has {voters:?} as voters");
    for _ in 0..200 {
        if nodes
            .iter()
            .filter(|(n, _)| voters.contains(n))
            .all(|(_, g)| g.shared.applied().next_offset >= last.next_offset)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, g) in nodes.iter().filter(|(n, _)| voters.contains(n)) {
        assert!(
            g.shared.applied().next_offset >= last.next_offset,
            "seed {seed}: node {id} did not catch up"
        );
    }

    // Safety: one log, and every acknowledged write in it at its offset.
    let logs: Vec<Vec<(i64, Bytes)>> = nodes
        .iter()
        .filter(|(n, _)| voters.contains(n))
        .map(|(_, g)| data_of(g))
        .collect();
    let committed_len = logs
        .iter()
        .map(|l| l.iter().filter(|(o, _)| *o < last.next_offset).count())
        .min();
    for l in &logs[1..] {
        let n = committed_len.unwrap_or(0);
        assert_eq!(
            &l[..n],
            &logs[0][..n],
            "seed {seed}: replicas disagree on the committed log"
        );
    }
    let by_offset: HashMap<i64, &Bytes> = logs[0].iter().map(|(o, p)| (*o, p)).collect();
    for (value, offset) in &acked {
        let payload = by_offset
            .get(offset)
            .unwrap_or_else(|| panic!("seed {seed}: acknowledged {value} at {offset} is missing"));
        assert!(
            payload.windows(value.len()).any(|w| w == value.as_bytes()),
            "seed {seed}: offset {offset} holds another record than acknowledged {value}"
        );
    }
    eprintln!(
        "seed {seed}: {} acknowledged writes, {crashes} crashes ({power_losses} power losses), {moves} moves, voters {voters:?}, final offset {}",
        acked.len(),
        last.next_offset
    );
    eprintln!("seed {seed}: the leader was quiet after {quiet_seen} idle spells; quiet failover took {failover:?}");
    for (n, g) in nodes {
        stop(&net, ids[&n], g).await;
    }
    Outcome { quiet_seen }
}

/// Finishes a move the faults interrupted (the group may be left in a joint configuration),
/// as the partition's leader retries a move in Keel.
async fn finish_move(nodes: &BTreeMap<NodeId, Group>, last_target: &Option<BTreeSet<NodeId>>) {
    if let Some(target) = last_target {
        for _ in 0..20 {
            let Some(l) = leader(nodes) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if nodes[&l].voters().len() == 3 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), nodes[&l].set_voters(target.clone())).await;
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn acknowledged_writes_survive_crashes_partitions_and_loss() {
    let steps = env("KEEL_SIM_STEPS", 300) as usize;
    let seeds: Vec<u64> = match std::env::var("KEEL_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => (1..=env("KEEL_SIM_SEEDS", 3)).collect(),
    };
    keel_log::fault::track_durability(true);
    for seed in seeds {
        let root = tempfile::tempdir().unwrap();
        let outcome = run(seed, steps, root.path()).await;
        assert!(outcome.quiet_seen > 0, "seed {seed}: the group never went quiet");
    }
}
