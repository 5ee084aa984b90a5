//! Node-to-node transport: one TCP connection per node pair (per direction) carries the
//! Raft RPCs of every group and the application's own requests (forwarding to the
//! controller leader).
//!
//! ```text
//!  0 len u32     bytes after this field          9 request id u64
//!  4 crc u32     CRC-32C of bytes 8 .. 4+len    17 from node u64
//!  8 kind u8                                    25 group length u16, group, body
//! ```
//!
//! Requests are answered out of order (each carries its id); a writer task drains the
//! outgoing queue and flushes when it is empty, so the heartbeats and appends of many
//! groups that are ready together share one write. Bodies are postcard-encoded openraft
//! messages. A frame that fails its checksum or its limits closes the connection.
//!
//! [`Transport::cut`] drops all traffic to and from a node, for tests and the chaos
//! nemesis: a cut link behaves like a silent network (requests time out).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{RPCTypes, SnapshotMeta};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::auth::{self, ClusterSecret};
use crate::liveness::{Liveness, Replica, ALIVE_WITHIN, PING_INTERVAL};
use crate::{Node, NodeId, SnapshotBody, TypeConfig, Vote};

/// Largest frame accepted from a peer.
pub const FRAME_BYTES_MAX: usize = 128 * 1024 * 1024;
const HEADER_LEN: usize = 4 + 4 + 1 + 8 + 8 + 2;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Requests queued per connection before senders wait.
const QUEUE_DEPTH: usize = 4096;

const KIND_APPEND: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_APP: u8 = 4;
const KIND_PING: u8 = 5;
/// A replica asleep behind a quiet leader's log asks the leader's node to wake the group.
const KIND_WAKE: u8 = 6;
/// After a peer refuses a connection, how long other RPCs fail without trying (pings keep
/// trying, every [`crate::liveness::PING_INTERVAL`]).
const REFUSED_HOLD: Duration = Duration::from_millis(500);
const KIND_RESPONSE: u8 = 0x80;
const KIND_ERROR: u8 = 0xFF;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("request to node {0} timed out")]
    Timeout(NodeId),
    #[error("node {0} refused the request: {1}")]
    Refused(NodeId, String),
    #[error("bad message: {0}")]
    Codec(String),
}

type AppFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;
/// Handles application requests (kind "app") addressed to this node.
pub type AppHandler = Arc<dyn Fn(NodeId, String, Bytes) -> AppFuture + Send + Sync>;

struct Conn {
    transport: std::sync::Weak<Transport>,
    tx: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, TransportError>>>>,
    alive: AtomicBool,
}

impl Conn {
    fn fail_all(&self, why: &str, peer: NodeId) {
        if let Some(t) = self.transport.upgrade() {
            t.forget(peer);
        }
        self.alive.store(false, Ordering::Release);
        let pending: Vec<_> = self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(TransportError::Unreachable(peer, why.to_string())));
        }
    }
}

