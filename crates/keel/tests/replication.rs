//! Three `keel serve` processes forming one cluster, driven by librdkafka (the rdkafka
//! crate): an RF=3 topic keeps every acknowledged write through a leader's kill -9, a
//! leader's SIGSTOP and the old leader's return, and a new leader takes writes quickly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{join_cluster, start_cluster, Keel};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TOPIC: &str = "ha";

/// Each test runs a cluster of three or four processes; on a small machine, running them
/// side by side starves their timers (elections, sessions). They take turns.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bootstrap(nodes: &[Keel]) -> String {
    nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",")
}

/// librdkafka's log lines go to the test's stderr.
struct Logs;
impl rdkafka::ClientContext for Logs {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        eprintln!("rdkafka {fac}: {msg}");
    }
}

fn producer(bootstrap: &str) -> FutureProducer<Logs> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "100")
        // A paused (SIGSTOP) leader keeps its connections open: the client gives up on a
        // request after this long and retries against the new leader.
        .set("request.timeout.ms", "3000")
        .set("socket.timeout.ms", "3000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("message.timeout.ms", "60000")
        .create_with_context(Logs)
        .expect("producer")
}

/// The node id leading partition 0 of `TOPIC`, as Metadata reports it.
fn leader(bootstrap: &str) -> Option<i32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c.fetch_metadata(Some(TOPIC), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == TOPIC)?;
    let p = t.partitions().first()?;
    (p.error().is_none() && p.leader() >= 0).then_some(p.leader())
}

async fn wait_leader(bootstrap: &str, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = leader(bootstrap) {
            if Some(l) != not {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `n` messages one at a time; returns (value, offset, acknowledged at).
async fn send(p: &FutureProducer<Logs>, from: usize, n: usize) -> Vec<(String, i64, Instant)> {
    let mut out = Vec::new();
    for i in from..from + n {
        let value = format!("m-{i:06}");
        let r = p
            .send(
                FutureRecord::<(), _>::to(TOPIC).partition(0).payload(&value),
                Duration::from_secs(60),
            )
            .await;
        match r {
            Ok(d) => out.push((value, d.offset, Instant::now())),
            Err((e, _)) => panic!("message {value} not delivered: {e}"),
        }
    }
    out
}

fn read_all(bootstrap: &str, expect: usize) -> Vec<(i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ha-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            got.push((m.offset(), v));
        }
    }
    got
}

/// Creates `TOPIC`: one partition, three replicas (through librdkafka's admin client).
async fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
}

/// Every acknowledged message was read back exactly once, at the offset it was
/// acknowledged with, in the order it was sent, and nothing else was.
fn assert_exactly_the_acknowledged(got: &[(i64, String)], acked: &[(String, i64, Instant)]) {
    let by_value: BTreeMap<&str, i64> = got.iter().map(|(o, v)| (v.as_str(), *o)).collect();
    assert_eq!(by_value.len(), got.len(), "a value appears twice");
    for (value, offset, _) in acked {
        assert_eq!(
            by_value.get(value.as_str()),
            Some(offset),
            "acknowledged {value} lost or moved"
        );
    }
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets not increasing");
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "records out of order");
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
}

fn node_of(nodes: &mut [Keel], id: i32) -> &mut Keel {
    &mut nodes[(id - 1) as usize]
}

fn pid(k: &Keel) -> String {
    k.pid().expect("running").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kill_pause_and_return() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    let mut acked = send(&p, 0, 300).await;

    // 1. kill -9 the leader: a new one is elected and takes the next write.
    let first = wait_leader(&bs, None).await;
    let killed_at = Instant::now();
    node_of(&mut nodes, first).kill9();
    let after = send(&p, 300, 300).await;
    let gap = after[0].2 - killed_at;
    eprintln!("kill -9 of leader {first}: first acknowledged write {gap:?} later");
    acked.extend(after);
    let second = wait_leader(&bs, Some(first)).await;
    assert_ne!(second, first);

    // 2. The old leader returns from its disk and catches up.
    node_of(&mut nodes, first).restart();
    acked.extend(send(&p, 600, 300).await);

    // 3. SIGSTOP the current leader: it stops answering; the others carry on without it.
    let paused = wait_leader(&bs, None).await;
    let paused_pid = pid(node_of(&mut nodes, paused));
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &paused_pid])
        .status()
        .unwrap()
        .success());
    let stopped_at = Instant::now();
    let after = send(&p, 900, 300).await;
    eprintln!(
        "SIGSTOP of leader {paused}: first acknowledged write {:?} later",
        after[0].2 - stopped_at
    );
    acked.extend(after);
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &paused_pid])
        .status()
        .unwrap()
        .success());
    acked.extend(send(&p, 1200, 300).await);

    // Every acknowledged message is there exactly once, at the offset it was acknowledged
    // with, in the order it was sent.
    let got = read_all(&bs, acked.len());
    assert_exactly_the_acknowledged(&got, &acked);
}

