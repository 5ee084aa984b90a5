//! Self-healing placement on four `keel serve` processes, driven by librdkafka (the rdkafka
//! crate): a node holding replicas is killed with kill -9 and stays down; once it has been
//! unreachable for `--replica-replace-after-ms`, the controller moves its replicas onto the
//! live nodes by itself, every partition gets back three in-sync replicas on three
//! different live nodes, and every acknowledged record reads back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::start_cluster;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "healing";
const PARTITIONS: i32 = 8;

/// Each partition's (replicas, in-sync replicas) as Metadata from `bootstrap` reports them.
fn placement(bootstrap: &str) -> BTreeMap<i32, (Vec<i32>, Vec<i32>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let Ok(md) = c.fetch_metadata(Some(TOPIC), Duration::from_secs(10)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .filter(|t| t.name() == TOPIC)
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), (p.replicas().to_vec(), p.isr().to_vec())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_node_gone_for_good_move_to_live_nodes_by_themselves() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 4, &["--replica-replace-after-ms", "2000"]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, PARTITIONS, 3).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    for i in 0..200 {
        let partition = i % PARTITIONS;
        let value = format!("h-{i:04}");
        let d = producer
            .send(
                FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        acked.push((d.partition, d.offset, value));
    }

    // The node holding the most replicas goes away for good.
    let before = placement(&bs);
    let victim = (1..=4)
        .max_by_key(|n| before.values().filter(|(r, _)| r.contains(n)).count())
        .unwrap();
    let held = before.values().filter(|(r, _)| r.contains(&victim)).count();
    assert!(held > 0, "no replica on any node: {before:?}");
    nodes[(victim - 1) as usize].kill9();
    let survivors: String = (1..=4)
        .filter(|n| *n != victim)
        .map(|n| nodes[(n - 1) as usize].kafka.clone())
        .collect::<Vec<_>>()
        .join(",");

    let killed = Instant::now();
    let healed = loop {
        let now = placement(&survivors);
        let ok = now.len() == PARTITIONS as usize
            && now.values().all(|(replicas, isr)| {
                let mut distinct = replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                replicas.len() == 3 && distinct.len() == 3 && !replicas.contains(&victim) && isr.len() == 3
            });
        if ok {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "node {victim}'s replicas were not replaced: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("node {victim} held {held} of {PARTITIONS} partitions' replicas; all replaced and in sync {healed:?} after it died");

    let got = common::read_from_start(&survivors, TOPIC, PARTITIONS, acked.len(), Duration::from_secs(60));
    for (partition, offset, value) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset} lost"
        );
    }
}
