//! A rolling restart of a three-node cluster under an acks=all idempotent producer
//! (librdkafka, through the rdkafka crate): each node in turn gets SIGTERM, hands its
//! leaderships over before it stops, and comes back; the next waits for it to report
//! ready on `/health/ready`. Checks that a stopping node leads nothing when it exits and
//! every partition has a live leader at that moment, that each node exits cleanly and
//! becomes ready again, and that every acknowledged record reads back exactly once. The
//! longest time a write waited is printed (docs/benchmarks.md records it). And
//! maintenance: a node put in maintenance hands every leadership over and gets none back
//! until its maintenance ends.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_cluster, Keel};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "rolling";
const PARTITIONS: i32 = 12;
/// Sends outstanding at once.
const IN_FLIGHT: usize = 8;

/// Each partition's leader as Metadata from `bootstrap` reports it (-1: none).
fn leaders(bootstrap: &str) -> BTreeMap<i32, i32> {
    common::leaders(bootstrap, TOPIC)
}

async fn wait_ready(node: &Keel, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = node.http_get("/health/ready");
        if status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "node at {} not ready after {timeout:?}: {status} {body}",
            node.http
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_leadership_over_and_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    // KEEL_TEST_HANDOVER_MS=0 runs the same restart without handovers, for comparison
    // (the test then expects the stopped node's partitions to be led elsewhere only once
    // the others notice it is gone).
    let handover = std::env::var("KEEL_TEST_HANDOVER_MS").unwrap_or_else(|_| "15000".into());
    let handing_over = handover != "0";
    let mut nodes = start_cluster(root.path(), 3, &["--shutdown-handover-ms", &handover]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, PARTITIONS, 3).await;
    for n in &nodes {
        wait_ready(n, Duration::from_secs(60)).await;
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(i32, i64, String)> = Vec::new();
            let mut waits: Vec<(Duration, Duration, i32)> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                let sends: Vec<_> = (0..IN_FLIGHT)
                    .map(|k| {
                        let n = i + k;
                        let partition = (n % PARTITIONS as usize) as i32;
                        let value = format!("r-{n:08}");
                        let f = producer
                            .send_result(FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value))
                            .map_err(|(e, _)| e)
                            .expect("enqueue");
                        (partition, value, Instant::now(), f)
                    })
                    .collect();
                for (partition, value, sent, f) in sends {
                    match f.await.expect("delivery report") {
                        Ok(d) => {
                            waits.push((sent.elapsed(), sent.duration_since(t0), partition));
                            acked.push((partition, d.offset, value));
                        }
                        Err((e, _)) => panic!("{value} to partition {partition} not delivered: {e}"),
                    }
                }
                i += IN_FLIGHT;
            }
            (acked, waits)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    for id in 1..=3usize {
        let others: String = (1..=3usize)
            .filter(|n| *n != id)
            .map(|n| nodes[n - 1].kafka.clone())
            .collect::<Vec<_>>()
            .join(",");
        let before = leaders(&others);
        let led = before.values().filter(|l| **l == id as i32).count();
        let stopping = Instant::now();
        eprintln!("{:?}: SIGTERM to node {id}", stopping.duration_since(t0));
        let code = nodes[id - 1].terminate();
        let took = stopping.elapsed();
        assert_eq!(code, Some(0), "node {id} did not exit cleanly on SIGTERM");
        // Handed over: the moment it is gone, it leads nothing (without a handover, the
        // others would name it leader until they notice it is gone), and every partition
        // has a live leader at once or within moments (an election a restarted preferred
        // replica started may be under way).
        let after = leaders(&others);
        let stale: Vec<i32> = after
            .iter()
            .filter(|(_, l)| **l == id as i32)
            .map(|(p, _)| *p)
            .collect();
        assert!(
            stale.is_empty(),
            "node {id} stopped but is still named leader of {stale:?}: {after:?}"
        );
        let all_led = Instant::now();
        loop {
            let now = leaders(&others);
            if now.len() == PARTITIONS as usize && now.values().all(|l| *l > 0 && *l != id as i32) {
                break;
            }
            assert!(
                all_led.elapsed() < Duration::from_secs(if handing_over { 5 } else { 30 }),
                "node {id} stopped; partitions not all led by the others: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all_led = all_led.elapsed();
        eprintln!("{:?}: node {id} exited; restarting it", t0.elapsed());
        nodes[id - 1].restart();
        let ready = wait_ready(&nodes[id - 1], Duration::from_secs(60)).await;
        eprintln!(
            "node {id}: led {led} partitions, stopped in {took:?}, all led by others {all_led:?} later, ready {ready:?} after restart"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let (acked, mut waits) = writer.await.unwrap();
    assert!(
        acked.len() > IN_FLIGHT,
        "the producer acknowledged only {} records",
        acked.len()
    );
    waits.sort();
    for (wait, at, partition) in waits.iter().rev().take(5) {
        eprintln!("a write to partition {partition} sent {at:?} in waited {wait:?}");
    }
    let pct = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize].0;
    eprintln!(
        "{} writes acknowledged; waited p50 {:?}, p99 {:?}, p999 {:?}, max {:?}",
        waits.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        waits.last().unwrap().0
    );

    let got = common::read_from_start(&bs, TOPIC, PARTITIONS, acked.len(), Duration::from_secs(60));
    for (partition, offset, value) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset} lost or moved"
        );
    }
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
}