/// The leader of `partition` of `topic`, as Metadata reports it.
fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> Option<i32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    (p.error().is_none() && p.leader() >= 0).then_some(p.leader())
}

/// A consumer group's committed offset survives a kill -9 of the node coordinating the
/// group: the offsets are replicated, and the new coordinator replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_the_coordinator_dying() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    let p = producer(&bs);
    for i in 0..100 {
        let v = format!("r-{i}");
        p.send(
            FutureRecord::<(), _>::to("resume").partition(0).payload(&v),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    }
    let consumer = |bs: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bs)
            .set("group.id", "resumers")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("socket.timeout.ms", "3000")
            .create()
            .expect("consumer")
    };
    {
        let c = consumer(&bs);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("resume", 0, Offset::Offset(42)).unwrap();
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).expect("commit");
    }
    let coordinator = leader_of(&bs, "__consumer_offsets", 0).expect("coordinator");
    node_of(&mut nodes, coordinator).kill9();
    let live: Vec<String> = nodes
        .iter()
        .filter(|k| k.pid().is_some())
        .map(|k| k.kafka.clone())
        .collect();
    let live = live.join(",");
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = consumer(&live);
    c.subscribe(&["resume"]).unwrap();
    let first = loop {
        assert!(Instant::now() < deadline, "the group did not resume");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            break m.offset();
        }
    };
    assert_eq!(first, 42, "the group resumed somewhere else than its committed offset");
    let new = leader_of(&live, "__consumer_offsets", 0).expect("new coordinator");
    assert_ne!(new, coordinator);
}

/// How many entries `replica` is behind, as the leader's /metrics reports it.
fn replica_lag(k: &Keel, replica: i32) -> Option<i64> {
    let (_, text) = k.http_get("/metrics");
    let want = format!("keel_replica_lag_entries{{topic=\"{TOPIC}\",partition=\"0\",replica=\"{replica}\"}}");
    text.lines()
        .find(|l| l.starts_with(&want))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// A flipped byte in one follower's closed segment and a cut tail on another's, made while
/// both are stopped: at restart the damaged log is cut back at the bad entry and both
/// re-fetch from the leader; once the leader is gone, the repaired pair serves every
/// acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_replicas_repair_from_the_leader() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--segment-bytes", "16384"]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    let mut acked = send(&p, 0, 600).await;
    let leader = wait_leader(&bs, None).await;
    let followers: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    let (flipped, cut) = (followers[0], followers[1]);
    for f in &followers {
        node_of(&mut nodes, *f).kill9();
    }
    let log_dir = |n: i32| root.path().join(format!("node-{n}/topics/{TOPIC}/0"));
    let segments = |n: i32| {
        let mut v: Vec<_> = std::fs::read_dir(log_dir(n))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().map(|x| x == "log").unwrap_or(false))
            .collect();
        v.sort();
        v
    };
    let first = segments(flipped).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    assert!(segments(flipped).len() > 1, "the test needs a closed segment");
    bytes[2000] ^= 0x40;
    std::fs::write(&first, bytes).unwrap();
    let last = segments(cut).into_iter().last().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len.saturating_sub(700))
        .unwrap();

    node_of(&mut nodes, flipped).restart();
    node_of(&mut nodes, cut).restart();
    acked.extend(send(&p, 600, 200).await);
    let repaired = node_of(&mut nodes, flipped).http_get("/metrics").1;
    assert!(
        repaired.lines().any(|l| l == "keel_repaired_replicas_total 1"),
        "{repaired}"
    );

    // Both damaged replicas catch up with the leader ...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let k = node_of(&mut nodes, leader);
        if followers.iter().all(|f| replica_lag(k, *f) == Some(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "damaged replicas did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... and without it serve every acknowledged message.
    node_of(&mut nodes, leader).kill9();
    let live: Vec<String> = nodes
        .iter()
        .filter(|k| k.pid().is_some())
        .map(|k| k.kafka.clone())
        .collect();
    let live = live.join(",");
    acked.extend(send(&producer(&live), 800, 100).await);
    let got = read_all(&live, acked.len());
    assert_exactly_the_acknowledged(&got, &acked);
}

/// A network partition isolates the leader from both followers (links cut inside each
/// node with fault injection; clients still reach every node). The isolated leader
/// acknowledges nothing and refuses reads; the majority elects a leader and takes writes;
/// after healing, the write sent to the isolated side is gone and every acknowledged one
/// is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_acknowledges_nothing_and_the_majority_carries_on() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--fault-injection"]);
    let bs = bootstrap(&nodes);
    let p = producer(&bs);
    let mut acked = send(&p, 0, 200).await;
    let old = wait_leader(&bs, None).await;
    let others: Vec<i32> = (1..=3).filter(|n| *n != old).collect();
    let list = |v: &[i32]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let (status, _) = node_of(&mut nodes, old).http_post(&format!("/fault/cut?peers={}", list(&others)));
    assert_eq!(status, 200);
    for o in &others {
        let (status, _) = node_of(&mut nodes, *o).http_post(&format!("/fault/cut?peers={old}"));
        assert_eq!(status, 200);
    }

    // A client that only reaches the isolated node gets no acknowledgement ...
    let isolated = node_of(&mut nodes, old).kafka.clone();
    let lonely: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &isolated)
        .set("acks", "all")
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    let r = lonely
        .send(
            FutureRecord::<(), _>::to(TOPIC).partition(0).payload("minority-write"),
            Duration::from_secs(10),
        )
        .await;
    assert!(r.is_err(), "the isolated leader acknowledged a write: {r:?}");
    // ... and cannot read from it.
    let mut c = keel_client::Client::connect(&isolated).await.unwrap();
    assert!(
        c.fetch(TOPIC, 0, 0, 100, 1 << 20).await.is_err(),
        "the isolated leader served a read"
    );

    // The majority elects a leader and takes writes.
    let majority = others
        .iter()
        .map(|o| node_of(&mut nodes, *o).kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let new = wait_leader(&majority, Some(old)).await;
    assert_ne!(new, old);
    acked.extend(send(&producer(&majority), 200, 200).await);

    // Heal: the old leader follows, and its unacknowledged write is gone.
    for n in 1..=3 {
        let (status, _) = node_of(&mut nodes, n).http_post("/fault/heal");
        assert_eq!(status, 200);
    }
    acked.extend(send(&p, 400, 100).await);
    let got = read_all(&bs, acked.len());
    assert!(
        !got.iter().any(|(_, v)| v == "minority-write"),
        "an unacknowledged write survived"
    );
    assert_exactly_the_acknowledged(&got, &acked);
}

