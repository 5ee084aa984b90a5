//! Power loss on real processes: three `keel serve --fault-injection` nodes, an acks=all
//! idempotent producer (librdkafka) writing throughout; one node, then two, then all
//! three lose power (`POST /fault/power-loss`: everything not fsynced is thrown away, with
//! torn writes, and the process ends) and restart. Every acknowledged record reads back
//! exactly once, at the offset it was acknowledged with.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_cluster, Keel};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TOPIC: &str = "blackout";

fn bootstrap(nodes: &[Keel]) -> String {
    nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",")
}

/// Asks the node to lose power and waits until its process has ended by itself.
fn lose_power(k: &mut Keel, tear: bool) {
    use std::io::{Read, Write};
    let pid = k.pid().expect("running");
    if let Ok(mut s) = std::net::TcpStream::connect(&k.http) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(
            s,
            "POST /fault/power-loss?tear={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            u8::from(tear)
        );
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
    }
    // Ended: gone, or a zombie waiting to be reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next()))
            .flatten();
        if matches!(state, None | Some('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "node did not lose power");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restarts the given nodes side by side (a node waits for a controller quorum before it
/// reports ready, so nodes that all went down must come back together).
fn restart(nodes: &mut [Keel], which: &[usize]) {
    std::thread::scope(|s| {
        for (i, k) in nodes.iter_mut().enumerate() {
            if which.contains(&i) {
                s.spawn(move || k.restart());
            }
        }
    });
}

fn read_all(bootstrap: &str, expect: usize) -> Vec<(i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "blackout-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    // Until everything acknowledged is in, then 2 s more: anything beyond what was
    // acknowledged would show up too.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settle: Option<Instant> = None;
    while Instant::now() < settle.unwrap_or(deadline) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
        if got.len() >= expect && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_loss_of_one_two_and_all_nodes() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--fault-injection"]);
    let bs = bootstrap(&nodes);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bs).create().unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "200")
        .set("request.timeout.ms", "3000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            // Bounded: at most this many records, whatever happens.
            while !stop.load(Ordering::Acquire) && i < 200_000 {
                let value = format!("b-{i:07}");
                let r = producer
                    .send(
                        FutureRecord::<(), _>::to(TOPIC).partition(0).payload(&value),
                        Duration::from_secs(120),
                    )
                    .await;
                match r {
                    Ok(d) => acked.lock().unwrap().push((value, d.offset)),
                    Err((e, _)) => panic!("{value} not delivered: {e}"),
                }
                i += 1;
            }
        })
    };
    let grows_past = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "writes stopped at {}",
                    acked.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // One node, two nodes (a majority), then all three lose power; each time the producer
    // keeps writing, and carries on once the nodes are back.
    for (round, victims) in [vec![0usize], vec![1, 2], vec![0, 1, 2]].into_iter().enumerate() {
        let before = acked.lock().unwrap().len();
        grows_past(before + 200).await;
        for v in &victims {
            lose_power(&mut nodes[*v], round % 2 == 0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        restart(&mut nodes, &victims);
        let after = acked.lock().unwrap().len();
        grows_past(after + 200).await;
    }
    stop.store(true, Ordering::Release);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let got = read_all(&bs, acked.len());
    let by_value: BTreeMap<&str, i64> = got.iter().map(|(o, v)| (v.as_str(), *o)).collect();
    assert_eq!(by_value.len(), got.len(), "a record appears twice");
    for (value, offset) in &acked {
        assert_eq!(
            by_value.get(value.as_str()),
            Some(offset),
            "acknowledged {value} lost or moved"
        );
    }
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
    eprintln!("{} acknowledged records survived three power losses", acked.len());
}
