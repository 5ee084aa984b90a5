//! Keel's broker: topics and partitions served over the Kafka protocol. Two layers:
//!
//! - The Kafka API layer serves clients: [`server`] (accept loop, per-connection request
//!   loop, connection and in-flight-byte limits, TLS and SASL, clean shutdown), [`dispatch`]
//!   (decodes a frame and routes it to one module per Kafka API in [`handlers`]), [`group`]
//!   (consumer groups, committed offsets in `__consumer_offsets`), [`txn`] (transactions:
//!   the coordinator in `__transaction_state`, markers, last stable offsets), [`acl`],
//!   [`quota`], [`scram`], [`audit`], and the HTTP side ([`http`], [`admin_api`]).
//! - The [`cluster`] layer holds what the nodes agree on and this node's replicas: the
//!   metadata state machine ([`cluster::meta`], pure) and its runtime
//!   ([`cluster::controller`]), the replicas ([`cluster::topics`], [`cluster::partition`]),
//!   moves, self-healing, balancing and leadership hand-over.
//!
//! Data flow of a request:
//!
//! ```text
//! TCP ─▶ server (frame, limits) ─▶ dispatch (header, version check, decode)
//!        ─▶ handlers::<api> ─▶ Topics / Partition ─▶ keel_raft::Group ─▶ keel_log::DiskLog
//!        ◀─ response encoded by keel_proto::codec ◀─┘
//! ```
//!
//! Also: [`config`] (the broker's settings), [`cleaner`] (the log cleaner of compacted
//! topics), [`producer_state`] (idempotent-producer dedup), [`metrics`] (Prometheus), and
//! [`error`] (broker errors and their Kafka error codes).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod acl;
pub mod admin_api;
pub mod audit;
pub mod browse;
pub mod cleaner;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod group;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod producer_state;
pub mod quota;
pub mod scram;
pub mod server;
pub mod tls;
pub mod txn;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cluster::{controller, handover, healing, meta, moves, partition, topics};
use tokio::sync::watch;

pub use config::{BrokerConfig, FsyncPolicy};

/// Everything a request handler can reach.
pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub topics: Arc<topics::Topics>,
    pub controller: Arc<controller::Controller>,
    pub metrics: Arc<metrics::Metrics>,
    /// Bumped whenever any partition's high watermark moves; long-polling fetches wait on it.
    pub data_changed: Arc<watch::Sender<u64>>,
    pub producer_ids: ProducerIds,
    pub groups: group::coordinator::Coordinator,
    pub txns: txn::coordinator::TxnStore,
    /// Host and port clients of the main listener are told to connect to.
    pub advertised: (String, u16),
    /// The main listener's name (its protocol's).
    pub main_listener: String,
    /// Every listener's advertised host and port, by name.
    pub endpoints: std::collections::BTreeMap<String, (String, u16)>,
    /// TLS settings of the SSL and SASL_SSL listeners and of an HTTPS listener.
    pub tls: Option<Arc<tls::Tls>>,
    /// Random per start: derives SCRAM's stand-in salts for unknown users.
    sasl_key: Vec<u8>,
    /// The audit log (disabled unless `audit_log` is set).
    pub audit: audit::Audit,
    /// Bytes served per user and client id, for client quotas.
    pub quota_meters: quota::Meters,
    pub started: Instant,
    /// The `__consumer_offsets` leader term whose offsets are loaded here (this node
    /// coordinates groups only while it leads that partition and has replayed it).
    offsets_term: std::sync::Mutex<Option<u64>>,
}

impl Broker {
    /// Opens the data directory and every topic in it. `kafka_port` is the main listener's
    /// bound port (the configured one may be 0); other listeners are taken as configured.
    pub async fn open(config: BrokerConfig, kafka_port: u16) -> anyhow::Result<Arc<Broker>> {
        let main = config.main_protocol().as_str().to_string();
        let mut bound = std::collections::BTreeMap::new();
        for l in &config.listeners {
            if let Ok(addr) = l.listen.parse() {
                bound.insert(l.name.clone(), addr);
            }
        }
        let listen: std::net::SocketAddr = config.kafka_listen.parse()?;
        bound.insert(main, std::net::SocketAddr::new(listen.ip(), kafka_port));
        Broker::open_bound(config, &bound).await
    }

