//! Three replicas of one partition group over the real TCP transport on 127.0.0.1, each
//! with its log on disk: commits, failover, catch-up after restart, and an isolated leader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_log::{DiskLog, Entry, LogConfig};
use keel_proto::batch::{encode_batch, NewRecord};
use keel_raft::{Apply, Group, GroupOptions, Node, NodeId, ProposeError, Transport};
use tokio::net::TcpListener;

const GROUP: &str = "orders/0";

#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<(u64, i64, i64)>>,
}

impl Apply for Recorder {
    /// Kafka batches, placed as a partition places them.
    fn place(&self, payload: Bytes, base_offset: i64, term: u64) -> Result<keel_raft::Stored, String> {
        let (payload, offsets, max_timestamp) =
            keel_proto::batch::place(payload, base_offset, term as i32).map_err(|e| e.to_string())?;
        Ok(keel_raft::Stored {
            payload,
            offsets,
            max_timestamp,
        })
    }
    fn apply(&self, index: u64, base_offset: i64, next_offset: i64, _payload: &Bytes) -> Result<(), String> {
        self.applied.lock().unwrap().push((index, base_offset, next_offset));
        Ok(())
    }
}

struct Replica {
    id: NodeId,
    dir: PathBuf,
    transport: Arc<Transport>,
    group: Option<Group>,
}

fn batch(records: usize, tag: &str) -> Bytes {
    let recs: Vec<NewRecord> = (0..records)
        .map(|i| NewRecord {
            key: None,
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            timestamp: 1_700_000_000_000,
        })
        .collect();
    encode_batch(&recs, kafka_protocol::records::Compression::None).unwrap()
}

async fn start_group(id: NodeId, dir: &Path, transport: Arc<Transport>) -> Group {
    let log = DiskLog::open(dir, LogConfig::default()).unwrap();
    Group::start(
        GROUP,
        id,
        transport,
        Box::new(log),
        Some(dir.to_path_buf()),
        None,
        Arc::new(Recorder::default()),
        GroupOptions::default(),
    )
    .await
    .unwrap()
}

async fn cluster(root: &Path) -> (Vec<Replica>, BTreeMap<NodeId, Node>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut replicas = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let transport = Transport::new(id);
        tokio::spawn(transport.clone().serve(listener));
        transport.start_pings();
        members.insert(id, Node { addr });
        let dir = root.join(format!("n{id}"));
        replicas.push(Replica {
            id,
            dir,
            transport,
            group: None,
        });
    }
    for r in &mut replicas {
        for (id, n) in &members {
            r.transport.set_peer(*id, n.addr.clone());
        }
        r.group = Some(start_group(r.id, &r.dir, r.transport.clone()).await);
    }
    for r in &replicas {
        r.group.as_ref().unwrap().initialize(members.clone()).await.unwrap();
    }
    (replicas, members)
}

