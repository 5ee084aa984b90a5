//! Consumer groups driven by librdkafka: partitions spread across members, a killed
//! member's partitions move to the others, committed offsets survive consumer and broker
//! restarts, and a static member restarts without a rebalance.
//!
//! Group members run as child processes (this test binary re-run with
//! `KEEL_GROUP_MEMBER` set) so that one can be killed with SIGKILL: no LeaveGroup, no
//! final commit, exactly as a crashed service.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Keel;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

const SESSION_TIMEOUT_MS: u64 = 6000;

struct Printer;
impl ClientContext for Printer {}
impl ConsumerContext for Printer {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let parts: Vec<String> = tpl.elements().iter().map(|e| e.partition().to_string()).collect();
            println!("ASSIGNED {}", parts.join(","));
        }
    }
}

/// Not a test on its own: the body of a group member child process (run with
/// `--ignored` by `Member::start`). Consumes, prints every record and commits
/// synchronously after each one.
#[test]
#[ignore = "helper: runs only as a group member child process"]
fn group_member_process() {
    let bootstrap = std::env::var("KEEL_GROUP_MEMBER").expect("KEEL_GROUP_MEMBER: run by Member::start only");
    let group = std::env::var("KEEL_GROUP").unwrap();
    let topic = std::env::var("KEEL_TOPIC").unwrap();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "range");
    if let Ok(instance) = std::env::var("KEEL_INSTANCE") {
        cfg.set("group.instance.id", &instance);
    }
    let c: BaseConsumer<Printer> = cfg.create_with_context(Printer).unwrap();
    c.subscribe(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            println!(
                "MSG {} {} {}",
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default())
            );
            let _ = c.commit_message(&m, CommitMode::Sync);
        }
    }
}

/// A running member process and what it has printed.
struct Member {
    child: Child,
    assignments: Arc<Mutex<Vec<BTreeSet<i32>>>>,
    seen: Arc<Mutex<Vec<(i32, i64, String)>>>,
}

impl Member {
    fn start(k: &Keel, group: &str, topic: &str, instance: Option<&str>) -> Member {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "group_member_process",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("KEEL_GROUP_MEMBER", &k.kafka)
        .env("KEEL_GROUP", group)
        .env("KEEL_TOPIC", topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(i) = instance {
            cmd.env("KEEL_INSTANCE", i);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let assignments: Arc<Mutex<Vec<BTreeSet<i32>>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
        let (a, s) = (assignments.clone(), seen.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // The test harness may print its own text before ours on the first line.
                let line = match line.find("ASSIGNED").or_else(|| line.find("MSG ")) {
                    Some(i) => line[i..].to_string(),
                    None => continue,
                };
                if let Some(rest) = line.strip_prefix("ASSIGNED ") {
                    a.lock().unwrap().push(
                        rest.split(',')
                            .filter(|x| !x.is_empty())
                            .map(|x| x.parse().unwrap())
                            .collect(),
                    );
                } else if line == "ASSIGNED" {
                    a.lock().unwrap().push(BTreeSet::new());
                } else if let Some(rest) = line.strip_prefix("MSG ") {
                    let f: Vec<&str> = rest.splitn(3, ' ').collect();
                    s.lock()
                        .unwrap()
                        .push((f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string()));
                }
            }
        });
        Member {
            child,
            assignments,
            seen,
        }
    }

    fn current(&self) -> BTreeSet<i32> {
        self.assignments.lock().unwrap().last().cloned().unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

async fn setup_topic(k: &Keel, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &k.kafka).create().unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok());
}

async fn produce(k: &Keel, topic: &str, from: usize, to: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let futures: Vec<_> = (from..to)
        .map(|i| {
            p.send_result(FutureRecord::to(topic).key(&format!("k{i}")).payload("v"))
                .unwrap()
        })
        .collect();
    for f in futures {
        f.await.unwrap().unwrap();
    }
}

fn reader(k: &Keel, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &k.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

/// Three members share six partitions two by two; SIGKILL one and its partitions move to
/// the other two within the session timeout; every record is consumed at least once and
/// the final committed offsets equal the log end offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_and_move_when_a_member_dies() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let (topic, group) = ("spread", "spread-group");
    setup_topic(&k, topic, 6).await;
    produce(&k, topic, 0, 3000).await;
    let mut members: Vec<Member> = (0..3).map(|_| Member::start(&k, group, topic, None)).collect();
    wait_until("2 partitions each", Duration::from_secs(60), || {
        let sets: Vec<_> = members.iter().map(|m| m.current()).collect();
        sets.iter().all(|s| s.len() == 2) && sets.iter().flatten().collect::<HashSet<_>>().len() == 6
    });
    let mut dead = members.pop().unwrap();
    dead.kill9();
    let moved = wait_until(
        "the dead member's partitions to move",
        Duration::from_millis(SESSION_TIMEOUT_MS + 10_000),
        || {
            let sets: Vec<_> = members.iter().map(|m| m.current()).collect();
            sets.iter().flatten().collect::<HashSet<_>>().len() == 6 && sets.iter().all(|s| s.len() == 3)
        },
    );
    eprintln!("partitions moved {moved:?} after the kill (session timeout {SESSION_TIMEOUT_MS} ms)");
    produce(&k, topic, 3000, 6000).await;
    wait_until("every record consumed", Duration::from_secs(60), || {
        let mut keys: HashSet<String> = HashSet::new();
        for m in members.iter().chain(std::iter::once(&dead)) {
            keys.extend(m.seen.lock().unwrap().iter().map(|(_, _, k)| k.clone()));
        }
        keys.len() == 6000
    });
    // Commits are synchronous after each record: wait for the group to settle on the ends.
    let r = reader(&k, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition(topic, p);
    }
    wait_until(
        "committed offsets to reach the log ends",
        Duration::from_secs(30),
        || {
            let committed = r.committed_offsets(tpl.clone(), Duration::from_secs(5)).unwrap();
            committed.elements().iter().all(|e| {
                let (_, hi) = r
                    .fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
                    .unwrap();
                e.offset() == Offset::Offset(hi)
            })
        },
    );
}

