//! Starts the real `keel` binary on free ports in a temporary data directory.
#![allow(dead_code)]
// The child is waited on by `Keel::kill9`/`terminate` (and on drop).
#![allow(clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Keel {
    pub child: Option<Child>,
    pub kafka: String,
    pub http: String,
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

fn spawn(data_dir: &Path, kafka: &str, http: &str, extra: &[String]) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--kafka-listen")
        .arg(kafka)
        .arg("--http-listen")
        .arg(http)
        .args(extra)
        .env("KEEL_CLUSTER_SECRET", "keel integration tests' cluster secret")
        .env(
            "KEEL_LOG",
            std::env::var("KEEL_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn keel");
    let stdout = child.stdout.take().expect("stdout");
    // Lines come through a thread that keeps draining stdout (so the child never blocks on
    // a full pipe), and the wait for the ready line has a deadline even if none comes.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("keel did not become ready within 60 s");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("keel exited before it was ready"),
        };
        if let Some(rest) = line.strip_prefix("keel ready: ") {
            let mut kafka = String::new();
            let mut http = String::new();
            for part in rest.split_whitespace() {
                if let Some(v) = part.strip_prefix("kafka=") {
                    kafka = v.to_string();
                }
                if let Some(v) = part.strip_prefix("http=") {
                    http = v.to_string();
                }
            }
            return (child, kafka, http);
        }
    }
}

impl Keel {
    /// Starts a broker in `data_dir` on free ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Keel {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, kafka, http) = spawn(data_dir, "127.0.0.1:0", "127.0.0.1:0", &extra);
        Keel {
            child: Some(child),
            kafka,
            http,
            data_dir: data_dir.to_path_buf(),
            extra,
        }
    }

    /// The value of a flag this node was started with.
    pub fn flag(&self, name: &str) -> Option<String> {
        let at = self.extra.iter().position(|a| a == name)?;
        self.extra.get(at + 1).cloned()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may take a moment to be free again.
            if std::net::TcpListener::bind(&self.kafka).is_ok() && std::net::TcpListener::bind(&self.http).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "ports stayed busy");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (child, kafka, http) = spawn(&self.data_dir, &self.kafka, &self.http, &self.extra);
        assert_eq!(kafka, self.kafka);
        self.child = Some(child);
        self.http = http;
    }

    /// An HTTP GET against the broker's HTTP listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http_request("GET", path)
    }

    /// An HTTP POST without a body: (status, body).
    pub fn http_post(&self, path: &str) -> (u16, String) {
        self.http_request("POST", path)
    }

    /// An HTTP request without a body: (status, body).
    pub fn http_request(&self, method: &str, path: &str) -> (u16, String) {
        self.http_request_with(method, path, "")
    }

    /// An HTTP GET with HTTP Basic credentials: (status, body).
    pub fn http_get_as(&self, path: &str, user: &str, password: &str) -> (u16, String) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.http_request_with("GET", path, &format!("Authorization: Basic {token}\r\n"))
    }

    /// An HTTP request with extra header lines (each ending in CRLF): (status, body).
    fn http_request_with(&self, method: &str, path: &str, headers: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.http).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A free 127.0.0.1 port, bound and released, below the kernel's ephemeral range: nodes
/// restart on their ports, and in the ephemeral range any outgoing connection on the
/// machine can take a port while its node is down.
pub fn free_port() -> u16 {
    use rand::Rng;
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = if top > 12_000 { 10_000 } else { 1024 };
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(low..top);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts `n` nodes of one cluster (node ids 1..=n) with data in `root/node-<id>`. Nodes
/// start together: each waits for a controller quorum before it reports ready.
pub fn start_cluster(root: &Path, n: usize, extra: &[&str]) -> Vec<Keel> {
    start_cluster_each(root, n, &|_| extra.iter().map(|s| s.to_string()).collect())
}

/// As [`start_cluster`], with flags of each node's own: `extra(i)` for node `i + 1`.
pub fn start_cluster_each(root: &Path, n: usize, extra: &dyn Fn(usize) -> Vec<String>) -> Vec<Keel> {
    // A free port is free when picked, not always when the node binds it (another test's
    // listener may take it meanwhile): a node that could not start ends the attempt, and
    // the cluster starts again on new ports in fresh directories.
    for _ in 0..3 {
        if let Some(nodes) = try_start_cluster(root, n, extra) {
            return nodes;
        }
        for i in 0..n {
            let _ = std::fs::remove_dir_all(root.join(format!("node-{}", i + 1)));
        }
    }
    panic!("the cluster did not start in three attempts");
}

fn try_start_cluster(root: &Path, n: usize, extra: &dyn Fn(usize) -> Vec<String>) -> Option<Vec<Keel>> {
    let raft: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<String> = raft
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect();
    let peers = peers.join(",");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let dir = root.join(format!("node-{}", i + 1));
                let mut args: Vec<String> = vec![
                    "--node-id".into(),
                    (i + 1).to_string(),
                    "--raft-listen".into(),
                    format!("127.0.0.1:{}", raft[i]),
                    "--peers".into(),
                    peers.clone(),
                ];
                args.extend(extra(i));
                s.spawn(move || {
                    std::fs::create_dir_all(&dir).unwrap();
                    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                    Keel::start(&dir, &refs)
                })
            })
            .collect();
        // Nodes that started are stopped (on drop) when another did not.
        let started: Vec<Option<Keel>> = handles.into_iter().map(|h| h.join().ok()).collect();
        started.into_iter().collect()
    })
}

/// Starts node `id` joining the running cluster of `nodes` (its controller voters), with
/// data in `root/node-<id>`.
pub fn join_cluster(root: &Path, nodes: &[Keel], id: usize, extra: &[&str]) -> Keel {
    let peers = nodes[0].flag("--peers").expect("a cluster node has --peers");
    let dir = root.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let raft = format!("127.0.0.1:{}", free_port());
    let id = id.to_string();
    let mut args: Vec<&str> = vec!["--node-id", &id, "--raft-listen", &raft, "--peers", &peers, "--join"];
    args.extend(extra);
    Keel::start(&dir, &args)
}

/// Each partition of `topic` and its leader as Metadata from `bootstrap` reports it (-1:
/// none), asked with librdkafka; empty when no broker answers.
pub fn leaders(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<i32, i32> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return Default::default();
    };
    md.topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), if p.error().is_none() { p.leader() } else { -1 }))
        .collect()
}

/// Creates `topic` with `partitions` partitions of `replicas` replicas through librdkafka's
/// admin client, and asserts it was created.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, replicas: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(120))),
        )
        .await
        .expect("CreateTopics");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
}

/// Reads every partition of `topic` from its start with librdkafka until `want` records
/// came or `timeout` passed: (partition, offset) to value. Asserts no value is read twice.
pub fn read_from_start(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    timeout: Duration,
) -> std::collections::BTreeMap<(i32, i64), String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "read-from-start")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got = std::collections::BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while got.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            assert!(seen.insert(v.clone()), "{v} read twice");
            got.insert((m.partition(), m.offset()), v);
        }
    }
    got
}

/// Runs the `keel` binary with `args`: whether it succeeded, and its stdout and stderr.
pub fn keel_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
