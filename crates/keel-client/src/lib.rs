//! A small Kafka-protocol client for Keel's own tools (`keel topic|produce|consume|bench`).
//!
//! One request in flight per connection, versions negotiated with ApiVersions. Partition
//! requests (produce, fetch, list offsets) go to the partition's leader and group requests
//! to the group's coordinator, found through Metadata and FindCoordinator and retried once
//! leadership moves; connections to other nodes are opened as needed.
//! Applications should use a full client (librdkafka and friends); this one exists so that
//! the `keel` binary needs no C library and so that benchmarks measure the broker, not a
//! client's batching heuristics.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A partition move in progress, as ListPartitionReassignments reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

pub mod group;
pub mod txn;
pub use group::{assign_round_robin, Membership};
pub use txn::TxnProducer;

/// Largest response this client accepts.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long a request waits for its response (AddRaftVoter: its own timeout and 10 s):
/// longer than any wait the broker itself bounds (30 s for the requests this client
/// makes), so a broker that never answers fails the call instead of hanging it.
const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

pub struct Client {
    stream: BufReader<TcpStream>,
    correlation: i32,
    versions: HashMap<i16, (i16, i16)>,
    pub addr: String,
    /// Connections to the other nodes of the cluster, by address.
    peers: HashMap<String, Box<Client>>,
    /// Leader address per (topic, partition), from the last Metadata.
    leaders: HashMap<(String, i32), String>,
    /// How long a request waits for its response.
    request_timeout: Duration,
}

/// A Kafka error code returned for one partition or group.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: error code {code}{detail}")]
pub struct KafkaError {
    pub op: String,
    pub code: i16,
    pub detail: String,
}

/// A request in flight on one borrowed connection.
pub(crate) type RoutedFuture<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'c>>;

/// How often a request is retried after the leadership moved.
const ROUTE_ATTEMPTS: usize = 20;

fn leadership_moved(e: &anyhow::Error) -> bool {
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, NOT_COORDINATOR,
    // COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS, REQUEST_TIMED_OUT.
    e.downcast_ref::<KafkaError>()
        .map(|k| matches!(k.code, 6 | 5 | 16 | 15 | 14 | 7))
        .unwrap_or(false)
}

fn kafka_err(op: String, code: i16, detail: String) -> anyhow::Error {
    anyhow::Error::new(KafkaError { op, code, detail })
}

/// A response's top-level error code and message as a result of operation `op`.
fn check(op: impl FnOnce() -> String, code: i16, message: Option<StrBytes>) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(kafka_err(
        op(),
        code,
        message.map(|m| format!(": {m}")).unwrap_or_default(),
    ))
}

/// Versions this client speaks, highest first preference.
fn client_max(key: ApiKey) -> i16 {
    match key {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 6,
        ApiKey::Metadata => 12,
        ApiKey::ApiVersions => 3,
        ApiKey::CreateTopics => 7,
        ApiKey::DeleteTopics => 6,
        ApiKey::DescribeConfigs => 4,
        ApiKey::CreatePartitions => 3,
        ApiKey::CreateAcls | ApiKey::DescribeAcls | ApiKey::DeleteAcls => 3,
        ApiKey::ListGroups => 4,
        ApiKey::DescribeGroups => 5,
        ApiKey::OffsetFetch => 7,
        ApiKey::OffsetCommit => 8,
        ApiKey::FindCoordinator => 4,
        _ => 0,
    }
}

/// One record to produce.
pub type OutRecord = keel_proto::batch::NewRecord;

