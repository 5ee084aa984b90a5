//! The topics of the cluster and this node's replicas of their partitions.
//!
//! Topic metadata lives in the controller (see [`crate::cluster::controller`]): creating, growing,
//! altering or deleting a topic proposes a command there and waits until this node has
//! applied it. Applying commands (on every node, in log order, also when the controller's
//! log is replayed at start) opens or closes the partition replicas assigned to this node,
//! each a Raft group whose log lives in `<data_dir>/topics/<name>/<partition>/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kafka_protocol::ResponseError as E;
use keel_log::DiskLog;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::cluster::controller::Controller;
use crate::cluster::meta::{Command, Event, TopicRecord};
use crate::cluster::partition::{Partition, ReplicaContext};
use crate::cluster::topic_config::{self, TopicSettings};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: i32 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    /// Replica node ids per partition; the first is the preferred leader.
    #[serde(default)]
    pub replicas: Vec<Vec<u64>>,
}

pub struct Topic {
    pub meta: RwLock<TopicMeta>,
    /// This node's replicas, by partition index.
    pub partitions: RwLock<BTreeMap<i32, Arc<Partition>>>,
}

impl Topic {
    pub fn meta(&self) -> TopicMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This node's replica of partition `index`, if it hosts one.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned()
    }

    /// This node's replicas of the topic's partitions.
    pub fn partition_list(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// An admin operation's failure: a Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub code: i16,
    pub message: String,
}

impl AdminError {
    pub(crate) fn new(e: E, message: impl Into<String>) -> AdminError {
        AdminError {
            code: e.code(),
            message: message.into(),
        }
    }
}

