//! Kafka transactions through the real `keel` binary and librdkafka (the `rdkafka` crate):
//! a decided transaction and an open one survive the death of their coordinator's node.

mod common;

use std::time::{Duration, Instant};

use common::{start_cluster, Keel};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TOPIC: &str = "tx";

fn bootstrap(nodes: &[Keel]) -> String {
    nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",")
}

fn txn_producer(bootstrap: &str, id: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "0")
        .set("request.timeout.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("producer")
}

/// The node id leading partition 0 of `topic`, as Metadata reports it.
fn leader_of(bootstrap: &str, topic: &str) -> Option<i32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().first()?;
    (p.error().is_none() && p.leader() >= 0).then_some(p.leader())
}

async fn send(p: &FutureProducer, partition: i32, value: &str) {
    p.send(
        FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(value),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("{value} not delivered: {e}"));
}

/// Every value a `read_committed` reader sees in the three partitions.
fn read_committed(bootstrap: &str, at_least: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tx-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None if out.len() >= at_least && quiet_since.elapsed() > Duration::from_secs(3) => break,
            None => {}
        }
    }
    out
}

/// A committed transaction and an open one, then kill -9 of the node coordinating them:
/// a new producer with the same transactional.id is served by the new coordinator, which
/// knows the id (its epoch goes on from the old one's) and aborts the open transaction; a
/// read_committed reader sees the committed records, the new producer's, and none of the
/// open transaction's. `keel txn describe` shows the id complete at the newer epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_survive_the_coordinator_dying() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs = bootstrap(&nodes);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 3, TopicReplication::Fixed(3))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0]);

    let a = txn_producer(&bs, "survivor");
    a.init_transactions(Duration::from_secs(60)).expect("init");
    a.begin_transaction().unwrap();
    for p in 0..3 {
        send(&a, p, &format!("committed-{p}")).await;
    }
    a.commit_transaction(Duration::from_secs(60)).expect("commit");
    a.begin_transaction().unwrap();
    for p in 0..3 {
        send(&a, p, &format!("open-{p}")).await;
    }

    let coordinator = leader_of(&bs, "__transaction_state").expect("a transaction coordinator");
    nodes[(coordinator - 1) as usize].kill9();
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|k| k.child.is_some())
        .map(|k| k.kafka.clone())
        .collect();
    let bs2 = survivors.join(",");

    let b = txn_producer(&bs2, "survivor");
    b.init_transactions(Duration::from_secs(90))
        .expect("the new coordinator serves the transactional id");
    b.begin_transaction().unwrap();
    for p in 0..3 {
        send(&b, p, &format!("successor-{p}")).await;
    }
    b.commit_transaction(Duration::from_secs(60))
        .expect("commit after failover");

    let mut seen = read_committed(&bs2, 6);
    seen.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| [format!("committed-{p}"), format!("successor-{p}")])
        .collect();
    want.sort();
    assert_eq!(seen, want, "read_committed saw the wrong records");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["txn", "describe", "survivor", "--bootstrap", &bs2])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("state\tCompleteCommit"), "{text}");
    let epoch: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("producer epoch\t"))
        .and_then(|e| e.trim().parse().ok())
        .expect("an epoch");
    // init (0), init after the failover (1, aborting the open transaction), init again (2).
    assert!(epoch >= 1, "the epoch did not move on: {epoch}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["txn", "list", "--bootstrap", &bs2])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("survivor"));
}