    /// Opens the broker whose listeners are bound at `bound` (by listener name).
    pub async fn open_bound(
        config: BrokerConfig,
        bound: &std::collections::BTreeMap<String, std::net::SocketAddr>,
    ) -> anyhow::Result<Arc<Broker>> {
        config.validate().map_err(anyhow::Error::msg)?;
        let main_listener = config.main_protocol().as_str().to_string();
        let kafka_port = bound
            .get(&main_listener)
            .map(|a| a.port())
            .ok_or_else(|| anyhow::anyhow!("the main listener {main_listener} is not bound"))?;
        let mut endpoints = std::collections::BTreeMap::new();
        for l in &config.listeners {
            let addr = bound
                .get(&l.name)
                .ok_or_else(|| anyhow::anyhow!("listener {} is not bound", l.name))?;
            endpoints.insert(l.name.clone(), advertised_endpoint(addr, l.advertised.as_deref())?);
        }
        let sasl_key = sasl_key(&config)?;
        let tls = match &config.tls {
            Some(t) => Some(tls::Tls::load(t).map_err(|e| anyhow::anyhow!("tls: {e}"))?),
            None => None,
        };
        if config.fault_injection {
            // What the node fsyncs is recorded, so that POST /fault/power-loss can throw
            // away the rest.
            keel_log::fault::track_durability(true);
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let config = Arc::new(config);
        let metrics = Arc::new(metrics::Metrics::new());
        let data_changed = Arc::new(watch::Sender::new(0u64));
        let listen: std::net::SocketAddr = config.kafka_listen.parse()?;
        let host = config.advertised_host.clone().unwrap_or_else(|| {
            if listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                listen.ip().to_string()
            }
        });
        let port = config.advertised_port.unwrap_or(kafka_port);
        endpoints.insert(main_listener.clone(), (host.clone(), port));
        let audit = match &config.audit_log {
            Some(path) => audit::Audit::open(
                path,
                config.audit_log_max_bytes,
                config.audit_log_keep,
                config.node_id,
                metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!("audit log {}: {e}", path.display()))?,
            None => audit::Audit::disabled(metrics.clone()),
        };
        let (controller, topics) = start_replication(&config, &metrics, &data_changed, &host, port, &endpoints).await?;
        if let Some(t) = &tls {
            // The node transport's certificates are the same files: reloaded with them.
            let transport = config.transport_tls.then(|| controller.transport.clone());
            t.spawn_reloader(metrics.clone(), transport);
        }
        let producer_ids = ProducerIds::open(&config.data_dir.join("producer_ids"), config.node_id.max(0) as i64)?;
        // At start the controller's log is replayed and every local replica reopened; a node
        // with many partitions takes a while, and serves nothing until it is done.
        let started = Instant::now();
        while topics.wait_caught_up(std::time::Duration::from_secs(10)).await.is_err() {
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                "still reopening partition replicas (or waiting for a controller quorum)"
            );
        }
        let internal_configs: std::collections::BTreeMap<String, String> = [
            ("retention.ms".to_string(), "-1".to_string()),
            ("segment.bytes".to_string(), config.offsets_segment_bytes.to_string()),
        ]
        .into_iter()
        .collect();
        let offsets_topic = internal_topic(&topics, group::offsets::OFFSETS_TOPIC, &internal_configs).await?;
        let txn_topic = internal_topic(&topics, txn::coordinator::TXN_TOPIC, &internal_configs).await?;
        let offsets_partition = internal_replica(&topics, &offsets_topic).await;
        let txn_partition = internal_replica(&topics, &txn_topic).await;
        let loaded_term = offsets_partition.is_leader().then(|| offsets_partition.group().term());
        let offsets = group::offsets::OffsetStore::load(offsets_partition);
        let timing = group::state::GroupTiming {
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        };
        let broker = Arc::new(Broker {
            config,
            topics,
            controller,
            metrics,
            data_changed,
            producer_ids,
            groups: group::coordinator::Coordinator::new(offsets, timing),
            txns: txn::coordinator::TxnStore::load(txn_partition),
            advertised: (host, port),
            main_listener,
            endpoints,
            tls,
            sasl_key,
            audit,
            quota_meters: quota::Meters::default(),
            started: Instant::now(),
            offsets_term: std::sync::Mutex::new(loaded_term),
        });
        let weak = Arc::downgrade(&broker);
        broker.controller.set_routes(Arc::new(move |_from, route, body| {
            let weak = weak.clone();
            Box::pin(async move {
                let b = weak.upgrade().ok_or_else(|| "broker stopped".to_string())?;
                if route == handlers::elect_leaders::ELECT_ROUTE {
                    handlers::elect_leaders::handle_route(&b, &body).await
                } else if route == browse::BROWSE_ROUTE {
                    browse::handle_route(&b, &body)
                } else if route == handover::TAKE_OVER_ROUTE {
                    handover::handle_route(&b.topics, &body).await
                } else if route == handlers::describe_quorum::QUORUM_ROUTE {
                    handlers::describe_quorum::handle_route(&b)
                } else if route == healing::SIZES_ROUTE {
                    healing::sizes_here(&b.topics)
                } else {
                    txn::coordinator::handle_route(&b, &route, &body).await
                }
            })
        }));
        tokio::spawn(group_clock(Arc::downgrade(&broker)));
        Ok(broker)
    }

    /// Whether the connection `who` may do `operation` to a resource (always, when the
    /// authorizer is off). A refusal is logged and counted.
    pub fn authorize(&self, who: &handlers::sasl::Session, operation: i8, resource_type: i8, name: &str) -> bool {
        if !self.config.authorizer {
            return true;
        }
        let meta = self.controller.meta();
        let policy = acl::Policy {
            super_users: &self.config.super_users,
            allow_if_no_acl: self.config.allow_everyone_if_no_acl_found,
        };
        let ok = acl::authorize(
            &meta.acls,
            &policy,
            &who.principal,
            &who.host,
            operation,
            resource_type,
            name,
        );
        if !ok {
            self.metrics.authorization_denials.inc();
            self.audit
                .denied(who, acl::op_name(operation), acl::resource_name(resource_type), name);
            tracing::info!(
                principal = %who.principal,
                host = %who.host,
                operation = acl::op_name(operation),
                resource_type = acl::resource_name(resource_type),
                resource = name,
                "authorization denied"
            );
        }
        ok
    }

    /// Whether `who` may do `operation` to some resource of the type (see
    /// [`acl::authorize_any`]).
    pub fn authorize_any(&self, who: &handlers::sasl::Session, operation: i8, resource_type: i8) -> bool {
        if !self.config.authorizer {
            return true;
        }
        let meta = self.controller.meta();
        let policy = acl::Policy {
            super_users: &self.config.super_users,
            allow_if_no_acl: self.config.allow_everyone_if_no_acl_found,
        };
        acl::authorize_any(&meta.acls, &policy, &who.principal, &who.host, operation, resource_type)
    }

    /// Meters `bytes` served to the connection's user and client id against their quota
    /// `key` (if one applies; for `request_percentage`, `bytes` is microseconds of request
    /// handling) and returns the throttle time in milliseconds; the connection reads no
    /// more requests until it has passed (KIP-219).
    pub fn throttle(&self, who: &mut handlers::sasl::Session, client_id: &str, key: &'static str, bytes: usize) -> i32 {
        let meta = self.controller.meta();
        if meta.quotas.is_empty() {
            return 0;
        }
        let user = who.principal.strip_prefix("User:").unwrap_or(&who.principal);
        let Some(quota) = quota::quota_for(&meta.quotas, user, client_id, key) else {
            return 0;
        };
        let (amount, quota) = match key {
            quota::REQUEST_PERCENTAGE => (bytes as u64, quota::request_micros_per_second(quota)),
            _ => (bytes as u64, quota),
        };
        let now = Instant::now();
        let wait = self.quota_meters.record(user, client_id, key, amount, quota, now);
        if wait.is_zero() {
            return 0;
        }
        self.metrics.quota_throttled.inc();
        let until = now + wait;
        who.throttle_until = Some(who.throttle_until.map_or(until, |t| t.max(until)));
        wait.as_millis().min(i32::MAX as u128) as i32
    }

    /// As [`Broker::authorize`] on the cluster resource.
    pub fn authorize_cluster(&self, who: &handlers::sasl::Session, operation: i8) -> bool {
        self.authorize(who, operation, acl::resource::CLUSTER, acl::CLUSTER_NAME)
    }

    /// The users SASL authenticates against, with the SCRAM credentials of `meta`.
    pub fn sasl_users<'a>(&'a self, meta: &'a meta::ClusterMeta) -> handlers::sasl::Users<'a> {
        handlers::sasl::Users {
            plain: &self.config.sasl_plain_users,
            scram: &meta.scram,
            unknown_key: &self.sasl_key,
        }
    }

    /// The node Metadata and DescribeCluster name as the controller, where clients send
    /// admin requests: the controller's leader while it is reachable, otherwise this node.
    /// Every node takes admin requests and forwards them to the controller's leader (as
    /// KRaft's brokers do), so a client is never sent to a dead or unknown leader, which
    /// it would wait for until its next metadata refresh.
    pub fn controller_id(&self) -> i32 {
        let me = self.controller.node_id;
        match self.controller.group.leader() {
            Some(l) if l == me || self.controller.transport.is_alive(l) => l as i32,
            _ => me as i32,
        }
    }

    /// `None` when this node coordinates groups now; otherwise the error to answer with.
    pub fn coordinator_error(&self) -> Option<i16> {
        let p = self.groups.offsets.partition();
        if !p.is_leader() {
            return Some(kafka_protocol::ResponseError::NotCoordinator.code());
        }
        let loaded = *self.offsets_term.lock().unwrap_or_else(|e| e.into_inner());
        if loaded != Some(p.group().term()) {
            return Some(kafka_protocol::ResponseError::CoordinatorLoadInProgress.code());
        }
        None
    }

    /// The node coordinating groups (leading `__consumer_offsets`): id, host, port.
    /// `listener` names the listener whose addresses are given.
    pub fn coordinator_node(&self, listener: &str) -> Option<(i32, String, i32)> {
        self.leader_node_of(
            group::offsets::OFFSETS_TOPIC,
            &self.groups.offsets.partition(),
            listener,
        )
    }

    /// The node leading partition 0 of an internal topic (`p` is this node's replica):
    /// id, host, port.
    pub fn leader_node_of(&self, topic: &str, p: &partition::Partition, listener: &str) -> Option<(i32, String, i32)> {
        let leader = match p.group().leader().filter(|_| !p.is_closed()) {
            Some(l) => keel_raft::node_of(l) as i32,
            // This node's replica was moved off, or knows no leader (it restarted while
            // the group was quiet, and a quiet leader sends nothing until it has something
            // to send): the leader as it reports itself, as Metadata does.
            None => {
                self.controller
                    .transport
                    .reported_leader(&partition::group_name(topic, 0))?
                    .0 as i32
            }
        };
        handlers::metadata::nodes(self, listener)
            .into_iter()
            .find(|(id, _, _)| *id == leader)
    }

    /// Follows leadership of `__consumer_offsets`: on becoming its leader, replays the
    /// committed offsets and starts with no group state; on losing it, drops group state.
    async fn follow_offsets_leadership(&self) {
        // This node's replica may have been reopened (repaired, or moved off and back).
        if let Some(current) = self
            .topics
            .get(group::offsets::OFFSETS_TOPIC)
            .and_then(|t| t.partition(0))
        {
            if !Arc::ptr_eq(&current, &self.groups.offsets.partition()) {
                self.groups.offsets.set_partition(current);
            }
        }
        let p = self.groups.offsets.partition();
        let leading = p.is_leader();
        let term = p.group().term();
        let loaded = *self.offsets_term.lock().unwrap_or_else(|e| e.into_inner());
        if leading && loaded != Some(term) {
            self.groups.reset().await;
            self.groups.offsets.reload().await;
            *self.offsets_term.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
            tracing::info!(term, "this node now coordinates consumer groups");
        } else if !p.group().is_leader() && loaded.is_some() {
            // Only a lost Raft leadership ends coordination. A leader that merely has not
            // heard a quorum lately (a loaded machine) serves no group request meanwhile
            // (see coordinator_error) but keeps its groups: nobody else can have written
            // in its term, and dropping them would make every member rejoin.
            *self.offsets_term.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.groups.reset().await;
            tracing::info!("this node no longer coordinates consumer groups");
        }
    }

    /// fsyncs every partition (clean shutdown).
    pub async fn sync_all(&self) {
        for p in self.topics.all_partitions() {
            p.sync_now().await;
        }
    }
}

