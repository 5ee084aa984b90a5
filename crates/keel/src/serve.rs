//! `keel serve`: layered configuration, listeners, signals, clean shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use keel_broker::{Broker, BrokerConfig, FsyncPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (see config/keel.example.toml).
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./keel-data].
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener address [default: 127.0.0.1:9092]; port 0 picks a free port.
    #[arg(long, env = "KEEL_KAFKA_LISTEN")]
    pub kafka_listen: Option<String>,
    /// The main Kafka listener's security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or
    /// SASL_SSL [default: PLAINTEXT, or SASL_PLAINTEXT with SASL/PLAIN users].
    #[arg(long, env = "KEEL_KAFKA_PROTOCOL")]
    pub kafka_protocol: Option<keel_broker::config::SecurityProtocol>,
    /// Another Kafka listener: [NAME=]PROTOCOL://HOST:PORT[,advertised=HOST:PORT]
    /// (repeatable), e.g. SASL_SSL://0.0.0.0:9094,advertised=kafka-0.example.com:9094.
    #[arg(long = "listener", env = "KEEL_LISTENERS", value_delimiter = ';')]
    pub listeners: Vec<String>,
    /// PEM certificate chain for SSL and SASL_SSL listeners (and --http-tls).
    #[arg(long, env = "KEEL_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "KEEL_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to (mTLS).
    #[arg(long, env = "KEEL_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Client certificates: none, requested or required.
    #[arg(long, env = "KEEL_TLS_CLIENT_AUTH")]
    pub tls_client_auth: Option<String>,
    /// Authorize every request against the ACLs (no ACL: no access, but for super users).
    #[arg(long, env = "KEEL_AUTHORIZER")]
    pub authorizer: bool,
    /// Principals allowed everything, comma-separated (e.g. User:admin,User:CN=ops).
    #[arg(long, env = "KEEL_SUPER_USERS", value_delimiter = ',')]
    pub super_users: Option<Vec<String>>,
    /// Audit log file (JSON lines), rotated by size.
    #[arg(long, env = "KEEL_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Serve the HTTP listener over TLS.
    #[arg(long, env = "KEEL_HTTP_TLS")]
    pub http_tls: bool,
    /// Mutual TLS between nodes (the --tls-cert-file certificate, peers' certificates
    /// signed by --tls-client-ca-file).
    #[arg(long, env = "KEEL_TRANSPORT_TLS")]
    pub transport_tls: bool,
    /// HTTP listener for /metrics and /health [default: 127.0.0.1:9644].
    #[arg(long, env = "KEEL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Host advertised to clients in Metadata.
    #[arg(long, env = "KEEL_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Port advertised to clients in Metadata.
    #[arg(long, env = "KEEL_ADVERTISED_PORT")]
    pub advertised_port: Option<u16>,
    /// This node's id.
    #[arg(long, env = "KEEL_NODE_ID")]
    pub node_id: Option<i32>,
    /// fsync policy: always (before acknowledging, group commit), interval, never.
    #[arg(long, env = "KEEL_FSYNC")]
    pub fsync: Option<FsyncPolicy>,
    /// Create unknown topics on Metadata and Produce.
    #[arg(long, env = "KEEL_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics.
    #[arg(long, env = "KEEL_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Largest request frame, bytes.
    #[arg(long, env = "KEEL_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// Segment size of new logs, bytes.
    #[arg(long, env = "KEEL_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Node-to-node (Raft) listener, e.g. 127.0.0.1:9093; needed with --peers.
    #[arg(long, env = "KEEL_RAFT_LISTEN")]
    pub raft_listen: Option<String>,
    /// Address other nodes reach this node's Raft listener at [default: --raft-listen].
    #[arg(long, env = "KEEL_ADVERTISED_RAFT")]
    pub advertised_raft: Option<String>,
    /// The cluster's voting nodes, this one included: id@host:port,... (their Raft listeners).
    #[arg(long, env = "KEEL_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Join the running cluster of --peers (its controller voters) as a node that holds
    /// replicas but does not vote on metadata; --node-id must be new to the cluster.
    #[arg(long, env = "KEEL_JOIN")]
    pub join: bool,
    /// Replicas of new topics' partitions [default: 3, capped at the number of nodes].
    #[arg(long, env = "KEEL_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    /// The cluster secret every node holds (16 bytes or more); node-to-node connections
    /// prove it before any Raft message. Prefer the environment variable to the flag.
    #[arg(long, env = "KEEL_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret.
    #[arg(long, env = "KEEL_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// Run a cluster's node-to-node transport without authentication (trusted networks only).
    #[arg(long, env = "KEEL_INSECURE_TRANSPORT")]
    pub insecure_transport: bool,
    /// Serve POST /fault/cut?peers=.. and /fault/heal (chaos tests only).
    #[arg(long, env = "KEEL_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// How long SIGTERM spends handing leaderships to other nodes before stopping (0: none).
    #[arg(long, env = "KEEL_SHUTDOWN_HANDOVER_MS")]
    pub shutdown_handover_ms: Option<u64>,
    /// How long a node may be unreachable before its replicas move to live nodes (0: never).
    #[arg(long, env = "KEEL_REPLICA_REPLACE_AFTER_MS")]
    pub replica_replace_after_ms: Option<u64>,
    /// Whether the controller moves replicas by itself to even out the nodes' replica
    /// counts (true by default).
    #[arg(long, env = "KEEL_BALANCE_REPLICAS")]
    pub balance_replicas: Option<bool>,
    /// How often the bytes the nodes hold are compared for disk balancing, ms (0: never)
    /// [default: 60000].
    #[arg(long, env = "KEEL_BALANCE_DISK_CHECK_MS")]
    pub balance_disk_check_ms: Option<u64>,
    /// Nodes whose bytes differ by less than this (or a tenth of the mean) count as even
    /// [default: 1073741824].
    #[arg(long, env = "KEEL_BALANCE_DISK_MIN_BYTES")]
    pub balance_disk_min_bytes: Option<u64>,
    /// Bytes per second this node sends to replicas catching up in partition moves, all
    /// together (0: unthrottled) [default: 104857600].
    #[arg(long, env = "KEEL_MOVE_THROTTLE_BYTES_PER_S")]
    pub move_throttle_bytes_per_s: Option<u64>,
    /// A directory of `keel chaos run` outputs (e.g. ./keel-chaos) the console lists.
    #[arg(long, env = "KEEL_CHAOS_REPORTS")]
    pub chaos_reports: Option<String>,
    /// This node's rack or zone (Kafka's broker.rack): replicas spread over racks first.
    #[arg(long, env = "KEEL_RACK")]
    pub rack: Option<String>,
    /// Whether leaders send consumers that set client.rack to an in-sync follower in their
    /// rack (KIP-392) [default: true].
    #[arg(long, env = "KEEL_FETCH_FROM_FOLLOWER")]
    pub fetch_from_follower: Option<bool>,
    /// Log level filter (tracing syntax), e.g. info or keel_broker=debug.
    #[arg(long, env = "KEEL_LOG", default_value = "info,openraft=off")]
    pub log: String,
}

