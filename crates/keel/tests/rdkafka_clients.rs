//! The real `keel` binary driven by librdkafka (through the `rdkafka` crate).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Keel;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

fn admin(k: &Keel) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .create()
        .expect("admin client")
}

fn producer(k: &Keel, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.codec", compression)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

fn consumer(k: &Keel) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("group.id", "keel-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

async fn create_topic(k: &Keel, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, v) in configs {
        t = t.set(key, v);
    }
    let r = admin(k)
        .create_topics(&[t], &AdminOptions::new())
        .await
        .expect("create_topics");
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

/// One consumed record: (partition, offset, key, value, timestamp, headers).
type Got = (i32, i64, String, String, i64, Vec<(String, String)>);

/// Reads every partition of `topic` from the beginning until `n` records arrived.
fn consume_all(k: &Keel, topic: &str, partitions: i32, n: usize) -> Vec<Got> {
    let c = consumer(k);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consume error");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                m.timestamp().to_millis().unwrap_or(-1),
                headers,
            ));
        }
    }
    out
}

/// 10,000 keyed messages per codec (none, gzip, snappy, lz4, zstd) with acks=all and an
/// idempotent producer come back in order per partition, with keys, values, headers and
/// timestamps intact, at the offsets the producer was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_10000_messages() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    const N: usize = 10_000;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&k, &topic, 3, &[]).await;
        let p = producer(&k, codec);
        let base_ts = 1_700_000_000_000i64;
        let mut futures = Vec::with_capacity(N);
        for i in 0..N {
            let key = format!("key-{i}");
            let value = format!("value-{i}-{}", "x".repeat(i % 50));
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "seq",
                    value: Some(&i.to_string()),
                })
                .insert(Header {
                    key: "codec",
                    value: Some(codec),
                });
            let rec = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers)
                .timestamp(base_ts + i as i64);
            futures.push(p.send_result(rec).expect("queue"));
        }
        let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
        for (i, f) in futures.into_iter().enumerate() {
            let d = f.await.expect("delivery future").expect("delivery");
            let (part, off) = (d.partition, d.offset);
            acked.insert(format!("key-{i}"), (part, off));
        }
        p.flush(Duration::from_secs(30)).unwrap();
        let got = consume_all(&k, &topic, 3, N);
        assert_eq!(got.len(), N, "{codec}: consumed {} of {N}", got.len());
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        let mut last_seq: BTreeMap<i32, usize> = BTreeMap::new();
        for (part, off, key, value, ts, headers) in &got {
            let i: usize = key.strip_prefix("key-").unwrap().parse().unwrap();
            assert_eq!(
                acked.get(key),
                Some(&(*part, *off)),
                "{codec}: {key} not at its acknowledged offset"
            );
            assert_eq!(
                *value,
                format!("value-{i}-{}", "x".repeat(i % 50)),
                "{codec}: value of {key}"
            );
            assert_eq!(*ts, base_ts + i as i64, "{codec}: timestamp of {key}");
            assert_eq!(
                headers,
                &vec![
                    ("seq".to_string(), i.to_string()),
                    ("codec".to_string(), codec.to_string())
                ]
            );
            if let Some(prev) = last.insert(*part, *off) {
                assert_eq!(*off, prev + 1, "{codec}: offsets not contiguous in partition {part}");
            }
            if let Some(prev) = last_seq.insert(*part, i) {
                assert!(i > prev, "{codec}: partition {part} out of production order");
            }
        }
    }
}