/// On four nodes with a replication factor of 2, every node hosts only some partitions:
/// each node's Metadata still names the leader of every partition (as the leaders report
/// themselves), all four agree, every node runs (each holds `__consumer_offsets`), and a
/// librdkafka producer bootstrapped from one node writes to every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_names_the_leaders_of_partitions_it_does_not_host() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 4, &[]);
    let bs = bootstrap(&nodes);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .expect("admin");
    let r = admin
        .create_topics(
            &[NewTopic::new("spread", 8, TopicReplication::Fixed(2))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    assert!(r[0].is_ok(), "{:?}", r[0]);

    // Each node alone answers Metadata for all eight partitions with the same leaders.
    let deadline = Instant::now() + Duration::from_secs(30);
    let views = loop {
        let mut views = Vec::new();
        for k in &nodes {
            let mut c = keel_client::Client::connect(&k.kafka).await.expect("connect");
            let md = c.metadata(Some(&["spread"])).await.expect("metadata");
            let t = md.topics.first().expect("topic");
            let mut leaders: Vec<(i32, i32, Vec<i32>)> = t
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.partition_index,
                        p.leader_id.0,
                        p.replica_nodes.iter().map(|n| n.0).collect(),
                    )
                })
                .collect();
            leaders.sort();
            views.push(leaders);
        }
        let complete = views
            .iter()
            .all(|v| v.len() == 8 && v.iter().all(|(_, leader, replicas)| replicas.contains(leader)));
        if complete && views.iter().all(|v| v == &views[0]) {
            break views;
        }
        assert!(Instant::now() < deadline, "nodes disagree or miss leaders: {views:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (p, _, replicas) in &views[0] {
        assert_eq!(replicas.len(), 2, "partition {p}: {replicas:?}");
    }
    // Some node hosts fewer than all partitions, so the check above was not vacuous.
    let hosted_by_1 = views[0].iter().filter(|(_, _, r)| r.contains(&1)).count();
    assert!(hosted_by_1 < 8);

    let p = producer(&nodes[0].kafka);
    for partition in 0..8 {
        p.send(
            FutureRecord::<(), _>::to("spread").partition(partition).payload("x"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("partition {partition}: {:?}", e.0));
    }
    // acks=1 (the leader's durable local append): acknowledged at consecutive offsets, and
    // every record becomes readable once the followers have it.
    let quick: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &nodes[0].kafka)
        .set("acks", "1")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("acks=1 producer");
    let mut offsets = Vec::new();
    for i in 0..50 {
        let delivery = quick
            .send(
                FutureRecord::<(), _>::to("spread")
                    .partition(3)
                    .payload(&format!("one-{i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("acks=1 write {i}: {:?}", e.0));
        offsets.push(delivery.offset);
    }
    assert_eq!(offsets, (1..51).collect::<Vec<i64>>());
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "spread-readers")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("spread", 3, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 51 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(got.len(), 51, "acks=1 records not all readable");
    assert_eq!(got[1], "one-0");
    assert_eq!(got[50], "one-49");
}

/// The replicas of partition 0 of `TOPIC` and the ids of the nodes Metadata lists.
fn replicas_and_nodes(bootstrap: &str) -> Option<(Vec<i32>, Vec<i32>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c.fetch_metadata(Some(TOPIC), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == TOPIC)?;
    let replicas = t.partitions().first()?.replicas().to_vec();
    Some((replicas, md.brokers().iter().map(|b| b.id()).collect()))
}

/// A fourth node joins the running cluster; the partition's leader is drained (its replica
/// moves to the new node while a producer writes); the partition moves back onto the
/// drained node and off the new one; one of the replicas that never moved is killed and
/// the new node restarts: every acknowledged write is still there, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_takes_over_a_drained_node_s_replica() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    // Every move here is asked for by hand (replica balancing, which would give the new
    // node replicas by itself, is tested in self_healing.rs).
    let manual = ["--balance-replicas", "false"];
    let mut nodes = start_cluster(root.path(), 3, &manual);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    let mut acked = send(&p, 0, 200).await;

    let mut fourth = join_cluster(root.path(), &nodes, 4, &manual);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replicas_and_nodes(&bs).map(|(_, n)| n.contains(&4)).unwrap_or(false) {
        assert!(Instant::now() < deadline, "node 4 never showed in Metadata");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Drain the leader while writes go on.
    let drained = wait_leader(&bs, None).await;
    let writer = {
        let p = p.clone();
        tokio::spawn(async move { send(&p, 200, 400).await })
    };
    let (bs2, node) = (bs.clone(), drained.to_string());
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::keel_cli(&[
            "cluster",
            "drain",
            "-b",
            &bs2,
            "--node",
            &node,
            "--wait",
            "--timeout-s",
            "120",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "drain failed: {out}");
    acked.extend(writer.await.unwrap());
    let (replicas, _) = replicas_and_nodes(&bs).expect("metadata");
    assert!(
        !replicas.contains(&drained),
        "node {drained} still holds a replica: {replicas:?}"
    );
    assert!(replicas.contains(&4), "the new node took no replica: {replicas:?}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let (ok, out) = common::keel_cli(&["cluster", "moves", "-b", &bs]);
    assert!(ok && out.contains("0 moves in progress"), "{out}");

    // The drained node is one of the controller's voters, which stay in the registry:
    // removing it is refused.
    let (ok, out) = common::keel_cli(&["cluster", "remove-node", "-b", &bs, "--node", &drained.to_string()]);
    assert!(!ok && out.contains("controller voter"), "{out}");

    // The partition moves back onto the drained node (a new incarnation of its replica)
    // and off the new one, while writes go on.
    let stay: Vec<i32> = replicas.iter().copied().filter(|n| *n != 4).collect();
    let back = format!("{drained},{},{}", stay[0], stay[1]);
    let writer = {
        let p = p.clone();
        tokio::spawn(async move { send(&p, 600, 200).await })
    };
    let bs2 = bs.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::keel_cli(&[
            "cluster",
            "reassign",
            "-b",
            &bs2,
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--replicas",
            &back,
            "--wait",
            "--timeout-s",
            "120",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "move back failed: {out}");
    acked.extend(writer.await.unwrap());
    let (mut now, _) = replicas_and_nodes(&bs).expect("metadata");
    now.sort_unstable();
    let mut want = vec![drained, stay[0], stay[1]];
    want.sort_unstable();
    assert_eq!(now, want);

    // One of the replicas that never moved dies: the returned replica and the other one
    // carry on. The joined node restarts (it rejoins from its own data).
    node_of(&mut nodes, stay[0]).kill9();
    let rest: Vec<String> = nodes
        .iter()
        .filter(|k| k.child.is_some())
        .map(|k| k.kafka.clone())
        .chain([fourth.kafka.clone()])
        .collect();
    let bs = rest.join(",");
    let p = producer(&bs);
    acked.extend(send(&p, 800, 100).await);
    fourth.restart();
    acked.extend(send(&p, 900, 100).await);

    let got = read_all(&bs, acked.len());
    assert_exactly_the_acknowledged(&got, &acked);

    // The joined node leaves: drained (its __consumer_offsets replica moves to the node
    // without one), stopped, and removed from the registry.
    let (ok, out) = common::keel_cli(&[
        "cluster",
        "drain",
        "-b",
        &bs,
        "--node",
        "4",
        "--wait",
        "--timeout-s",
        "120",
    ]);
    assert!(ok, "drain of node 4 failed: {out}");
    fourth.kill9();
    let bs: String = nodes
        .iter()
        .filter(|k| k.child.is_some())
        .map(|k| k.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let (ok, out) = common::keel_cli(&["cluster", "remove-node", "-b", &bs, "--node", "4"]);
    assert!(ok, "remove-node 4 failed: {out}");
    let (_, nodes_now) = replicas_and_nodes(&bs).expect("metadata");
    assert!(!nodes_now.contains(&4), "{nodes_now:?}");
    let (ok, out) = common::keel_cli(&["cluster", "status", "-b", &bs]);
    assert!(ok && !out.lines().any(|l| l.starts_with("4\t")), "{out}");
    // The consumer group coordinator still answers: commit and read back an offset.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "after-the-moves")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(42)).unwrap();
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).expect("commit");
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
    assert_eq!(
        committed.find_partition(TOPIC, 0).map(|e| e.offset()),
        Some(Offset::Offset(42))
    );
}

/// Reordering a partition's replicas makes another one preferred, and its leader hands
/// leadership over to it. Three reorders take leadership round all three replicas and
/// back to the first: a replica that handed leadership over takes writes again when it
/// leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_goes_round_the_replicas_and_each_leader_takes_writes() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    let mut acked = send(&p, 0, 20).await;
    let mut leaders = vec![wait_leader(&bs, None).await];
    for round in 1..=3 {
        let (mut order, _) = replicas_and_nodes(&bs).expect("metadata");
        // The current leader goes last; the next replica becomes the preferred one.
        let at = order
            .iter()
            .position(|r| *r == *leaders.last().unwrap())
            .expect("leader is a replica");
        order.rotate_left(at + 1);
        let want = order[0];
        let list = order.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
        let (ok, out) = common::keel_cli(&[
            "cluster",
            "reassign",
            "-b",
            &bs,
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--replicas",
            &list,
            "--wait",
            "--timeout-s",
            "60",
        ]);
        assert!(ok, "reorder to {list} failed: {out}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while leader(&bs) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "round {round}: node {want} never led (order {list})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        leaders.push(want);
        let sent = send(&p, round * 20, 20).await;
        assert_eq!(sent.len(), 20, "round {round}: node {want} leads and takes writes");
        acked.extend(sent);
    }
    assert_eq!(
        leaders.first(),
        leaders.last(),
        "leadership came back to the first leader: {leaders:?}"
    );
    let mut distinct = leaders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "every replica led once: {leaders:?}");
    let got = read_all(&bs, acked.len());
    assert_exactly_the_acknowledged(&got, &acked);
}

/// Moves are throttled: with `--move-throttle-bytes-per-s 250000`, moving a partition of
/// about 2.5 MB to another node takes at least about as long as the rate allows, and the
/// moved partition holds every acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_copies_no_faster_than_the_move_throttle() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &["--move-throttle-bytes-per-s", "250000"]);
    let bs = bootstrap(&nodes);
    common::create_topic(&bs, "throttled", 1, 1).await;
    let p = producer(&bs);
    let value = "t".repeat(10_000);
    let mut acked = Vec::new();
    for i in 0..250 {
        let v = format!("{i:04}-{value}");
        let d = p
            .send(
                FutureRecord::<(), _>::to("throttled").partition(0).payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        acked.push((d.partition, d.offset, v));
    }
    let from = leader_of(&bs, "throttled", 0).expect("a leader");
    let to = (1..=3).find(|n| *n != from).unwrap();
    let started = Instant::now();
    let bs2 = bs.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::keel_cli(&[
            "cluster",
            "reassign",
            "-b",
            &bs2,
            "--topic",
            "throttled",
            "--partition",
            "0",
            "--replicas",
            &to.to_string(),
            "--wait",
            "--timeout-s",
            "120",
        ])
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(ok, "move from {from} to {to}: {out}");
    // 2.5 MB at 250 kB/s: ten seconds; the bucket may lend one second's worth.
    assert!(took >= Duration::from_secs(7), "the move took {took:?}: not throttled");
    eprintln!("a 2.5 MB partition moved in {took:?} at 250 kB/s");
    let got = common::read_from_start(&bs, "throttled", 1, acked.len(), Duration::from_secs(60));
    let wm = {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
        c.fetch_watermarks("throttled", 0, Duration::from_secs(10))
    };
    assert_eq!(
        got.len(),
        acked.len(),
        "records read back after the move (watermarks {wm:?}, leader {:?})",
        leader_of(&bs, "throttled", 0)
    );
    for (partition, offset, v) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(v),
            "acknowledged record at {offset} lost"
        );
    }
}

/// A byte flips in the leader's closed segment while it runs. The consumer reading it gets
/// KAFKA_STORAGE_ERROR instead of bad data; the leader reopens its replica, which cuts
/// the log back at the damage and steps down; a consumer reads everything from the new
/// leader. The repaired replica re-fetches what it cut, takes its leadership back, and
/// then serves every acknowledged message itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_damaged_while_running_repairs_itself() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--segment-bytes", "16384"]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    let mut acked = send(&p, 0, 600).await;
    let damaged = wait_leader(&bs, None).await;
    let dir = root.path().join(format!("node-{damaged}/topics/{TOPIC}/0"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "log").unwrap_or(false))
        .collect();
    segments.sort();
    assert!(segments.len() > 1, "the test needs a closed segment");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[2000] ^= 0x40;
    std::fs::write(&segments[0], bytes).unwrap();

    assert_exactly_the_acknowledged(&read_all(&bs, acked.len()), &acked);
    let metrics = node_of(&mut nodes, damaged).http_get("/metrics").1;
    assert!(
        metrics.lines().any(|l| l == "keel_repaired_replicas_total 1"),
        "node {damaged} did not repair its replica"
    );
    acked.extend(send(&p, 600, 100).await);

    // The repaired replica, the preferred leader, leads again once it has caught up ...
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader(&bs) != Some(damaged) {
        assert!(Instant::now() < deadline, "node {damaged} never led again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... and serves every acknowledged message from its repaired log.
    assert_exactly_the_acknowledged(&read_all(&bs, acked.len()), &acked);
}

/// Nodes restarted while `__consumer_offsets` is idle (its group quiet, so its leader sends
/// them nothing until it has something to send) still point a client that asks them for
/// the group coordinator at the leader, and the client reads the group's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_names_the_group_coordinator_of_a_quiet_offsets_topic() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "quiet-commits")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(42)).unwrap();
    committer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    drop(committer);
    // Every node but the coordinator restarts, after the offsets topic had time to go
    // quiet (1 s without writes, then a report round).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let coordinator = {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
        let md = admin
            .inner()
            .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(5))
            .unwrap();
        md.topics()[0].partitions()[0].leader()
    };
    assert!(coordinator > 0, "__consumer_offsets has no leader");
    for id in (1..=3).filter(|id| *id != coordinator) {
        node_of(&mut nodes, id).restart();
    }
    let restarted = (1..=3).find(|id| *id != coordinator).unwrap();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", node_of(&mut nodes, restarted).kafka.clone())
        .set("group.id", "quiet-commits")
        .create()
        .unwrap();
    let mut want = TopicPartitionList::new();
    want.add_partition(TOPIC, 0);
    let got = reader
        .committed_offsets(want, Duration::from_secs(20))
        .expect("the restarted node named no coordinator");
    assert_eq!(got.find_partition(TOPIC, 0).unwrap().offset(), Offset::Offset(42));
}