/// The cluster secret, from the config or the file it names.
fn cluster_secret(config: &BrokerConfig) -> anyhow::Result<Option<keel_raft::auth::ClusterSecret>> {
    let Some(value) = cluster_secret_value(config)? else {
        return Ok(None);
    };
    keel_raft::auth::ClusterSecret::new(value)
        .map(Some)
        .map_err(anyhow::Error::msg)
}

fn cluster_secret_value(config: &BrokerConfig) -> anyhow::Result<Option<String>> {
    Ok(match (&config.cluster_secret, &config.cluster_secret_file) {
        (Some(s), _) => Some(s.0.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cluster secret file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    })
}

/// The key of SCRAM's stand-in salts for unknown users: the same on every node of a
/// cluster (derived from the cluster secret), so that no node's answers differ from
/// another's for a user that does not exist; random for a lone node.
fn sasl_key(config: &BrokerConfig) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest;
    Ok(match cluster_secret_value(config)? {
        Some(secret) => sha2::Sha256::new()
            .chain_update(b"keel: SCRAM salts of unknown users\0")
            .chain_update(secret.as_bytes())
            .finalize()
            .to_vec(),
        None => [uuid::Uuid::new_v4().into_bytes(), uuid::Uuid::new_v4().into_bytes()].concat(),
    })
}

