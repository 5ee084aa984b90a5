//! Hundreds of RF=3 partitions on three `keel serve` processes, driven by librdkafka (the
//! rdkafka crate): all of them get leaders, a node is killed with kill -9 while a producer
//! writes across every partition, all of them are led again by the survivors, and every
//! acknowledged record reads back exactly once.
//!
//! Against the release binary it runs a thousand partitions (`.ci/run` does:
//! `cargo test --release -p keel --test scale`); `cargo test` runs it with 100 against the
//! debug binary, which is several times slower: on two cores, three debug nodes opening
//! hundreds of groups at once starve their own heartbeats and votes, and elections storm.
//! `KEEL_SCALE_PARTITIONS=N` sets the count.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::start_cluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "wide";
/// Partitions of the topic (`KEEL_SCALE_PARTITIONS`; 1,000 in a release build, 100 in a
/// debug one).
fn partitions() -> i32 {
    std::env::var("KEEL_SCALE_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 100 } else { 1000 })
}
/// Sends in flight at once, each to another partition.
const IN_FLIGHT: usize = 32;

/// Each partition's leader as Metadata from `bootstrap` reports it (-1: none).
fn leaders(bootstrap: &str) -> BTreeMap<i32, i32> {
    common::leaders(bootstrap, TOPIC)
}

/// Waits until every partition has a leader among `allowed`; returns how long it took.
async fn wait_all_led(bootstrap: &str, allowed: &[i32], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let l = leaders(bootstrap);
        let unled = (0..partitions())
            .filter(|p| !l.get(p).map(|n| allowed.contains(n)).unwrap_or(false))
            .count();
        if unled == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{unled} of {} partitions have no leader among {allowed:?} after {timeout:?}",
            partitions()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every acknowledged record was read back exactly once, at its partition and offset,
/// and no record that was never acknowledged appeared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_partitions_are_led_again_after_a_node_dies_and_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &[]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
    let created = Instant::now();
    let res = admin
        .create_topics(
            &[NewTopic::new(TOPIC, partitions(), TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(120))),
        )
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let took = wait_all_led(&bs, &[1, 2, 3], Duration::from_secs(180)).await;
    eprintln!(
        "{} partitions created and led in {:?}",
        partitions(),
        created.elapsed().max(took)
    );

    // A producer writes across every partition throughout.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "120000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(i32, i64, String)> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                // Enqueued together, so that IN_FLIGHT sends are outstanding at once.
                let sends: Vec<_> = (0..IN_FLIGHT)
                    .map(|k| {
                        let n = i + k;
                        let partition = (n % partitions() as usize) as i32;
                        let value = format!("r-{n:08}");
                        let f = producer
                            .send_result(FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value))
                            .map_err(|(e, _)| e)
                            .expect("enqueue");
                        (partition, value, f)
                    })
                    .collect();
                for (partition, value, f) in sends {
                    match f.await.expect("delivery report") {
                        Ok(d) => acked.push((partition, d.offset, value)),
                        Err((e, _)) => panic!("{value} to partition {partition} not delivered: {e}"),
                    }
                }
                i += IN_FLIGHT;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 the node leading the most partitions; the survivors lead every partition.
    let before = leaders(&bs);
    let victim = (1..=3)
        .max_by_key(|n| before.values().filter(|l| *l == n).count())
        .unwrap();
    let led = before.values().filter(|l| **l == victim).count();
    nodes[(victim - 1) as usize].kill9();
    let survivors: Vec<i32> = (1..=3).filter(|n| *n != victim).collect();
    let sbs: String = survivors
        .iter()
        .map(|n| nodes[(*n - 1) as usize].kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let failover = wait_all_led(&sbs, &survivors, Duration::from_secs(60)).await;
    eprintln!("node {victim} led {led} partitions; all led by {survivors:?} within {failover:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > IN_FLIGHT,
        "the producer acknowledged only {} records",
        acked.len()
    );

    // Every acknowledged record reads back exactly once.
    let got = common::read_from_start(&sbs, TOPIC, partitions(), acked.len(), Duration::from_secs(120));
    let missing: BTreeSet<i32> = acked
        .iter()
        .filter(|(p, o, _)| !got.contains_key(&(*p, *o)))
        .map(|(p, _, _)| *p)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "read {} of {} acknowledged records; partitions with records missing: {missing:?}; leaders now: {:?}",
            got.len(),
            acked.len(),
            leaders(&sbs)
                .into_iter()
                .filter(|(p, _)| missing.contains(p))
                .collect::<Vec<_>>()
        );
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset} lost or moved"
        );
    }
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
    eprintln!("{} acknowledged records read back exactly once", acked.len());
}