/// OffsetForLeaderEpoch at `addr` for partition 0 of `TOPIC`: (error, epoch, end offset).
async fn epoch_end(addr: &str, current: i32, epoch: i32) -> (i16, i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    use kafka_protocol::messages::{BrokerId, OffsetForLeaderEpochRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut c = keel_client::Client::connect(addr).await.expect("connect");
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)])]);
    let r = c.call_at(&req, 4).await.expect("OffsetForLeaderEpoch");
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// The partition's leader epoch as its leader reports it in ListOffsets v4.
async fn leader_epoch(addr: &str) -> i32 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut c = keel_client::Client::connect(addr).await.expect("connect");
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let r = c.call_at(&req, 4).await.expect("ListOffsets");
    r.topics[0].partitions[0].leader_epoch
}

/// A consumer that sees a new leader asks where the epoch of the records it read ended
/// (KIP-101/320): the answer is the first offset the next leader wrote, so nothing it read
/// looks truncated; the current epoch ends at the high watermark; a stale or unknown
/// current epoch is refused as Kafka refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_tells_where_each_leader_s_term_ended() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let p = producer(&bs);
    send(&p, 0, 100).await;
    let first = wait_leader(&bs, None).await;
    let first_addr = node_of(&mut nodes, first).kafka.clone();
    let e1 = leader_epoch(&first_addr).await;
    assert_eq!(
        epoch_end(&first_addr, e1, e1).await,
        (0, e1, 100),
        "the current epoch ends at the high watermark"
    );

    node_of(&mut nodes, first).kill9();
    let acked = send(&p, 100, 50).await;
    assert_eq!(acked[0].1, 100, "the new leader's first record follows the old one's");
    let second = wait_leader(&bs, Some(first)).await;
    let addr = node_of(&mut nodes, second).kafka.clone();
    let e2 = leader_epoch(&addr).await;
    assert!(e2 > e1, "a new leader has a later epoch ({e2} after {e1})");

    assert_eq!(
        epoch_end(&addr, e2, e1).await,
        (0, e1, 100),
        "the old epoch ends where the new leader began"
    );
    assert_eq!(epoch_end(&addr, e2, e2).await, (0, e2, 150));
    assert_eq!(
        epoch_end(&addr, -1, e2).await,
        (0, e2, 150),
        "no current epoch: not checked"
    );
    assert_eq!(
        epoch_end(&addr, e2, e2 + 5).await,
        (0, -1, -1),
        "an epoch from the future is unknown"
    );
    assert_eq!(
        epoch_end(&addr, e1, e1).await.0,
        74,
        "a stale current epoch is FENCED_LEADER_EPOCH"
    );
    assert_eq!(
        epoch_end(&addr, e2 + 1, e1).await.0,
        75,
        "a newer current epoch is UNKNOWN_LEADER_EPOCH"
    );
}

