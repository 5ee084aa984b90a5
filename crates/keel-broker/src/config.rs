//! Broker configuration: one serde struct, validated once, settable from a TOML file,
//! flags and `KEEL_*` environment variables (the binary layers them).

use std::path::PathBuf;

use keel_log::LogConfig;
use serde::{Deserialize, Serialize};

/// When a partition's appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before acknowledging, shared by concurrent producers (group commit).
    Always,
    /// fsync every `fsync_interval_ms`; acknowledge after the write to the OS.
    Interval,
    /// Never fsync explicitly; the OS writes back when it will.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!("unknown fsync policy {other:?} (always, interval, never)")),
        }
    }
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// A Kafka listener's security protocol, as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProtocol {
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Connections speak TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Connections authenticate with SASL before any request but ApiVersions.
    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(format!(
                "unknown security protocol {s:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            )),
        }
    }
}

/// A Kafka listener besides the main one (`kafka_listen`), as Kafka's `listeners`,
/// `advertised.listeners` and `listener.security.protocol.map` describe one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The listener's name (clients that connect through it get every node's address on
    /// the listener of the same name in Metadata).
    pub name: String,
    /// Address to bind, host:port.
    pub listen: String,
    /// Its security protocol; defaults to the protocol its name spells (as Kafka's
    /// default `listener.security.protocol.map`).
    #[serde(default)]
    pub protocol: Option<SecurityProtocol>,
    /// host:port clients are told to connect to; defaults to the bound address.
    #[serde(default)]
    pub advertised: Option<String>,
}

impl ListenerConfig {
    /// Parses the `--listener` form `[NAME=]PROTOCOL://HOST:PORT[,advertised=HOST:PORT]`.
    pub fn parse(spec: &str) -> Result<ListenerConfig, String> {
        let (main, advertised) = match spec.split_once(",advertised=") {
            Some((m, a)) => (m, Some(a.to_string())),
            None => (spec, None),
        };
        let (name, rest) = match main.split_once('=') {
            Some((n, r)) => (Some(n.to_string()), r),
            None => (None, main),
        };
        let (protocol, listen) = rest
            .split_once("://")
            .ok_or_else(|| format!("listener {spec:?}: expected [NAME=]PROTOCOL://HOST:PORT"))?;
        let protocol: SecurityProtocol = protocol.parse()?;
        Ok(ListenerConfig {
            name: name.unwrap_or_else(|| protocol.as_str().to_string()),
            listen: listen.to_string(),
            protocol: Some(protocol),
            advertised,
        })
    }

    /// The listener's protocol: the configured one, or the one its name spells.
    pub fn protocol(&self) -> Result<SecurityProtocol, String> {
        match self.protocol {
            Some(p) => Ok(p),
            None => self.name.parse().map_err(|_| {
                format!(
                    "listener {:?}: its name is not a security protocol, so it needs `protocol`",
                    self.name
                )
            }),
        }
    }
}

/// Whether TLS listeners ask clients for certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Asked for; a client without one connects as ANONYMOUS (or authenticates with SASL).
    Requested,
    /// A certificate signed by `client_ca_file` is needed to connect.
    Required,
}