/// A consumer that committed and went away resumes exactly after its commit, including
/// after the broker itself was killed with SIGKILL and restarted; commit metadata
/// round-trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_consumer_and_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = Keel::start(dir.path(), &[]);
    let (topic, group) = ("resume", "resume-group");
    setup_topic(&k, topic, 1).await;
    produce(&k, topic, 0, 1000).await;
    {
        let c = reader(&k, group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(0)).unwrap();
        c.assign(&tpl).unwrap();
        let mut commit = TopicPartitionList::new();
        commit.add_partition_offset(topic, 0, Offset::Offset(437)).unwrap();
        commit.elements_for_topic(topic)[0].set_metadata("checkpoint-437");
        c.commit(&commit, CommitMode::Sync).unwrap();
    }
    let first_after = |k: &Keel| {
        let c = reader(k, group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let committed = c.committed_offsets(tpl.clone(), Duration::from_secs(10)).unwrap();
        let e = &committed.elements()[0];
        let meta = e.metadata().to_string();
        c.subscribe(&[topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no record after resuming");
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                return (m.unwrap().offset(), e.offset(), meta);
            }
        }
    };
    assert_eq!(
        first_after(&k),
        (437, Offset::Offset(437), "checkpoint-437".to_string())
    );
    k.kill9();
    k.restart();
    assert_eq!(
        first_after(&k),
        (437, Offset::Offset(437), "checkpoint-437".to_string()),
        "after a broker kill -9"
    );
}

/// A static member killed and restarted within the session timeout gets its partitions
/// back and the other member sees no rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_causes_no_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let (topic, group) = ("static", "static-group");
    setup_topic(&k, topic, 4).await;
    let steady = Member::start(&k, group, topic, Some("steady-1"));
    let mut flaky = Member::start(&k, group, topic, Some("flaky-1"));
    wait_until("both members assigned", Duration::from_secs(60), || {
        steady.current().len() == 2 && flaky.current().len() == 2
    });
    // Let a late first-generation rebalance (if any) settle before counting.
    std::thread::sleep(Duration::from_secs(2));
    let steady_events = steady.assignments.lock().unwrap().len();
    let before = flaky.current();
    flaky.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Member::start(&k, group, topic, Some("flaky-1"));
    wait_until("the restarted member's assignment", Duration::from_secs(30), || {
        !restarted.current().is_empty()
    });
    assert_eq!(
        restarted.current(),
        before,
        "the static member got different partitions back"
    );
    std::thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1000));
    let events: Vec<BTreeSet<i32>> = steady.assignments.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        steady_events,
        "the other member was rebalanced: {events:?}"
    );
    let _ = HashMap::<i32, i32>::new();
}

/// Sum of the lag column of `keel group describe`.
fn described_lag(k: &Keel, group: &str) -> (i64, String) {
    let (ok, out) = common::keel_cli(&["group", "describe", group, "-b", &k.kafka]);
    assert!(ok, "{out}");
    let lag = out
        .lines()
        .skip_while(|l| !l.starts_with("topic\t"))
        .skip(1)
        .map(|l| l.split('\t').nth(4).unwrap().parse::<i64>().unwrap())
        .sum();
    (lag, out)
}

/// `keel group describe` shows the lag of a consumer that fell behind (and /metrics
/// agrees); `reset-offsets` is refused while the group has a member and works once the
/// dead member's session has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_cli_lag_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let (topic, group) = ("lagging", "lag-group");
    setup_topic(&k, topic, 2).await;
    produce(&k, topic, 0, 100).await;
    let mut m = Member::start(&k, group, topic, None);
    wait_until("the member to consume 100", Duration::from_secs(60), || {
        m.seen.lock().unwrap().len() >= 100
    });
    wait_until("commits to reach the end", Duration::from_secs(30), || {
        described_lag(&k, group).0 == 0
    });
    m.kill9();
    produce(&k, topic, 100, 150).await;
    let (lag, out) = described_lag(&k, group);
    assert_eq!(lag, 50, "{out}");
    assert!(
        out.contains("members 1"),
        "the killed member is still in the group until its session expires:\n{out}"
    );
    let (ok, out) = common::keel_cli(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to",
        "earliest",
        "-b",
        &k.kafka,
    ]);
    assert!(!ok && out.contains("active"), "reset of an active group: {out}");
    wait_until("/metrics to report the lag", Duration::from_secs(10), || {
        let (_, metrics) = k.http_get("/metrics");
        let total: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("keel_consumer_lag{") && l.contains("group=\"lag-group\""))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum();
        total == 50.0
    });
    wait_until(
        "the dead member's session to expire",
        Duration::from_millis(SESSION_TIMEOUT_MS + 5000),
        || {
            common::keel_cli(&["group", "describe", group, "-b", &k.kafka])
                .1
                .contains("members 0")
        },
    );
    let (ok, out) = common::keel_cli(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to",
        "earliest",
        "-b",
        &k.kafka,
    ]);
    assert!(ok, "{out}");
    assert_eq!(described_lag(&k, group).0, 150);
    let (ok, out) = common::keel_cli(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to",
        "offset:10",
        "-b",
        &k.kafka,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = common::keel_cli(&["group", "list", "-b", &k.kafka]);
    assert!(ok && out.contains("lag-group\tEmpty"), "{out}");
}