/// TLS settings of the node-to-node transport.
#[derive(Clone)]
pub struct TransportTls {
    /// What an accepting node offers (and how it checks the dialer's certificate).
    pub server: Arc<rustls::ServerConfig>,
    /// What a dialing node presents (and how it checks the acceptor's certificate).
    pub client: Arc<rustls::ClientConfig>,
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait PeerStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerStream for T {}

/// One peer's connection, created on first use and replaced after it fails.
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// This node's end of the node-to-node network.
pub struct Transport {
    id: NodeId,
    peers: RwLock<HashMap<NodeId, String>>,
    conns: Mutex<HashMap<NodeId, ConnSlot>>,
    app: RwLock<Option<AppHandler>>,
    cut: RwLock<HashSet<NodeId>>,
    /// Slow links (tests and chaos): delay before sending, and drops per thousand.
    slow: RwLock<HashMap<NodeId, (Duration, u32)>>,
    next_request: AtomicU64,
    /// Liveness of the peers, their leadership reports, and this node's quiet groups.
    liveness: Arc<Liveness>,
    me: std::sync::Weak<Transport>,
    /// When each peer last refused a connection (see [`Transport::conn`]).
    refused: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// With a cluster secret, every connection is authenticated (see [`crate::auth`]).
    secret: RwLock<Option<ClusterSecret>>,
    /// TLS for node-to-node connections: both sides present certificates signed by the
    /// cluster's CA (mutual TLS), and the cluster-secret handshake runs inside.
    tls: RwLock<Option<TransportTls>>,
    /// Handshakes that failed: a peer without the secret, or one speaking for another node.
    auth_failures: AtomicU64,
    /// The byte rate shared by replicas catching up in partition moves.
    pub move_throttle: crate::throttle::MoveThrottle,
}

fn encode_frame(kind: u8, request: u64, from: NodeId, group: &str, body: &[u8]) -> Result<Bytes, TransportError> {
    let group_len = u16::try_from(group.len()).map_err(|_| TransportError::Codec("group name too long".into()))?;
    let len = HEADER_LEN - 4 + group.len() + body.len();
    if len > FRAME_BYTES_MAX {
        return Err(TransportError::Codec(format!("frame of {len} bytes exceeds the limit")));
    }
    let mut b = BytesMut::with_capacity(4 + len);
    b.put_u32(len as u32);
    b.put_u32(0);
    b.put_u8(kind);
    b.put_u64(request);
    b.put_u64(from);
    b.put_u16(group_len);
    b.put_slice(group.as_bytes());
    b.put_slice(body);
    let crc = crc32c::crc32c(b.get(8..).unwrap_or_default());
    if let Some(slot) = b.get_mut(4..8) {
        slot.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(b.freeze())
}

struct Frame {
    kind: u8,
    request: u64,
    from: NodeId,
    group: String,
    body: Bytes,
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Frame>, String> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !(HEADER_LEN - 4..=FRAME_BYTES_MAX).contains(&len) {
        return Err(format!("frame length {len} outside limits"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let mut b = Bytes::from(buf);
    let crc = b.get_u32();
    if crc32c::crc32c(&b) != crc {
        return Err("frame checksum mismatch".into());
    }
    let kind = b.get_u8();
    let request = b.get_u64();
    let from = b.get_u64();
    let glen = b.get_u16() as usize;
    if glen > b.remaining() {
        return Err("group name overruns the frame".into());
    }
    let group = String::from_utf8(b.split_to(glen).to_vec()).map_err(|_| "group name is not UTF-8".to_string())?;
    Ok(Some(Frame {
        kind,
        request,
        from,
        group,
        body: b,
    }))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TransportError> {
    postcard::to_stdvec(v).map_err(|e| TransportError::Codec(e.to_string()))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, TransportError> {
    postcard::from_bytes(b).map_err(|e| TransportError::Codec(e.to_string()))
}

impl Transport {
    pub fn new(id: NodeId) -> Arc<Transport> {
        Arc::new_cyclic(|me| Transport {
            me: me.clone(),
            move_throttle: Default::default(),
            refused: Mutex::new(HashMap::new()),
            id,
            peers: RwLock::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            app: RwLock::new(None),
            cut: RwLock::new(HashSet::new()),
            slow: RwLock::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            liveness: Arc::new(Liveness::new(id)),
            secret: RwLock::new(None),
            tls: RwLock::new(None),
            auth_failures: AtomicU64::new(0),
        })
    }

    /// Requires every connection, in and out, to prove it holds `secret` before any frame
    /// (see [`crate::auth`]). Set before the transport serves or connects.
    /// Speaks TLS to peers (both ways, with client certificates) from now on.
    pub fn require_tls(&self, tls: TransportTls) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
    }

    fn tls(&self) -> Option<TransportTls> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn require_secret(&self, secret: ClusterSecret) {
        *self.secret.write().unwrap_or_else(|e| e.into_inner()) = Some(secret);
    }

    fn secret(&self) -> Option<ClusterSecret> {
        self.secret.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections refused because the peer failed the authentication handshake.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// A connection to `node` failed: it counts as gone until it answers again.
    /// Counts `node` gone; true if it was not already.
    fn forget(&self, node: NodeId) -> bool {
        self.liveness.forget(node)
    }

    fn heard_from(&self, node: NodeId) {
        self.liveness.heard_from(node);
    }

    /// Whether `node` answered or called within the last moments (this node always is).
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.liveness.is_alive(node)
    }

    /// This node's view of its peers' liveness and of its replicas' quiescence.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// Pings every known peer periodically so that [`Transport::is_alive`] stays current
    /// even between peers that share no group. Runs until the transport is dropped.
    pub fn start_pings(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING_INTERVAL).await;
                let Some(t) = weak.upgrade() else { return };
                let report = t.liveness.next_round();
                let (number, body) = match report {
                    Some((n, b)) => (Some(n), b),
                    None => (None, Bytes::new()),
                };
                let peers: Vec<NodeId> = t
                    .peers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .copied()
                    .filter(|p| *p != t.id)
                    .collect();
                for p in peers {
                    let t = t.clone();
                    let body = body.clone();
                    tokio::spawn(async move {
                        let sent = tokio::time::Instant::now();
                        if t.call(p, KIND_PING, "", &body, ALIVE_WITHIN).await.is_ok() {
                            t.liveness.ping_answered(p, sent, number);
                        }
                    });
                }
                for (peer, group) in t.liveness.tick() {
                    let t = t.clone();
                    tokio::spawn(async move {
                        let _ = t.call(peer, KIND_WAKE, &group, &[], ALIVE_WITHIN).await;
                    });
                }
            }
        });
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The leader of `group` and its term as the nodes that lead groups report it in their
    /// pings: for a node that hosts no replica of the group (Metadata must still name its
    /// leader). Only fresh reports from nodes alive now count; the highest term wins.
    pub fn reported_leader(&self, group: &str) -> Option<(NodeId, u64)> {
        self.liveness.reported_leader(group)
    }

    /// Where `node`'s transport listens.
    pub fn set_peer(&self, node: NodeId, addr: String) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if peers.get(&node) != Some(&addr) {
            peers.insert(node, addr);
        }
    }

    /// The nodes this transport knows an address of (this node included).
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn peer_addr(&self, node: NodeId) -> Option<String> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).get(&node).cloned()
    }

