//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub api: String,
    pub code: i16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub topic: String,
    pub partition: i32,
    pub replica: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<ApiLabels, Counter>,
    pub request_errors: Family<ErrorLabels, Counter>,
    pub request_seconds: Family<ApiLabels, Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub produced_records: Counter,
    pub produced_bytes: Counter,
    pub fetched_bytes: Counter,
    /// Fetched bytes this node served as a follower (KIP-392).
    pub follower_fetched_bytes: Counter,
    /// Fetches answered with a preferred read replica in the consumer's rack.
    pub fetch_redirects: Counter,
    pub connections: Gauge,
    pub connections_refused: Counter,
    pub malformed_requests: Counter,
    pub sasl_failures: Counter,
    /// Requests (or parts of requests) refused by the authorizer.
    pub authorization_denials: Counter,
    /// Produce and Fetch responses that asked the client to wait (client quotas).
    pub quota_throttled: Counter,
    /// Audit events dropped because the audit log's queue was full.
    pub audit_dropped: Counter,
    pub audit_write_failures: Counter,
    /// TLS handshakes that failed or timed out (connection closed).
    pub tls_handshake_failures: Counter,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    /// Node-to-node connections refused for failing the cluster-secret handshake.
    pub transport_auth_failures: Counter,
    pub partitions: Gauge,
    pub topics: Gauge,
    pub log_size_bytes: Family<PartitionLabels, Gauge>,
    pub fsync_seconds: Histogram,
    pub poisoned_partitions: Gauge,
    pub group_members_gauge: Family<GroupLabels, Gauge>,
    pub group_rebalances_total: Family<GroupLabels, Counter>,
    pub consumer_lag_gauge: Family<LagLabels, Gauge>,
    pub raft_term: Family<PartitionLabels, Gauge>,
    pub raft_leader: Family<PartitionLabels, Gauge>,
    pub leader_changes: Family<PartitionLabels, Counter>,
    pub replica_lag_entries: Family<ReplicaLabels, Gauge>,
    pub under_replicated: Family<PartitionLabels, Gauge>,
    pub under_replicated_partitions: Gauge,
    /// Set at each scrape: hosted partitions whose leader is not known alive here.
    pub leaderless_partitions: Gauge,
    /// Set at each scrape: the data directory's file system.
    pub disk_total_bytes: Gauge,
    pub disk_available_bytes: Gauge,
    /// Set at each scrape: 1 for a peer this node heard from lately, 0 otherwise.
    pub peer_up: Family<NodeLabels, Gauge>,
    /// Set at each scrape: 1 when `/health/ready` would answer 200.
    pub ready: Gauge,
    pub leaderless_seconds: Histogram,
    pub repaired_replicas: Counter,
    pub partition_moves: Gauge,
    pub partition_moves_done: Counter,
    /// Moves the controller started to replace replicas on nodes gone too long.
    pub self_healing_moves: Counter,
    pub replica_balance_moves: Counter,
    /// Leaderships handed to another node before this one stopped, by outcome.
    pub handovers: Family<OutcomeLabels, Counter>,
    pub quiet_leaders: Gauge,
    pub sleeping_followers: Gauge,
    pub transactions_ended: Family<OutcomeLabels, Counter>,
    pub transactions_timed_out: Counter,
    pub open_transactions: Gauge,
    pub oldest_open_transaction_seconds: Gauge,
    pub lso_lag: Family<PartitionLabels, Gauge>,
    pub cleaner_passes: Counter,
    pub cleaner_segments_rewritten: Counter,
    pub cleaner_reclaimed_bytes: Counter,
    pub cleaner_errors: Counter,
    pub cleaner_last_pass_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keel");
        let m = Metrics {
            requests: Family::default(),
            request_errors: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            produced_records: Counter::default(),
            produced_bytes: Counter::default(),
            fetched_bytes: Counter::default(),
            follower_fetched_bytes: Counter::default(),
            fetch_redirects: Counter::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            malformed_requests: Counter::default(),
            sasl_failures: Counter::default(),
            authorization_denials: Counter::default(),
            audit_dropped: Counter::default(),
            quota_throttled: Counter::default(),
            audit_write_failures: Counter::default(),
            tls_handshake_failures: Counter::default(),
            tls_reloads: Counter::default(),
            tls_reload_failures: Counter::default(),
            transport_auth_failures: Counter::default(),
            partitions: Gauge::default(),
            topics: Gauge::default(),
            log_size_bytes: Family::default(),
            fsync_seconds: latency_histogram(),
            poisoned_partitions: Gauge::default(),
            group_members_gauge: Family::default(),
            group_rebalances_total: Family::default(),
            consumer_lag_gauge: Family::default(),
            raft_term: Family::default(),
            raft_leader: Family::default(),
            leader_changes: Family::default(),
            replica_lag_entries: Family::default(),
            under_replicated: Family::default(),
            under_replicated_partitions: Gauge::default(),
            leaderless_partitions: Gauge::default(),
            disk_total_bytes: Gauge::default(),
            disk_available_bytes: Gauge::default(),
            peer_up: Family::default(),
            ready: Gauge::default(),
            leaderless_seconds: latency_histogram(),
            repaired_replicas: Counter::default(),
            partition_moves: Gauge::default(),
            partition_moves_done: Counter::default(),
            self_healing_moves: Counter::default(),
            replica_balance_moves: Counter::default(),
            handovers: Family::default(),
            quiet_leaders: Gauge::default(),
            sleeping_followers: Gauge::default(),
            transactions_ended: Family::default(),
            transactions_timed_out: Counter::default(),
            open_transactions: Gauge::default(),
            oldest_open_transaction_seconds: Gauge::default(),
            lso_lag: Family::default(),
            cleaner_passes: Counter::default(),
            cleaner_segments_rewritten: Counter::default(),
            cleaner_reclaimed_bytes: Counter::default(),
            cleaner_errors: Counter::default(),
            cleaner_last_pass_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Kafka requests handled, by API", m.requests.clone());
        registry.register(
            "request_errors",
            "Partition or topic errors returned, by API and Kafka error code",
            m.request_errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response, by API",
            m.request_seconds.clone(),
        );
        registry.register("network_received_bytes", "Request bytes received", m.bytes_in.clone());
        registry.register("network_sent_bytes", "Response bytes sent", m.bytes_out.clone());
        registry.register("produced_records", "Records appended", m.produced_records.clone());
        registry.register(
            "produced_bytes",
            "Record batch bytes appended",
            m.produced_bytes.clone(),
        );
        registry.register(
            "fetched_bytes",
            "Record batch bytes served to fetches",
            m.fetched_bytes.clone(),
        );
        registry.register(
            "follower_fetched_bytes",
            "Record batch bytes served to consumers by this node as a follower (KIP-392)",
            m.follower_fetched_bytes.clone(),
        );
        registry.register(
            "fetch_redirects",
            "Fetches a leader answered with a follower in the consumer's rack to read from",
            m.fetch_redirects.clone(),
        );
        registry.register("connections", "Open client connections", m.connections.clone());
        registry.register(
            "connections_refused",
            "Connections closed at accept because of connections_max",
            m.connections_refused.clone(),
        );
        registry.register(
            "malformed_requests",
            "Requests that could not be decoded (connection closed)",
            m.malformed_requests.clone(),
        );
        registry.register(
            "sasl_authentication_failures",
            "SASL authentications refused (connection closed)",
            m.sasl_failures.clone(),
        );
        registry.register(
            "authorization_denials",
            "Operations on resources refused by the ACL authorizer",
            m.authorization_denials.clone(),
        );
        registry.register(
            "quota_throttled_responses",
            "Produce and Fetch responses throttled by a client quota",
            m.quota_throttled.clone(),
        );
        registry.register(
            "audit_events_dropped",
            "Audit events dropped because the audit log's queue was full",
            m.audit_dropped.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written to the audit log file",
            m.audit_write_failures.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on Kafka and HTTP listeners that failed or did not finish in time",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Times changed TLS certificate files were read and put in force",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_certificate_reload_failures",
            "Times changed TLS certificate files could not be used (the previous ones stay)",
            m.tls_reload_failures.clone(),
        );
        registry.register(
            "transport_authentication_failures",
            "Node-to-node connections refused: the peer did not prove it holds the cluster secret, or spoke for another node",
            m.transport_auth_failures.clone(),
        );
        registry.register("partitions", "Partitions hosted", m.partitions.clone());
        registry.register("topics", "Topics hosted", m.topics.clone());
        registry.register(
            "log_size_bytes",
            "Bytes on disk per partition log",
            m.log_size_bytes.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Duration of each log fsync (one covers every append that preceded it)",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "poisoned_partitions",
            "Partitions refusing writes after an fsync or write failure",
            m.poisoned_partitions.clone(),
        );
        registry.register(
            "group_members",
            "Members of each consumer group",
            m.group_members_gauge.clone(),
        );
        registry.register(
            "group_rebalances",
            "Completed rebalances of each consumer group",
            m.group_rebalances_total.clone(),
        );
        registry.register(
            "consumer_lag",
            "Log end offset minus committed offset, per group and partition",
            m.consumer_lag_gauge.clone(),
        );
        registry.register("raft_term", "Raft term of each partition replica", m.raft_term.clone());
        registry.register(
            "raft_leader",
            "1 where this node leads the partition, else 0",
            m.raft_leader.clone(),
        );
        registry.register(
            "leader_changes",
            "Leader changes each partition replica has seen",
            m.leader_changes.clone(),
        );
        registry.register(
            "replica_lag_entries",
            "On a leader: entries each replica is behind the leader's log",
            m.replica_lag_entries.clone(),
        );
        registry.register(
            "under_replicated",
            "On a leader: 1 where a replica is missing or behind",
            m.under_replicated.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Partitions this node leads with a replica missing or behind",
            m.under_replicated_partitions.clone(),
        );
        registry.register(
            "partition_moves_in_progress",
            "Partition moves (reassignments) the cluster has in progress",
            m.partition_moves.clone(),
        );
        registry.register(
            "partition_moves_completed",
            "Partition moves this node carried out as the partition's leader",
            m.partition_moves_done.clone(),
        );
        registry.register(
            "self_healing_moves",
            "Partition moves this node, as the controller's leader, started to replace replicas on nodes unreachable longer than replica_replace_after_ms",
            m.self_healing_moves.clone(),
        );
        registry.register(
            "replica_balance_moves",
            "Partition moves this node, as the controller's leader, started to even out the nodes' replica counts",
            m.replica_balance_moves.clone(),
        );
        registry.register(
            "leaderless_partitions",
            "Partitions hosted here whose leader this node does not know to be alive",
            m.leaderless_partitions.clone(),
        );
        registry.register(
            "disk_total_bytes",
            "Size of the file system holding the data directory",
            m.disk_total_bytes.clone(),
        );
        registry.register(
            "disk_available_bytes",
            "Bytes available to Keel on the file system holding the data directory",
            m.disk_available_bytes.clone(),
        );
        registry.register(
            "peer_up",
            "1 for a cluster peer this node heard from within the liveness window, 0 otherwise",
            m.peer_up.clone(),
        );
        registry.register(
            "ready",
            "1 when the node is caught up and serving (as /health/ready answers 200), 0 otherwise",
            m.ready.clone(),
        );
        registry.register(
            "leadership_handovers",
            "Group leaderships this node handed to another before it stopped (outcome: moved, or not_moved when no caught-up replica took over in time)",
            m.handovers.clone(),
        );
        registry.register(
            "raft_quiet_leaders",
            "Replicas on this node leading an idle group quietly (heartbeats and timers off)",
            m.quiet_leaders.clone(),
        );
        registry.register(
            "raft_sleeping_followers",
            "Replicas on this node following a quiet leader with their election timer off",
            m.sleeping_followers.clone(),
        );
        registry.register(
            "leaderless_duration_seconds",
            "How long a replica saw its partition without a leader (election time)",
            m.leaderless_seconds.clone(),
        );
        registry.register(
            "repaired_replicas",
            "Partition replicas whose log failed a checksum at open and was cut back to re-fetch",
            m.repaired_replicas.clone(),
        );
        registry.register(
            "transactions_ended",
            "Transactions this node's coordinator completed, by outcome (commit, abort)",
            m.transactions_ended.clone(),
        );
        registry.register(
            "transactions_timed_out",
            "Transactions the coordinator aborted because they ran past their timeout",
            m.transactions_timed_out.clone(),
        );
        registry.register(
            "open_transactions",
            "Transactions ongoing at this node's coordinator",
            m.open_transactions.clone(),
        );
        registry.register(
            "oldest_open_transaction_seconds",
            "Age of the oldest ongoing transaction at this node's coordinator (a hanging transaction grows it)",
            m.oldest_open_transaction_seconds.clone(),
        );
        registry.register(
            "last_stable_offset_lag",
            "High watermark minus last stable offset of each partition this node leads (records read_committed consumers wait for)",
            m.lso_lag.clone(),
        );
        registry.register(
            "cleaner_passes",
            "Log cleaner passes over compacted partitions that cleaned something",
            m.cleaner_passes.clone(),
        );
        registry.register(
            "cleaner_segments_rewritten",
            "Segments of compacted partitions the log cleaner rewrote",
            m.cleaner_segments_rewritten.clone(),
        );
        registry.register(
            "cleaner_reclaimed_bytes",
            "Bytes the log cleaner freed in compacted partitions",
            m.cleaner_reclaimed_bytes.clone(),
        );
        registry.register(
            "cleaner_errors",
            "Log cleaner passes that failed (the partition is left as it was)",
            m.cleaner_errors.clone(),
        );
        registry.register(
            "cleaner_last_pass_seconds",
            "How long the log cleaner's last round over this node's compacted partitions took",
            m.cleaner_last_pass_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn transactions_completed(&self, commit: bool) -> Counter {
        self.transactions_ended
            .get_or_create(&OutcomeLabels {
                outcome: if commit { "commit" } else { "abort" }.to_string(),
            })
            .clone()
    }

    /// Counts a handover's outcome.
    pub fn handover(&self, moved: u64, not_moved: u64) {
        for (outcome, n) in [("moved", moved), ("not_moved", not_moved)] {
            self.handovers
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn log_size(&self, topic: &str, partition: i32) -> Gauge {
        self.log_size_bytes
            .get_or_create(&PartitionLabels {
                topic: topic.to_string(),
                partition,
            })
            .clone()
    }

    pub fn group_members(&self, group: &str) -> Gauge {
        self.group_members_gauge
            .get_or_create(&GroupLabels {
                group: group.to_string(),
            })
            .clone()
    }

    pub fn group_rebalances(&self, group: &str) -> Counter {
        self.group_rebalances_total
            .get_or_create(&GroupLabels {
                group: group.to_string(),
            })
            .clone()
    }

    pub fn consumer_lag(&self, group: &str, topic: &str, partition: i32) -> Gauge {
        self.consumer_lag_gauge
            .get_or_create(&LagLabels {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
            })
            .clone()
    }

    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let l = PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        self.log_size_bytes.remove(&l);
        self.raft_term.remove(&l);
        self.raft_leader.remove(&l);
        self.leader_changes.remove(&l);
        self.lso_lag.remove(&l);
        if self.under_replicated.get_or_create(&l).get() > 0 {
            self.under_replicated_partitions.dec();
        }
        self.under_replicated.remove(&l);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}