/// A record read back.
#[derive(Debug, Clone)]
pub struct InRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl Client {
    /// Connects to the first reachable address of a comma-separated list.
    pub async fn connect(addrs: &str) -> Result<Client> {
        let mut last = None;
        for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Self::connect_one(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no broker address given")))
    }

    async fn connect_one(addr: &str) -> Result<Client> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to {addr}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream: BufReader::new(stream),
            correlation: 0,
            versions: HashMap::new(),
            addr: addr.to_string(),
            peers: HashMap::new(),
            leaders: HashMap::new(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        };
        let resp: ApiVersionsResponse = c
            .call_at(
                &ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("keel"))
                    .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION"))),
                3,
            )
            .await
            .context("ApiVersions")?;
        if resp.error_code != 0 {
            bail!("ApiVersions failed with error code {}", resp.error_code);
        }
        for k in resp.api_keys {
            c.versions.insert(k.api_key, (k.min_version, k.max_version));
        }
        Ok(c)
    }

    /// Authenticates this connection with SASL/PLAIN (a SASL_PLAINTEXT or SASL_SSL
    /// listener; over plaintext the password crosses the network as it is).
    pub async fn authenticate_plain(&mut self, user: &str, password: &str) -> Result<()> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let hs = self
            .call_at(
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
                1,
            )
            .await
            .context("SaslHandshake")?;
        if hs.error_code != 0 {
            bail!(
                "SaslHandshake: PLAIN refused (error {}), offered {:?}",
                hs.error_code,
                hs.mechanisms
            );
        }
        let token = Bytes::from(format!("\0{user}\0{password}").into_bytes());
        let r = self
            .call_at(&SaslAuthenticateRequest::default().with_auth_bytes(token), 1)
            .await
            .context("SaslAuthenticate")?;
        if r.error_code != 0 {
            bail!(
                "authentication failed: {}",
                r.error_message.as_deref().unwrap_or("SASL_AUTHENTICATION_FAILED")
            );
        }
        Ok(())
    }

    fn version(&self, key: ApiKey) -> Result<i16> {
        let (min, max) = self
            .versions
            .get(&(key as i16))
            .copied()
            .ok_or_else(|| anyhow!("broker does not serve {key:?}"))?;
        let v = client_max(key).min(max);
        if v < min {
            bail!("no common version of {key:?}");
        }
        Ok(v)
    }

    /// Sends a request at the negotiated version and reads its response.
    pub async fn call<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown api key"))?;
        let v = self.version(key)?;
        self.call_at(req, v).await
    }

    /// Sends a request at version `v`.
    pub async fn call_at<R: Request>(&mut self, req: &R, v: i16) -> Result<R::Response> {
        let timeout = self.request_timeout;
        let call = async {
            self.send(req, v).await?;
            self.receive::<R>(v).await
        };
        // A response that comes after the timeout is refused by the next call on this
        // connection (its correlation id does not match): reconnect after an error.
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| anyhow!("no response from {} within {timeout:?}", self.addr))?
    }

    async fn send<R: Request>(&mut self, req: &R, v: i16) -> Result<i32> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown api key"))?;
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(v)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("keel-cli")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, key.request_header_version(v))?;
        req.encode(&mut buf, v)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.get_mut().write_all(&buf).await?;
        Ok(self.correlation)
    }

    async fn receive<R: Request>(&mut self, v: i16) -> Result<R::Response> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown api key"))?;
        let len = self.stream.read_i32().await.context("reading response length")?;
        if len < 4 || len as usize > RESPONSE_BYTES_MAX {
            bail!("bad response length {len}");
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf).await?;
        let mut bytes = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut bytes, key.response_header_version(v))?;
        if header.correlation_id != self.correlation {
            bail!(
                "correlation id {} does not match request {}",
                header.correlation_id,
                self.correlation
            );
        }
        R::Response::decode(&mut bytes, v)
    }

    /// Metadata for `topics` (all when `None`), without creating unknown topics.
    pub async fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        self.metadata_creating(topics, false).await
    }

    /// Metadata that lets the broker auto-create unknown topics, as producers ask for it.
    pub async fn metadata_creating(&mut self, topics: Option<&[&str]>, allow_create: bool) -> Result<MetadataResponse> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(allow_create);
        self.call(&req).await
    }

    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<CreateTopicsResponse> {
        self.create_topic_replicated(name, partitions, -1, configs).await
    }

    /// Creates a topic with `replication_factor` replicas per partition (-1: the broker's
    /// default).
    pub async fn create_topic_replicated(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<CreateTopicsResponse> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        self.call(
            &CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(30_000),
        )
        .await
    }

    /// Grows `name` to `count` partitions (CreatePartitions); a Kafka error comes back as a
    /// [`KafkaError`].
    pub async fn create_partitions(&mut self, name: &str, count: i32) -> Result<()> {
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_count(count)])
            .with_timeout_ms(30_000);
        let resp = self.call(&req).await?;
        for r in resp.results {
            if r.error_code != 0 {
                return Err(kafka_err(
                    format!("CreatePartitions {name}"),
                    r.error_code,
                    r.error_message.map(|m| format!(": {m}")).unwrap_or_default(),
                ));
            }
        }
        Ok(())
    }

    /// Moves partitions (AlterPartitionReassignments): each `(topic, partition, target)`,
    /// where `None` cancels a move. Returns each partition's error (code and message), if any.
    pub async fn alter_partition_reassignments(
        &mut self,
        moves: &[(String, i32, Option<Vec<i32>>)],
    ) -> Result<Vec<(String, i32, Option<(i16, String)>)>> {
        use alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
        let mut topics: Vec<ReassignableTopic> = Vec::new();
        for (topic, partition, target) in moves {
            let p = ReassignablePartition::default()
                .with_partition_index(*partition)
                .with_replicas(target.as_ref().map(|t| t.iter().map(|n| BrokerId(*n)).collect()));
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    ReassignableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let req = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(topics);
        let resp = self.call(&req).await?;
        check(
            || "AlterPartitionReassignments".into(),
            resp.error_code,
            resp.error_message,
        )?;
        Ok(resp
            .responses
            .into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| {
                    let err = (p.error_code != 0)
                        .then(|| (p.error_code, p.error_message.map(|m| m.to_string()).unwrap_or_default()));
                    (name.clone(), p.partition_index, err)
                })
            })
            .collect())
    }

    /// The partition moves in progress (ListPartitionReassignments): topic, partition,
    /// replicas, adding, removing.
    pub async fn list_partition_reassignments(&mut self) -> Result<Vec<PartitionMove>> {
        let req = ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(None);
        let resp = self.call(&req).await?;
        check(
            || "ListPartitionReassignments".into(),
            resp.error_code,
            resp.error_message,
        )?;
        let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| PartitionMove {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    replicas: ids(&p.replicas),
                    adding: ids(&p.adding_replicas),
                    removing: ids(&p.removing_replicas),
                })
            })
            .collect())
    }

    /// Forgets a drained, stopped node (UnregisterBroker).
    pub async fn unregister_broker(&mut self, id: i32) -> Result<()> {
        let req = UnregisterBrokerRequest::default().with_broker_id(BrokerId(id));
        let resp = self.call(&req).await?;
        check(|| format!("UnregisterBroker {id}"), resp.error_code, resp.error_message)?;
        Ok(())
    }

    /// Makes node `id` a controller voter (AddRaftVoter, KIP-853).
    pub async fn add_raft_voter(&mut self, id: i32, timeout: Duration) -> Result<()> {
        let req = AddRaftVoterRequest::default()
            .with_voter_id(id)
            .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32);
        // The broker may take the whole of `timeout` before it answers.
        let saved = self.request_timeout;
        self.request_timeout = saved.max(timeout + Duration::from_secs(10));
        let resp = self.call(&req).await;
        self.request_timeout = saved;
        let resp = resp?;
        check(|| format!("AddRaftVoter {id}"), resp.error_code, resp.error_message)?;
        Ok(())
    }

    /// Makes controller voter `id` a learner again (RemoveRaftVoter, KIP-853).
    pub async fn remove_raft_voter(&mut self, id: i32) -> Result<()> {
        let req = RemoveRaftVoterRequest::default().with_voter_id(id);
        let resp = self.call(&req).await?;
        check(|| format!("RemoveRaftVoter {id}"), resp.error_code, resp.error_message)?;
        Ok(())
    }

    pub async fn delete_topic(&mut self, name: &str) -> Result<DeleteTopicsResponse> {
        let n = TopicName(StrBytes::from_string(name.to_string()));
        let req = DeleteTopicsRequest::default()
            .with_topics(vec![DeleteTopicState::default().with_name(Some(n.clone()))])
            .with_topic_names(vec![n])
            .with_timeout_ms(30_000);
        self.call(&req).await
    }

    pub async fn describe_topic_configs(&mut self, name: &str) -> Result<DescribeConfigsResponse> {
        let req = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configuration_keys(None)]);
        self.call(&req).await
    }

    /// Groups of every node (each lists the groups it coordinates).
    pub async fn list_groups(&mut self) -> Result<ListGroupsResponse> {
        let md = self.metadata(Some(&[])).await?;
        let addrs: Vec<String> = md
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect();
        let mut all = self.call(&ListGroupsRequest::default()).await?;
        let me = self.addr.clone();
        for addr in addrs.iter().filter(|a| **a != me) {
            if let Ok(c) = self.peer(addr).await {
                if let Ok(r) = c.call(&ListGroupsRequest::default()).await {
                    for g in r.groups {
                        if !all.groups.iter().any(|x| x.group_id == g.group_id) {
                            all.groups.push(g);
                        }
                    }
                }
            }
        }
        Ok(all)
    }

    pub async fn describe_group(&mut self, group: &str) -> Result<DescribeGroupsResponse> {
        let addr = self.coordinator_addr(group).await?;
        self.at(&addr).await?.describe_group_here(group).await
    }

    async fn describe_group_here(&mut self, group: &str) -> Result<DescribeGroupsResponse> {
        self.call(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]),
        )
        .await
    }

    /// Every committed offset of `group`: (topic, partition, offset, metadata).
    pub async fn committed_offsets(&mut self, group: &str) -> Result<Vec<(String, i32, i64, String)>> {
        let addr = self.coordinator_addr(group).await?;
        self.at(&addr).await?.committed_offsets_here(group).await
    }

    async fn committed_offsets_here(&mut self, group: &str) -> Result<Vec<(String, i32, i64, String)>> {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_topics(None);
        let resp = self.call(&req).await?;
        if resp.error_code != 0 {
            bail!("OffsetFetch failed: error code {}", resp.error_code);
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    out.push((
                        t.name.0.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.metadata.map(|m| m.to_string()).unwrap_or_default(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Commits offsets for `group` from outside the group protocol (generation -1), as
    /// admin tools do; the broker accepts it only while the group has no members.
    pub async fn commit_offsets(&mut self, group: &str, offsets: &[(String, i32, i64)]) -> Result<()> {
        let addr = self.coordinator_addr(group).await?;
        self.at(&addr).await?.commit_offsets_here(group, offsets).await
    }

    async fn commit_offsets_here(&mut self, group: &str, offsets: &[(String, i32, i64)]) -> Result<()> {
        let mut by_topic: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
        for (t, p, o) in offsets {
            by_topic.entry(t.as_str()).or_default().push((*p, *o));
        }
        let topics = by_topic
            .into_iter()
            .map(|(t, parts)| {
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                            })
                            .collect(),
                    )
            })
            .collect();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(topics);
        let resp = self.call(&req).await?;
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "commit of {}-{} failed: error code {}",
                        t.name.0.as_str(),
                        p.partition_index,
                        p.error_code
                    );
                }
            }
        }
        Ok(())
    }

    async fn peer(&mut self, addr: &str) -> Result<&mut Client> {
        if !self.peers.contains_key(addr) {
            let mut c = Client::connect_one(addr).await?;
            c.request_timeout = self.request_timeout;
            self.peers.insert(addr.to_string(), Box::new(c));
        }
        self.peers
            .get_mut(addr)
            .map(|c| c.as_mut())
            .ok_or_else(|| anyhow!("no connection to {addr}"))
    }

    /// The connection to `addr` (this one, or another node's).
    pub(crate) async fn at(&mut self, addr: &str) -> Result<&mut Client> {
        if addr == self.addr {
            Ok(self)
        } else {
            self.peer(addr).await
        }
    }

    /// The address of `topic`-`partition`'s leader (from Metadata when not cached or
    /// when `refresh`).
    pub async fn leader_addr(&mut self, topic: &str, partition: i32, refresh: bool) -> Result<String> {
        let key = (topic.to_string(), partition);
        if !refresh {
            if let Some(a) = self.leaders.get(&key) {
                return Ok(a.clone());
            }
        }
        let md = self.metadata(Some(&[topic])).await?;
        let brokers: HashMap<i32, String> = md
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        for t in &md.topics {
            for p in &t.partitions {
                if let Some(addr) = brokers.get(&p.leader_id.0) {
                    self.leaders
                        .insert((topic.to_string(), p.partition_index), addr.clone());
                } else {
                    self.leaders.remove(&(topic.to_string(), p.partition_index));
                }
            }
        }
        self.leaders
            .get(&key)
            .cloned()
            .ok_or_else(|| kafka_err(format!("finding the leader of {topic}-{partition}"), 5, String::new()))
    }

    #[allow(clippy::type_complexity)]
    /// Runs `op` on the connection to `topic`-`partition`'s leader, refreshing the leader and
    /// retrying (up to [`ROUTE_ATTEMPTS`] times) while `retry` says the leadership moved.
    pub(crate) async fn routed<T>(
        &mut self,
        topic: &str,
        partition: i32,
        retry: fn(&anyhow::Error) -> bool,
        mut op: impl for<'c> FnMut(&'c mut Client) -> RoutedFuture<'c, T>,
    ) -> Result<T> {
        let mut last = None;
        for attempt in 0..ROUTE_ATTEMPTS {
            let r = match self.leader_addr(topic, partition, attempt > 0).await {
                Ok(addr) => op(self.at(&addr).await?).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) if retry(&e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no leader")))
    }

    /// The address of `group`'s coordinator.
    pub async fn coordinator_addr(&mut self, group: &str) -> Result<String> {
        let req = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string()));
        let resp = self.call_at(&req, 3).await?;
        if resp.error_code != 0 {
            return Err(kafka_err(
                format!("FindCoordinator {group}"),
                resp.error_code,
                String::new(),
            ));
        }
        Ok(format!("{}:{}", resp.host.as_str(), resp.port))
    }

    /// Encodes `records` as one batch.
    pub fn encode_batch(records: &[OutRecord], compression: Compression) -> Result<Bytes> {
        Ok(keel_proto::batch::encode_batch(records, compression)?)
    }

    /// Produces one pre-encoded batch to the partition's leader; returns the base offset.
    /// Retried when the leadership moved, including after a timeout (so the batch may be
    /// stored twice); see [`Client::produce_batch_at_most_once`].
    pub async fn produce_batch(&mut self, topic: &str, partition: i32, batch: Bytes, acks: i16) -> Result<i64> {
        self.produce_routed(topic, partition, batch, acks, leadership_moved)
            .await
    }

    /// As [`Client::produce_batch`], but retried only after answers that guarantee the
    /// batch was not stored (not the leader, no leader); a timeout is returned as an error.
    pub async fn produce_batch_at_most_once(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
    ) -> Result<i64> {
        fn refused(e: &anyhow::Error) -> bool {
            e.downcast_ref::<KafkaError>()
                .map(|k| matches!(k.code, 6 | 5))
                .unwrap_or(false)
        }
        self.produce_routed(topic, partition, batch, acks, refused).await
    }

    async fn produce_routed(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
        retry: fn(&anyhow::Error) -> bool,
    ) -> Result<i64> {
        let t = topic.to_string();
        self.routed(topic, partition, retry, |c| {
            let (t, batch) = (t.clone(), batch.clone());
            Box::pin(async move { c.produce_batch_here(&t, partition, batch, acks).await })
        })
        .await
    }

    async fn produce_batch_here(&mut self, topic: &str, partition: i32, batch: Bytes, acks: i16) -> Result<i64> {
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        if acks == 0 {
            let v = self.version(ApiKey::Produce)?;
            self.send(&req, v).await?;
            return Ok(-1);
        }
        let resp = self.call(&req).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| anyhow!("empty produce response"))?;
        if p.error_code != 0 {
            return Err(kafka_err(
                format!("produce to {topic}-{partition}"),
                p.error_code,
                p.error_message.as_ref().map(|m| format!(" {m}")).unwrap_or_default(),
            ));
        }
        Ok(p.base_offset)
    }

    /// ListOffsets for one partition (at its leader): -1 latest, -2 earliest, or a timestamp.
    pub async fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let t = topic.to_string();
        self.routed(topic, partition, leadership_moved, |c| {
            let t = t.clone();
            Box::pin(async move { c.list_offset_here(&t, partition, timestamp).await })
        })
        .await
    }

    async fn list_offset_here(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        let resp = self.call(&req).await?;
        let p = resp
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow!("empty ListOffsets response"))?;
        if p.error_code != 0 {
            return Err(kafka_err(
                format!("ListOffsets {topic}-{partition}"),
                p.error_code,
                String::new(),
            ));
        }
        Ok(p.offset)
    }

    /// Fetches from one partition's leader; returns records at or after `offset` and the
    /// high watermark.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> Result<(Vec<InRecord>, i64)> {
        let t = topic.to_string();
        self.routed(topic, partition, leadership_moved, |c| {
            let t = t.clone();
            Box::pin(async move { c.fetch_here(&t, partition, offset, max_wait_ms, max_bytes).await })
        })
        .await
    }

    /// A `read_committed` fetch from one partition's leader: records of committed
    /// transactions and plain records below the last stable offset, without aborted
    /// transactions' records or markers. Returns them, the offset to fetch next, and the
    /// last stable offset.
    pub async fn fetch_committed(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<(Vec<InRecord>, i64, i64)> {
        let t = topic.to_string();
        self.routed(topic, partition, leadership_moved, |c| {
            let t = t.clone();
            Box::pin(async move { c.fetch_committed_here(&t, partition, offset, max_bytes).await })
        })
        .await
    }

    async fn fetch_committed_here(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<(Vec<InRecord>, i64, i64)> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes)])]);
        let resp = self.call(&req).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow!("empty fetch response"))?;
        if p.error_code != 0 {
            return Err(kafka_err(
                format!("fetch {topic}-{partition} at {offset}"),
                p.error_code,
                String::new(),
            ));
        }
        // Kafka's consumer algorithm: an aborted transaction is skipped from its first
        // offset until its ABORT marker.
        let mut aborted: Vec<(i64, i64)> = p
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.first_offset, a.producer_id.0))
            .collect();
        aborted.sort_unstable();
        let mut pending = aborted.into_iter().peekable();
        let mut active: std::collections::HashSet<i64> = Default::default();
        let mut out = Vec::new();
        let mut next = offset;
        if let Some(mut records) = p.records.clone() {
            while records.remaining() > 0 {
                let set = RecordBatchDecoder::decode(&mut records)?;
                for r in set.records {
                    next = next.max(r.offset + 1);
                    while let Some((first, pid)) = pending.peek().copied() {
                        if first > r.offset {
                            break;
                        }
                        active.insert(pid);
                        pending.next();
                    }
                    if r.control {
                        if r.key.as_deref().and_then(|k| k.get(2..4)) == Some(&[0, 0][..]) {
                            active.remove(&r.producer_id);
                        }
                        continue;
                    }
                    if r.offset < offset || (r.transactional && active.contains(&r.producer_id)) {
                        continue;
                    }
                    out.push(InRecord {
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        value: r.value,
                        headers: r.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    });
                }
            }
        }
        Ok((out, next, p.last_stable_offset))
    }

    async fn fetch_here(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> Result<(Vec<InRecord>, i64)> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes)])]);
        let resp = self.call(&req).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow!("empty fetch response"))?;
        if p.error_code != 0 {
            return Err(kafka_err(
                format!("fetch {topic}-{partition} at {offset}"),
                p.error_code,
                String::new(),
            ));
        }
        let mut out = Vec::new();
        if let Some(mut records) = p.records.clone() {
            while records.remaining() > 0 {
                let set = RecordBatchDecoder::decode(&mut records)?;
                for r in set.records {
                    if r.offset >= offset {
                        out.push(InRecord {
                            offset: r.offset,
                            timestamp: r.timestamp,
                            key: r.key,
                            value: r.value,
                            headers: r.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        });
                    }
                }
            }
        }
        Ok((out, p.high_watermark))
    }
}