/// Waits for a replica (among those running and not excluded) to lead; returns its position.
async fn leader_of(replicas: &[Replica], exclude: Option<NodeId>, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if Some(r.id) == exclude {
                continue;
            }
            if let Some(g) = &r.group {
                if g.is_leader() {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_entries(g: &Group) -> Vec<Entry> {
    let log = g.shared.log();
    log.read(log.first_index(), usize::MAX).unwrap()
}

/// Data entries only: (offset, count, payload). Raft positions may differ in blank entries?
/// No: every replica's log is the same sequence; compare whole entries.
async fn wait_converged(replicas: &[Replica], next_offset: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = replicas
            .iter()
            .filter_map(|r| r.group.as_ref())
            .all(|g| g.shared.applied().next_offset == next_offset);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge on offset {next_offset}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs: Vec<Vec<Entry>> = replicas
        .iter()
        .filter_map(|r| r.group.as_ref())
        .map(all_entries)
        .collect();
    for l in &logs[1..] {
        assert_eq!(l.len(), logs[0].len(), "replica logs differ in length");
        assert!(l == &logs[0], "replica logs differ");
    }
}

async fn propose_n(g: &Group, n: usize, records: usize, tag: &str, expect_base: i64) -> i64 {
    let mut next = expect_base;
    for i in 0..n {
        let a = g.propose(batch(records, &format!("{tag}{i}"))).await.unwrap();
        assert_eq!(a.base_offset, next, "offsets are contiguous across proposals");
        next = a.next_offset;
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_fail_over_and_catch_up() {
    let root = tempfile::tempdir().unwrap();
    let (mut replicas, _) = cluster(root.path()).await;
    let l = leader_of(&replicas, None, Duration::from_secs(5)).await;

    // A follower refuses proposals and names the leader (once the leader's first append
    // has told it who leads).
    let f = (l + 1) % 3;
    let mut rx = replicas[f].group.as_ref().unwrap().raft.metrics();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|m| m.current_leader.is_some()))
        .await
        .expect("the follower learns of the leader")
        .unwrap();
    drop(rx);
    let err = replicas[f]
        .group
        .as_ref()
        .unwrap()
        .propose(batch(1, "x"))
        .await
        .unwrap_err();
    assert_eq!(err, ProposeError::NotLeader(Some(replicas[l].id)));

    let next = propose_n(replicas[l].group.as_ref().unwrap(), 50, 3, "a", 0).await;
    assert_eq!(next, 150);
    wait_converged(&replicas, 150, Duration::from_secs(5)).await;

    // The leader dies: its group stops and its transport goes silent.
    let dead = replicas[l].id;
    let killed_at = Instant::now();
    replicas[l].group.take().unwrap().shutdown().await;
    for r in &replicas {
        r.transport.cut(dead, true);
    }
    let l2 = leader_of(&replicas, Some(dead), Duration::from_secs(5)).await;
    let next = propose_n(replicas[l2].group.as_ref().unwrap(), 1, 1, "first-after-failover", 150).await;
    eprintln!(
        "failover: first write acknowledged {:?} after the leader stopped",
        killed_at.elapsed()
    );
    assert!(killed_at.elapsed() < Duration::from_secs(3));
    let next = propose_n(replicas[l2].group.as_ref().unwrap(), 49, 3, "b", next).await;
    assert_eq!(next, 151 + 147);

    // The old leader comes back from its own disk and catches up.
    for r in &replicas {
        r.transport.cut(dead, false);
    }
    let t = replicas[l].transport.clone();
    replicas[l].group = Some(start_group(dead, &replicas[l].dir.clone(), t).await);
    wait_converged(&replicas, next, Duration::from_secs(10)).await;
    for r in &mut replicas {
        r.group.take().unwrap().shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_stops_acknowledging_and_rejoins_as_follower() {
    let root = tempfile::tempdir().unwrap();
    let (mut replicas, _) = cluster(root.path()).await;
    let l = leader_of(&replicas, None, Duration::from_secs(5)).await;
    let next = propose_n(replicas[l].group.as_ref().unwrap(), 10, 2, "a", 0).await;
    wait_converged(&replicas, next, Duration::from_secs(5)).await;

    // Cut the leader off from both followers, in both directions.
    let old = replicas[l].id;
    for r in &replicas {
        if r.id != old {
            r.transport.cut(old, true);
            replicas[l].transport.cut(r.id, true);
        }
    }
    let old_group = replicas[l].group.as_ref().unwrap();
    let stale = tokio::time::timeout(Duration::from_secs(2), old_group.propose(batch(1, "lost"))).await;
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "an isolated leader acknowledged a write: {stale:?}"
    );
    assert!(
        !old_group.is_serving_leader(),
        "an isolated leader still claims a quorum"
    );

    let l2 = leader_of(&replicas, Some(old), Duration::from_secs(5)).await;
    let next = propose_n(replicas[l2].group.as_ref().unwrap(), 10, 2, "b", next).await;

    // Heal: the old leader drops its unacknowledged entry and follows.
    for r in &replicas {
        r.transport.cut(old, false);
        replicas[l].transport.cut(r.id, false);
    }
    wait_converged(&replicas, next, Duration::from_secs(10)).await;
    assert!(!replicas[l].group.as_ref().unwrap().is_leader());
    let has_lost = all_entries(replicas[l].group.as_ref().unwrap())
        .iter()
        .any(|e| e.payload.windows(4).any(|w| w == b"lost"));
    assert!(!has_lost, "the unacknowledged write survived on the old leader");
    for r in &mut replicas {
        r.group.take().unwrap().shutdown().await;
    }
}

/// A leader-local acknowledgement (acks=1) comes once the leader's own log has the entry
/// durably, without waiting for a majority: with the followers cut off it still arrives,
/// at the offset the log gave the entry, while the commit does not; once the links heal,
/// the same entry commits at that offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_acknowledgement_does_not_wait_for_the_majority() {
    let root = tempfile::tempdir().unwrap();
    let (mut replicas, _) = cluster(root.path()).await;
    let l = leader_of(&replicas, None, Duration::from_secs(5)).await;
    let next = propose_n(replicas[l].group.as_ref().unwrap(), 3, 2, "a", 0).await;
    wait_converged(&replicas, next, Duration::from_secs(5)).await;

    let leader = replicas[l].id;
    for r in &replicas {
        if r.id != leader {
            r.transport.cut(leader, true);
            replicas[l].transport.cut(r.id, true);
        }
    }
    let g = replicas[l].group.as_ref().unwrap();
    let local = g.propose_start_local(batch(5, "local")).await.expect("proposed");
    let placed = tokio::time::timeout(Duration::from_secs(2), local)
        .await
        .expect("no local acknowledgement without a majority")
        .expect("local acknowledgement failed");
    assert_eq!(placed.base_offset, next, "placed at the log's next offset");
    let commit = g.propose_start(batch(1, "needs-majority")).await.expect("proposed");
    tokio::pin!(commit);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut commit)
            .await
            .is_err(),
        "committed without a majority"
    );
    assert_eq!(
        g.shared.applied().next_offset,
        next,
        "the unreplicated entry became visible"
    );

    for r in &replicas {
        if r.id != leader {
            r.transport.cut(leader, false);
            replicas[l].transport.cut(r.id, false);
        }
    }
    // The leader may keep its term (the entries then commit) or lose it to a follower that
    // timed out (they are dropped, as acks=1 allows). Either way every replica agrees.
    let after = match tokio::time::timeout(Duration::from_secs(10), &mut commit).await {
        Ok(Ok(a)) => {
            assert_eq!(a.base_offset, next + 5, "the local entry was not committed before it");
            a.next_offset
        }
        _ => {
            let l2 = leader_of(&replicas, None, Duration::from_secs(10)).await;
            replicas[l2].group.as_ref().unwrap().shared.applied().next_offset
        }
    };
    wait_converged(&replicas, after, Duration::from_secs(10)).await;
    for r in &mut replicas {
        r.group.take().unwrap().shutdown().await;
    }
}

/// Applies every entry except those that read "unreadable", which it cannot apply.
#[derive(Default)]
struct Picky {
    applied: Mutex<Vec<Bytes>>,
}

impl Apply for Picky {
    fn apply(&self, _index: u64, _base: i64, _next: i64, payload: &Bytes) -> Result<(), String> {
        if &payload[..] == b"unreadable" {
            return Err("cannot read this entry".into());
        }
        self.applied.lock().unwrap().push(payload.clone());
        Ok(())
    }
}

async fn single_voter(dir: &Path, hook: Arc<dyn Apply>) -> (Group, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let transport = Transport::new(1);
    tokio::spawn(transport.clone().serve(listener));
    let log = DiskLog::open(dir, LogConfig::default()).unwrap();
    let g = Group::start(
        GROUP,
        1,
        transport,
        Box::new(log),
        Some(dir.to_path_buf()),
        None,
        hook,
        GroupOptions::default(),
    )
    .await
    .unwrap();
    (g, addr)
}

async fn until_leader(g: &Group) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.is_ready_leader() {
        assert!(Instant::now() < deadline, "a single voter did not lead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A log that, at open, ends before entries the replica had applied (its disk lost
/// writes) is damage: the group reports what it lost and holds its vote, instead of
/// starting as a shorter but clean log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_shorter_than_what_was_applied_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (g, addr) = single_voter(dir.path(), Arc::new(Picky::default())).await;
    g.initialize(BTreeMap::from([(1, Node { addr })])).await.unwrap();
    until_leader(&g).await;
    let mut last = 0;
    for i in 0..5 {
        last = g.propose(Bytes::from(format!("entry-{i}"))).await.unwrap().index;
    }
    g.shared.persist_applied();
    g.shutdown().await;
    drop(g);
    // Reopened untouched: nothing lost.
    let (g, _) = single_voter(dir.path(), Arc::new(Picky::default())).await;
    assert_eq!(g.shared.lost_through(), None);
    g.shutdown().await;
    drop(g);
    // The disk dropped the last two entries.
    {
        let mut log = DiskLog::open(dir.path(), LogConfig::default()).unwrap();
        keel_log::LogStore::truncate_after(&mut log, last - 2).unwrap();
    }
    let (g, _) = single_voter(dir.path(), Arc::new(Picky::default())).await;
    assert_eq!(g.shared.lost_through(), Some(last));
    g.shutdown().await;
}

/// A committed entry the application cannot apply stops the group on that replica: it
/// neither skips the entry nor applies anything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_applied_stops_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(Picky::default());
    let (g, addr) = single_voter(dir.path(), hook.clone()).await;
    g.initialize(BTreeMap::from([(1, Node { addr })])).await.unwrap();
    until_leader(&g).await;
    g.propose(Bytes::from_static(b"first")).await.unwrap();
    assert!(g.propose(Bytes::from_static(b"unreadable")).await.is_err());
    assert!(
        g.propose(Bytes::from_static(b"after")).await.is_err(),
        "the group went on after an entry it could not apply"
    );
    assert!(
        g.raft.metrics().borrow().running_state.is_err(),
        "the group did not stop"
    );
    assert_eq!(*hook.applied.lock().unwrap(), vec![Bytes::from_static(b"first")]);
}