pub struct Topics {
    dir: PathBuf,
    pub(crate) config: Arc<BrokerConfig>,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub(crate) replica: ReplicaContext,
    /// Partitions whose move this node (as their leader) is carrying out.
    pub(crate) moving: std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>,
    pub controller: Arc<Controller>,
    /// Controller index up to which this node's replicas match the metadata.
    reconciled: watch::Sender<u64>,
    /// The node hands its leaderships over before it stops: it takes none back.
    draining: std::sync::atomic::AtomicBool,
    /// When disk balancing last gathered the partitions' sizes (see [`crate::cluster::healing`]).
    pub(crate) disk_checked: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long an admin operation waits for the controller.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Replicas opened at once when a topic is created or a node starts.
const OPEN_CONCURRENCY: usize = 8;

impl Topics {
    /// Starts applying the controller's topic commands to this node's replicas.
    pub fn start(
        config: Arc<BrokerConfig>,
        metrics: Arc<Metrics>,
        replica: ReplicaContext,
        controller: Arc<Controller>,
    ) -> anyhow::Result<Arc<Topics>> {
        let dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&dir)?;
        let events = controller
            .take_events()
            .ok_or_else(|| anyhow::anyhow!("the controller's events are already taken"))?;
        let topics = Arc::new(Topics {
            dir,
            config,
            map: RwLock::new(BTreeMap::new()),
            metrics,
            admin: tokio::sync::Mutex::new(()),
            disk_checked: std::sync::Mutex::new(None),
            replica,
            moving: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            controller,
            reconciled: watch::Sender::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(reconcile(Arc::downgrade(&topics), events));
        tokio::spawn(balance_leaders(Arc::downgrade(&topics), Duration::from_secs(2)));
        tokio::spawn(crate::cluster::moves::drive_moves(
            Arc::downgrade(&topics),
            Duration::from_millis(250),
        ));
        tokio::spawn(repair_damaged(Arc::downgrade(&topics), Duration::from_millis(500)));
        tokio::spawn(crate::cluster::healing::heal(
            Arc::downgrade(&topics),
            Duration::from_secs(1),
        ));
        tokio::spawn(clean_on_interval(
            Arc::downgrade(&topics),
            topics.metrics.clone(),
            Duration::from_millis(topics.config.log_cleaner_interval_ms),
        ));
        tokio::spawn(sync_on_interval(
            Arc::downgrade(&topics),
            Duration::from_millis(topics.config.fsync_interval_ms),
        ));
        Ok(topics)
    }

    /// Waits until this node has applied the controller's commands up to `index`.
    pub async fn wait_reconciled(&self, index: u64, timeout: Duration) -> Result<(), AdminError> {
        let mut rx = self.reconciled.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index)).await,
            Ok(Ok(_))
        );
        if done {
            Ok(())
        } else {
            Err(AdminError::new(
                E::RequestTimedOut,
                "topic change not applied on this node in time",
            ))
        }
    }

    /// The controller index up to which this node's replicas match the metadata.
    pub fn reconciled_index(&self) -> u64 {
        *self.reconciled.borrow()
    }

    /// Waits until this node has applied everything the controller had applied when called
    /// (its topics are complete as far as this node knows).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), AdminError> {
        let index = self.controller.meta().applied_index;
        self.wait_reconciled(index, timeout).await
    }

    async fn apply_event(&self, ev: Event) {
        if !ev.applies {
            return;
        }
        match (&ev.command, ev.topic) {
            (Command::DeleteTopic { name }, Some(deleted)) => self.remove_topic(name, deleted.id).await,
            (
                Command::CreateTopic { name, .. }
                | Command::AddPartitions { name, .. }
                | Command::AlterConfigs { name, .. }
                | Command::Reassign { name, .. }
                | Command::CompleteReassignment { name, .. },
                Some(at),
            ) => {
                // Work from the latest metadata: while the controller's log is replayed at
                // start, later commands may already have moved the topic's partitions, or
                // deleted the topic (and perhaps created another of the same name).
                let latest = self.controller.meta().topics.get(name).cloned();
                match latest {
                    Some(latest) if latest.id == at.id => {
                        if let Err(e) = self.sync_topic(name, latest).await {
                            tracing::error!(topic = %name, error = %format!("{e:#}"), "could not apply the topic change");
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The Raft ids (see [`keel_raft::replica_id`]) and transport addresses of `nodes`'
    /// replicas of partition `p`.
    pub(crate) fn members(&self, record: &TopicRecord, p: i32, nodes: &[u64]) -> BTreeMap<u64, keel_raft::Node> {
        let meta = self.controller.meta();
        nodes
            .iter()
            .map(|id| {
                let addr = meta
                    .nodes
                    .get(id)
                    .map(|n| n.raft_addr.clone())
                    .or_else(|| self.controller.bootstrap.get(id).map(|n| n.addr.clone()))
                    .unwrap_or_default();
                (record.replica_id(p, *id), keel_raft::Node { addr })
            })
            .collect()
    }

    /// Makes this node's replicas of topic `name` match `record`: opens the partitions it
    /// is to host (those added to it by a move wait for their leader rather than
    /// initializing), closes and deletes those moved off it, and applies the configs.
    async fn sync_topic(&self, name: &str, record: TopicRecord) -> anyhow::Result<()> {
        let settings =
            topic_config::settings(&self.config, &record.configs).map_err(|e| anyhow::anyhow!("topic {name}: {e}"))?;
        let me = self.replica.node_id;
        let existing = self.get(name).filter(|t| t.meta().id == record.id);
        if existing.is_none() {
            self.claim_dir(name, record.id)?;
        }
        let mut opened = BTreeMap::new();
        let mut gone = Vec::new();
        let mut to_open = Vec::new();
        for (p, replicas) in record.replicas.iter().enumerate() {
            let p = p as i32;
            let hosted = existing.as_ref().and_then(|t| t.partition(p));
            if record.hosts(p).contains(&me) {
                match hosted {
                    Some(part) if part.replica_id() == record.replica_id(p, me) => {
                        part.set_preferred_leader(replicas.first().map(|n| record.replica_id(p, *n)))
                    }
                    Some(old) => {
                        // Moved off this node and back (metadata read after both moves): the
                        // old incarnation goes, the new one starts empty.
                        if let Some(t) = &existing {
                            t.partitions.write().unwrap_or_else(|e| e.into_inner()).remove(&p);
                        }
                        old.close().await;
                        old.forget_vote();
                        let part = self.open_partition(name, p, &settings, &record).await?;
                        opened.insert(p, part);
                    }
                    None => to_open.push(p),
                }
            } else {
                gone.push(p);
            }
        }
        // New replicas open side by side: most of an opening is waiting on fsyncs (the
        // log's files, the vote, the first entry), so a topic of thousands of partitions,
        // or a node restarting with tens of thousands of replicas, opens in seconds.
        let mut opening = futures::stream::iter(to_open.into_iter().map(|p| {
            let (settings, record) = (&settings, &record);
            async move { (p, self.open_partition(name, p, settings, record).await) }
        }))
        .buffer_unordered(OPEN_CONCURRENCY);
        let mut failed = None;
        while let Some((p, r)) = opening.next().await {
            match r {
                Ok(part) => {
                    opened.insert(p, part);
                }
                Err(e) => failed = Some(e),
            }
        }
        drop(opening);
        if let Some(e) = failed {
            for part in opened.values() {
                part.close().await;
            }
            return Err(e);
        }
        for p in gone {
            let part = existing
                .as_ref()
                .and_then(|t| t.partitions.write().unwrap_or_else(|e| e.into_inner()).remove(&p));
            if let Some(part) = part {
                part.close().await;
                part.forget_vote();
            }
            let dir = self.topic_dir(name).join(p.to_string());
            if dir.exists() {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => info!(topic = name, partition = p, "replica moved off this node: removed"),
                    Err(e) => warn!(topic = name, partition = p, error = %e, "could not remove a moved replica"),
                }
            }
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: record.id,
            partitions: record.replicas.len() as i32,
            configs: record.configs.clone(),
            replicas: (0..record.replicas.len() as i32).map(|p| record.hosts(p)).collect(),
        };
        match existing {
            Some(topic) => {
                *topic.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
                topic
                    .partitions
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(opened);
                for p in topic.partition_list() {
                    p.set_settings(settings.clone());
                }
                let map = self.map.read().unwrap_or_else(|e| e.into_inner());
                self.refresh_gauges(&map);
            }
            None => {
                info!(
                    topic = name,
                    partitions = meta.partitions,
                    local = opened.len(),
                    "topic opened"
                );
                self.insert(meta, opened);
            }
        }
        Ok(())
    }

    /// Makes `topics/<name>` the directory of topic `id`: a directory left by a deleted topic
    /// of the same name (whose removal a crash interrupted) is cleared first. The id is kept
    /// in `topic.id`, so a deletion replayed at start never removes a newer topic's data.
    fn claim_dir(&self, name: &str, id: Uuid) -> anyhow::Result<()> {
        let dir = self.topic_dir(name);
        let marker = dir.join("topic.id");
        match std::fs::read_to_string(&marker) {
            Ok(found) if found.trim() == id.to_string() => return Ok(()),
            Ok(found) => {
                warn!(
                    topic = name,
                    stale = found.trim(),
                    "removing the data of a deleted topic of the same name"
                );
                std::fs::remove_dir_all(&dir)?;
            }
            Err(_) => {}
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&marker, id.to_string())?;
        Ok(())
    }

    async fn remove_topic(&self, name: &str, id: Uuid) {
        let topic = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let t = match map.get(name) {
                Some(t) if t.meta().id == id => map.remove(name),
                _ => None,
            };
            self.refresh_gauges(&map);
            t
        };
        if let Some(topic) = topic {
            for p in topic.partition_list() {
                p.close().await;
                p.forget_vote();
            }
        }
        let dir = self.topic_dir(name);
        let owner = std::fs::read_to_string(dir.join("topic.id")).ok();
        if dir.exists() && owner.as_deref().map(str::trim) != Some(&*id.to_string()) && owner.is_some() {
            info!(
                topic = name,
                "deleted topic's directory now belongs to a newer topic: kept"
            );
        } else if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(topic = name, error = %e, "could not remove topic directory");
            }
        }
        info!(topic = name, "topic deleted");
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens this node's replica of partition `p` of `topic` as `record` has it: under its
    /// Raft id, initializing the group with the partition's replicas when it was never
    /// moved (a moved partition's new replicas wait for their leader).
    async fn open_partition(
        &self,
        topic: &str,
        p: i32,
        settings: &TopicSettings,
        record: &TopicRecord,
    ) -> anyhow::Result<Arc<Partition>> {
        let me = record.replica_id(p, self.replica.node_id);
        let dir = self.topic_dir(topic).join(p.to_string());
        // Directory claims and the log's recovery scan are file I/O: off the async workers.
        let log = {
            let (dir, config) = (dir.clone(), settings.log.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<DiskLog> {
                claim_replica_dir(&dir, me)?;
                Ok(DiskLog::open(&dir, config)?)
            })
            .await??
        };
        let replicas = record.replicas.get(p.max(0) as usize).cloned().unwrap_or_default();
        let ctx = ReplicaContext {
            node_id: me,
            members: self.members(record, p, &replicas),
            preferred_leader: replicas.first().map(|n| record.replica_id(p, *n)),
            initialize: !record.moved.contains(&p),
            vote_key: format!("{}/{p}/{me}", record.id),
            ..self.replica.clone()
        };
        Partition::open(topic, p, log, settings.clone(), &ctx).await
    }

    fn insert(&self, meta: TopicMeta, parts: BTreeMap<i32, Arc<Partition>>) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            meta: RwLock::new(meta.clone()),
            partitions: RwLock::new(parts),
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(meta.name.clone(), topic.clone());
        self.refresh_gauges(&map);
        topic
    }

    fn refresh_gauges(&self, map: &BTreeMap<String, Arc<Topic>>) {
        self.metrics.topics.set(map.len() as i64);
        self.metrics
            .partitions
            .set(map.values().map(|t| t.meta().partitions as i64).sum());
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.list().into_iter().find(|t| t.meta().id == id)
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Marks the node as handing its leaderships over (it stops): preferred replicas here
    /// no longer take leadership back.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.list().iter().flat_map(|t| t.partition_list()).collect()
    }

    /// The topic, creating it with defaults if auto-creation is on and the name is legal.
    pub async fn get_or_auto_create(&self, name: &str) -> Result<Arc<Topic>, AdminError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            return Err(AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"));
        }
        match self.create(name, -1, BTreeMap::new(), false).await {
            Ok(t) => Ok(t),
            Err(e) if e.code == E::TopicAlreadyExists.code() => self
                .get(name)
                .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic vanished")),
            Err(e) => Err(e),
        }
    }

    /// Creates one of Keel's internal topics (names clients may not create).
    pub async fn create_internal(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, AdminError> {
        // Every node holds a replica of each internal partition: a node's group
        // coordinator works on its own replica of __consumer_offsets (and takes over
        // coordination when that replica becomes the leader).
        let everyone = self.node_ids().len();
        self.create_checked(name, partitions, Some(everyone), None, configs, false, true)
            .await
    }

    /// Creates a topic. `partitions == -1` takes the broker default.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, AdminError> {
        self.create_checked(name, partitions, None, None, configs, validate_only, false)
            .await
    }

    /// `create` with a replication factor (default: the configured one) or an explicit
    /// replica list per partition.
    pub async fn create_placed(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<usize>,
        replicas: Option<Vec<Vec<u64>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, AdminError> {
        self.create_checked(
            name,
            partitions,
            replication_factor,
            replicas,
            configs,
            validate_only,
            false,
        )
        .await
    }

    /// The nodes the cluster knows: the controller's voters and every registered node.
    pub fn node_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.controller.voters().into_iter().collect();
        ids.extend(self.controller.meta().nodes.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_checked(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<usize>,
        replicas: Option<Vec<Vec<u64>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        internal: bool,
    ) -> Result<Arc<Topic>, AdminError> {
        let _guard = self.admin.lock().await;
        topic_config::validate_topic_name(name).map_err(|m| AdminError::new(E::InvalidTopicException, m))?;
        if crate::is_internal_topic(name) && !internal {
            return Err(AdminError::new(
                E::InvalidTopicException,
                format!("'{name}' is an internal topic"),
            ));
        }
        self.wait_caught_up(ADMIN_TIMEOUT).await?;
        if let Some(t) = self.get(name) {
            if internal {
                return Ok(t);
            }
            return Err(AdminError::new(
                E::TopicAlreadyExists,
                format!("topic '{name}' already exists"),
            ));
        }
        let partitions = if partitions == -1 {
            self.config.default_partitions
        } else {
            partitions
        };
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(AdminError::new(
                E::InvalidPartitions,
                format!("partitions must be between 1 and {PARTITIONS_MAX}"),
            ));
        }
        topic_config::settings(&self.config, &configs).map_err(|m| AdminError::new(E::InvalidConfig, m))?;
        let rf = replication_factor.unwrap_or(self.config.default_replication_factor.max(1) as usize);
        let record = TopicRecord::new(
            replicas.unwrap_or_else(|| self.controller.assign(name, 0, partitions, rf)),
            configs,
        );
        if record.replicas.len() != partitions as usize || !record.is_placed() {
            // Only while a new cluster starts: the controller knows no node yet.
            return Err(AdminError::new(
                E::InvalidReplicationFactor,
                "no node is known to the controller yet to place the topic's replicas on",
            ));
        }
        if validate_only {
            return Ok(Arc::new(Topic {
                meta: RwLock::new(TopicMeta {
                    name: name.to_string(),
                    id: record.id,
                    partitions,
                    configs: record.configs,
                    replicas: record.replicas,
                }),
                partitions: RwLock::new(BTreeMap::new()),
            }));
        }
        let id = record.id;
        // Opening replicas takes time in proportion to their number.
        let open_time = Duration::from_millis(5 * partitions as u64 * rf as u64 / 3);
        self.commit_within(
            Command::CreateTopic {
                name: name.to_string(),
                record,
            },
            ADMIN_TIMEOUT + open_time,
        )
        .await?;
        match self.get(name) {
            Some(t) if t.meta().id == id || internal => Ok(t),
            Some(_) => Err(AdminError::new(
                E::TopicAlreadyExists,
                format!("topic '{name}' already exists"),
            )),
            None => Err(AdminError::new(
                E::KafkaStorageError,
                "the topic's replicas could not be opened",
            )),
        }
    }

    /// Commits a topic command through the controller and waits until this node applied it.
    pub(crate) async fn commit(&self, command: Command) -> Result<(), AdminError> {
        self.commit_within(command, ADMIN_TIMEOUT).await
    }

    /// As [`Topics::commit`], waiting up to `apply_timeout` for this node to apply it.
    async fn commit_within(&self, command: Command, apply_timeout: Duration) -> Result<(), AdminError> {
        let index = self
            .controller
            .propose(&command, ADMIN_TIMEOUT)
            .await
            .map_err(|e| AdminError::new(E::RequestTimedOut, e.to_string()))?;
        self.wait_reconciled(index, apply_timeout).await
    }

    pub async fn delete(&self, name: &str) -> Result<Uuid, AdminError> {
        let _guard = self.admin.lock().await;
        if crate::is_internal_topic(name) {
            return Err(AdminError::new(
                E::InvalidTopicException,
                format!("'{name}' is an internal topic"),
            ));
        }
        self.wait_caught_up(ADMIN_TIMEOUT).await?;
        let topic = self
            .get(name)
            .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
        self.commit(Command::DeleteTopic { name: name.to_string() }).await?;
        Ok(topic.meta().id)
    }

    /// Replaces a topic's config overrides (validated as a whole) through the controller.
    pub async fn alter_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        self.get(name)
            .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
        topic_config::settings(&self.config, &configs).map_err(|m| AdminError::new(E::InvalidConfig, m))?;
        if validate_only {
            return Ok(());
        }
        self.commit(Command::AlterConfigs {
            name: name.to_string(),
            configs,
        })
        .await?;
        info!(topic = name, "topic configs altered");
        Ok(())
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
        let meta = topic.meta();
        if count <= meta.partitions {
            return Err(AdminError::new(
                E::InvalidPartitions,
                format!(
                    "topic has {} partitions; the new count {} must be larger",
                    meta.partitions, count
                ),
            ));
        }
        if count > PARTITIONS_MAX {
            return Err(AdminError::new(
                E::InvalidPartitions,
                format!("at most {PARTITIONS_MAX} partitions"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let rf = meta
            .replicas
            .first()
            .map(|r| r.len())
            .unwrap_or(self.config.default_replication_factor.max(1) as usize);
        let replicas = self
            .controller
            .assign(name, meta.partitions, count - meta.partitions, rf);
        self.commit(Command::AddPartitions {
            name: name.to_string(),
            replicas,
        })
        .await?;
        info!(topic = name, partitions = count, "partitions added");
        Ok(())
    }

    /// Closes this node's replica `part` of `topic` and opens it again from its files.
    async fn reopen(&self, topic: &Topic, part: Arc<Partition>) -> anyhow::Result<()> {
        let meta = topic.meta();
        let Some(record) = self
            .controller
            .meta()
            .topics
            .get(&meta.name)
            .filter(|r| r.id == meta.id)
            .cloned()
        else {
            return Ok(());
        };
        warn!(topic = %meta.name, partition = part.index, "damage found in this replica's log while it ran: reopening it to repair");
        topic
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&part.index);
        part.close().await;
        let settings = topic_config::settings(&self.config, &record.configs)
            .map_err(|e| anyhow::anyhow!("topic {}: {e}", meta.name))?;
        let reopened = self.open_partition(&meta.name, part.index, &settings, &record).await?;
        topic
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(part.index, reopened);
        Ok(())
    }
}

/// Makes `dir` the directory of replica `replica` (its Raft id): a directory left by an
/// earlier incarnation of this node's replica (whose removal a crash interrupted) is
/// cleared first, so a new incarnation never starts from an old one's log and vote.
fn claim_replica_dir(dir: &std::path::Path, replica: u64) -> anyhow::Result<()> {
    let marker = dir.join("replica.id");
    let want = replica.to_string();
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == want => return Ok(()),
        Ok(found) => {
            warn!(dir = %dir.display(), old = found.trim(), new = %want, "removing an earlier incarnation's replica");
            std::fs::remove_dir_all(dir)?;
        }
        // No marker: a replica from before markers (incarnation 0), or a new one.
        Err(_) if keel_raft::node_of(replica) != replica && dir.exists() => std::fs::remove_dir_all(dir)?,
        Err(_) => {}
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, want)?;
    Ok(())
}

/// fsyncs, once per interval, every replica whose topic's flush policy is `interval`: one
/// timer for the node, not one per partition (ten thousand idle timers cost a tenth of a
/// core). At most [`INTERVAL_SYNCS_AT_ONCE`] fsyncs run at a time.
pub async fn sync_on_interval(topics: std::sync::Weak<Topics>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = topics.upgrade() else { return };
        let due: Vec<Arc<Partition>> = t
            .all_partitions()
            .into_iter()
            .filter(|p| !p.is_closed() && p.fsyncs_on_interval())
            .collect();
        drop(t);
        futures::stream::iter(due)
            .for_each_concurrent(INTERVAL_SYNCS_AT_ONCE, |p| async move { p.sync_now().await })
            .await;
    }
}

/// Runs the log cleaner over the compacted partitions this node holds, one at a time on a
/// blocking thread: a partition is looked at when a segment of it closed (so a cleaning
/// follows a roll within a tick) and otherwise every `every`.
pub async fn clean_on_interval(
    topics: std::sync::Weak<Topics>,
    metrics: Arc<crate::metrics::Metrics>,
    every: Duration,
) {
    const TICK: Duration = Duration::from_millis(250);
    // (topic, partition) -> (closed segments seen, when last looked at).
    let mut seen: HashMap<(String, i32), (usize, std::time::Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let Some(t) = topics.upgrade() else { return };
        let due: Vec<Arc<Partition>> = t
            .all_partitions()
            .into_iter()
            .filter(|p| !p.is_closed() && p.settings().compacted)
            .filter(|p| {
                let closed = p.closed_segment_count();
                let key = (p.topic.clone(), p.index);
                match seen.get(&key) {
                    Some((n, at)) if *n == closed && at.elapsed() < every => false,
                    _ => {
                        seen.insert(key, (closed, std::time::Instant::now()));
                        true
                    }
                }
            })
            .collect();
        drop(t);
        if due.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        for p in due {
            let now = keel_log::disk::now_ms();
            let part = p.clone();
            match tokio::task::spawn_blocking(move || part.clean(now)).await {
                Ok(Ok(Some(r))) => {
                    metrics.cleaner_passes.inc();
                    metrics.cleaner_segments_rewritten.inc_by(r.segments_rewritten);
                    metrics.cleaner_reclaimed_bytes.inc_by(r.bytes_freed);
                    if r.segments_rewritten > 0 {
                        tracing::info!(topic = %p.topic, partition = p.index, segments = r.segments_rewritten,
                            freed = r.bytes_freed, through = r.cleaned_through, "cleaned");
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    metrics.cleaner_errors.inc();
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "log cleaner pass failed");
                }
                Err(e) => {
                    metrics.cleaner_errors.inc();
                    tracing::warn!(error = %e, "log cleaner task failed");
                }
            }
        }
        metrics.cleaner_last_pass_seconds.set(started.elapsed().as_secs_f64());
    }
}

/// fsyncs of the `interval` policy run side by side, up to this many.
const INTERVAL_SYNCS_AT_ONCE: usize = 16;

/// Reopens replicas whose log a read found damaged while they ran: reopening runs the same
/// recovery as a start (the log is cut back at the first bad entry, the replica holds its
/// vote until it has caught up) and the rest is re-fetched from the leader. A leader that
/// finds damage steps down by closing; the other replicas elect a new one. The only
/// replica of a partition is left open: it has no one to re-fetch from, and serves what
/// it still can.
pub async fn repair_damaged(topics: std::sync::Weak<Topics>, every: Duration) {
    let mut warned: std::collections::BTreeSet<(String, i32)> = Default::default();
    let mut round = 0u64;
    loop {
        tokio::time::sleep(every).await;
        round += 1;
        let Some(t) = topics.upgrade() else { return };
        // Damage is an atomic flag; a stopped Raft core is read off its metrics, so it is
        // looked for every tenth round only.
        let look_for_stopped = round.is_multiple_of(10);
        for topic in t.list() {
            for part in topic.partition_list() {
                // A replica whose Raft core stopped on a storage error is reopened as a
                // damaged one is: from its files, which hold what was made durable.
                let stopped = look_for_stopped && part.group().is_stopped();
                if !(part.damage_found() || stopped) || part.is_closed() {
                    continue;
                }
                if stopped {
                    warn!(topic = %part.topic, partition = part.index, "replica's Raft group stopped on an error: reopening it");
                }
                let key = (part.topic.clone(), part.index);
                if part.group().voters().len() <= 1 {
                    if warned.insert(key) {
                        error!(topic = %part.topic, partition = part.index, "damaged log and no other replica to repair from: serving what is readable");
                    }
                    continue;
                }
                if let Err(e) = t.reopen(&topic, part).await {
                    error!(topic = %key.0, partition = key.1, error = %format!("{e:#}"), "could not reopen a damaged replica");
                }
            }
        }
    }
}

/// Most partitions whose leadership one round of [`balance_leaders`] moves back: enough
/// that a node returning to a cluster of thousands of partitions takes its share within
/// a minute, few enough that the elections do not crowd out the traffic.
const LEADER_RECLAIMS_PER_ROUND: usize = 256;

/// Hands leadership back to preferred replicas, a bounded number of partitions per round,
/// so leaders spread over the nodes again after one rejoins. The leader drives it (a
/// handover, see [`crate::cluster::handover`]): writes pause only while the preferred replica's log
/// matches and it is elected, instead of an election deposing a leader mid-write.
pub async fn balance_leaders(topics: std::sync::Weak<Topics>, every: Duration) {
    // Let a starting node catch up before it claims anything.
    tokio::time::sleep(every).await;
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = topics.upgrade() else { return };
        let maintenance = t.controller.meta().maintenance.clone();
        if maintenance.contains(&t.controller.node_id) {
            hand_off_for_maintenance(&t, &maintenance).await;
            continue;
        }
        if t.is_draining() {
            continue;
        }
        let transport = t.controller.transport.clone();
        let due: Vec<(Arc<Partition>, u64)> = t
            .all_partitions()
            .into_iter()
            .filter_map(|p| {
                let to = p.preferred_successor(|n| transport.is_alive(n) && !maintenance.contains(&n))?;
                Some((p, to))
            })
            .take(LEADER_RECLAIMS_PER_ROUND)
            .collect();
        if due.is_empty() {
            continue;
        }
        let outcomes = hand_over_each(&transport, due, LEADER_RETURN_WAIT).await;
        let moved = outcomes
            .iter()
            .filter(|o| **o == crate::cluster::handover::Outcome::Moved)
            .count();
        info!(
            partitions = moved,
            tried = outcomes.len(),
            "leadership handed back to preferred replicas"
        );
    }
}