/// TLS for the Kafka listeners whose protocol is SSL or SASL_SSL, and for the HTTP
/// listener when `http_tls` is set. Files are PEM; they are read again when they change
/// (checked every `reload_interval_ms`), so certificates are renewed without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that client certificates must chain to (needed unless
    /// `client_auth` is none).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This node's id in Metadata.
    pub node_id: i32,
    /// Where the log and topic metadata live.
    pub data_dir: PathBuf,
    /// Kafka listener.
    pub kafka_listen: String,
    /// Host clients are told to connect to; defaults to the listener's host (an IPv4
    /// address: librdkafka may resolve `localhost` to `::1`).
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to; defaults to the listener's port.
    pub advertised_port: Option<u16>,
    /// The main Kafka listener's security protocol (its name is the protocol's). Defaults
    /// to SASL_PLAINTEXT when `sasl_plain_users` are set, else PLAINTEXT.
    pub kafka_protocol: Option<SecurityProtocol>,
    /// More Kafka listeners, each with its name, protocol and advertised address.
    pub listeners: Vec<ListenerConfig>,
    /// Certificates for TLS listeners (see [`TlsConfig`]).
    pub tls: Option<TlsConfig>,
    /// HTTP listener for `/metrics` and `/health`.
    pub http_listen: String,
    /// Serve the HTTP listener over TLS with the `tls` certificate.
    pub http_tls: bool,
    /// Speak mutual TLS on the node-to-node transport: every node presents the `tls`
    /// certificate and accepts only peers whose certificate `tls.client_ca_file` signed.
    pub transport_tls: bool,
    /// Reported in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// Create unknown topics on Metadata and Produce, as Kafka's `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    pub default_partitions: i32,
    /// Largest request frame accepted, bytes.
    pub request_bytes_max: usize,
    /// Open client connections beyond this are closed at accept.
    pub connections_max: usize,
    /// Open connections from one IP address beyond this are closed at accept (Kafka's
    /// `max.connections.per.ip`).
    pub connections_max_per_ip: usize,
    /// Open connections authenticated as one principal (SASL user or client certificate)
    /// beyond this are closed once they authenticate.
    pub connections_max_per_principal: usize,
    /// Connections on SASL listeners that have not authenticated yet, at most; each has
    /// 10 s to authenticate.
    pub unauthenticated_connections_max: usize,
    /// Bytes of requests being processed at once across all connections.
    pub inflight_bytes_max: usize,
    /// Largest record batch accepted in a Produce request (Kafka's `message.max.bytes`).
    pub message_bytes_max: usize,
    /// Default fsync policy of partitions; topics may override with `keel.fsync.policy`.
    pub fsync: FsyncPolicy,
    /// Period of the `interval` fsync policy.
    pub fsync_interval_ms: u64,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// Longest a Fetch waits for data, whatever the client asks.
    pub fetch_wait_ms_max: u64,
    /// Largest Fetch response, whatever the client asks.
    pub fetch_bytes_max: usize,
    /// How long a clean shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// How long a clean shutdown (SIGTERM) spends handing this node's leaderships to
    /// caught-up replicas on other nodes before it stops serving (0: no handover).
    pub shutdown_handover_ms: u64,
    /// How long a node may be unreachable before the controller moves its replicas onto
    /// live nodes (0: never; moves are then `keel cluster reassign`'s and drain's).
    pub replica_replace_after_ms: u64,
    /// The controller's leader moves replicas between nodes by itself to even out their
    /// replica counts (a node that joins takes its share; see [`crate::cluster::healing`]).
    pub balance_replicas: bool,
    /// With `balance_replicas`, how often the controller's leader compares the bytes the
    /// nodes hold, once their replica counts are even, and exchanges replicas between the
    /// fullest and the emptiest node (0: never).
    pub balance_disk_check_ms: u64,
    /// Nodes whose bytes differ by less than this (or a tenth of a node's mean, whichever
    /// is more) count as even.
    pub balance_disk_min_bytes: u64,
    /// A directory of `keel chaos run` outputs (one subdirectory per run, as
    /// `./keel-chaos/<seed>`): the admin API and the console list them and serve their
    /// reports.
    pub chaos_reports_dir: Option<String>,
    /// The byte rate this node sends to all replicas catching up in partition moves
    /// together (0: unthrottled), so that moves leave client traffic its bandwidth.
    pub move_throttle_bytes_per_s: u64,
    /// This node's rack (a zone, a room): partitions' replicas are spread over racks
    /// before nodes, and clients see it in Metadata (Kafka's `broker.rack`).
    pub rack: Option<String>,
    /// Whether a partition's leader sends a consumer that names its rack (`client.rack`)
    /// to an in-sync follower in that rack, which then serves its fetches (KIP-392, as
    /// Kafka's RackAwareReplicaSelector); true by default, and inert until nodes have racks.
    pub fetch_from_follower: bool,
    /// How long the first rebalance of an empty group waits for more members to join
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Segment size of the internal `__consumer_offsets` topic; small segments let the
    /// offsets snapshot drop old records early.
    pub offsets_segment_bytes: u64,
    /// Snapshot the committed offsets and drop older segments once the internal topic is
    /// larger than this.
    pub offsets_compact_bytes: u64,
    /// How often the log cleaner looks at compacted partitions (Kafka's
    /// `log.cleaner.backoff.ms`).
    pub log_cleaner_interval_ms: u64,
    /// Replicas of a new topic's partitions (capped at the number of nodes).
    pub default_replication_factor: i32,
    /// Node-to-node (Raft) listener; `None` runs a single node without one.
    pub raft_listen: Option<String>,
    /// Address other nodes reach this node's Raft listener at; defaults to `raft_listen`.
    pub advertised_raft: Option<String>,
    /// The cluster's voting nodes as `id@host:port` (Raft addresses), this node included
    /// unless it joins. Empty: this node alone.
    pub peers: Vec<String>,
    /// Join the running cluster of `peers` (whose controller voters they are) as a node
    /// that holds replicas but does not vote on metadata. Partitions come to it when they
    /// are reassigned to it.
    pub join: bool,
    /// Raft heartbeat period.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout: a follower that hears no leader for twice this (the leader's
    /// lease) plus a random time in [this, 2 x this] starts an election.
    pub raft_election_timeout_ms: u64,
    /// Serve `POST /fault/cut` and `/fault/heal` on the HTTP listener, which cut this node's
    /// links to other nodes (for chaos tests). Never enable in production.
    pub fault_injection: bool,
    /// The secret every node of a cluster holds (16 bytes or more): node-to-node
    /// connections prove they hold it (an HMAC challenge-response, see `keel_raft::auth`)
    /// before any Raft message or forwarded request is taken. Required with `peers` unless
    /// `insecure_transport`. Prefer `cluster_secret_file` or the `KEEL_CLUSTER_SECRET`
    /// environment variable to writing it here.
    pub cluster_secret: Option<Secret>,
    /// A file holding the cluster secret (its content, trimmed); read at start.
    pub cluster_secret_file: Option<PathBuf>,
    /// Runs a cluster's node-to-node transport without authentication. Any host that can
    /// reach the Raft port can then act as a node: only for a trusted, closed network.
    pub insecure_transport: bool,
    /// SASL/PLAIN users and their passwords. When any is set, every Kafka connection must
    /// authenticate (SaslHandshake, SaslAuthenticate) before any request but ApiVersions.
    /// PLAIN sends the password as it is: use it on trusted networks (TLS is not built yet).
    pub sasl_plain_users: std::collections::BTreeMap<String, String>,
    /// Authorize every request against the ACLs (CreateAcls, `keel acl`); without an ACL
    /// that allows it, a request is refused (Kafka's StandardAuthorizer).
    pub authorizer: bool,
    /// Principals allowed everything when the authorizer is on, e.g. `User:admin` or
    /// `User:CN=admin` (a client certificate's subject).
    pub super_users: Vec<String>,
    /// Allow what no ACL mentions (Kafka's `allow.everyone.if.no.acl.found`).
    pub allow_everyone_if_no_acl_found: bool,
    /// Audit log file (JSON lines: authentications, authorization denials, changes to
    /// topics, configs, ACLs, users and nodes); none when unset.
    pub audit_log: Option<PathBuf>,
    /// The audit log is rotated when it would pass this size.
    pub audit_log_max_bytes: u64,
    /// Rotated audit log files kept (`audit.log.1` the newest).
    pub audit_log_keep: usize,
    /// Default log settings of partitions.
    pub log: LogConfig,
}