/// Defaults, then the file, then environment and flags.
pub fn load_config(args: &ServeArgs) -> Result<BrokerConfig> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<BrokerConfig>(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &args.kafka_listen {
        c.kafka_listen = v.clone();
    }
    if let Some(v) = &args.http_listen {
        c.http_listen = v.clone();
    }
    if let Some(v) = args.kafka_protocol {
        c.kafka_protocol = Some(v);
    }
    for spec in args.listeners.iter().filter(|s| !s.is_empty()) {
        c.listeners
            .push(keel_broker::config::ListenerConfig::parse(spec).map_err(anyhow::Error::msg)?);
    }
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let mut t = c.tls.take().unwrap_or(keel_broker::config::TlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: None,
                client_auth: Default::default(),
                reload_interval_ms: 10_000,
            });
            t.cert_file = cert.clone();
            t.key_file = key.clone();
            c.tls = Some(t);
        }
        (None, None) => {}
        _ => anyhow::bail!("--tls-cert-file and --tls-key-file go together"),
    }
    if let Some(t) = c.tls.as_mut() {
        if let Some(ca) = &args.tls_client_ca_file {
            t.client_ca_file = Some(ca.clone());
        }
        if let Some(auth) = &args.tls_client_auth {
            t.client_auth = match auth.as_str() {
                "none" => keel_broker::config::ClientAuth::None,
                "requested" => keel_broker::config::ClientAuth::Requested,
                "required" => keel_broker::config::ClientAuth::Required,
                other => anyhow::bail!("--tls-client-auth {other:?}: none, requested or required"),
            };
        }
    } else if args.tls_client_ca_file.is_some() || args.tls_client_auth.is_some() {
        anyhow::bail!("--tls-client-ca-file and --tls-client-auth need --tls-cert-file and --tls-key-file");
    }
    if args.http_tls {
        c.http_tls = true;
    }
    if args.transport_tls {
        c.transport_tls = true;
    }
    if args.authorizer {
        c.authorizer = true;
    }
    if let Some(v) = &args.audit_log {
        c.audit_log = Some(v.clone());
    }
    if let Some(v) = &args.super_users {
        c.super_users = v.iter().filter(|p| !p.is_empty()).cloned().collect();
    }
    if let Some(v) = &args.advertised_host {
        c.advertised_host = Some(v.clone());
    }
    if let Some(v) = args.advertised_port {
        c.advertised_port = Some(v);
    }
    if let Some(v) = args.node_id {
        c.node_id = v;
    }
    if let Some(v) = args.fsync {
        c.fsync = v;
    }
    if let Some(v) = args.auto_create_topics {
        c.auto_create_topics = v;
    }
    if let Some(v) = args.default_partitions {
        c.default_partitions = v;
    }
    if let Some(v) = args.request_bytes_max {
        c.request_bytes_max = v;
    }
    if let Some(v) = args.segment_bytes {
        c.log.segment_bytes = v;
    }
    if let Some(v) = &args.raft_listen {
        c.raft_listen = Some(v.clone());
    }
    if let Some(v) = &args.advertised_raft {
        c.advertised_raft = Some(v.clone());
    }
    if let Some(v) = &args.peers {
        c.peers = v.iter().filter(|p| !p.is_empty()).cloned().collect();
    }
    if let Some(v) = args.replication_factor {
        c.default_replication_factor = v;
    }
    if args.join {
        c.join = true;
    }
    if args.fault_injection {
        c.fault_injection = true;
    }
    if let Some(v) = args.shutdown_handover_ms {
        c.shutdown_handover_ms = v;
    }
    if let Some(v) = args.balance_replicas {
        c.balance_replicas = v;
    }
    if let Some(v) = args.balance_disk_check_ms {
        c.balance_disk_check_ms = v;
    }
    if let Some(v) = args.balance_disk_min_bytes {
        c.balance_disk_min_bytes = v;
    }
    if let Some(v) = args.move_throttle_bytes_per_s {
        c.move_throttle_bytes_per_s = v;
    }
    if let Some(v) = &args.chaos_reports {
        c.chaos_reports_dir = Some(v.clone());
    }
    if let Some(v) = &args.rack {
        c.rack = Some(v.clone());
    }
    if let Some(v) = args.fetch_from_follower {
        c.fetch_from_follower = v;
    }
    if let Some(v) = args.replica_replace_after_ms {
        c.replica_replace_after_ms = v;
    }
    if let Some(v) = &args.cluster_secret {
        c.cluster_secret = Some(keel_broker::config::Secret(v.clone()));
    }
    if let Some(v) = &args.cluster_secret_file {
        c.cluster_secret_file = Some(v.clone());
    }
    if args.insecure_transport {
        c.insecure_transport = true;
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(c)
}

