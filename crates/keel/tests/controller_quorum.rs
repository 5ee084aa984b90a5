//! A changeable controller quorum (KIP-853's AddRaftVoter and RemoveRaftVoter, sent by
//! `keel cluster add-voter` / `remove-voter`), on four `keel serve` processes driven by
//! librdkafka (the rdkafka crate): a controller voter is replaced by a node that joined,
//! with no downtime, after which the cluster survives losing a second original voter —
//! which, with the voters it started with, would have left it without a controller quorum.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{join_cluster, start_cluster, Keel};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "quorum";
const PARTITIONS: i32 = 4;

/// The tests each start a cluster; on two cores, one at a time.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Node `n`'s admin API view of the cluster (`/api/v1/cluster`); null when it does not
/// answer.
fn cluster_view(n: &Keel) -> serde_json::Value {
    let (status, body) = n.http_get("/api/v1/cluster");
    if status != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or_default()
}

/// The controller's voters as node `n`'s admin API reports them.
fn voters(n: &Keel) -> BTreeSet<u64> {
    cluster_view(n)["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["controller_voter"].as_bool() == Some(true))
                .filter_map(|n| n["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_voters(n: &Keel, want: &[u64], timeout: Duration) {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    let deadline = Instant::now() + timeout;
    loop {
        let now = voters(n);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "voters {now:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every partition's (replicas, in-sync replicas), internal topics' included, as Metadata
/// from `bootstrap` reports them.
fn placement(bootstrap: &str) -> BTreeMap<(String, i32), (Vec<i32>, Vec<i32>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let Ok(md) = c.fetch_metadata(None, Duration::from_secs(10)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| {
            t.partitions().iter().map(|p| {
                (
                    (t.name().to_string(), p.id()),
                    (p.replicas().to_vec(), p.isr().to_vec()),
                )
            })
        })
        .collect()
}

async fn produce(bootstrap: &str, from: usize, count: usize, acked: &mut Vec<(i32, i64, String)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    for i in from..from + count {
        let partition = (i % PARTITIONS as usize) as i32;
        let value = format!("q-{i:04}");
        let d = producer
            .send(
                FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value),
                Duration::from_secs(30),
            )
            .await;
        match d {
            Ok(d) => acked.push((d.partition, d.offset, value)),
            Err((e, _)) => panic!("write {i} failed: {e}"),
        }
    }
}

/// Writes to `TOPIC` with an acks=all idempotent producer, one record at a time, until
/// `stop` is set; returns what was acknowledged and the longest wait for an acknowledgement.
async fn write_until(
    bootstrap: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<(i32, i64, String)>, Duration) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let value = format!("load-{i:05}");
        let partition = (i % PARTITIONS as usize) as i32;
        let sent = Instant::now();
        let d = producer
            .send(
                FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&value),
                Duration::from_secs(30),
            )
            .await;
        longest = longest.max(sent.elapsed());
        match d {
            Ok(d) => acked.push((d.partition, d.offset, value)),
            Err((e, _)) => panic!("write {value} under load failed: {e}"),
        }
        i += 1;
    }
    (acked, longest)
}

/// Three voters (nodes 1-3); node 4 joins and becomes a voter; node 1 is killed for good,
/// removed from the voters, its replicas re-placed by self-healing, and forgotten; then
/// node 2 is killed too. Nodes 3 and 4 are a quorum of the voters {2, 3, 4}: they still
/// create a topic and take acks=all writes, node 4 restarts into the quorum, and every
/// acknowledged record reads back once. An acks=all producer writes all through the voter
/// changes and node 1's loss, and none of its writes fails. Refusals are checked on the
/// way: a voter is not added twice, a node that never joined is not made a voter, a voter
/// is not unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_voter_is_replaced_without_downtime_and_the_new_quorum_survives_another_loss() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), 3, &["--replica-replace-after-ms", "2000"]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, TOPIC, PARTITIONS, 3).await;
    let mut acked = Vec::new();
    produce(&bs, 0, 100, &mut acked).await;
    wait_for_voters(&nodes[0], &[1, 2, 3], Duration::from_secs(30)).await;

    // The voter changes and node 1's loss happen under an acks=all producer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(write_until(bs.clone(), stop.clone()));
    let joined = join_cluster(root.path(), &nodes, 4, &["--replica-replace-after-ms", "2000"]);
    nodes.push(joined);
    let (ok, text) = common::keel_cli(&["cluster", "add-voter", "--bootstrap", &nodes[2].kafka, "--node", "4"]);
    assert!(ok, "add-voter 4: {text}");
    wait_for_voters(&nodes[0], &[1, 2, 3, 4], Duration::from_secs(10)).await;
    // Refused by the controller's leader, whichever node is asked (the others forward).
    for n in &nodes {
        let asked = Instant::now();
        let (ok, text) = common::keel_cli(&[
            "cluster",
            "add-voter",
            "--bootstrap",
            &n.kafka,
            "--node",
            "4",
            "--timeout-s",
            "20",
        ]);
        assert!(
            !ok && text.contains("voter already"),
            "a second add-voter 4 through {}: {text}",
            n.kafka
        );
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "a refusal took {:?}",
            asked.elapsed()
        );
    }
    let (ok, text) = common::keel_cli(&["cluster", "add-voter", "--bootstrap", &nodes[2].kafka, "--node", "9"]);
    assert!(
        !ok && text.contains("has not joined"),
        "add-voter of a node that never joined: {text}"
    );

    // Node 1 goes for good: out of the voters, its replicas re-placed, then forgotten.
    nodes[0].kill9();
    let rest: String = nodes[1..].iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    let (ok, text) = common::keel_cli(&["cluster", "remove-node", "--bootstrap", &rest, "--node", "1"]);
    assert!(!ok && text.contains("voter"), "remove-node of a voter: {text}");
    let (ok, text) = common::keel_cli(&["cluster", "remove-voter", "--bootstrap", &rest, "--node", "1"]);
    assert!(ok, "remove-voter 1: {text}");
    wait_for_voters(&nodes[1], &[2, 3, 4], Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = placement(&rest);
        let healed = p.keys().filter(|(t, _)| t == TOPIC).count() == PARTITIONS as usize
            && p.values()
                .all(|(replicas, isr)| !replicas.contains(&1) && isr.len() == replicas.len());
        if healed {
            break;
        }
        assert!(Instant::now() < deadline, "node 1's replicas were not re-placed: {p:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, text) = common::keel_cli(&["cluster", "remove-node", "--bootstrap", &rest, "--node", "1"]);
    assert!(ok, "remove-node 1: {text}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (under_load, longest) = load.await.expect("the producer task");
    assert!(
        under_load.len() > 20,
        "the producer wrote {} records under load",
        under_load.len()
    );
    eprintln!(
        "{} writes acknowledged during the voter changes and node 1's loss; the longest took {longest:?}",
        under_load.len()
    );
    acked.extend(under_load);

    // Node 2 goes too: nodes 3 and 4 are two of the three voters.
    nodes[1].kill9();
    let survivors: String = nodes[2..].iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&survivors, "after-the-loss", 2, 2).await;
    produce(&survivors, 100, 100, &mut acked).await;

    // Node 4, a voter since it joined, restarts into the quorum (with node 2 still down,
    // the controller has no quorum until it is back).
    nodes[3].restart();
    wait_for_voters(&nodes[3], &[2, 3, 4], Duration::from_secs(30)).await;
    produce(&survivors, 200, 20, &mut acked).await;

    let got = common::read_from_start(&survivors, TOPIC, PARTITIONS, acked.len(), Duration::from_secs(60));
    for (p, o, v) in &acked {
        assert_eq!(
            got.get(&(*p, *o)),
            Some(v),
            "acknowledged record {p}/{o} did not read back"
        );
    }
    assert_eq!(got.len(), acked.len(), "records that were never acknowledged appeared");
}

/// The controller leader as node `n`'s admin API reports it.
fn controller_leader(n: &Keel) -> Option<u64> {
    cluster_view(n)["controller"].as_u64()
}

/// A controller leader that is removed from the voters (RemoveRaftVoter, as Kafka's
/// `kafka-metadata-quorum remove-controller` sends it) hands the leadership to one of the
/// remaining voters, as Kafka's removed controller resigns; the controller then still
/// creates topics, and the removed node can be made a voter again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_leader_removed_from_the_voters_hands_the_leadership_to_a_voter() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    wait_for_voters(&nodes[0], &[1, 2, 3], Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(l) = controller_leader(&nodes[0]) {
            break l;
        }
        assert!(Instant::now() < deadline, "the controller has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();

    let (ok, text) = common::keel_cli(&[
        "cluster",
        "remove-voter",
        "--bootstrap",
        &bs,
        "--node",
        &leader.to_string(),
    ]);
    assert!(ok, "remove-voter {leader}: {text}");
    wait_for_voters(&nodes[0], &rest, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen: Vec<Option<u64>> = nodes.iter().map(controller_leader).collect();
        if seen.iter().all(|l| l.is_some_and(|l| rest.contains(&l))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after node {leader} left the voters {rest:?}, the nodes report controller leaders {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    common::create_topic(&bs, TOPIC, PARTITIONS, 3).await;
    let mut acked = Vec::new();
    produce(&bs, 0, 10, &mut acked).await;
    assert_eq!(acked.len(), 10, "writes after the removal");
    let (ok, text) = common::keel_cli(&[
        "cluster",
        "add-voter",
        "--bootstrap",
        &bs,
        "--node",
        &leader.to_string(),
    ]);
    assert!(ok, "add-voter {leader}: {text}");
    wait_for_voters(&nodes[0], &[1, 2, 3], Duration::from_secs(10)).await;
}