/// Starts the node-to-node transport, joins the controller group, and starts applying
/// its topic commands to this node's replicas (replaying them all at start).
async fn start_replication(
    config: &Arc<BrokerConfig>,
    metrics: &Arc<metrics::Metrics>,
    data_changed: &Arc<watch::Sender<u64>>,
    kafka_host: &str,
    kafka_port: u16,
    endpoints: &std::collections::BTreeMap<String, (String, u16)>,
) -> anyhow::Result<(Arc<controller::Controller>, Arc<topics::Topics>)> {
    let node_id = config.node_id.max(0) as u64;
    let transport = keel_raft::Transport::new(node_id);
    transport.move_throttle.set_rate(config.move_throttle_bytes_per_s);
    match cluster_secret(config)? {
        Some(secret) => transport.require_secret(secret),
        None if !config.peers.is_empty() => {
            tracing::warn!("insecure_transport: the node-to-node transport accepts any peer without authentication")
        }
        None => {}
    }
    if config.transport_tls {
        let tls = config
            .tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("transport_tls needs [tls]"))?;
        transport.require_tls(tls::transport(tls).map_err(|e| anyhow::anyhow!("transport TLS: {e}"))?);
    }
    let mut raft_addr = config
        .advertised_raft
        .clone()
        .or(config.raft_listen.clone())
        .unwrap_or_default();
    if let Some(listen) = &config.raft_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("raft listener {listen}: {e}"))?;
        let bound = listener.local_addr()?;
        if config.advertised_raft.is_none() {
            raft_addr = bound.to_string();
        }
        tracing::info!(addr = %bound, "raft listener ready");
        tokio::spawn(transport.clone().serve(listener));
    }
    let peers = config.parse_peers().map_err(anyhow::Error::msg)?;
    let voters: std::collections::BTreeMap<u64, keel_raft::Node> = if peers.is_empty() {
        [(
            node_id,
            keel_raft::Node {
                addr: raft_addr.clone(),
            },
        )]
        .into_iter()
        .collect()
    } else {
        peers
            .into_iter()
            .map(|(id, addr)| (id, keel_raft::Node { addr }))
            .collect()
    };
    let options = keel_raft::GroupOptions {
        heartbeat_ms: config.raft_heartbeat_ms,
        election_timeout_min_ms: config.raft_election_timeout_ms,
        election_timeout_max_ms: config.raft_election_timeout_ms * 2,
        ..Default::default()
    };
    transport.start_pings();
    // Every partition replica's vote, in one journal saved with one fsync per round.
    let votes = {
        let path = config.data_dir.join("raft-votes.log");
        tokio::task::spawn_blocking(move || keel_raft::VoteStore::open(&path))
            .await?
            .context("opening the vote journal raft-votes.log")?
    };
    let controller = controller::Controller::start(
        &config.data_dir.join("controller"),
        node_id,
        transport.clone(),
        voters.clone(),
        options.clone(),
    )
    .await?;
    if config.join {
        // The controller's voters add this node as a learner; wait for that and for the
        // metadata (a node that joined before restarts straight away).
        loop {
            match controller.join(&raft_addr, std::time::Duration::from_secs(30)).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "still joining the cluster"),
            }
        }
    }
    let replica = partition::ReplicaContext {
        node_id,
        transport,
        members: voters,
        preferred_leader: None,
        initialize: true,
        options,
        metrics: metrics.clone(),
        data_changed: data_changed.clone(),
        votes,
        vote_key: String::new(),
    };
    let topics = topics::Topics::start(config.clone(), metrics.clone(), replica, controller.clone())?;
    let info = meta::NodeInfo {
        kafka_host: kafka_host.to_string(),
        kafka_port,
        raft_addr,
        listeners: endpoints.clone(),
        rack: config.rack.clone(),
    };
    tokio::spawn(register_node(controller.clone(), node_id, info));
    Ok((controller, topics))
}