/// `keel_transport_authentication_failures_total` on node `k`.
/// The node transport's certificates are reloaded with the listeners' when their files
/// change: every node's files are replaced by ones of another CA (as when a cluster's CA
/// is rotated), each node reloads them, and a node restarted afterwards (whose every
/// connection is new) is accepted by the others, which it could not be had they kept the
/// old CA, and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_transport_takes_new_certificates_without_a_restart() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let (first, second, live) = (root.path().join("a"), root.path().join("b"), root.path().join("live"));
    make_certs(&first);
    make_certs(&second);
    let install = |from: &std::path::Path| {
        std::fs::create_dir_all(&live).unwrap();
        for f in ["node.pem", "node.key", "ca.pem"] {
            // Replaced whole (write, then rename), as certificate managers do.
            let tmp = live.join(format!(".{f}.new"));
            std::fs::copy(from.join(f), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(f)).unwrap();
        }
    };
    install(&first);
    let config = root.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "transport_tls = true\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nreload_interval_ms = 200\n",
            live.join("node.pem"),
            live.join("node.key"),
            live.join("ca.pem")
        ),
    )
    .unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--config", config.to_str().unwrap()]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    assert_eq!(send(&producer(&bs), 0, 10).await.len(), 10);

    install(&second);
    let reloads = |k: &Keel| -> u64 {
        let (_, text) = k.http_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("keel_tls_certificate_reloads_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|k| reloads(k) >= 1) {
        assert!(Instant::now() < deadline, "not every node reloaded its certificates");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = nodes[2].http_get("/health/ready");
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node, on the new CA, is not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked = send(&producer(&bs), 10, 10).await;
    assert_eq!(acked.len(), 10, "the cluster takes writes after the rotation");
    let refused: u64 = nodes.iter().map(transport_auth_failures).sum();
    assert_eq!(refused, 0, "a node refused a peer's new certificate");
}

/// A development CA and node certificates in `dir` (`keel certs`).
fn make_certs(dir: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A node 4 asking to join the cluster of `peers` with `secret` and `extra` flags, its
/// data in `dir`, its output discarded.
fn spawn_joiner(peers: &str, dir: &std::path::Path, secret: &str, extra: &[String]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--node-id",
            "4",
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--raft-listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--peers",
            peers,
            "--join",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("KEEL_CLUSTER_SECRET", secret)
        .env("KEEL_LOG", "warn,openraft=off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn transport_auth_failures(k: &Keel) -> u64 {
    let (_, text) = k.http_get("/metrics");
    text.lines()
        .find(|l| l.starts_with("keel_transport_authentication_failures_total "))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The node-to-node port admits only holders of the cluster secret: a node started with
/// another secret cannot join (the members refuse its connections, count them, and never
/// list it), and the cluster carries on; a cluster node given no secret at all refuses to
/// start (secure by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_cannot_join() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let before: u64 = nodes.iter().map(transport_auth_failures).sum();

    let peers = nodes[0].flag("--peers").unwrap();
    let dir = root.path().join("node-4");
    let mut intruder = spawn_joiner(&peers, &dir, "not the secret this cluster holds", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let now: u64 = nodes.iter().map(transport_auth_failures).sum();
        if now > before || Instant::now() > deadline {
            break now - before;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(refused > 0, "no member refused the node holding another secret");
    let (_, brokers) = replicas_and_nodes(&bs).expect("metadata");
    assert!(!brokers.contains(&4), "the node without the secret joined: {brokers:?}");
    // The cluster still takes writes.
    let acked = send(&producer(&bs), 0, 10).await;
    assert_eq!(acked.len(), 10);
    let _ = intruder.kill();
    let _ = intruder.wait();

    // A cluster node with no secret at all does not start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--node-id",
            "1",
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--raft-listen",
            "127.0.0.1:0",
            "--peers",
            "1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3",
        ])
        .arg("--data-dir")
        .arg(root.path().join("no-secret"))
        .env_remove("KEEL_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a cluster node started without a cluster secret");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster secret"), "{err}");
}

/// With `--transport-tls`, nodes speak mutual TLS to each other: a cluster whose nodes hold
/// certificates of one CA replicates; a node whose certificate another CA signed cannot
/// join even with the cluster secret, and is counted as refused; a plain TCP peer gets no
/// frame through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_mutual_tls_and_refuse_a_foreign_certificate() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let ours = root.path().join("certs");
    let theirs = root.path().join("other-certs");
    make_certs(&ours);
    make_certs(&theirs);
    let tls_flags = |dir: &std::path::Path| -> Vec<String> {
        vec![
            "--transport-tls".into(),
            "--tls-cert-file".into(),
            dir.join("node.pem").display().to_string(),
            "--tls-key-file".into(),
            dir.join("node.key").display().to_string(),
            "--tls-client-ca-file".into(),
            dir.join("ca.pem").display().to_string(),
        ]
    };
    let flags = tls_flags(&ours);
    let refs: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
    let nodes = start_cluster(root.path(), 3, &refs);
    let bs = bootstrap(&nodes);
    create_topic(&bs).await;
    let acked = send(&producer(&bs), 0, 20).await;
    assert_eq!(acked.len(), 20, "a cluster speaking TLS between its nodes takes writes");
    let before: u64 = nodes.iter().map(transport_auth_failures).sum();

    // A node with the secret but another CA's certificate.
    let peers = nodes[0].flag("--peers").unwrap();
    let mut intruder = spawn_joiner(
        &peers,
        &root.path().join("node-4"),
        "keel integration tests' cluster secret",
        &tls_flags(&theirs),
    );
    // A plain TCP client on a node's Raft port: the TLS handshake fails on its bytes.
    let raft_port = peers
        .split(',')
        .next()
        .and_then(|p| p.rsplit(':').next())
        .unwrap()
        .to_string();
    let mut plain = std::net::TcpStream::connect(format!("127.0.0.1:{raft_port}")).unwrap();
    use std::io::{Read, Write};
    let _ = plain.write_all(b"KEEL-AUTH1\0\0\0\0\0\0\0\x09 this is not TLS at all, just bytes..");
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "a plain TCP peer got something other than a TLS alert: {:?}",
        &buf[..n]
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let now: u64 = nodes.iter().map(transport_auth_failures).sum();
        if now >= before + 2 || Instant::now() > deadline {
            break now - before;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused >= 2,
        "the foreign certificate and the plain peer were not both refused ({refused})"
    );
    let (_, brokers) = replicas_and_nodes(&bs).expect("metadata");
    assert!(
        !brokers.contains(&4),
        "the node with a foreign certificate joined: {brokers:?}"
    );
    let acked = send(&producer(&bs), 0, 10).await;
    assert_eq!(acked.len(), 10, "the cluster still takes writes");
    let _ = intruder.kill();
    let _ = intruder.wait();
}
