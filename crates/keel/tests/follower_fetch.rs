//! Fetching from the nearest replica (KIP-392) on three `keel serve` processes in three
//! racks, driven by librdkafka (the rdkafka crate): a consumer that sets `client.rack` to
//! a follower's rack is sent there by the leader, reads every acknowledged record from the
//! follower (which counts the bytes it served) and keeps up with records written after it
//! moved; a consumer in the leader's rack, and one without a rack, read from the leader.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::start_cluster_each;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TOPIC: &str = "near";
const RACKS: [&str; 3] = ["east", "west", "north"];

/// Partition 0's (replicas, leader) as Metadata reports it.
fn placement(bootstrap: &str) -> Option<(Vec<i32>, i32)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c.fetch_metadata(Some(TOPIC), Duration::from_secs(10)).ok()?;
    let p = md.topics().iter().find(|t| t.name() == TOPIC)?.partitions().first()?;
    (p.error().is_none() && p.isr().len() == 3).then(|| (p.replicas().to_vec(), p.leader()))
}

/// A counter's value in a Prometheus text exposition (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Polls `consumer` until `want` records came (or a minute passed): their values.
fn read(consumer: &BaseConsumer, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got
}

fn consumer(bootstrap: &str, rack: Option<&str>) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", format!("near-{}", rack.unwrap_or("none")))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100");
    if let Some(rack) = rack {
        cfg.set("client.rack", rack);
    }
    let c: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_from_the_replica_in_its_rack() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster_each(root.path(), 3, &|i| vec!["--rack".into(), RACKS[i].into()]);
    let bs = nodes.iter().map(|n| n.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, 1, 3).await;
    // Settled: three in-sync replicas, led by the preferred one (the first), which keeps it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (replicas, leader) = loop {
        match placement(&bs) {
            Some((r, l)) if r.first() == Some(&l) => break (r, l),
            now => assert!(Instant::now() < deadline, "partition not settled: {now:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = *replicas.iter().find(|n| **n != leader).unwrap();
    let rack = |node: i32| RACKS[node as usize - 1];
    let http = |node: i32| &nodes[node as usize - 1];

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let send = |range: std::ops::Range<usize>| {
        let producer = producer.clone();
        async move {
            for i in range {
                producer
                    .send(
                        FutureRecord::to(TOPIC).key("k").payload(&format!("r{i}")).partition(0),
                        Duration::from_secs(30),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("record {i} not acknowledged: {:?}", e.0));
            }
        }
    };
    send(0..200).await;
    let expected = |range: std::ops::Range<usize>| range.map(|i| format!("r{i}")).collect::<Vec<_>>();

    let served = |node: i32| metric(&http(node).http_get("/metrics").1, "keel_follower_fetched_bytes_total");
    let redirects = |node: i32| metric(&http(node).http_get("/metrics").1, "keel_fetch_redirects_total");
    let (served_before, redirects_before) = (served(follower), redirects(leader));

    // In the follower's rack: sent there, every record read, and later ones too.
    let near = consumer(&bs, Some(rack(follower)));
    assert_eq!(
        read(&near, 200),
        expected(0..200),
        "records read in the follower's rack"
    );
    send(200..300).await;
    assert_eq!(read(&near, 100), expected(200..300), "records written after the move");
    let (served_after, redirects_after) = (served(follower), redirects(leader));
    assert!(
        redirects_after > redirects_before,
        "the leader (node {leader}) sent no consumer to node {follower}: {redirects_before} -> {redirects_after}"
    );
    assert!(
        served_after > served_before,
        "the follower (node {follower}, rack {}) served no records: {served_before} -> {served_after}",
        rack(follower)
    );
    eprintln!(
        "node {follower} served {} bytes as a follower; node {leader} redirected {} fetches",
        served_after - served_before,
        redirects_after - redirects_before
    );

    // In the leader's rack, and without a rack: the leader serves, no one is redirected.
    let before: BTreeMap<i32, u64> = replicas.iter().map(|n| (*n, served(*n))).collect();
    let redirected = redirects(leader);
    for rack in [Some(rack(leader)), None] {
        let c = consumer(&bs, rack);
        assert_eq!(read(&c, 300), expected(0..300), "records read in rack {rack:?}");
    }
    let after: BTreeMap<i32, u64> = replicas.iter().map(|n| (*n, served(*n))).collect();
    assert_eq!(before, after, "a follower served a consumer the leader should have");
    assert_eq!(redirects(leader), redirected, "a consumer was redirected");
}
