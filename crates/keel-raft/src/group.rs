//! One running Raft group on this node: a partition replica or the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_log::LogStore;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tracing::info;

use crate::liveness::{GroupQuiet, Replica};
use crate::store::{LogStorage, Shared, StateMachine, VoteSlot};
use crate::transport::Transport;
use crate::{Applied, Apply, Node, NodeId, Payload, Placed, Raft, RaftMetrics};

/// Timing and durability of a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// fsync before an append counts towards a commit.
    pub fsync: bool,
    /// Whether the group goes quiet when idle (see [`crate::liveness`]). The controller's
    /// group does not: it is one group, and every node's metadata follows it.
    pub quiesce: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            fsync: true,
            quiesce: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader is {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("replication failed: {0}")]
    Failed(String),
}

/// A running group: its Raft instance and its storage.
pub struct Group {
    pub name: String,
    /// Non-zero while the replica repairs a damaged log: one past the last index it had,
    /// which a candidate's log must reach for this replica to vote for it.
    pub hold_votes: Arc<std::sync::atomic::AtomicU64>,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    /// The group's quiescence: idle, it stops its heartbeats and election timers.
    pub quiet: Arc<GroupQuiet>,
    node_id: NodeId,
    /// The TCP transport the group is registered with (`None` for a custom network).
    transport: Option<Arc<Transport>>,
    options: GroupOptions,
}

