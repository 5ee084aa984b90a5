//! The topics a broker hosts: created, listed, grown and deleted, persisted under
//! `<data_dir>/topics/<name>/` as `topic.json` plus one log directory per partition.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use keel_log::DiskLog;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::partition::{Partition, ReplicaContext};
use crate::topic_config::{self, TopicSettings};

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: i32 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

pub struct Topic {
    pub meta: RwLock<TopicMeta>,
    pub partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn meta(&self) -> TopicMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(index).ok().and_then(|i| parts.get(i).cloned())
    }

    pub fn partition_list(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An admin operation's failure: a Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub code: i16,
    pub message: String,
}

impl AdminError {
    fn new(e: E, message: impl Into<String>) -> AdminError {
        AdminError {
            code: e.code(),
            message: message.into(),
        }
    }
}

pub struct Topics {
    dir: PathBuf,
    config: Arc<BrokerConfig>,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    metrics: Arc<Metrics>,
    data_changed: Arc<watch::Sender<u64>>,
    /// Serialises create/delete/grow so that two clients cannot race on one name.
    admin: tokio::sync::Mutex<()>,
    replica: ReplicaContext,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl Topics {
    /// Opens every topic under the data directory (recovering each partition's log).
    pub async fn load(
        config: Arc<BrokerConfig>,
        metrics: Arc<Metrics>,
        data_changed: Arc<watch::Sender<u64>>,
        replica: ReplicaContext,
    ) -> anyhow::Result<Topics> {
        let dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&dir)?;
        let topics = Topics {
            dir: dir.clone(),
            config,
            map: RwLock::new(BTreeMap::new()),
            metrics,
            data_changed,
            admin: tokio::sync::Mutex::new(()),
            replica,
        };
        for ent in std::fs::read_dir(&dir)? {
            let path = ent?.path();
            let meta_path = path.join("topic.json");
            if !meta_path.exists() {
                if path.is_dir() {
                    warn!(dir = %path.display(), "topic directory without topic.json; removing leftover of an interrupted create or delete");
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            let meta: TopicMeta = serde_json::from_slice(&std::fs::read(&meta_path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", meta_path.display()))?;
            let settings = topic_config::settings(&topics.config, &meta.configs)
                .map_err(|e| anyhow::anyhow!("topic {}: {e}", meta.name))?;
            let mut parts = Vec::with_capacity(meta.partitions.max(0) as usize);
            for p in 0..meta.partitions {
                parts.push(topics.open_partition(&meta.name, p, &settings).await?);
            }
            info!(topic = %meta.name, partitions = meta.partitions, "topic loaded");
            topics.insert(meta, parts);
        }
        Ok(topics)
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn open_partition(&self, topic: &str, p: i32, settings: &TopicSettings) -> anyhow::Result<Arc<Partition>> {
        let log = DiskLog::open(&self.topic_dir(topic).join(p.to_string()), settings.log.clone())?;
        Partition::open(
            topic,
            p,
            log,
            settings.clone(),
            self.metrics.clone(),
            self.data_changed.clone(),
            Duration::from_millis(self.config.fsync_interval_ms),
            &self.replica,
        )
        .await
    }

    fn insert(&self, meta: TopicMeta, parts: Vec<Arc<Partition>>) -> Arc<Topic> {
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
            .set(map.values().map(|t| t.partition_list().len() as i64).sum());
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
        self.create_checked(name, partitions, configs, false, true).await
    }

    /// Creates a topic. `partitions == -1` takes the broker default.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, AdminError> {
        self.create_checked(name, partitions, configs, validate_only, false)
            .await
    }

    async fn create_checked(
        &self,
        name: &str,
        partitions: i32,
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
        if self.get(name).is_some() {
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
        let settings =
            topic_config::settings(&self.config, &configs).map_err(|m| AdminError::new(E::InvalidConfig, m))?;
        let meta = TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs,
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                meta: RwLock::new(meta),
                partitions: RwLock::new(Vec::new()),
            }));
        }
        let dir = self.topic_dir(name);
        let storage = |e: anyhow::Error| AdminError::new(E::KafkaStorageError, format!("{e:#}"));
        std::fs::create_dir_all(&dir).map_err(|e| storage(e.into()))?;
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            parts.push(self.open_partition(name, p, &settings).await.map_err(storage)?);
        }
        // topic.json last: a crash before it leaves a directory that load() cleans up.
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| storage(e.into()))?;
        write_atomic(&dir.join("topic.json"), &json).map_err(|e| storage(e.into()))?;
        info!(topic = name, partitions, "topic created");
        Ok(self.insert(meta, parts))
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<Uuid, AdminError> {
        let _guard = self.admin.lock().await;
        if crate::is_internal_topic(name) {
            return Err(AdminError::new(
                E::InvalidTopicException,
                format!("'{name}' is an internal topic"),
            ));
        }
        let topic = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let t = map
                .remove(name)
                .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
            self.refresh_gauges(&map);
            t
        };
        for p in topic.partition_list() {
            p.close().await;
        }
        let dir = self.topic_dir(name);
        // Remove topic.json first so that a crash mid-delete cannot resurrect the topic.
        let _ = std::fs::remove_file(dir.join("topic.json"));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(topic = name, error = %e, "could not remove topic directory");
        }
        info!(topic = name, "topic deleted");
        Ok(topic.meta().id)
    }

    /// Replaces a topic's config overrides (validated as a whole), persists them and
    /// applies them to every partition.
    pub async fn alter_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
        let settings =
            topic_config::settings(&self.config, &configs).map_err(|m| AdminError::new(E::InvalidConfig, m))?;
        if validate_only {
            return Ok(());
        }
        let mut meta = topic.meta();
        meta.configs = configs;
        let storage = |e: anyhow::Error| AdminError::new(E::KafkaStorageError, format!("{e:#}"));
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| storage(e.into()))?;
        write_atomic(&self.topic_dir(name).join("topic.json"), &json).map_err(|e| storage(e.into()))?;
        *topic.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        for p in topic.partition_list() {
            p.set_settings(settings.clone());
        }
        info!(topic = name, "topic configs altered");
        Ok(())
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), AdminError> {
        let _guard = self.admin.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| AdminError::new(E::UnknownTopicOrPartition, "topic does not exist"))?;
        let mut meta = topic.meta();
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
        let settings =
            topic_config::settings(&self.config, &meta.configs).map_err(|m| AdminError::new(E::InvalidConfig, m))?;
        let storage = |e: anyhow::Error| AdminError::new(E::KafkaStorageError, format!("{e:#}"));
        let mut new_parts = Vec::new();
        for p in meta.partitions..count {
            new_parts.push(self.open_partition(name, p, &settings).await.map_err(storage)?);
        }
        meta.partitions = count;
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| storage(e.into()))?;
        write_atomic(&self.topic_dir(name).join("topic.json"), &json).map_err(|e| storage(e.into()))?;
        *topic.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        topic
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new_parts);
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        self.refresh_gauges(&map);
        info!(topic = name, partitions = count, "partitions added");
        Ok(())
    }
}
