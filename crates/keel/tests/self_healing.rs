//! Self-healing placement on four `keel serve` processes, driven by librdkafka (the rdkafka
//! crate): a node holding replicas is killed with kill -9 and stays down; once it has been
//! unreachable for `--replica-replace-after-ms`, the controller moves its replicas onto the
//! live nodes by itself, every partition gets back three in-sync replicas on three
//! different live nodes, and every acknowledged record reads back. And replica balancing:
//! a node that joins a cluster takes its share of replicas by itself. And racks: replicas
//! are placed, and replaced, in different racks.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{join_cluster, start_cluster, start_cluster_each};
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

/// Three nodes hold every replica of an eight-partition topic (RF=3); a fourth node joins.
/// With nobody asking, the controller moves replicas onto it until the nodes' replica
/// counts are even (within two); every partition keeps three in-sync replicas on three
/// different nodes, and every acknowledged record reads back, written before the moves
/// and during them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_its_share_of_replicas_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
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
    let write = |from: usize, n: usize| {
        let producer = producer.clone();
        async move {
            let mut out = Vec::new();
            for i in from..from + n {
                let partition = (i % PARTITIONS as usize) as i32;
                let value = format!("b-{i:04}");
                let d = producer
                    .send(
                        FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered");
                out.push((d.partition, d.offset, value));
            }
            out
        }
    };
    acked.extend(write(0, 100).await);

    let fourth = join_cluster(root.path(), &nodes, 4, &[]);
    let bs = format!("{bs},{}", fourth.kafka);
    let joined = Instant::now();
    let mut next = 100;
    let (settled, counts, held) = loop {
        // Writes go on while replicas move.
        acked.extend(write(next, 8).await);
        next += 8;
        let now = placement(&bs);
        let whole = now.len() == PARTITIONS as usize
            && now.values().all(|(replicas, isr)| {
                let mut distinct = replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                replicas.len() == 3 && distinct.len() == 3 && isr.len() == 3
            });
        // Replicas per node, every topic's (the internal ones' too), as the admin API says.
        let cluster = nodes[0].http_get("/api/v1/cluster").1;
        let counts = replica_counts(&cluster);
        let even = counts.len() == 4
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2
            && serde_json::from_str::<serde_json::Value>(&cluster)
                .is_ok_and(|v| v["moves_in_progress"].as_u64() == Some(0));
        if whole && even {
            break (
                joined.elapsed(),
                counts,
                now.values().filter(|(r, _)| r.contains(&4)).count(),
            );
        }
        assert!(
            joined.elapsed() < Duration::from_secs(120),
            "replicas did not spread onto node 4: {now:?} (replicas per node {counts:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let moves: u64 = nodes
        .iter()
        .chain([&fourth])
        .map(|k| metric(&k.http_get("/metrics").1, "keel_replica_balance_moves_total"))
        .sum();
    assert!(held > 0, "node 4 holds none of {TOPIC}'s replicas");
    assert!(
        moves >= held as u64,
        "{moves} balancing moves counted, node 4 holds {held} of {TOPIC}'s replicas"
    );
    eprintln!(
        "replicas per node {counts:?}, {held} of {TOPIC}'s on node 4 ({moves} balancing moves), {settled:?} after it joined"
    );

    let got = common::read_from_start(&bs, TOPIC, PARTITIONS, acked.len(), Duration::from_secs(60));
    for (partition, offset, value) in &acked {
        assert_eq!(
            got.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset} lost"
        );
    }
}

/// Replicas per node, ordered by node id, from `/api/v1/cluster`.
fn replica_counts(cluster: &str) -> Vec<usize> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(cluster) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u64, usize)> = v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["replicas"].as_u64()? as usize)))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    nodes.into_iter().map(|(_, r)| r).collect()
}