/// A listener's advertised host and port: the configured `host:port`, or the bound address
/// (127.0.0.1 for an unspecified one: clients cannot connect to 0.0.0.0).
fn advertised_endpoint(bound: &std::net::SocketAddr, advertised: Option<&str>) -> anyhow::Result<(String, u16)> {
    if let Some(a) = advertised {
        let (h, p) = a
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("advertised {a:?}: expected host:port"))?;
        return Ok((h.to_string(), p.parse()?));
    }
    let host = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    };
    Ok((host, bound.port()))
}

/// Creates an internal topic of one partition unless it exists (it needs a controller
/// quorum: a node that starts before its peers waits here).
async fn internal_topic(
    topics: &Arc<topics::Topics>,
    name: &str,
    configs: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Arc<topics::Topic>> {
    if let Some(t) = topics.get(name) {
        return Ok(t);
    }
    loop {
        match topics.create_internal(name, 1, configs.clone()).await {
            Ok(t) => return Ok(t),
            Err(e) if e.code == kafka_protocol::ResponseError::RequestTimedOut.code() => {
                tracing::info!(reason = %e.message, "waiting for the controller to create {name}");
            }
            // A new cluster's membership has not reached this node yet.
            Err(e) if e.code == kafka_protocol::ResponseError::InvalidReplicationFactor.code() => {
                tracing::info!(reason = %e.message, "waiting for the controller to create {name}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // Another node created it meanwhile.
            Err(_) if topics.get(name).is_some() => {}
            Err(e) => anyhow::bail!("creating {name}: {}", e.message),
        }
        if let Some(t) = topics.get(name) {
            return Ok(t);
        }
    }
}

/// This node's replica of an internal topic (`__consumer_offsets`, `__transaction_state`),
/// which every node holds. A node without one (it joined a running cluster, or its replica
/// was moved off) asks for one to be added and waits for it.
async fn internal_replica(topics: &Arc<topics::Topics>, offsets: &Arc<topics::Topic>) -> Arc<partition::Partition> {
    let name = offsets.meta().name;
    let name = name.as_str();
    let me = topics.controller.node_id;
    let started = Instant::now();
    let mut asked = false;
    loop {
        if let Some(p) = offsets.partition(0) {
            return p;
        }
        let meta = topics.controller.meta();
        let record = meta.topics.get(name);
        let hosts = record.map(|r| r.hosts(0)).unwrap_or_default();
        let moving = record.map(|r| r.reassigning.contains_key(&0)).unwrap_or(false);
        if !hosts.contains(&me) && !moving && meta.nodes.contains_key(&me) {
            let mut target = record.and_then(|r| r.replicas.first().cloned()).unwrap_or_default();
            target.push(me);
            match moves::reassign(topics, name, 0, Some(target), true).await {
                Ok(()) => asked = true,
                Err(e) => tracing::info!(reason = %e.message, "asking for a replica of {name}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if asked && started.elapsed().as_millis() % 5000 < 500 {
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                "waiting for this node's replica of {name}"
            );
        }
    }
}

/// Records this node's addresses in the cluster metadata (retried until it is there).
async fn register_node(c: Arc<controller::Controller>, id: u64, info: meta::NodeInfo) {
    loop {
        if c.meta().nodes.get(&id) == Some(&info) {
            return;
        }
        let cmd = meta::Command::RegisterNode { id, info: info.clone() };
        match c.propose(&cmd, std::time::Duration::from_secs(5)).await {
            Ok(_) => tracing::info!(node = id, "node registered with the controller"),
            Err(e) => {
                tracing::debug!(error = %e, "node registration pending");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Expires group sessions every 100 ms and refreshes group metrics every second, until
/// the broker is dropped.
async fn group_clock(broker: std::sync::Weak<Broker>) {
    let mut n = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some(b) = broker.upgrade() else { return };
        b.follow_offsets_leadership().await;
        txn::coordinator::follow_leadership(&b).await;
        b.groups.tick().await;
        n += 1;
        if n.is_multiple_of(10) {
            txn::coordinator::tick(&b).await;
        }
        // Every 5 s, per replica: the transaction index saved if it changed (applying saves
        // it too, at most once a second), what DeleteRecords deleted removed, and the
        // last-stable-offset lag of partitions with transactions.
        if n.is_multiple_of(50) {
            for p in b.topics.all_partitions() {
                p.save_txn_index();
                // Replicas remove what DeleteRecords deleted on the leader.
                p.purge_deleted().await;
                if p.is_leader() && p.has_transactions() {
                    b.metrics
                        .lso_lag
                        .get_or_create(&metrics::PartitionLabels {
                            topic: p.topic.clone(),
                            partition: p.index,
                        })
                        .set(p.high_watermark() - p.last_stable_offset());
                }
            }
        }
        if n.is_multiple_of(10) {
            b.groups.refresh_metrics(&b.metrics, &b.topics).await;
        }
        if n.is_multiple_of(100) {
            if let Err(e) = b
                .groups
                .offsets
                .compact_if_larger_than(b.config.offsets_compact_bytes)
                .await
            {
                tracing::warn!(error = %e, "could not compact committed offsets");
            }
        }
    }
}

/// Whether clients may write to or delete this topic (internal topics are Keel's own).
pub fn is_internal_topic(name: &str) -> bool {
    name == group::offsets::OFFSETS_TOPIC || name == txn::coordinator::TXN_TOPIC
}

/// Allocates idempotent-producer ids that are never reused across restarts (ids are
/// handed out from blocks whose upper bound is persisted before the block is used) nor
/// across nodes (the low 10 bits are the node id).
pub struct ProducerIds {
    node_bits: i64,
    path: std::path::PathBuf,
    next: AtomicI64,
    limit: std::sync::Mutex<i64>,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

impl ProducerIds {
    /// Reads the block limit saved in `path` (none yet: start at 0). An unreadable or
    /// damaged file is an error that stops the node: starting from 0 again would hand out
    /// producer ids already in use, and the idempotence check could then answer a new
    /// producer's batch as a duplicate of another's, acknowledging a write never stored.
    fn open(path: &std::path::Path, node_id: i64) -> anyhow::Result<ProducerIds> {
        let start = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is damaged ({:?} is not a producer id block limit); restore it, or set it above every producer id this node handed out",
                    path.display(),
                    s.trim()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let ids = ProducerIds {
            node_bits: node_id & 0x3FF,
            path: path.to_path_buf(),
            next: AtomicI64::new(start),
            limit: std::sync::Mutex::new(start),
        };
        Ok(ids)
    }

    /// The next unused producer id.
    pub fn allocate(&self) -> anyhow::Result<i64> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        if id >= *limit {
            let new_limit = id + PRODUCER_ID_BLOCK;
            // Durable before any id of the block is handed out: file, rename and directory.
            keel_log::durable::replace_file(&self.path, new_limit.to_string().as_bytes())?;
            *limit = new_limit;
        }
        Ok((id << 10) | self.node_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Producer ids continue after the saved block limit across a restart; a damaged or
    /// unreadable limit file stops the node instead of starting again from 0.
    #[test]
    fn producer_ids_never_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producer_ids");
        let ids = ProducerIds::open(&path, 1).unwrap();
        let first = ids.allocate().unwrap();
        let second = ids.allocate().unwrap();
        assert!(second > first);
        drop(ids);
        let ids = ProducerIds::open(&path, 1).unwrap();
        assert!(ids.allocate().unwrap() > second, "an id was handed out twice");

        std::fs::write(&path, "12\u{0}garbage").unwrap();
        let err = ProducerIds::open(&path, 1).err().expect("a damaged file is refused");
        assert!(err.to_string().contains("damaged"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(ProducerIds::open(&path, 1).is_err(), "an empty file is refused");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(ProducerIds::open(&path, 1).is_err(), "an unreadable file is refused");
    }
}