    /// Routes `group`'s RPCs to `replica`. While its `hold_votes` is non-zero the replica
    /// is repairing its log, which may lack entries it once acknowledged: it votes only for
    /// candidates whose log reaches index `hold_votes - 1` (what it had before the damage).
    pub fn register(&self, group: &str, replica: Replica) {
        self.liveness.register(group, replica);
    }

    pub fn unregister(&self, group: &str) {
        self.liveness.unregister(group);
    }

    fn group(&self, group: &str) -> Option<Replica> {
        self.liveness.replica(group)
    }

    pub fn set_app_handler(&self, handler: AppHandler) {
        *self.app.write().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Drops all traffic to and from `node` (or restores it).
    pub fn cut(&self, node: NodeId, cut: bool) {
        let mut c = self.cut.write().unwrap_or_else(|e| e.into_inner());
        if cut {
            c.insert(node);
        } else {
            c.remove(&node);
        }
    }

    /// Restores every cut or slowed link.
    pub fn heal_all(&self) {
        self.cut.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.slow.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Delays every request to `node` by `delay` and drops `drop_per_mille` of them (they
    /// time out, as on a lossy network).
    pub fn slow(&self, node: NodeId, delay: Duration, drop_per_mille: u32) {
        self.slow
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, (delay, drop_per_mille.min(1000)));
    }

    fn slow_link(&self, node: NodeId) -> Option<(Duration, bool)> {
        let (delay, drop) = *self.slow.read().unwrap_or_else(|e| e.into_inner()).get(&node)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let roll = (nanos ^ (nanos >> 7)).wrapping_mul(2_654_435_761) % 1000;
        Some((delay, roll < drop))
    }

    fn is_cut(&self, node: NodeId) -> bool {
        self.cut.read().unwrap_or_else(|e| e.into_inner()).contains(&node)
    }

    /// Accepts peers' connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    debug!(%addr, "peer connected");
                    tokio::spawn(self.clone().serve_conn(stream));
                }
                Err(e) => {
                    warn!(error = %e, "transport accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_conn(self: Arc<Self>, tcp: TcpStream) {
        let peer_addr = tcp.peer_addr().ok();
        let mut stream: Box<dyn PeerStream> = match self.tls() {
            None => Box::new(tcp),
            Some(tls) => {
                let accept = tokio_rustls::TlsAcceptor::from(tls.server).accept(tcp);
                match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        self.auth_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = ?peer_addr, error = %e, "refused a node-to-node connection: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.auth_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = ?peer_addr, "refused a node-to-node connection: TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        // With a cluster secret, the connection speaks for the node it proved to be.
        let proven = match self.secret() {
            None => None,
            Some(secret) => match auth::accept(&mut stream, &secret, self.id).await {
                Ok(node) => Some(node),
                // A probe (a connect that only checks the port is open) closes at once.
                Err(e) if e.starts_with("no handshake: ") => {
                    debug!(peer = ?peer_addr, error = %e, "peer connection closed before the handshake");
                    return;
                }
                Err(e) => {
                    self.auth_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = ?peer_addr, error = %e, "refused a node-to-node connection");
                    return;
                }
            },
        };
        let (mut r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_DEPTH);
        tokio::spawn(writer(w, rx));
        loop {
            let frame = match read_frame(&mut r).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "closing peer connection");
                    return;
                }
            };
            if proven.is_some_and(|node| node != frame.from) {
                self.auth_failures.fetch_add(1, Ordering::Relaxed);
                warn!(peer = ?peer_addr, proven = ?proven, claimed = frame.from, "closing a peer connection that spoke for another node");
                return;
            }
            if self.is_cut(frame.from) {
                continue;
            }
            self.heard_from(frame.from);
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (kind, body) = match me.handle(&frame).await {
                    Ok(b) => (frame.kind | KIND_RESPONSE, b),
                    Err(e) => {
                        debug!(from = frame.from, group = %frame.group, kind = frame.kind, error = %e, "refused a peer's request");
                        (KIND_ERROR, Bytes::from(e))
                    }
                };
                if me.is_cut(frame.from) {
                    return;
                }
                if let Ok(f) = encode_frame(kind, frame.request, me.id, &frame.group, &body) {
                    let _ = tx.send(f).await;
                }
            });
        }
    }

    async fn handle(&self, f: &Frame) -> Result<Bytes, String> {
        let e = |e: TransportError| e.to_string();
        if f.kind == KIND_PING {
            if !f.body.is_empty() {
                self.liveness.on_report(f.from, &f.body)?;
            }
            return Ok(Bytes::new());
        }
        if f.kind == KIND_WAKE {
            self.liveness.wake(&f.group);
            return Ok(Bytes::new());
        }
        if f.kind == KIND_APP {
            let handler = self.app.read().unwrap_or_else(|e| e.into_inner()).clone();
            return match handler {
                Some(h) => h(f.from, f.group.clone(), f.body.clone()).await,
                None => Err("no application handler".into()),
            };
        }
        let Replica { raft, hold_votes, .. } = self.group(&f.group).ok_or_else(|| format!("no group {}", f.group))?;

        let out = match f.kind {
            KIND_APPEND => {
                let req: AppendEntriesRequest<TypeConfig> = decode(&f.body).map_err(e)?;
                let leader_commit = req.leader_commit.map(|l| l.index);
                let resp = raft.append_entries(req).await;
                // A replica holding its vote votes again once its log holds everything a
                // leader has committed.
                if hold_votes.load(Ordering::Acquire) > 0 && resp.is_ok() {
                    let last = raft.metrics().borrow().last_log_index;
                    if leader_commit.is_some() && last >= leader_commit {
                        hold_votes.store(0, Ordering::Release);
                        info!(group = %f.group, ?leader_commit, "repaired log holds the leader's commit; voting again");
                    }
                }
                encode(&resp).map_err(e)?
            }
            KIND_VOTE => {
                let req: VoteRequest<NodeId> = decode(&f.body).map_err(e)?;
                self.liveness
                    .may_vote(&f.group, req.vote.leader_id().voted_for().unwrap_or(u64::MAX))?;
                let hold = hold_votes.load(Ordering::Acquire);
                if hold > 0 && req.last_log_id.map(|l| l.index + 1) < Some(hold) {
                    return Err(format!(
                        "group {} is repairing its log and votes only for a candidate holding index {}",
                        f.group,
                        hold - 1
                    ));
                }
                encode(&raft.vote(req).await).map_err(e)?
            }
            KIND_SNAPSHOT => {
                let (vote, meta, body): (Vote, SnapshotMeta<NodeId, Node>, SnapshotBody) =
                    decode(&f.body).map_err(e)?;
                let snapshot = openraft::Snapshot {
                    meta,
                    snapshot: Box::new(body),
                };
                encode(&raft.install_full_snapshot(vote, snapshot).await).map_err(e)?
            }
            k => return Err(format!("unknown request kind {k}")),
        };
        Ok(Bytes::from(out))
    }

    /// The connection to `target`, made if needed. While `target` refused a connection in
    /// the last [`REFUSED_HOLD`], only pings try again (every group's RPCs to a dead node
    /// would otherwise each cost a connect: tens of thousands a second with thousands of
    /// groups); the others fail at once.
    async fn conn(&self, target: NodeId, ping: bool) -> Result<Arc<Conn>, TransportError> {
        if !ping {
            let refused = self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&target)
                .copied();
            if refused.is_some_and(|at| at.elapsed() < REFUSED_HOLD) {
                return Err(TransportError::Unreachable(
                    target,
                    "refused connections moments ago".into(),
                ));
            }
        }
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.entry(target).or_default().clone()
        };
        if let Some(c) = slot.lock().await.as_ref() {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        // Connecting (and the handshake, with a cluster secret) runs in a task of its own:
        // a caller whose short deadline (a heartbeat's) passes meanwhile must not abort a
        // handshake half-way, or under load no connection would ever be made.
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| TransportError::Unreachable(target, "transport stopped".into()))?;
        tokio::spawn(async move { me.connect(slot, target).await })
            .await
            .map_err(|e| TransportError::Unreachable(target, e.to_string()))?
    }

    /// Makes the connection to `target` into `slot` unless another task made it meanwhile.
    async fn connect(self: Arc<Self>, slot: ConnSlot, target: NodeId) -> Result<Arc<Conn>, TransportError> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let addr = self
            .peer_addr(target)
            .ok_or_else(|| TransportError::Unreachable(target, "address unknown".into()))?;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                match self.me.upgrade() {
                    Some(t) if e.kind() == std::io::ErrorKind::ConnectionRefused => t.refused_by(target),
                    _ => {
                        self.forget(target);
                    }
                }
                return Err(TransportError::Unreachable(target, format!("connect to {addr}: {e}")));
            }
            Err(_) => {
                return Err(TransportError::Unreachable(
                    target,
                    format!("connect to {addr} timed out"),
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream: Box<dyn PeerStream> = match self.tls() {
            None => Box::new(stream),
            Some(tls) => {
                let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
                let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| TransportError::Unreachable(target, format!("TLS name of {addr}: {e}")))?;
                let connect = tokio_rustls::TlsConnector::from(tls.client).connect(name, stream);
                match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, connect).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        self.auth_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = target, %addr, error = %e, "node-to-node TLS handshake failed");
                        return Err(TransportError::Unreachable(target, format!("TLS: {e}")));
                    }
                    Err(_) => {
                        return Err(TransportError::Unreachable(target, "TLS handshake timed out".into()));
                    }
                }
            }
        };
        if let Some(secret) = self.secret() {
            if let Err(e) = auth::dial(&mut stream, &secret, self.id, target).await {
                self.auth_failures.fetch_add(1, Ordering::Relaxed);
                warn!(peer = target, %addr, error = %e, "node-to-node authentication failed");
                return Err(TransportError::Unreachable(target, format!("authentication: {e}")));
            }
        }
        let (mut r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_DEPTH);
        tokio::spawn(writer(w, rx));
        let conn = Arc::new(Conn {
            transport: self.me.clone(),
            tx,
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
        });
        let reader_conn = conn.clone();
        let heard = self.heard_handle();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut r).await {
                    Ok(Some(f)) => {
                        if let Some(t) = heard.upgrade() {
                            t.heard_from(target);
                        }
                        let waiter = reader_conn
                            .pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&f.request);
                        if let Some(w) = waiter {
                            let r = if f.kind == KIND_ERROR {
                                Err(TransportError::Refused(
                                    target,
                                    String::from_utf8_lossy(&f.body).into_owned(),
                                ))
                            } else {
                                Ok(f.body)
                            };
                            let _ = w.send(r);
                        }
                    }
                    Ok(None) => {
                        reader_conn.fail_all("connection closed", target);
                        // A closed connection may be a process that died: look now rather
                        // than at the next ping.
                        if let Some(t) = heard.upgrade() {
                            tokio::spawn(t.probe(target));
                        }
                        return;
                    }
                    Err(e) => {
                        reader_conn.fail_all(&e, target);
                        return;
                    }
                }
            }
        });
        info!(peer = target, %addr, "connected to peer");
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).remove(&target);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Tries to connect to `node` once; a refusal means its process is gone.
    async fn probe(self: Arc<Self>, node: NodeId) {
        let Some(addr) = self.peer_addr(node) else { return };
        if let Ok(Err(e)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                self.refused_by(node);
            }
        }
    }

    /// `node` refused a connection: other RPCs to it fail at once for [`REFUSED_HOLD`], and
    /// it counts as gone. Every group's RPCs to a dead node meet the refusal: only the
    /// first, which finds it still counted alive, acts on its groups.
    fn refused_by(self: &Arc<Self>, node: NodeId) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, std::time::Instant::now());
        if self.forget(node) {
            self.peer_gone(node);
        }
    }

    /// `node` refuses connections: its process is gone (killed, crashed or restarting).
    /// The followers of the groups it led (quiet or not) are queued at once to stand for
    /// election through the liveness's paced queue, without waiting for its silence to
    /// count: the lowest live voter first, once the leader's lease has run out.
    fn peer_gone(self: &Arc<Self>, node: NodeId) {
        info!(peer = node, "peer refuses connections: its groups elect new leaders");
        // Wake requests wait for the next regular sweep.
        let _ = self.liveness.sweep(tokio::time::Instant::now());
    }

    fn heard_handle(&self) -> std::sync::Weak<Transport> {
        self.me.clone()
    }

    /// Sends one request and waits for its answer.
    pub async fn call(
        &self,
        target: NodeId,
        kind: u8,
        group: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if self.is_cut(target) {
            tokio::time::sleep(timeout).await;
            return Err(TransportError::Timeout(target));
        }
        if let Some((delay, dropped)) = self.slow_link(target) {
            if dropped {
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout(target));
            }
            tokio::time::sleep(delay.min(timeout)).await;
        }
        let fut = async {
            let conn = self.conn(target, kind == KIND_PING).await?;
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            let frame = encode_frame(kind, id, self.id, group, body)?;
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
            if conn.tx.send(frame).await.is_err() {
                conn.fail_all("writer stopped", target);
            }
            let r = rx
                .await
                .unwrap_or_else(|_| Err(TransportError::Unreachable(target, "connection dropped".into())));
            if r.is_err() {
                conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
            r
        };
        let r = tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(TransportError::Timeout(target)));
        if self.is_cut(target) {
            return Err(TransportError::Timeout(target));
        }
        r
    }

    /// Sends an application request to `target` (handled by its [`AppHandler`]).
    pub async fn call_app(
        &self,
        target: NodeId,
        topic: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        self.call(target, KIND_APP, topic, body, timeout).await
    }

    /// A network factory for openraft, scoped to one group.
    pub fn network(self: &Arc<Self>, group: &str) -> GroupNetworkFactory {
        GroupNetworkFactory {
            transport: self.clone(),
            group: group.to_string(),
        }
    }
}