/// Every partition replica keeps its active segment open, so a node hosting tens of
/// thousands of replicas needs more descriptors than the usual soft limit of 1,024: the
/// soft limit goes up to the hard limit, as Kafka's and Redpanda's guides ask operators
/// to do by hand.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => warn!(error = %e, "could not raise the open file limit"),
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = load_config(&args)?;
    raise_open_file_limit();
    let listener = TcpListener::bind(&config.kafka_listen)
        .await
        .with_context(|| format!("binding {}", config.kafka_listen))?;
    let http = TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("binding {}", config.http_listen))?;
    let kafka_addr = listener.local_addr()?;
    let http_addr = http.local_addr()?;
    let mut bound = std::collections::BTreeMap::new();
    bound.insert(config.main_protocol().as_str().to_string(), kafka_addr);
    let mut more = Vec::new();
    for l in &config.listeners {
        let t = TcpListener::bind(&l.listen)
            .await
            .with_context(|| format!("binding listener {} at {}", l.name, l.listen))?;
        bound.insert(l.name.clone(), t.local_addr()?);
        more.push((l.name.clone(), t));
    }
    let broker = Broker::open_bound(config, &bound).await?;
    info!(data_dir = %broker.config.data_dir.display(), fsync = broker.config.fsync.as_str(), "broker opened");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let http_task = tokio::spawn(keel_broker::http::serve(http, broker.clone(), shutdown_rx.clone()));
    tokio::spawn(retention_loop(broker.clone(), shutdown_rx.clone()));
    {
        let broker = broker.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            let within = Duration::from_millis(broker.config.shutdown_handover_ms);
            // A single node has no one to hand anything to.
            let alone = broker.topics.node_ids().len() <= 1;
            if !within.is_zero() && !alone {
                info!(?within, "shutdown requested: handing leaderships over");
                keel_broker::cluster::handover::hand_over_all(&broker.topics, within).await;
            }
            info!("shutdown requested: finishing in-flight requests");
            let _ = shutdown_tx.send(true);
        });
    }
    let shared = keel_broker::server::Shared::new(&broker);
    let mut ready = format!("keel ready: kafka={kafka_addr} http={http_addr}");
    for (name, t) in more {
        ready.push_str(&format!(" listener.{name}={}", t.local_addr()?));
        let (b, shared, sd) = (broker.clone(), shared.clone(), shutdown_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = keel_broker::server::run_listener(b, &name, t, shared, sd).await {
                tracing::error!(listener = %name, error = %e, "listener stopped");
            }
        });
    }
    // The line tests and scripts wait for; printed after every listener is bound.
    println!("{ready}");

    let main = broker.main_listener.clone();
    keel_broker::server::run_listener(broker.clone(), &main, listener, shared, shutdown_rx).await?;
    broker.sync_all().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    info!("stopped cleanly");
    Ok(())
}