/// Hands each partition's leadership to its chosen successor, 64 at a time, each within
/// `wait`; the replicas that hand over follow afterwards (the node carries on).
async fn hand_over_each(
    transport: &Arc<keel_raft::Transport>,
    due: Vec<(Arc<Partition>, u64)>,
    wait: Duration,
) -> Vec<crate::cluster::handover::Outcome> {
    futures::stream::iter(due)
        .map(|(p, to)| async move {
            let deadline = std::time::Instant::now() + wait;
            crate::cluster::handover::hand_over(
                transport,
                p.group(),
                Some(&p),
                &p.topic,
                p.index,
                Some(to),
                deadline,
                crate::cluster::handover::Then::Follow,
            )
            .await
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// This node is in maintenance: it hands the leadership of every partition it leads, and
/// of the controller, to a caught-up replica on a live node not in maintenance (a few
/// hundred partitions per round). Its replicas stay and follow; one with no such
/// replica to take over keeps leading (it is not made unavailable).
async fn hand_off_for_maintenance(t: &Arc<Topics>, maintenance: &BTreeSet<u64>) {
    let transport = t.controller.transport.clone();
    let due: Vec<(Arc<Partition>, u64)> = t
        .all_partitions()
        .into_iter()
        .filter(|p| !p.is_closed() && p.group().is_leader())
        .filter_map(|p| {
            let to = crate::cluster::handover::successor_avoiding(&transport, p.group(), maintenance)?;
            Some((p, to))
        })
        .take(LEADER_RECLAIMS_PER_ROUND)
        .collect();
    let tried = due.len();
    let outcomes = hand_over_each(&transport, due, MAINTENANCE_HANDOVER_WAIT).await;
    let mut moved = outcomes
        .iter()
        .filter(|o| **o == crate::cluster::handover::Outcome::Moved)
        .count();
    let controller = &t.controller.group;
    let mut controller_tried = false;
    if controller.is_leader() {
        if let Some(to) = crate::cluster::handover::successor_avoiding(&transport, controller, maintenance) {
            controller_tried = true;
            let deadline = std::time::Instant::now() + MAINTENANCE_HANDOVER_WAIT;
            let o = crate::cluster::handover::hand_over(
                &transport,
                controller,
                None,
                "",
                -1,
                Some(to),
                deadline,
                crate::cluster::handover::Then::Follow,
            )
            .await;
            moved += usize::from(o == crate::cluster::handover::Outcome::Moved);
        }
    }
    if tried > 0 || controller_tried {
        info!(
            moved,
            tried = tried + usize::from(controller_tried),
            "maintenance: leadership handed to other nodes"
        );
    }
}

/// How long one handover of a node in maintenance may take before a later round tries it
/// again.
const MAINTENANCE_HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// How long handing one partition back to its preferred replica may take (its writes
/// pause meanwhile); past it the leader keeps the partition until a later round.
const LEADER_RETURN_WAIT: Duration = Duration::from_millis(500);

/// Applies the controller's commands to this node's replicas, in order.
async fn reconcile(topics: std::sync::Weak<Topics>, mut events: tokio::sync::mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = events.recv().await {
        let Some(t) = topics.upgrade() else { return };
        let index = ev.index;
        t.apply_event(ev).await;
        t.reconciled.send_modify(|i| *i = (*i).max(index));
    }
}