/// The broker is killed with SIGKILL while an idempotent acks=all producer is running and
/// then restarted: every acknowledged message is in the log exactly once, at the offset it
/// was acknowledged with, and the producer carries on after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_produce_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = Keel::start(dir.path(), &[]);
    let topic = "crash";
    create_topic(&k, topic, 2, &[]).await;
    let p = producer(&k, "none");
    let acked: Arc<Mutex<Vec<(String, i32, i64)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (p, acked, failed, stop) = (p.clone(), acked.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            let mut inflight = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 200_000 {
                let v = format!("m-{i}");
                match p.send_result(FutureRecord::to(topic).key(&v).payload(&v)) {
                    Ok(f) => inflight.push((v, f)),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
                i += 1;
                if inflight.len() >= 200 {
                    for (v, f) in inflight.drain(..) {
                        match f.await {
                            Ok(Ok(d)) => acked.lock().unwrap().push((v, d.partition, d.offset)),
                            _ => *failed.lock().unwrap() += 1,
                        }
                    }
                }
            }
            for (v, f) in inflight {
                match f.await {
                    Ok(Ok(d)) => acked.lock().unwrap().push((v, d.partition, d.offset)),
                    _ => *failed.lock().unwrap() += 1,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    k.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    k.restart();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    let acked = acked.lock().unwrap().clone();
    let after = acked.len();
    eprintln!(
        "acknowledged {before_kill} before the kill, {after} in all; {} failed",
        failed.lock().unwrap()
    );
    assert!(before_kill > 0, "nothing was acknowledged before the kill");
    assert!(after > before_kill, "the producer made no progress after the restart");

    // Read everything back.
    let c = consumer(&k);
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for part in 0..2 {
        tpl.add_partition_offset(topic, part, Offset::Beginning).unwrap();
        let (_, hi) = c.fetch_watermarks(topic, part, Duration::from_secs(10)).unwrap();
        ends.insert(part, hi);
    }
    let total: i64 = ends.values().sum();
    let got = consume_all(&k, topic, 2, total as usize);
    assert_eq!(got.len() as i64, total);
    let mut at: HashMap<(i32, i64), String> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for (part, off, _, value, _, _) in got {
        at.insert((part, off), value.clone());
        *count.entry(value).or_default() += 1;
    }
    for (v, part, off) in &acked {
        assert_eq!(
            at.get(&(*part, *off)),
            Some(v),
            "acknowledged {v} is not at {part}/{off}"
        );
        assert_eq!(
            count.get(v),
            Some(&1),
            "acknowledged {v} appears {:?} times",
            count.get(v)
        );
    }
}

/// Admin APIs through librdkafka: topic configs are validated and described with their
/// defaults, partitions can be added but not removed, deleted topics disappear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let a = admin(&k);
    let opts = AdminOptions::new();
    create_topic(&k, "adm", 2, &[("retention.ms", "3600000")]).await;
    let dup = a
        .create_topics(&[NewTopic::new("adm", 1, TopicReplication::Fixed(1))], &opts)
        .await
        .unwrap();
    assert!(dup[0].is_err(), "duplicate create accepted");
    let bad = a
        .create_topics(
            &[NewTopic::new("adm-bad", 1, TopicReplication::Fixed(1)).set("no.such.config", "1")],
            &opts,
        )
        .await
        .unwrap();
    assert!(bad[0].is_err(), "unknown config accepted");
    let rf3 = a
        .create_topics(&[NewTopic::new("adm-rf3", 1, TopicReplication::Fixed(3))], &opts)
        .await
        .unwrap();
    assert!(rf3[0].is_err(), "replication factor 3 accepted on one node");

    let cfg = a
        .describe_configs(&[ResourceSpecifier::Topic("adm")], &opts)
        .await
        .unwrap();
    let res = cfg[0].as_ref().expect("describe");
    let get = |name: &str| res.get(name).and_then(|e| e.value.clone());
    assert_eq!(get("retention.ms").as_deref(), Some("3600000"));
    assert_eq!(get("cleanup.policy").as_deref(), Some("delete"));
    assert!(get("segment.bytes").is_some());
    let broker = a
        .describe_configs(&[ResourceSpecifier::Broker(0)], &opts)
        .await
        .unwrap();
    assert!(broker[0].as_ref().unwrap().get("log.segment.bytes").is_some());

    // AlterConfigs replaces the topic's overrides; DescribeConfigs shows the change.
    let alter = AlterConfig::new(ResourceSpecifier::Topic("adm"))
        .set("retention.ms", "7200000")
        .set("message.timestamp.type", "LogAppendTime");
    let altered = a.alter_configs(&[alter], &opts).await.unwrap();
    assert!(altered[0].is_ok(), "{:?}", altered[0]);
    let cfg = a
        .describe_configs(&[ResourceSpecifier::Topic("adm")], &opts)
        .await
        .unwrap();
    let res = cfg[0].as_ref().unwrap();
    assert_eq!(
        res.get("retention.ms").and_then(|e| e.value.clone()).as_deref(),
        Some("7200000")
    );
    assert_eq!(
        res.get("message.timestamp.type")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("LogAppendTime")
    );
    let bad_alter = AlterConfig::new(ResourceSpecifier::Topic("adm")).set("segment.bytes", "12");
    // (rdkafka's AlterConfigs result does not carry per-resource errors: check the effect.)
    let _ = a.alter_configs(&[bad_alter], &opts).await.unwrap();
    let cfg = a
        .describe_configs(&[ResourceSpecifier::Topic("adm")], &opts)
        .await
        .unwrap();
    let res = cfg[0].as_ref().unwrap();
    assert_ne!(
        res.get("segment.bytes").and_then(|e| e.value.clone()).as_deref(),
        Some("12"),
        "invalid value applied"
    );
    assert_eq!(
        res.get("retention.ms").and_then(|e| e.value.clone()).as_deref(),
        Some("7200000")
    );

    let grow = a
        .create_partitions(&[NewPartitions::new("adm", 5)], &opts)
        .await
        .unwrap();
    assert!(grow[0].is_ok(), "{:?}", grow[0]);
    let shrink = a
        .create_partitions(&[NewPartitions::new("adm", 3)], &opts)
        .await
        .unwrap();
    assert!(shrink[0].is_err(), "shrinking accepted");
    let c = consumer(&k);
    let md = c.fetch_metadata(Some("adm"), Duration::from_secs(10)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 5);

    let del = a.delete_topics(&["adm"], &opts).await.unwrap();
    assert!(del[0].is_ok());
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(
        md.topics().iter().all(|t| t.name() != "adm"),
        "deleted topic still listed"
    );
}

/// LogAppendTime topics stamp records with the broker's clock, and ListOffsets by
/// timestamp finds the first record at or after a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_and_offsets_for_times() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    create_topic(&k, "lat", 1, &[("message.timestamp.type", "LogAppendTime")]).await;
    create_topic(&k, "ct", 1, &[]).await;
    let p = producer(&k, "none");
    let before = chrono_ms();
    for i in 0..10 {
        p.send(
            FutureRecord::to("lat").key("k").payload("v").timestamp(1000 + i),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        p.send(
            FutureRecord::to("ct")
                .key("k")
                .payload(&format!("{i}"))
                .timestamp(1000 + 100 * i),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let got = consume_all(&k, "lat", 1, 10);
    assert!(
        got.iter().all(|g| g.4 >= before),
        "LogAppendTime not applied: {:?}",
        got.iter().map(|g| g.4).collect::<Vec<_>>()
    );
    let c = consumer(&k);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ct", 0, Offset::Offset(1450)).unwrap();
    let r = c.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(
        r.elements()[0].offset(),
        Offset::Offset(5),
        "first record at or after t=1450"
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ct", 0, Offset::Offset(999_999)).unwrap();
    let r = c.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(r.elements()[0].offset(), Offset::End, "no record that late");
}

/// A topic whose compression.type names a codec stores what producers send in that codec
/// (the leader recompresses): records sent uncompressed or in another codec read back the
/// same, with keys, headers and timestamps, and the topic holds far fewer bytes than the
/// same records stored as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_compression_type_recompresses_batches() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    create_topic(&k, "packed", 1, &[("compression.type", "zstd")]).await;
    create_topic(&k, "as-sent", 1, &[]).await;
    let value = "a".repeat(4096);
    let mut sent = 0;
    for codec in ["none", "gzip", "lz4"] {
        let p = producer(&k, codec);
        for i in 0..20 {
            for topic in ["packed", "as-sent"] {
                let key = format!("{codec}-{i}");
                let headers = OwnedHeaders::new().insert(Header {
                    key: "codec",
                    value: Some(codec),
                });
                p.send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload(&value)
                        .headers(headers)
                        .timestamp(1_000 + sent),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|e| panic!("{topic} {codec}: {:?}", e.0));
            }
            sent += 1;
        }
    }
    let got = consume_all(&k, "packed", 1, sent as usize);
    let want = consume_all(&k, "as-sent", 1, sent as usize);
    assert_eq!(got.len(), sent as usize);
    assert_eq!(
        got, want,
        "records differ between the recompressed and the as-sent topic"
    );
    assert!(got.iter().all(|g| g.3 == value));
    let size = |topic: &str| -> u64 {
        let (status, body) = k.http_get(&format!("/api/v1/topics/{topic}"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["partitions"][0]["local_size_bytes"].as_u64().expect("a size")
    };
    let (packed, as_sent) = (size("packed"), size("as-sent"));
    // Uncompressed, 20 of the 60 records alone are 80 KiB; zstd makes each batch tiny.
    assert!(
        packed * 4 < as_sent,
        "compression.type=zstd topic holds {packed} bytes, as sent {as_sent}"
    );
}

/// A compacted topic refuses keyless records with INVALID_RECORD (plain and compressed
/// batches alike) and takes keyed ones; it keeps every record, tombstones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_takes_only_keyed_records() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    create_topic(&k, "kv", 1, &[("cleanup.policy", "compact")]).await;
    for codec in ["none", "gzip", "zstd", "lz4", "snappy"] {
        let p = producer(&k, codec);
        let keyless = p
            .send(
                FutureRecord::<(), _>::to("kv").payload("no key"),
                Duration::from_secs(10),
            )
            .await;
        let err = keyless.expect_err("a keyless record was accepted").0;
        assert_eq!(
            err.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::InvalidRecord),
            "{codec}: {err}"
        );
        p.send(FutureRecord::to("kv").key("a").payload(codec), Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{codec}: keyed record refused: {:?}", e.0));
    }
    let p = producer(&k, "none");
    p.send(FutureRecord::<_, ()>::to("kv").key("a"), Duration::from_secs(10))
        .await
        .expect("tombstone refused");
    let got = consume_all(&k, "kv", 1, 6);
    let values: Vec<&str> = got.iter().map(|g| g.3.as_str()).collect();
    assert_eq!(values, ["none", "gzip", "zstd", "lz4", "snappy", ""]);
    assert!(got.iter().all(|g| g.2 == "a"));
}

/// A producer told the broker is old (no ApiVersions) sends Produce v1 with message format
/// v0, or v2 with format v1, plain or gzip-compressed: Keel converts the message sets to v2
/// batches, and a current consumer reads every record with its key, value and timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_message_formats_are_converted_on_produce() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    create_topic(&k, "old", 1, &[]).await;
    let mut expected = Vec::new();
    for (fallback, codec) in [
        ("0.9.0", "none"),
        ("0.9.0", "gzip"),
        ("0.10.0", "none"),
        ("0.10.0", "gzip"),
    ] {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &k.kafka)
            .set("api.version.request", "false")
            .set("broker.version.fallback", fallback)
            .set("enable.idempotence", "false")
            .set("compression.codec", codec)
            .set("linger.ms", "20")
            .set("message.timeout.ms", "20000")
            .create()
            .unwrap();
        // Enqueued together, so that linger.ms packs them into shared message sets.
        let mut deliveries = Vec::new();
        for i in 0..20 {
            let value = format!("{fallback}-{codec}-{i}");
            expected.push((format!("k{i}"), value.clone(), fallback == "0.10.0"));
            let key = format!("k{i}");
            let record = FutureRecord::to("old").key(&key).payload(&value).timestamp(5_000 + i);
            deliveries.push(p.send_result(record).map_err(|e| e.0).expect("enqueue"));
        }
        for d in deliveries {
            d.await
                .expect("delivery dropped")
                .unwrap_or_else(|e| panic!("{fallback}/{codec}: produce failed: {:?}", e.0));
        }
    }
    let got = consume_all(&k, "old", 1, expected.len());
    assert_eq!(got.len(), expected.len());
    for ((key, value, has_ts), g) in expected.iter().zip(&got) {
        assert_eq!((&g.2, &g.3), (key, value));
        // Format v0 has no timestamps; format v1 keeps the producer's.
        if *has_ts {
            assert!((5_000..5_020).contains(&g.4), "{value}: timestamp {}", g.4);
        } else {
            assert!(g.4 < 0, "{value}: timestamp {}", g.4);
        }
    }
}

fn sasl_client(k: &Keel, user: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.kafka)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", user)
        .set("sasl.password", password);
    c
}

/// With SASL/PLAIN users configured, librdkafka with the right password produces and
/// consumes; a wrong password, or no SASL at all, gets nowhere; /metrics counts refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_lets_in_only_known_users() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, "[sasl_plain_users]\nalice = \"alice-secret\"\n").unwrap();
    let k = Keel::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);

    let p: FutureProducer = sasl_client(&k, "alice", "alice-secret")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..10 {
        p.send(
            FutureRecord::to("auth").key("k").payload(&format!("v{i}")),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("authenticated produce failed: {:?}", e.0));
    }
    let c: BaseConsumer = sasl_client(&k, "alice", "alice-secret")
        .set("group.id", "auth-readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["auth"]).unwrap();
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got < 10 && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            got += 1;
        }
    }
    assert_eq!(got, 10, "authenticated consumer read {got} of 10");

    for (name, config) in [
        ("wrong password", sasl_client(&k, "alice", "guess")),
        ("unknown user", sasl_client(&k, "mallory", "alice-secret")),
        ("no SASL", {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &k.kafka);
            c
        }),
    ] {
        let p: FutureProducer = config.clone().set("message.timeout.ms", "3000").create().unwrap();
        let r = p
            .send(
                FutureRecord::to("auth").key("k").payload("intruder"),
                Duration::from_secs(10),
            )
            .await;
        assert!(r.is_err(), "{name}: produce accepted");
    }
    let (_, text) = k.http_get("/metrics");
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keel_sasl_authentication_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sasl failures metric");
    assert!(refused >= 2.0, "{refused} refusals counted");
    // Nothing the refused clients sent was stored.
    let c: BaseConsumer = sasl_client(&k, "alice", "alice-secret")
        .set("group.id", "auth-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let (_, high) = c.fetch_watermarks("auth", 0, Duration::from_secs(10)).unwrap();
    assert_eq!(high, 10);
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// DeleteRecords moves the log start offset to exactly the offset asked for: ListOffsets
/// (low watermark) and a reader from the beginning start there, an offset past the end is
/// refused, and the log start holds across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = Keel::start(dir.path(), &[]);
    create_topic(&k, "trim", 1, &[]).await;
    let p = producer(&k, "none");
    for i in 0..100 {
        p.send(
            FutureRecord::to("trim").key(&format!("k{i}")).payload(&format!("v{i}")),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    }
    let a = admin(&k);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(40)).unwrap();
    let r = a
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete_records");
    let e = r.elements_for_topic("trim");
    assert_eq!(e[0].error(), Ok(()));
    assert_eq!(e[0].offset(), Offset::Offset(40), "low watermark after the deletion");
    let mut past = TopicPartitionList::new();
    past.add_partition_offset("trim", 0, Offset::Offset(1_000)).unwrap();
    let r = a
        .delete_records(&past, &AdminOptions::new())
        .await
        .expect("delete_records");
    assert!(
        r.elements_for_topic("trim")[0].error().is_err(),
        "an offset past the end was accepted"
    );
    let watermarks = |k: &Keel| {
        consumer(k)
            .fetch_watermarks("trim", 0, Duration::from_secs(10))
            .expect("watermarks")
    };
    assert_eq!(watermarks(&k).0, 40);
    let got = consume_all(&k, "trim", 1, 60);
    assert_eq!(got.len(), 60);
    assert_eq!(got[0].1, 40, "a reader from the beginning starts at the new log start");
    assert_eq!(got[0].3, "v40");
    k.restart();
    assert_eq!(watermarks(&k).0, 40, "the log start did not hold across a restart");
}