async fn retention_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(broker.config.retention_check_ms.max(100));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let now = keel_log::disk::now_ms();
        for p in broker.topics.all_partitions() {
            p.apply_retention(now).await;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example config parses and states exactly the built-in defaults.
    #[test]
    fn example_config_is_the_defaults() {
        let text = include_str!("../../../config/keel.example.toml");
        let parsed: BrokerConfig = toml::from_str(text).expect("example config parses");
        assert_eq!(parsed, BrokerConfig::default());
    }

    /// Flags override the file; invalid combinations are refused.
    #[test]
    fn flags_override_file_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "node_id = 3\nfsync = \"never\"\n[log]\nsegment_bytes = 4096\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            fsync: Some(FsyncPolicy::Interval),
            ..Default::default()
        };
        let c = load_config(&args).unwrap();
        assert_eq!(
            (c.node_id, c.fsync, c.log.segment_bytes),
            (3, FsyncPolicy::Interval, 4096)
        );
        let bad = ServeArgs {
            config: Some(path),
            default_partitions: Some(0),
            ..Default::default()
        };
        assert!(load_config(&bad).is_err());
        std::fs::write(dir.path().join("typo.toml"), "nod_id = 1\n").unwrap();
        let typo = ServeArgs {
            config: Some(dir.path().join("typo.toml")),
            ..Default::default()
        };
        assert!(load_config(&typo).is_err(), "unknown keys are refused");
    }
}