/// Writes a connection's frames; when the connection's senders are gone (or a write
/// fails) it shuts the stream's sending side, so the peer sees the connection end and the
/// reading side ends too.
async fn writer<W: tokio::io::AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    'frames: while let Some(first) = rx.recv().await {
        if w.write_all(&first).await.is_err() {
            break;
        }
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                break 'frames;
            }
        }
        if w.flush().await.is_err() {
            break;
        }
    }
    // Bounded: a peer that reads nothing must not hold this task forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), w.shutdown()).await;
}

pub struct GroupNetworkFactory {
    transport: Arc<Transport>,
    group: String,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GroupNetwork {
        if !node.addr.is_empty() {
            self.transport.set_peer(crate::node_of(target), node.addr.clone());
        }
        GroupNetwork {
            transport: self.transport.clone(),
            group: crate::group_key(&self.group, target),
            name: self.group.clone(),
            target,
        }
    }
}

pub struct GroupNetwork {
    transport: Arc<Transport>,
    /// The group's name as the target replica receives it ([`crate::group_key`]).
    group: String,
    /// The group's name.
    name: String,
    /// The target replica's id in the group; its node is [`crate::node_of`] it.
    target: NodeId,
}

type RpcErr = RPCError<NodeId, Node, RaftError<NodeId>>;