/// `keel cluster maintenance --node N --wait` while an acks=all producer writes: the node
/// leads no partition and not the controller when the command returns, keeps its replicas
/// in sync, and is given no leadership back while in maintenance (watched for five
/// rounds of leader balancing); after `--off` its preferred partitions come back to it.
/// Every acknowledged record reads back exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_maintenance_leads_nothing_until_its_maintenance_ends() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, PARTITIONS, 3).await;
    for n in &nodes {
        wait_ready(n, Duration::from_secs(60)).await;
    }
    // The node leading the most partitions goes into maintenance.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let l = leaders(&bs);
        if l.len() == PARTITIONS as usize && l.values().all(|n| *n > 0) {
            break l;
        }
        assert!(Instant::now() < deadline, "not every partition has a leader: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = (1..=3)
        .max_by_key(|n| before.values().filter(|l| *l == n).count())
        .unwrap();
    assert!(before.values().any(|l| *l == node));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (producer, stop) = (producer.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let value = format!("m-{i:06}");
                let partition = (i % PARTITIONS as usize) as i32;
                let d = producer
                    .send(
                        FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered");
                acked.push((d.partition, d.offset, value));
                i += 1;
            }
            acked
        })
    };

    let http = nodes[0].http.clone();
    let n = node.to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::keel_cli(&[
            "cluster",
            "maintenance",
            "--http",
            &http,
            "--node",
            &n,
            "--wait",
            "--timeout-s",
            "60",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "maintenance of node {node}: {out}");
    let l = leaders(&bs);
    assert!(
        l.values().all(|l| *l != node && *l > 0),
        "node {node} in maintenance: {l:?}"
    );
    let (_, cluster) = nodes[0].http_get("/api/v1/cluster");
    let c: serde_json::Value = serde_json::from_str(&cluster).expect("JSON");
    assert_ne!(c["controller"].as_i64(), Some(node as i64), "{c}");
    let entry = c["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"].as_i64() == Some(node as i64)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["maintenance"], true, "{c}");
    // Its replicas stay and follow: every partition has all three in sync (a leader
    // elected moments ago may not have heard from every follower yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, cluster) = nodes[0].http_get("/api/v1/cluster");
        let c: serde_json::Value = serde_json::from_str(&cluster).expect("JSON");
        if c["under_replicated_partitions"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas out of sync during maintenance: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Leader balancing runs every 2 s: over five rounds the node is given nothing back.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        let l = leaders(&bs);
        assert!(
            l.values().all(|l| *l != node),
            "node {node} led again while in maintenance: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let http = nodes[1].http.clone();
    let n = node.to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::keel_cli(&["cluster", "maintenance", "--http", &http, "--node", &n, "--off"])
    })
    .await
    .unwrap();
    assert!(ok, "end of node {node}'s maintenance: {out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leaders(&bs).values().any(|l| *l == node) {
        assert!(
            Instant::now() < deadline,
            "node {node} took no leadership back after its maintenance"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    let got = common::read_from_start(&bs, TOPIC, PARTITIONS, acked.len(), Duration::from_secs(60));
    for (partition, offset, value) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset} lost"
        );
    }
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
}