/// A counter's value in a Prometheus text exposition (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Six nodes in three racks, two each. Every partition of a new topic (three replicas) has
/// one replica in each rack, and the admin API reports each node's rack. A node dies for
/// good: each of its replicas is replaced by the other node of its rack, the only rack
/// the partition then lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_placed_and_replaced_across_racks() {
    let root = tempfile::tempdir().unwrap();
    let rack = |i: usize| ["a", "b", "c"][i / 2];
    let mut nodes = start_cluster_each(root.path(), 6, &|i| {
        vec![
            "--rack".into(),
            rack(i).into(),
            "--replica-replace-after-ms".into(),
            "2000".into(),
        ]
    });
    let rack_of = |n: i32| rack(n as usize - 1);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, 12, 3).await;
    let spans_racks = |placed: &BTreeMap<i32, (Vec<i32>, Vec<i32>)>| {
        placed.len() == 12
            && placed.values().all(|(replicas, isr)| {
                let mut racks: Vec<&str> = replicas.iter().map(|n| rack_of(*n)).collect();
                racks.sort_unstable();
                racks.dedup();
                racks.len() == 3 && isr.len() == 3
            })
    };
    // Every partition spans the racks (in sync once its followers have caught up).
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let now = placement(&bs);
        if spans_racks(&now) {
            break now;
        }
        assert!(Instant::now() < deadline, "replicas not spread over the racks: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, cluster) = nodes[0].http_get("/api/v1/cluster");
    let c: serde_json::Value = serde_json::from_str(&cluster).expect("JSON");
    for n in c["nodes"].as_array().expect("nodes") {
        let id = n["id"].as_i64().expect("id") as i32;
        assert_eq!(n["rack"], rack_of(id), "{c}");
    }

    let victim = 1;
    let held = before.values().filter(|(r, _)| r.contains(&victim)).count();
    assert!(held > 0, "{before:?}");
    nodes[0].kill9();
    let survivors: String = nodes[1..].iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let now = placement(&survivors);
        if spans_racks(&now) && now.values().all(|(r, _)| !r.contains(&victim)) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim}'s replicas not replaced across racks: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (p, (replicas, _)) in &before {
        if replicas.contains(&victim) {
            assert!(
                after[p].0.contains(&2),
                "partition {p}: rack a's other node took no replica: {:?}",
                after[p]
            );
        }
    }
}

/// Disk balancing: three nodes whose replica counts are even but whose bytes are not (two
/// partitions of a heavy topic, a MiB each, both placed on node 1; light topics on the
/// others). The controller exchanges a heavy replica for a light one by itself, so the
/// heavy partitions end on two nodes, every node still holds as many replicas as before,
/// and every record reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_holding_uneven_bytes_exchange_replicas_until_even() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(
        root.path(),
        3,
        &["--balance-disk-check-ms", "500", "--balance-disk-min-bytes", "262144"],
    );
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
    let on_1: &[&[i32]] = &[&[1], &[1]];
    let on_2: &[&[i32]] = &[&[2], &[2]];
    let on_3: &[&[i32]] = &[&[3], &[3]];
    let created = admin
        .create_topics(
            &[
                NewTopic::new("heavy", 2, TopicReplication::Variable(on_1)),
                NewTopic::new("light-2", 2, TopicReplication::Variable(on_2)),
                NewTopic::new("light-3", 2, TopicReplication::Variable(on_3)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .expect("CreateTopics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let heavy_nodes = |bs: &str| -> Vec<i32> {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bs).create().unwrap();
        let Ok(md) = c.fetch_metadata(Some("heavy"), Duration::from_secs(10)) else {
            return Vec::new();
        };
        md.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .flat_map(|p| p.replicas().to_vec())
            .collect()
    };
    assert_eq!(heavy_nodes(&bs), vec![1, 1], "both heavy partitions start on node 1");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let before = replica_counts(&nodes[0].http_get("/api/v1/cluster").1);
    let mut acked = Vec::new();
    for i in 0..512 {
        let value = format!("{i:05}{}", "x".repeat(4091));
        let d = producer
            .send(
                FutureRecord::<(), _>::to("heavy").partition(i % 2).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        acked.push((d.partition, d.offset));
    }
    let started = Instant::now();
    let spread = loop {
        let mut on = heavy_nodes(&bs);
        if on.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let cluster = nodes[0].http_get("/api/v1/cluster").1;
        let settled = serde_json::from_str::<serde_json::Value>(&cluster)
            .is_ok_and(|v| v["moves_in_progress"].as_u64() == Some(0));
        assert_eq!(on.len(), 2, "two single-replica partitions: {on:?}");
        on.sort_unstable();
        on.dedup();
        if on.len() == 2 && settled {
            break on;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the heavy partitions stayed on {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let after = replica_counts(&nodes[0].http_get("/api/v1/cluster").1);
    assert_eq!(after, before, "an exchange leaves every node's replica count as it was");
    let moves: u64 = nodes
        .iter()
        .map(|k| metric(&k.http_get("/metrics").1, "keel_replica_balance_moves_total"))
        .sum();
    assert!(moves >= 2, "{moves} balancing moves counted");
    eprintln!(
        "heavy partitions on nodes {spread:?} after {:?}; replicas per node {after:?}",
        started.elapsed()
    );
    let got = common::read_from_start(&bs, "heavy", 2, acked.len(), Duration::from_secs(60));
    for (p, o) in &acked {
        assert_eq!(got.get(&(*p, *o)).map(String::len), Some(4096), "record {p}/{o}");
    }
}