impl GroupNetwork {
    fn rpc_error(&self, e: TransportError, action: RPCTypes, timeout: Duration) -> RpcErr {
        match e {
            TransportError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.transport.id,
                target: self.target,
                timeout,
            }),
            TransportError::Codec(_) => RPCError::Network(NetworkError::new(&e)),
            TransportError::Unreachable(..) | TransportError::Refused(..) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
        }
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: u8,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcErr> {
        let body = encode(req).map_err(|e| self.rpc_error(e, action, timeout))?;
        let out = self
            .transport
            .call(crate::node_of(self.target), kind, &self.group, &body, timeout)
            .await
            .map_err(|e| self.rpc_error(e, action, timeout))?;
        let r: Result<Resp, RaftError<NodeId>> = decode(&out).map_err(|e| self.rpc_error(e, action, timeout))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let ttl = option.hard_ttl();
        if !rpc.entries.is_empty() {
            // A replica catching up in a move shares the move throttle's rate. The wait
            // stays within half the request's time; past it the request fails as timed
            // out, unsent, and replication tries again (its bytes were not taken).
            let bytes: usize = rpc
                .entries
                .iter()
                .map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(crate::Payload(b, _, _)) => b.len() + 64,
                    _ => 64,
                })
                .sum();
            let started = tokio::time::Instant::now();
            loop {
                match self.transport.move_throttle.try_take(&self.name, self.target, bytes) {
                    Ok(()) => break,
                    Err(wait) => {
                        let left = (ttl / 2).saturating_sub(started.elapsed());
                        tokio::time::sleep(wait.min(left)).await;
                        self.transport.move_throttle.waited(wait.min(left));
                        if wait >= left {
                            return Err(self.rpc_error(
                                TransportError::Timeout(crate::node_of(self.target)),
                                RPCTypes::AppendEntries,
                                ttl,
                            ));
                        }
                    }
                }
            }
        }
        self.rpc(KIND_APPEND, RPCTypes::AppendEntries, &rpc, ttl).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.rpc(KIND_VOTE, RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let timeout = option.hard_ttl();
        let req = (vote, snapshot.meta, *snapshot.snapshot);
        let map = |e: TransportError| -> StreamingError<TypeConfig, Fatal<NodeId>> {
            match e {
                TransportError::Timeout(_) => StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.transport.id,
                    target: self.target,
                    timeout,
                }),
                TransportError::Codec(_) => StreamingError::Network(NetworkError::new(&e)),
                _ => StreamingError::Unreachable(Unreachable::new(&e)),
            }
        };
        let body = encode(&req).map_err(map)?;
        let out = self
            .transport
            .call(crate::node_of(self.target), KIND_SNAPSHOT, &self.group, &body, timeout)
            .await
            .map_err(map)?;
        let r: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = decode(&out).map_err(map)?;
        r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// Entry points for `fuzz/` (cargo-fuzz): what a node does with a peer's bytes, without a
/// socket or a Raft group.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Reads frames from `data` as a connection does, and decodes each one's body as its
    /// kind says (the response kinds as the caller decodes them).
    pub fn frame(data: &[u8]) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            return;
        };
        rt.block_on(async {
            let mut r = data;
            for _ in 0..16 {
                let Ok(Some(f)) = read_frame(&mut r).await else { return };
                body(f.kind, &f.body);
            }
        });
    }

    fn body(kind: u8, b: &[u8]) {
        match kind {
            KIND_APPEND => drop(decode::<AppendEntriesRequest<TypeConfig>>(b)),
            KIND_VOTE => drop(decode::<VoteRequest<NodeId>>(b)),
            KIND_SNAPSHOT => drop(decode::<(Vote, SnapshotMeta<NodeId, Node>, SnapshotBody)>(b)),
            KIND_PING => drop(crate::liveness::decode_report(b)),
            k if k == KIND_APPEND | KIND_RESPONSE => drop(decode::<
                Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>>,
            >(b)),
            k if k == KIND_VOTE | KIND_RESPONSE => {
                drop(decode::<Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>>>(b))
            }
            k if k == KIND_SNAPSHOT | KIND_RESPONSE => {
                drop(decode::<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>>(b))
            }
            _ => {}
        }
    }
}