/// A value kept out of logs, debug output and serialized configs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            data_dir: PathBuf::from("keel-data"),
            kafka_listen: "127.0.0.1:9092".into(),
            advertised_host: None,
            advertised_port: None,
            kafka_protocol: None,
            listeners: Vec::new(),
            tls: None,
            http_listen: "127.0.0.1:9644".into(),
            http_tls: false,
            transport_tls: false,
            cluster_id: "keel-cluster".into(),
            auto_create_topics: true,
            default_partitions: 1,
            request_bytes_max: keel_proto::frame::REQUEST_BYTES_MAX_DEFAULT,
            connections_max: 10_000,
            connections_max_per_ip: 1_000,
            connections_max_per_principal: 1_000,
            unauthenticated_connections_max: 1_000,
            inflight_bytes_max: 256 * 1024 * 1024,
            message_bytes_max: 16 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 1000,
            retention_check_ms: 60_000,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 64 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            shutdown_handover_ms: 15_000,
            replica_replace_after_ms: 300_000,
            balance_replicas: true,
            balance_disk_check_ms: 60_000,
            balance_disk_min_bytes: 1 << 30,
            chaos_reports_dir: None,
            move_throttle_bytes_per_s: 100 << 20,
            rack: None,
            fetch_from_follower: true,
            group_initial_rebalance_delay_ms: 1000,
            offsets_segment_bytes: 16 * 1024 * 1024,
            offsets_compact_bytes: 64 * 1024 * 1024,
            log_cleaner_interval_ms: 5_000,
            default_replication_factor: 3,
            raft_listen: None,
            advertised_raft: None,
            peers: Vec::new(),
            join: false,
            raft_heartbeat_ms: 50,
            raft_election_timeout_ms: 150,
            fault_injection: false,
            cluster_secret: None,
            cluster_secret_file: None,
            insecure_transport: false,
            sasl_plain_users: Default::default(),
            authorizer: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            audit_log: None,
            audit_log_max_bytes: 100 * 1024 * 1024,
            audit_log_keep: 10,
            log: LogConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// The peers as (node id, Raft address).
    pub fn parse_peers(&self) -> Result<Vec<(u64, String)>, String> {
        let mut out = Vec::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('@')
                .ok_or_else(|| format!("peer {p:?}: expected id@host:port"))?;
            let id: u64 = id.parse().map_err(|_| format!("peer {p:?}: bad node id"))?;
            if out.iter().any(|(i, _)| *i == id) {
                return Err(format!("peer id {id} appears twice"));
            }
            out.push((id, addr.to_string()));
        }
        Ok(out)
    }

    /// The main listener's protocol.
    pub fn main_protocol(&self) -> SecurityProtocol {
        self.kafka_protocol.unwrap_or(if self.sasl_plain_users.is_empty() {
            SecurityProtocol::Plaintext
        } else {
            SecurityProtocol::SaslPlaintext
        })
    }

    /// Every Kafka listener, the main one first, each with its protocol resolved.
    pub fn all_listeners(&self) -> Result<Vec<ListenerConfig>, String> {
        let main = self.main_protocol();
        let mut out = vec![ListenerConfig {
            name: main.as_str().to_string(),
            listen: self.kafka_listen.clone(),
            protocol: Some(main),
            advertised: None,
        }];
        for l in &self.listeners {
            out.push(ListenerConfig {
                protocol: Some(l.protocol()?),
                ..l.clone()
            });
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), String> {
        let listeners = self.all_listeners()?;
        for (i, l) in listeners.iter().enumerate() {
            let (name, listen, advertised) = (&l.name, &l.listen, &l.advertised);
            let protocol = l.protocol()?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("listener name {name:?}: letters, digits, '_' and '-' only"));
            }
            if listeners[..i].iter().any(|other| other.name == *name) {
                return Err(format!(
                    "two listeners are named {name:?} (the main listener is named after its protocol)"
                ));
            }
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("listener {name}: {listen:?}: {e}"))?;
            if let Some(a) = advertised {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(format!("listener {name}: advertised {a:?}: expected host:port"));
                }
            }
            if protocol.tls() && self.tls.is_none() {
                return Err(format!(
                    "listener {name} is {}: it needs [tls] cert_file and key_file",
                    protocol.as_str()
                ));
            }
        }
        if let Some(bad) = self
            .super_users
            .iter()
            .find(|p| !p.split_once(':').is_some_and(|(k, n)| !k.is_empty() && !n.is_empty()))
        {
            return Err(format!("super_users: {bad:?} is not TYPE:NAME (e.g. User:admin)"));
        }
        if self.transport_tls && self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
            return Err("transport_tls needs [tls] cert_file, key_file and client_ca_file (the cluster's CA)".into());
        }
        if self.http_tls && self.tls.is_none() {
            return Err("http_tls needs [tls] cert_file and key_file".into());
        }
        if let Some(t) = &self.tls {
            if t.client_auth != ClientAuth::None && t.client_ca_file.is_none() {
                return Err("tls.client_auth asks for client certificates: set tls.client_ca_file".into());
            }
            if t.reload_interval_ms == 0 {
                return Err("tls.reload_interval_ms must be positive".into());
            }
        }
        self.log.validate()?;
        if self.sasl_plain_users.keys().any(|u| u.is_empty() || u.contains('\0')) {
            return Err("sasl_plain_users: a user name is empty or holds a NUL byte".into());
        }
        if self.default_partitions < 1 {
            return Err("default_partitions must be at least 1".into());
        }
        if self.request_bytes_max < 1024 {
            return Err("request_bytes_max must be at least 1024".into());
        }
        if self.inflight_bytes_max < self.request_bytes_max {
            return Err("inflight_bytes_max must be at least request_bytes_max".into());
        }
        if self.connections_max == 0
            || self.connections_max_per_ip == 0
            || self.connections_max_per_principal == 0
            || self.unauthenticated_connections_max == 0
        {
            return Err(
                "connections_max, connections_max_per_ip, connections_max_per_principal and \
                        unauthenticated_connections_max must be positive"
                    .into(),
            );
        }
        if self.fsync_interval_ms == 0 {
            return Err("fsync_interval_ms must be positive".into());
        }
        if self.default_replication_factor < 1 {
            return Err("default_replication_factor must be at least 1".into());
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms <= self.raft_heartbeat_ms {
            return Err("raft_election_timeout_ms must exceed raft_heartbeat_ms, which must be positive".into());
        }
        let peers = self.parse_peers()?;
        if !peers.is_empty()
            && self.cluster_secret.is_none()
            && self.cluster_secret_file.is_none()
            && !self.insecure_transport
        {
            return Err("a cluster (peers) needs a cluster secret that every node holds: set \
                        KEEL_CLUSTER_SECRET, cluster_secret_file (--cluster-secret-file) or cluster_secret; \
                        insecure_transport = true runs without one on a trusted network"
                .into());
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return Err("cluster_secret must be at least 16 bytes".into());
        }
        if self.join && peers.is_empty() {
            return Err("join needs the peers of the cluster to join".into());
        }
        if !peers.is_empty() {
            let among = peers.iter().any(|(id, _)| *id == self.node_id as u64);
            if self.node_id < 0 || (!among && !self.join) {
                return Err(format!(
                    "node_id {} is not among the peers (to add a node to a running cluster, use join)",
                    self.node_id
                ));
            }
            if among && self.join {
                return Err(format!("node_id {} is a peer already: it does not join", self.node_id));
            }
            if self.raft_listen.is_none() {
                return Err("a node with peers needs raft_listen".into());
            }
        }
        self.kafka_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("kafka_listen {:?}: {e}", self.kafka_listen))?;
        self.http_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("http_listen {:?}: {e}", self.http_listen))?;
        Ok(())
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    #[test]
    fn listener_specs_parse_as_kafka_writes_them() {
        let l = ListenerConfig::parse("SASL_SSL://0.0.0.0:9094,advertised=kafka-0.example.com:9094").unwrap();
        assert_eq!(l.name, "SASL_SSL");
        assert_eq!(l.protocol(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!(l.advertised.as_deref(), Some("kafka-0.example.com:9094"));
        let l = ListenerConfig::parse("INTERNAL=plaintext://127.0.0.1:19092").unwrap();
        assert_eq!((l.name.as_str(), l.listen.as_str()), ("INTERNAL", "127.0.0.1:19092"));
        assert_eq!(l.protocol(), Ok(SecurityProtocol::Plaintext));
        assert!(ListenerConfig::parse("127.0.0.1:9092").is_err());
        assert!(ListenerConfig::parse("TLS://127.0.0.1:9092").is_err());
        let unnamed = ListenerConfig {
            name: "EXTERNAL".into(),
            listen: "127.0.0.1:0".into(),
            protocol: None,
            advertised: None,
        };
        assert!(unnamed.protocol().is_err());
    }

    #[test]
    fn listeners_are_checked_when_the_config_is() {
        let with = |l: &str| BrokerConfig {
            listeners: vec![ListenerConfig::parse(l).unwrap()],
            ..BrokerConfig::default()
        };
        assert_eq!(with("EXTERNAL=SASL_PLAINTEXT://127.0.0.1:0").validate(), Ok(()));
        // The main listener is PLAINTEXT already.
        assert!(with("PLAINTEXT://127.0.0.1:0").validate().is_err());
        // TLS needs a certificate.
        assert!(with("SSL://127.0.0.1:0").validate().unwrap_err().contains("cert_file"));
        assert!(with("SASL_SSL://127.0.0.1:0,advertised=nohost").validate().is_err());
        let mut tls = with("SSL://127.0.0.1:0");
        tls.tls = Some(TlsConfig {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            client_ca_file: None,
            client_auth: ClientAuth::Required,
            reload_interval_ms: 1000,
        });
        assert!(tls.validate().unwrap_err().contains("client_ca_file"));
        let default = BrokerConfig::default();
        assert_eq!(default.main_protocol(), SecurityProtocol::Plaintext);
        assert_eq!(default.all_listeners().unwrap().len(), 1);
    }
}
