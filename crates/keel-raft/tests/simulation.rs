//! Simulation of one partition group on three replicas: an in-memory network that drops
//! messages, delays them and partitions nodes, replicas that crash and restart from their
//! on-disk logs, and a client proposing throughout. Time is tokio's paused clock on one
//! thread, and every fault and delay comes from one seeded generator, so a seed replays
//! its schedule of faults. openraft draws its election timeouts from its own generator, so
//! two runs of one seed can differ in which node wins an election and how many writes
//! succeed; the oracle holds for every run.
//!
//! The oracle: every acknowledged proposal is in the log at the offset it was acknowledged
//! with; once faults stop the group elects a leader, takes a write, and every replica holds
//! the same log.
//!
//! `KEEL_SIM_SEED=N` replays one seed; `KEEL_SIM_STEPS` and `KEEL_SIM_SEEDS` make a longer
//! run (e.g. `KEEL_SIM_SEEDS=50 KEEL_SIM_STEPS=2000 cargo test -p keel-raft --test simulation`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_log::{DiskLog, LogConfig};
use keel_proto::batch::{encode_batch, NewRecord};
use keel_raft::{Apply, Group, GroupOptions, Node, NodeId, Raft, TypeConfig};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: &str = "sim/0";
const NODES: [NodeId; 3] = [1, 2, 3];

struct NoApply;
impl Apply for NoApply {
    fn apply(&self, _index: u64, _base: i64, _next: i64, _payload: &Bytes) {}
}

#[derive(Default)]
struct NetState {
    rafts: HashMap<NodeId, Raft>,
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
    /// The target's Raft if a message from `from` gets through now, and a delivery delay.
    fn route(&self, from: NodeId, to: NodeId) -> Option<(Raft, Duration)> {
        let s = self.state.lock().unwrap();
        let pair = (from.min(to), from.max(to));
        let mut rng = self.rng.lock().unwrap();
        if s.cut.contains(&pair) || rng.random_range(0..1000) < s.drop_per_mille {
            return None;
        }
        let delay = Duration::from_micros(rng.random_range(100..3000));
        s.rafts.get(&to).cloned().map(|r| (r, delay))
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
        // No fsync: the simulation's "disk" survives every crash it stages.
        fsync: false,
        ..GroupOptions::default()
    }
}

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
        Arc::new(NoApply),
        options(),
    )
    .await
    .unwrap();
    net.state.lock().unwrap().rafts.insert(id, g.raft.clone());
    g
}

async fn stop(net: &Arc<Net>, id: NodeId, g: Group) {
    net.state.lock().unwrap().rafts.remove(&id);
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

async fn run(seed: u64, steps: usize, root: &Path) {
    let net = Arc::new(Net {
        state: Mutex::new(NetState::default()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    });
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(1));
    let dirs: BTreeMap<NodeId, PathBuf> = NODES.iter().map(|id| (*id, root.join(format!("n{id}")))).collect();
    let mut nodes: BTreeMap<NodeId, Group> = BTreeMap::new();
    for id in NODES {
        nodes.insert(id, start(&net, id, &dirs[&id]).await);
    }
    let members: BTreeMap<NodeId, Node> = NODES.iter().map(|id| (*id, Node::default())).collect();
    nodes[&1].initialize(members).await.unwrap();

    let mut acked: Vec<(String, i64)> = Vec::new();
    let mut crashes = 0;
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
            60..68 if nodes.len() == 3 => {
                let id = NODES[rng.random_range(0..3)];
                if let Some(g) = nodes.remove(&id) {
                    stop(&net, id, g).await;
                    crashes += 1;
                }
            }
            68..78 => {
                for id in NODES {
                    if let std::collections::btree_map::Entry::Vacant(slot) = nodes.entry(id) {
                        slot.insert(start(&net, id, &dirs[&id]).await);
                    }
                }
            }
            78..86 => {
                let a = NODES[rng.random_range(0..3)];
                let b = NODES[rng.random_range(0..3)];
                if a != b {
                    net.state.lock().unwrap().cut.insert((a.min(b), a.max(b)));
                }
            }
            86..92 => net.state.lock().unwrap().cut.clear(),
            92..96 => net.state.lock().unwrap().drop_per_mille = rng.random_range(0..200),
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(10..800))).await,
        }
    }

    // Faults stop: every node up, every link whole, nothing dropped.
    {
        let mut s = net.state.lock().unwrap();
        s.cut.clear();
        s.drop_per_mille = 0;
    }
    for id in NODES {
        if let std::collections::btree_map::Entry::Vacant(slot) = nodes.entry(id) {
            slot.insert(start(&net, id, &dirs[&id]).await);
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
    for _ in 0..200 {
        if nodes
            .values()
            .all(|g| g.shared.applied().next_offset >= last.next_offset)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, g) in &nodes {
        assert!(
            g.shared.applied().next_offset >= last.next_offset,
            "seed {seed}: node {id} did not catch up"
        );
    }

    // Safety: one log, and every acknowledged write in it at its offset.
    let logs: Vec<Vec<(i64, Bytes)>> = nodes.values().map(data_of).collect();
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
        "seed {seed}: {} acknowledged writes, {crashes} crashes, final offset {}",
        acked.len(),
        last.next_offset
    );
    for (id, g) in nodes {
        stop(&net, id, g).await;
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
    for seed in seeds {
        let root = tempfile::tempdir().unwrap();
        run(seed, steps, root.path()).await;
    }
}