impl Group {
    /// Opens the group's storage over `log` and starts its Raft instance. The group takes
    /// part in elections once it has a membership (its own log's, or [`Group::initialize`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        name: &str,
        node_id: NodeId,
        transport: Arc<Transport>,
        log: Box<dyn LogStore>,
        dir: Option<PathBuf>,
        votes: Option<VoteSlot>,
        hook: Arc<dyn Apply>,
        options: GroupOptions,
    ) -> Result<Group, String> {
        let mut g =
            Self::start_with_network(name, node_id, transport.network(name), log, dir, votes, hook, options).await?;
        transport.register(
            &crate::group_key(name, node_id),
            Replica {
                raft: g.raft.clone(),
                hold_votes: g.hold_votes.clone(),
                quiet: g.quiet.clone(),
            },
        );
        g.transport = Some(transport);
        Ok(g)
    }

    /// [`Group::start`] over any openraft network (the deterministic simulation uses an
    /// in-memory one); the caller routes incoming RPCs to [`Group::raft`]. The vote is
    /// saved in `votes` when given, else in `dir`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with_network<N: openraft::network::RaftNetworkFactory<crate::TypeConfig>>(
        name: &str,
        node_id: NodeId,
        network: N,
        log: Box<dyn LogStore>,
        dir: Option<PathBuf>,
        votes: Option<VoteSlot>,
        hook: Arc<dyn Apply>,
        options: GroupOptions,
    ) -> Result<Group, String> {
        // A replica never resumes leadership from its files: its log may have lost entries
        // (damage cut away, a torn tail that other replicas had made durable and
        // committed). It stands for election like any other and wins only with a log that
        // has everything committed.
        let vote = crate::store::load_vote(dir.as_deref(), votes.as_ref())
            .await
            .map_err(|e| format!("reading the vote: {e}"))?;
        let had_vote = vote.is_some();
        let shared = Shared::open(log, dir, (vote, votes), options.fsync, hook).map_err(|e| e.to_string())?;
        let config = Config {
            cluster_name: name.to_string(),
            heartbeat_interval: options.heartbeat_ms,
            election_timeout_min: options.election_timeout_min_ms,
            election_timeout_max: options.election_timeout_max_ms,
            // The log is the partition's data: openraft must never purge it on its own.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            network,
            LogStorage::new(shared.clone()),
            StateMachine::new(shared.clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let multi_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            > 1;
        let quiet = GroupQuiet::new(raft.clone(), options.quiesce, multi_voter, had_vote);
        // A replica whose log lost applied entries votes only for candidates whose log
        // reaches them, until it has caught up.
        let hold = shared.lost_through().map(|l| l.saturating_add(1)).unwrap_or(0);
        Ok(Group {
            quiet,
            hold_votes: Arc::new(std::sync::atomic::AtomicU64::new(hold)),
            name: name.to_string(),
            raft,
            shared,
            node_id,
            transport: None,
            options,
        })
    }

    /// Writes the initial membership if the group has none yet. Every replica may call it
    /// with the same members: they all write the same first entry.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), String> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// As [`Group::initialize`], for a replica that should lead a new group while its peers
    /// may still be opening theirs (a topic of thousands of partitions is opened by every
    /// node at its own pace): the first election starts at once, and while no leader is
    /// known the group stands again with a growing backoff (up to a few seconds) instead
    /// of every election timeout, so that thousands of new groups do not keep every disk
    /// busy with vote fsyncs while they wait for their peers.
    pub async fn initialize_paced(&self, members: BTreeMap<NodeId, Node>) -> Result<(), String> {
        if members.len() <= 1 {
            return self.initialize(members).await;
        }
        self.raft.runtime_config().elect(false);
        if let Err(e) = self.initialize(members).await {
            self.raft.runtime_config().elect(true);
            return Err(e);
        }
        let raft = self.raft.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(1000);
            for _ in 0..12 {
                let mut rx = raft.metrics();
                let led = matches!(
                    tokio::time::timeout(backoff, rx.wait_for(|m| m.current_leader.is_some())).await,
                    Ok(Ok(_))
                );
                if led {
                    break;
                }
                let _ = raft.trigger().elect().await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
            raft.runtime_config().elect(true);
        });
        Ok(())
    }

    /// Until its log holds everything a leader has committed (checked by the transport on
    /// each AppendEntries), this replica votes only for candidates whose log reaches
    /// `last_index`, the last index it had before it lost entries to damage: some of them
    /// may have been committed with its acknowledgement.
    pub fn hold_votes(&self, last_index: u64) {
        self.hold_votes
            .store(last_index.saturating_add(1), std::sync::atomic::Ordering::Release);
        info!(group = %self.name, "log was repaired; holding this replica's vote until it has caught up");
    }

    /// Replicates `payload`; returns once a majority has it durably and it is applied here.
    pub async fn propose(&self, payload: Bytes) -> Result<Applied, ProposeError> {
        self.quiet.wake();
        match self.raft.client_write(Payload::new(payload)).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Starts replicating `payload` and returns at once; the returned future resolves when
    /// it is committed and applied. Calls made in order are logged in that order.
    pub async fn propose_start(
        &self,
        payload: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Applied, ProposeError>>, ProposeError> {
        self.quiet.wake();
        let rx = self
            .raft
            .client_write_ff(Payload::new(payload))
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?;
        Ok(async move {
            match rx.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
                Ok(Err(e)) => Err(ProposeError::Failed(e.to_string())),
                Err(_) => Err(ProposeError::Failed("the group stopped before answering".into())),
            }
        })
    }

    /// As [`Group::propose_start`], but the returned future resolves as soon as this
    /// leader's own log has the entry durably (acks=1), with where it was placed; or when the
    /// entry is committed, whichever comes first. The entry is not visible to readers until
    /// it is committed, and a leader that fails before replicating it may lose it.
    pub async fn propose_start_local(
        &self,
        payload: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Placed, ProposeError>>, ProposeError> {
        self.quiet.wake();
        let shared = self.shared.clone();
        let (ticket, local) = shared.local_ack_ticket();
        let rx = match self.raft.client_write_ff(Payload(payload, Some(ticket), None)).await {
            Ok(rx) => rx,
            Err(e) => {
                shared.forget_ticket(ticket);
                return Err(ProposeError::Failed(e.to_string()));
            }
        };
        Ok(async move {
            let committed = async move {
                match rx.await {
                    Ok(Ok(resp)) => Ok(Placed {
                        index: resp.data.index,
                        base_offset: resp.data.base_offset,
                    }),
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
                    Ok(Err(e)) => Err(ProposeError::Failed(e.to_string())),
                    Err(_) => Err(ProposeError::Failed("the group stopped before answering".into())),
                }
            };
            tokio::pin!(committed);
            let out = tokio::select! {
                placed = local => match placed {
                    Ok(p) => Ok(p),
                    // The store dropped the ticket (a failed append): the commit tells why.
                    Err(_) => committed.await,
                },
                c = &mut committed => c,
            };
            shared.forget_ticket(ticket);
            out
        })
    }

    /// The voters of the group's current membership.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The nodes of the group's current membership (voters and learners).
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// On the leader: adds `nodes` as learners (non-voting replicas the leader replicates
    /// to), returning once the membership naming them is committed. Nodes already members
    /// are left as they are.
    pub async fn add_learners(&self, nodes: BTreeMap<NodeId, Node>) -> Result<(), ProposeError> {
        let members = self.members();
        let new: BTreeMap<NodeId, Node> = nodes.into_iter().filter(|(id, _)| !members.contains(id)).collect();
        if new.is_empty() {
            return Ok(());
        }
        self.change(ChangeMembers::AddNodes(new)).await
    }

    /// On the leader: makes `voters` the group's voters (each must be a member already),
    /// through a joint configuration; former voters leave the group. A leader that is not
    /// among `voters` steps down once the change is committed.
    pub async fn set_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), ProposeError> {
        if self.voters().into_iter().collect::<BTreeSet<_>>() == voters {
            return Ok(());
        }
        self.quiet.wake();
        match self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// On the leader: makes learner `id` a voter, through a joint configuration (a quorum
    /// of the old voters and one of the new commit it). Returns once that is committed.
    pub async fn add_voter(&self, id: NodeId) -> Result<(), ProposeError> {
        self.change(ChangeMembers::AddVoterIds([id].into_iter().collect()))
            .await
    }

    /// On the leader: makes voter `id` a learner (it keeps replicating the log but no longer
    /// votes or counts towards a quorum). A leader that removes itself still leads, as a
    /// learner, until it hands the leadership over (openraft lets a learner lead).
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), ProposeError> {
        self.change(ChangeMembers::RemoveVoters([id].into_iter().collect()))
            .await
    }

    /// On the leader: removes learners (nodes that were being added by a cancelled move).
    pub async fn remove_learners(&self, nodes: BTreeSet<NodeId>) -> Result<(), ProposeError> {
        let members = self.members();
        let voters: BTreeSet<NodeId> = self.voters().into_iter().collect();
        let gone: BTreeSet<NodeId> = nodes
            .into_iter()
            .filter(|n| members.contains(n) && !voters.contains(n))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.change(ChangeMembers::RemoveNodes(gone)).await
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<(), ProposeError> {
        self.quiet.wake();
        match self.raft.change_membership(change, true).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f.leader_id)),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// On the leader: how many entries `node`'s log is behind this one's (`None` when the
    /// leader has not yet matched its log, or is not the leader).
    pub fn lag_of(&self, node: NodeId) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let matched = m.replication.as_ref()?.get(&node)?.as_ref()?.index;
        Some(m.last_log_index.unwrap_or(0).saturating_sub(matched))
    }

    /// This replica leads and has applied an entry of its own term: everything committed
    /// by earlier leaders is applied here, so it may accept writes that depend on it.
    pub fn is_ready_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.node_id)
            && m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term)
            && !self.stalled(&m)
    }

    /// Lets the log drop every entry up to and including `upto` (retention, compaction):
    /// takes a snapshot (metadata only) and asks openraft to purge behind it.
    pub async fn purge_to(&self, upto: u64) -> Result<(), String> {
        let applied = self.shared.applied().last_applied.map(|l| l.index);
        if applied < Some(upto) {
            return Err(format!("cannot purge to {upto}: applied only to {applied:?}"));
        }
        self.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        let mut rx = self.raft.metrics();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|m| m.snapshot.map(|l| l.index) >= Some(upto)),
        )
        .await
        .map_err(|_| "snapshot not taken in time".to_string())?
        .map_err(|e| e.to_string())?;
        self.raft.trigger().purge_log(upto).await.map_err(|e| e.to_string())?;
        let mut rx = self.raft.metrics();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|m| m.purged.map(|l| l.index) >= Some(upto)),
        )
        .await
        .map_err(|_| "purge not done in time".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Whether the group's Raft core has stopped on a fatal error (a storage failure).
    pub fn is_stopped(&self) -> bool {
        self.raft.metrics().borrow().running_state.is_err()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// This replica leads and heard from a majority within the election timeout, or leads
    /// quietly under a node-level lease (see [`crate::liveness`]): it may serve reads. A
    /// leader cut off from its majority stops within that time.
    pub fn is_serving_leader(&self) -> bool {
        // The borrow ends before `lease_holds` borrows the same metrics again: a second read
        // lock taken by one thread while the Raft core waits to publish new metrics would
        // wait behind that writer, which waits behind the first: both threads stuck.
        let (leads, sole_voter, recent_quorum) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.state == ServerState::Leader && m.current_leader == Some(self.node_id) && !self.stalled(&m),
                m.membership_config.membership().voter_ids().eq([self.node_id]),
                m.millis_since_quorum_ack
                    .map(|ms| ms <= self.options.election_timeout_min_ms)
                    .unwrap_or(false),
            )
        };
        leads && (sole_voter || recent_quorum || self.quiet.lease_holds())
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id) && !self.stalled(&m)
    }

    /// Waiting for disk space with other voters around: this replica's Raft core is held in
    /// an append, so what its metrics say about leadership is stale. A sole voter still leads.
    fn stalled(&self, m: &openraft::RaftMetrics<u64, crate::Node>) -> bool {
        self.shared.write_stalled() && !m.membership_config.membership().voter_ids().eq([self.node_id])
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Asks this replica to start an election now (used to move leadership to a preferred
    /// replica).
    pub async fn elect(&self) {
        let _ = self.raft.trigger().elect().await;
    }

    /// Waits until some node leads the group, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let r = tokio::time::timeout(timeout, rx.wait_for(|m| m.current_leader.is_some())).await;
        match r {
            Ok(Ok(m)) => m.current_leader,
            _ => None,
        }
    }

    /// Stops the group's Raft instance and detaches it from the transport.
    pub async fn shutdown(&self) {
        if let Some(t) = &self.transport {
            t.unregister(&crate::group_key(&self.name, self.node_id));
        }
        let _ = self.raft.shutdown().await;
        self.shared.persist_applied();
        info!(group = %self.name, node = self.node_id, "group stopped");
    }
}
