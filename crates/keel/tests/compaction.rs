//! The log cleaner of compacted topics, through the real `keel` binary and librdkafka
//! (the `rdkafka` crate).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Keel;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const KEYS: usize = 40;
const VALUE_BYTES: usize = 200;

fn producer(k: &Keel) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

/// The partition's bytes on disk, from `/metrics`.
fn log_bytes(k: &Keel, topic: &str) -> u64 {
    let (_, body) = k.http_get("/metrics");
    let prefix = format!("keel_log_size_bytes{{topic=\"{topic}\",partition=\"0\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(u64::MAX)
}

/// Every record of partition 0 from the beginning: (offset, key, value or None).
fn read_all(k: &Keel, topic: &str) -> Vec<(i64, String, Option<String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    panic!("did not reach the end of {topic} in time");
}

/// A compacted topic written over and over with 40 keys (200 rounds, about 1.6 MB) stays
/// small on disk: after each phase of writing, the cleaner brings it back under a bound a
/// tenth of what was written. A reader from the start then sees, in growing offsets, the
/// latest value of every key (tombstones for deleted keys while they are young) and far
/// fewer records than were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_stays_bounded_and_keeps_the_latest_value_of_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &k.kafka).create().unwrap();
    let topic = NewTopic::new("kv", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "16384")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "3600000");
    let r = admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let p = producer(&k);
    let mut latest: HashMap<String, Option<String>> = HashMap::new();
    let mut written = 0usize;
    let bound = 160 * 1024;
    for phase in 0..5 {
        for round in 0..40 {
            let mut sends = Vec::new();
            for key in 0..KEYS {
                let key_s = format!("key-{key:02}");
                // The last round of the last phase deletes a few keys.
                let value = if phase == 4 && round == 39 && key < 4 {
                    None
                } else {
                    Some(format!("{phase}-{round}-{}", "x".repeat(VALUE_BYTES)))
                };
                latest.insert(key_s.clone(), value.clone());
                let rec = match &value {
                    Some(v) => FutureRecord::to("kv").key(&key_s).payload(v),
                    None => FutureRecord::to("kv").key(&key_s),
                };
                sends.push(p.send_result(rec).map_err(|(e, _)| e).expect("enqueue"));
                written += 1;
            }
            for s in sends {
                s.await
                    .expect("delivery future dropped")
                    .expect("a record was not acknowledged");
            }
        }
        // The cleaner runs every 5 s; wait (bounded) for it to bring the log under the bound.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut size = log_bytes(&k, "kv");
        while size > bound && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            size = log_bytes(&k, "kv");
        }
        assert!(
            size <= bound,
            "phase {phase}: {size} bytes on disk after {written} records ({} bytes written)",
            written * VALUE_BYTES
        );
    }
    let (_, metrics) = k.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keel_cleaner_reclaimed_bytes_total ") && !l.ends_with(" 0")),
        "no bytes reclaimed counted"
    );
    // Cleaning never moves the log start (Kafka's cleaner does not either): the earliest
    // offset is still 0, though every record there was superseded long ago, and a
    // consumer positioned there with auto.offset.reset=latest reads on from the next
    // record instead of being reset past them all.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("group.id", "positioned")
        .set("auto.offset.reset", "latest")
        .create()
        .unwrap();
    let (low, high) = c
        .fetch_watermarks("kv", 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(low, 0, "the log start moved (high watermark {high})");
    // The cleaner keeps running meanwhile: the first live record may move on between two
    // reads, so the consumer's first record is checked against the log's first live one
    // before and after.
    let live_before = read_all(&k, "kv").first().map(|r| r.0);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("kv", 0, Offset::Offset(5)).unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            break m.offset();
        }
        assert!(Instant::now() < deadline, "nothing read from offset 5");
    };
    let got = read_all(&k, "kv");
    let live_after = got.first().map(|r| r.0);
    assert!(
        live_before <= Some(first) && Some(first) <= live_after,
        "the first record after offset 5 ({first}) is the log's first live one (then {live_before:?}, now {live_after:?})"
    );
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets must grow");
    assert!(
        got.len() < written / 4,
        "{} of {written} records still there",
        got.len()
    );
    let mut last: HashMap<String, Option<String>> = HashMap::new();
    for (_, key, value) in got {
        last.insert(key, value);
    }
    assert_eq!(last, latest, "a key's latest value is missing or wrong");
}
