//! `keel chaos run`: a local cluster of `keel serve` processes under a produce-and-read
//! workload while a nemesis kills, pauses and partitions nodes; then the faults stop, the
//! cluster heals, every partition is read back whole, and `keel_chaos::check` judges the
//! history. Writes `history.jsonl`, `verdict.json` and `report.html`, prints a one-line
//! verdict, and exits
//! non-zero on any anomaly. `--seed` fixes the fault schedule and the workload's choices.
//!
//! `keel chaos monkey`: kills and restarts random nodes of a `keel dev` cluster until
//! `--duration` is over.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use keel_chaos::{Event, Outcome};
use keel_client::{Client, OutRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "chaos";
/// The transactional workload's topic.
const TXN_TOPIC: &str = "chaos-txn";
/// Its partitions at most (fewer when the workload topic has fewer).
const TXN_PARTITIONS_MAX: i32 = 8;
/// Transaction timeout of the workload's producers: a transaction a fault leaves open is
/// aborted by its coordinator after this.
const TXN_TIMEOUT_MS: i32 = 10_000;
const GROUP: &str = "keel-chaos";
const FAULTS: [&str; 9] = [
    "kill",
    "power-loss",
    "pause",
    "partition",
    "bridge",
    "corrupt",
    "slow",
    "disk-full",
    "move",
];

#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Start a cluster, run a workload under faults, check every acknowledged record.
    Run(RunArgs),
    /// Kill and restart random nodes of a running `keel dev` cluster.
    Monkey(MonkeyArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Nodes in the cluster (replication factor is min(3, nodes)).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seed of the fault schedule and workload choices [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Partitions of the workload topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Concurrent producers (half of their records carry keys).
    #[arg(long, default_value_t = 3)]
    pub producers: usize,
    /// Members of the consumer group that reads the topic and commits offsets.
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Transactional producers: each commits (or aborts, one time in five) transactions
    /// of one to three partitions of the `chaos-txn` topic; a `read_committed` reader
    /// checks what it sees, and the checker what the topic holds at the end.
    #[arg(long, default_value_t = 2)]
    pub txn_producers: usize,
    /// Faults to inject, comma-separated: kill (-9, then restart), pause (SIGSTOP, then
    /// SIGCONT), partition (cut a minority of nodes off from the rest), bridge (split the
    /// others in two, with one node still talking to both sides), corrupt (stop a node, flip
    /// a bit in or cut the tail of one of its segments, restart it), slow (delay and drop a
    /// node's messages to and from the others), disk-full (a node's writes fail with ENOSPC),
    /// power-loss (one node, a minority, or every node at once loses what it had not
    /// fsynced, torn writes included, and restarts),
    /// move (move a partition: one replica to a node without one, or, when every node has
    /// one, down to one replica fewer and back). kill, pause and partition pick the node
    /// leading the most partitions half the time.
    #[arg(
        long,
        default_value = "kill,power-loss,pause,partition,bridge,corrupt,slow,disk-full,move"
    )]
    pub faults: String,
    /// Milliseconds between the end of one fault and the start of the next.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Where the nodes' data, logs, history.jsonl and verdict.json go [default: ./keel-chaos/<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MonkeyArgs {
    /// Nodes of the `keel dev` cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The `keel dev --base-port`.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// The `keel dev --data-dir`.
    #[arg(long, default_value = "keel-dev")]
    pub data_dir: PathBuf,
    /// Seconds to keep going.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds between kills.
    #[arg(long, default_value_t = 10)]
    pub every: u64,
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(cmd: ChaosCommand) -> Result<()> {
    match cmd {
        ChaosCommand::Run(args) => run_chaos(args).await,
        ChaosCommand::Monkey(args) => monkey(args).await,
    }
}

/// One node's process and how to start it again.
struct NodeProc {
    id: u64,
    args: Vec<String>,
    kafka: String,
    http: String,
    log: PathBuf,
    child: Option<Child>,
}

/// A run that ends early (an error while reading back, say) still takes its nodes down:
/// a cluster left running would go on using the machine.
impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl NodeProc {
    fn start(&mut self) -> Result<()> {
        let exe = std::env::current_exe()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(&self.args)
            .env("KEEL_LOG", "info,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting node {}", self.id))?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                match line {
                    Ok(l) if l.starts_with("keel ready") => {
                        let _ = tx.send(());
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            for _ in lines {}
        });
        self.child = Some(child);
        // A node waits for a controller quorum before it is ready: do not block on it here.
        std::thread::spawn(move || {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        });
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the node to lose power (`POST /fault/power-loss`): it throws away what it has
    /// not fsynced and ends. Waits for the process to be gone; a node that did not take
    /// the fault is killed instead, so the nemesis carries on either way.
    async fn power_loss(&mut self, tear: bool) {
        let took = self.post(&format!("/fault/power-loss?tear={}", u8::from(tear)));
        if let Some(mut c) = self.child.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => {
                        eprintln!("node {} did not lose power (answered: {took}); killed instead", self.id);
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    fn post(&self, path: &str) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(&self.http) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut buf);
        buf.starts_with("HTTP/1.1 200")
    }
}

/// A free 127.0.0.1 port below the kernel's ephemeral range. A node killed by a fault
/// restarts on its ports; in the ephemeral range any outgoing connection on the machine,
/// the other nodes' included, can take one of them while the node is down.
fn free_port() -> Result<u16> {
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = if top > 12_000 { 10_000 } else { 1024 };
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(low..top);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

type History = Arc<Mutex<Vec<Event>>>;

async fn run_chaos(args: RunArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("keel-chaos/{seed}")));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let faults: Vec<String> = args
        .faults
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for f in &faults {
        if !FAULTS.contains(&f.as_str()) {
            bail!("unknown fault {f:?} ({})", FAULTS.join(", "));
        }
    }
    eprintln!(
        "keel chaos: seed {seed}, {} nodes, {} s, faults {}, output {}",
        args.nodes,
        args.duration,
        faults.join(","),
        out.display()
    );

    let mut nodes = start_cluster(&out, args.nodes)?;
    let bootstrap: String = nodes.iter().map(|n| n.kafka.clone()).collect::<Vec<_>>().join(",");
    create_topic(&bootstrap, args.partitions).await?;
    let txn_partitions = args.partitions.clamp(1, TXN_PARTITIONS_MAX);
    if args.txn_producers > 0 {
        create_named_topic(&bootstrap, TXN_TOPIC, txn_partitions).await?;
    }

    let start = Instant::now();
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        tasks.push(tokio::spawn(producer(
            p,
            bootstrap.clone(),
            args.partitions,
            seed.wrapping_add(p as u64 + 1),
            history.clone(),
            stop.clone(),
            start,
        )));
    }
    tasks.push(tokio::spawn(reader(
        args.producers,
        bootstrap.clone(),
        args.partitions,
        seed.wrapping_add(1000),
        history.clone(),
        stop.clone(),
        start,
    )));
    for c in 0..args.consumers {
        tasks.push(tokio::spawn(consumer(
            args.producers + 1 + c,
            bootstrap.clone(),
            args.partitions,
            history.clone(),
            stop.clone(),
            start,
        )));
    }
    let first_txn_process = args.producers + 1 + args.consumers;
    for t in 0..args.txn_producers {
        tasks.push(tokio::spawn(txn_producer(
            first_txn_process + t,
            bootstrap.clone(),
            txn_partitions,
            seed.wrapping_add(2000 + t as u64),
            history.clone(),
            stop.clone(),
            start,
        )));
    }
    if args.txn_producers > 0 {
        tasks.push(tokio::spawn(txn_reader(
            first_txn_process + args.txn_producers,
            bootstrap.clone(),
            txn_partitions,
            seed.wrapping_add(3000),
            history.clone(),
            stop.clone(),
            start,
        )));
    }
    let leaders: Leaders = Arc::new(Mutex::new(Vec::new()));
    tasks.push(tokio::spawn(watch_leaders(
        bootstrap.clone(),
        leaders.clone(),
        history.clone(),
        stop.clone(),
        start,
    )));

    // The nemesis: one fault at a time, chosen by the seed.
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = start + Duration::from_secs(args.duration);
    let mut round = 0usize;
    while Instant::now() + Duration::from_millis(args.interval_ms) < deadline && !faults.is_empty() {
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        // Every kind once first, then a random mix.
        let pick = if round < faults.len() {
            round
        } else {
            rng.random_range(0..faults.len())
        };
        round += 1;
        let fault = faults[pick].clone();
        let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        let mut i = rng.random_range(0..nodes.len());
        if matches!(fault.as_str(), "kill" | "pause" | "partition") && rng.random_bool(0.5) {
            if let Some(busiest) = busiest_leader(&leaders) {
                i = nodes.iter().position(|n| n.id == busiest).unwrap_or(i);
            }
        }
        let hold = Duration::from_millis(rng.random_range(1000..4000));
        let t0 = now_ms(start);
        let id = nodes[i].id;
        match fault.as_str() {
            "kill" => {
                nodes[i].kill9();
                tokio::time::sleep(hold).await;
                nodes[i].start()?;
            }
            "power-loss" => {
                // One node, a minority (of two or more with five nodes and up), or (a third
                // of the time) every node at once.
                let victims: Vec<usize> = if rng.random_bool(1.0 / 3.0) {
                    (0..nodes.len()).collect()
                } else {
                    let most = ((nodes.len() - 1) / 2).max(1);
                    let mut others: Vec<usize> = (0..nodes.len()).filter(|v| *v != i).collect();
                    shuffle(&mut others, &mut rng);
                    let mut v = vec![i];
                    v.extend(others.into_iter().take(rng.random_range(1..=most) - 1));
                    v
                };
                let tear = rng.random_bool(0.5);
                for v in &victims {
                    nodes[*v].power_loss(tear).await;
                }
                eprintln!(
                    "power loss on nodes {:?}{}",
                    victims.iter().map(|v| nodes[*v].id).collect::<Vec<_>>(),
                    if tear { ", writes torn" } else { "" }
                );
                tokio::time::sleep(hold).await;
                for v in victims {
                    nodes[v].start()?;
                }
            }
            "corrupt" => {
                nodes[i].kill9();
                let what = damage_segment(&out, id, &mut rng)?;
                eprintln!("corrupt node {id}: {what}");
                tokio::time::sleep(hold).await;
                nodes[i].start()?;
            }
            "slow" => {
                let delay = rng.random_range(5..120);
                let drop = rng.random_range(0..300);
                let q = format!("delay_ms={delay}&drop_per_mille={drop}");
                let others: Vec<u64> = ids.iter().copied().filter(|n| *n != id).collect();
                nodes[i].post(&format!("/fault/slow?peers={}&{q}", join_ids(&others)));
                for n in nodes.iter().filter(|n| n.id != id) {
                    n.post(&format!("/fault/slow?peers={id}&{q}"));
                }
                eprintln!("slow node {id}: {delay} ms delay, {drop}/1000 dropped");
                tokio::time::sleep(hold).await;
                heal_all(&nodes);
            }
            "pause" => {
                nodes[i].signal("STOP");
                tokio::time::sleep(hold).await;
                nodes[i].signal("CONT");
            }
            "move" => {
                let p = rng.random_range(0..args.partitions);
                match move_partition(&bootstrap, p, &ids, &mut rng, hold).await {
                    Ok(what) => eprintln!("move {TOPIC}/{p}: {what}"),
                    Err(e) => eprintln!("move {TOPIC}/{p} not made: {e:#}"),
                }
            }
            "disk-full" => {
                if !nodes[i].post("/fault/disk-full") {
                    eprintln!("node {id} did not take the disk-full fault");
                }
                tokio::time::sleep(hold).await;
                heal_all(&nodes);
            }
            "bridge" => {
                // The bridge node talks to everyone; the others split into two sides that
                // cannot reach each other.
                let mut others: Vec<u64> = ids.iter().copied().filter(|n| *n != id).collect();
                shuffle(&mut others, &mut rng);
                let (a, b) = others.split_at(others.len() / 2);
                cut(&nodes, a, b);
                eprintln!("bridge through node {id}: {a:?} | {b:?}");
                tokio::time::sleep(hold).await;
                heal_all(&nodes);
            }
            _ => {
                // A minority containing the chosen node, cut off from the majority.
                let mut others: Vec<u64> = ids.iter().copied().filter(|n| *n != id).collect();
                shuffle(&mut others, &mut rng);
                let extra = rng.random_range(0..=(ids.len().saturating_sub(1) / 2).saturating_sub(1));
                let mut minority = vec![id];
                minority.extend(others.drain(..extra));
                cut(&nodes, &minority, &others);
                eprintln!("partition: {minority:?} | {others:?}");
                tokio::time::sleep(hold).await;
                heal_all(&nodes);
            }
        }
        let t1 = now_ms(start);
        eprintln!("fault {fault} on node {id}: {t0}-{t1} ms");
        history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::Fault {
            name: fault,
            node: Some(id),
            start_ms: t0,
            end_ms: t1,
        });
    }
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }

    // Heal: every node running, every link whole; then read everything back.
    for n in &mut nodes {
        n.signal("CONT");
        n.post("/fault/heal");
        if n.child.is_none() {
            n.start()?;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let finals = read_back(&bootstrap, args.partitions).await?;
    final_commits(&bootstrap, args.partitions, &history, start).await?;
    let txn_finals = if args.txn_producers > 0 {
        Some(read_back_committed(&bootstrap, txn_partitions).await?)
    } else {
        None
    };
    let events = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut verdict = keel_chaos::check(&events, &finals);
    if let Some(committed) = &txn_finals {
        keel_chaos::check_transactions(&events, committed, &mut verdict);
    }

    let mut f = std::io::BufWriter::new(std::fs::File::create(out.join("history.jsonl"))?);
    for e in &events {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    let verdict_json = serde_json::json!({ "seed": seed, "nodes": args.nodes, "duration_s": args.duration,
        "faults": faults, "verdict": verdict });
    std::fs::write(out.join("verdict.json"), serde_json::to_vec_pretty(&verdict_json)?)?;
    std::fs::write(
        out.join("report.html"),
        keel_chaos::report_html(seed, &events, &verdict),
    )?;
    for n in &mut nodes {
        n.signal("TERM");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &mut nodes {
        n.kill9();
    }
    let line = format!(
        "keel chaos: seed {seed}: {} — {} acknowledged, {} failed, {} unknown, {} reads, {} commits, {} transactions committed, {} aborted, {} anomalies, longest without an acknowledged write {} ms ({})",
        if verdict.valid { "VALID" } else { "INVALID" },
        verdict.acknowledged,
        verdict.failed,
        verdict.unknown,
        verdict.reads,
        verdict.commits,
        verdict.transactions_committed,
        verdict.transactions_aborted,
        verdict.anomalies.len(),
        verdict.longest_unavailable_ms,
        out.join("verdict.json").display()
    );
    println!("{line}");
    if !verdict.valid {
        for a in verdict.anomalies.iter().take(20) {
            eprintln!("anomaly: {}", serde_json::to_string(a)?);
        }
        std::process::exit(1);
    }
    Ok(())
}

/// Moves partition `p` of the workload topic (AlterPartitionReassignments): one replica to a
/// node that holds none, or, when every node holds one, to one replica fewer and, after
/// `hold`, back (the returning replica is a new incarnation once the first move is done).
/// Returns what it asked for.
async fn move_partition(bootstrap: &str, p: i32, ids: &[u64], rng: &mut StdRng, hold: Duration) -> Result<String> {
    let mut c = Client::connect(bootstrap).await?;
    let md = c.metadata(Some(&[TOPIC])).await?;
    let replicas: Vec<i32> = md
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|x| x.partition_index == p)
        .map(|x| x.replica_nodes.iter().map(|b| b.0).collect())
        .context("the partition is not in Metadata")?;
    if replicas.is_empty() {
        bail!("no replicas listed");
    }
    let out = replicas[rng.random_range(0..replicas.len())];
    let spare: Vec<i32> = ids
        .iter()
        .map(|n| *n as i32)
        .filter(|n| !replicas.contains(n))
        .collect();
    if !spare.is_empty() {
        let to = spare[rng.random_range(0..spare.len())];
        let target: Vec<i32> = replicas.iter().map(|n| if *n == out { to } else { *n }).collect();
        reassign(&mut c, p, target.clone()).await?;
        tokio::time::sleep(hold).await;
        return Ok(format!("{replicas:?} -> {target:?}"));
    }
    if replicas.len() < 2 {
        bail!("a single replica and no spare node");
    }
    let fewer: Vec<i32> = replicas.iter().copied().filter(|n| *n != out).collect();
    reassign(&mut c, p, fewer.clone()).await?;
    tokio::time::sleep(hold).await;
    let mut back = fewer.clone();
    back.push(out);
    reassign(&mut c, p, back.clone()).await?;
    Ok(format!("{replicas:?} -> {fewer:?} -> {back:?}"))
}

async fn reassign(c: &mut Client, p: i32, target: Vec<i32>) -> Result<()> {
    let moves = vec![(TOPIC.to_string(), p, Some(target))];
    match c.alter_partition_reassignments(&moves).await?.into_iter().next() {
        Some((_, _, Some((code, message)))) => bail!("error {code}: {message}"),
        _ => Ok(()),
    }
}

/// Flips one byte in, or cuts the tail of, a segment of one of the workload topic's
/// partitions on a stopped node. Returns what it did.
fn damage_segment(out: &Path, node: u64, rng: &mut StdRng) -> Result<String> {
    let topic_dir = out.join(format!("data/node-{node}/topics/{TOPIC}"));
    let mut segments: Vec<PathBuf> = Vec::new();
    if let Ok(parts) = std::fs::read_dir(&topic_dir) {
        for part in parts.flatten() {
            if let Ok(files) = std::fs::read_dir(part.path()) {
                for f in files.flatten() {
                    let p = f.path();
                    if p.extension().map(|e| e == "log").unwrap_or(false) {
                        segments.push(p);
                    }
                }
            }
        }
    }
    segments.sort();
    if segments.is_empty() {
        return Ok("no segment to damage".into());
    }
    let seg = segments[rng.random_range(0..segments.len())].clone();
    let len = std::fs::metadata(&seg)?.len();
    if len < 64 {
        return Ok(format!("{} too small to damage", seg.display()));
    }
    if rng.random_bool(0.5) {
        let pos = rng.random_range(0..len);
        let mut bytes = std::fs::read(&seg)?;
        if let Some(b) = bytes.get_mut(pos as usize) {
            *b ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(&seg, bytes)?;
        Ok(format!("flipped a bit at byte {pos} of {}", seg.display()))
    } else {
        let cut = rng.random_range(1..len.min(4096));
        std::fs::OpenOptions::new().write(true).open(&seg)?.set_len(len - cut)?;
        Ok(format!("cut {cut} bytes off {}", seg.display()))
    }
}

fn start_cluster(out: &Path, n: u16) -> Result<Vec<NodeProc>> {
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.1))
        .collect();
    let secret_file = crate::dev::write_cluster_secret(out)?;
    let mut nodes = Vec::new();
    for (i, (kafka, raft, http)) in ports.into_iter().enumerate() {
        let id = i as u64 + 1;
        let args = vec![
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            out.join(format!("data/node-{id}")).display().to_string(),
            "--kafka-listen".into(),
            format!("127.0.0.1:{kafka}"),
            "--raft-listen".into(),
            format!("127.0.0.1:{raft}"),
            "--http-listen".into(),
            format!("127.0.0.1:{http}"),
            "--peers".into(),
            peers.join(","),
            "--cluster-secret-file".into(),
            secret_file.display().to_string(),
            "--fault-injection".into(),
        ];
        let mut node = NodeProc {
            id,
            args,
            kafka: format!("127.0.0.1:{kafka}"),
            http: format!("127.0.0.1:{http}"),
            log: out.join(format!("node-{id}.log")),
            child: None,
        };
        node.start()?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// The workload topic, with the broker's default replication factor (3, capped at the
/// number of nodes).
async fn create_topic(bootstrap: &str, partitions: i32) -> Result<()> {
    create_named_topic(bootstrap, TOPIC, partitions).await
}

async fn create_named_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut c = Client::connect(bootstrap).await?;
            let r = c.create_topic(topic, partitions, &[]).await?;
            let code = r.topics.first().map(|t| t.error_code).unwrap_or(-1);
            if code == 0 || code == 36 {
                Ok(())
            } else {
                bail!("CreateTopics error code {code}")
            }
        };
        let attempt = async {
            tokio::time::timeout(Duration::from_secs(20), attempt)
                .await
                .map_err(|_| anyhow::anyhow!("CreateTopics not answered in 20 s"))?
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("creating topic {topic}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn producer(
    process: usize,
    bootstrap: String,
    partitions: i32,
    seed: u64,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        // Half the records carry a key and go to their key's partition, as Kafka's default
        // partitioner places them.
        let text = format!("p{process}-{seq}");
        seq += 1;
        let (key, partition) = if rng.random_bool(0.5) {
            let key = format!("k{}", rng.random_range(0..64));
            let partition = (crate::cli::murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1);
            (Some(key), partition)
        } else {
            (None, rng.random_range(0..partitions))
        };
        let value = record_ident(key.as_deref().map(str::as_bytes), Some(text.as_bytes()));
        let invoke_ms = now_ms(start);
        let record = OutRecord {
            key: key.map(Bytes::from),
            value: Some(Bytes::from(text)),
            timestamp: 0,
        };
        let outcome = match Client::encode_batch(&[record], kafka_protocol::records::Compression::None) {
            Err(e) => Outcome::Failed { error: e.to_string() },
            Ok(batch) => {
                if client.is_none() {
                    client = Client::connect(&bootstrap).await.ok();
                }
                match client.as_mut() {
                    None => Outcome::Failed {
                        error: "no broker reachable".into(),
                    },
                    Some(c) => {
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            c.produce_batch_at_most_once(TOPIC, partition, batch, -1),
                        )
                        .await;
                        match r {
                            Ok(Ok(offset)) => Outcome::Ok { offset: Some(offset) },
                            Ok(Err(e)) => {
                                client = None;
                                let refused = e
                                    .downcast_ref::<keel_client::KafkaError>()
                                    .map(|k| matches!(k.code, 5 | 6))
                                    .unwrap_or(false);
                                if refused {
                                    Outcome::Failed { error: e.to_string() }
                                } else {
                                    Outcome::Unknown { error: e.to_string() }
                                }
                            }
                            Err(_) => {
                                client = None;
                                Outcome::Unknown {
                                    error: "timed out".into(),
                                }
                            }
                        }
                    }
                }
            }
        };
        let failed = !matches!(outcome, Outcome::Ok { .. });
        history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::Produce {
            process,
            partition,
            value,
            invoke_ms,
            complete_ms: now_ms(start),
            outcome,
        });
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn reader(
    process: usize,
    bootstrap: String,
    partitions: i32,
    seed: u64,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if client.is_none() {
            client = Client::connect(&bootstrap).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let partition = rng.random_range(0..partitions);
        let invoke_ms = now_ms(start);
        let end = match tokio::time::timeout(Duration::from_secs(5), c.list_offset(TOPIC, partition, -1)).await {
            Ok(Ok(o)) => o,
            _ => {
                client = None;
                continue;
            }
        };
        if end <= 0 {
            continue;
        }
        let from = rng.random_range(0..end);
        match tokio::time::timeout(Duration::from_secs(5), c.fetch(TOPIC, partition, from, 100, 64 * 1024)).await {
            Ok(Ok((records, _))) => {
                let records = records
                    .into_iter()
                    .map(|r| (r.offset, record_ident(r.key.as_deref(), r.value.as_deref())))
                    .collect();
                history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::Read {
                    process,
                    partition,
                    from,
                    records,
                    invoke_ms,
                    complete_ms: now_ms(start),
                });
            }
            _ => client = None,
        }
    }
}

/// How the checker names a record: its value, prefixed by `key=` when it has a key, so a
/// record whose key was lost or changed reads as one never written.
fn record_ident(key: Option<&[u8]>, value: Option<&[u8]>) -> String {
    let v = value.map(String::from_utf8_lossy).unwrap_or_default();
    match key {
        Some(k) => format!("{}={v}", String::from_utf8_lossy(k)),
        None => v.into_owned(),
    }
}

type Leaders = Arc<Mutex<Vec<(i32, Option<u64>)>>>;

/// Samples every partition's leader from Metadata twice a second into the history (the
/// report's leader lanes) and into `leaders` (for the nemesis to aim at).
async fn watch_leaders(
    bootstrap: String,
    leaders: Leaders,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if client.is_none() {
            client = Client::connect(&bootstrap).await.ok();
        }
        if let Some(c) = client.as_mut() {
            match tokio::time::timeout(Duration::from_secs(2), c.metadata(Some(&[TOPIC]))).await {
                Ok(Ok(md)) => {
                    let mut now: Vec<(i32, Option<u64>)> = md
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| (p.partition_index, (p.leader_id.0 >= 0).then_some(p.leader_id.0 as u64)))
                        .collect();
                    now.sort_unstable();
                    *leaders.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
                    history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::Leaders {
                        at_ms: now_ms(start),
                        leaders: now,
                    });
                }
                _ => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node that leads the most partitions in the last sample.
fn busiest_leader(leaders: &Leaders) -> Option<u64> {
    let l = leaders.lock().unwrap_or_else(|e| e.into_inner());
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, n) in l.iter() {
        if let Some(n) = n {
            *count.entry(*n).or_default() += 1;
        }
    }
    count
        .into_iter()
        .max_by_key(|(n, c)| (*c, std::cmp::Reverse(*n)))
        .map(|(n, _)| n)
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn shuffle<T>(v: &mut [T], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// Cuts every link between side `a` and side `b` (both directions).
fn cut(nodes: &[NodeProc], a: &[u64], b: &[u64]) {
    if a.is_empty() || b.is_empty() {
        return;
    }
    for n in nodes {
        if a.contains(&n.id) {
            n.post(&format!("/fault/cut?peers={}", join_ids(b)));
        } else if b.contains(&n.id) {
            n.post(&format!("/fault/cut?peers={}", join_ids(a)));
        }
    }
}

fn heal_all(nodes: &[NodeProc]) {
    for n in nodes {
        n.post("/fault/heal");
    }
}

/// The kind of answer a group operation got: refused outright (the coordinator said no:
/// nothing was written), or no answer (it may have been written).
fn group_outcome(e: &anyhow::Error) -> Outcome {
    match e.downcast_ref::<keel_client::KafkaError>() {
        Some(k) if k.code != 7 => Outcome::Failed { error: e.to_string() },
        _ => Outcome::Unknown { error: e.to_string() },
    }
}

/// Does this error tell a member to join the group again? (ILLEGAL_GENERATION,
/// UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID.)
fn must_rejoin(e: &anyhow::Error) -> Option<i16> {
    e.downcast_ref::<keel_client::KafkaError>()
        .map(|k| k.code)
        .filter(|c| matches!(c, 22 | 25 | 27 | 82))
}

/// A member of the workload's consumer group: joins, reads its partitions from the
/// committed offsets, commits its position twice a second within its generation, and
/// joins again whenever the group rebalances. Every read, commit and committed-offset
/// lookup goes into the history.
async fn consumer(
    process: usize,
    bootstrap: String,
    partitions: i32,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let record = |e: Event| history.lock().unwrap_or_else(|e| e.into_inner()).push(e);
    let all: Vec<i32> = (0..partitions).collect();
    let mut client: Option<Client> = None;
    let mut member_id = String::new();
    let running = || !stop.load(std::sync::atomic::Ordering::Acquire);
    'join: while running() {
        if client.is_none() {
            client = Client::connect(&bootstrap).await.ok();
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let joined = tokio::time::timeout(
            Duration::from_secs(20),
            c.join_group(GROUP, &member_id, &[TOPIC.to_string()], 6000),
        )
        .await;
        let m = match joined {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                if must_rejoin(&e) == Some(25) {
                    member_id.clear();
                }
                if must_rejoin(&e).is_none() {
                    client = None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                client = None;
                continue;
            }
        };
        member_id = m.member_id.clone();
        let mine: Vec<i32> = m.assigned.iter().filter(|(t, _)| t == TOPIC).map(|(_, p)| *p).collect();
        // Start from the committed offsets.
        let invoke_ms = now_ms(start);
        let committed = match tokio::time::timeout(Duration::from_secs(5), c.committed(GROUP, TOPIC, &all)).await {
            Ok(Ok(v)) => v,
            _ => {
                client = None;
                continue;
            }
        };
        let complete_ms = now_ms(start);
        let mut position: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o) in &committed {
            record(Event::Committed {
                process,
                group: GROUP.into(),
                partition: *p,
                offset: *o,
                invoke_ms,
                complete_ms,
            });
            if mine.contains(p) {
                position.insert(*p, (*o).max(0));
            }
        }
        let mut last_commit = Instant::now();
        // One fetch per partition, one after the other: long polls only when there are few
        // (a member of hundreds of partitions would otherwise wait 100 ms on each idle one,
        // and never get round to committing).
        let max_wait_ms = if position.len() > 4 { 0 } else { 100 };
        while running() {
            for (p, pos) in position.iter_mut() {
                let invoke_ms = now_ms(start);
                match tokio::time::timeout(Duration::from_secs(5), c.fetch(TOPIC, *p, *pos, max_wait_ms, 64 * 1024))
                    .await
                {
                    Ok(Ok((records, _))) => {
                        if let Some(last) = records.last() {
                            *pos = last.offset + 1;
                        }
                        let records: Vec<(i64, String)> = records
                            .into_iter()
                            .map(|r| (r.offset, record_ident(r.key.as_deref(), r.value.as_deref())))
                            .collect();
                        if !records.is_empty() {
                            record(Event::Read {
                                process,
                                partition: *p,
                                from: records[0].0,
                                records,
                                invoke_ms,
                                complete_ms: now_ms(start),
                            });
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            if position.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if last_commit.elapsed() < Duration::from_millis(500) {
                continue;
            }
            last_commit = Instant::now();
            let offsets: Vec<(String, i32, i64)> = position.iter().map(|(p, o)| (TOPIC.to_string(), *p, *o)).collect();
            let invoke_ms = now_ms(start);
            let r = if offsets.is_empty() {
                Ok(Ok(()))
            } else {
                tokio::time::timeout(Duration::from_secs(5), c.commit_as_member(GROUP, &m, &offsets)).await
            };
            let complete_ms = now_ms(start);
            let (outcome, rejoin, reconnect) = match &r {
                Ok(Ok(())) => (Outcome::Ok { offset: None }, false, false),
                Ok(Err(e)) => (group_outcome(e), must_rejoin(e).is_some(), must_rejoin(e).is_none()),
                Err(_) => (
                    Outcome::Unknown {
                        error: "timed out".into(),
                    },
                    false,
                    true,
                ),
            };
            for (_, p, o) in &offsets {
                record(Event::Commit {
                    process,
                    group: GROUP.into(),
                    generation: m.generation,
                    partition: *p,
                    offset: *o,
                    invoke_ms,
                    complete_ms,
                    outcome: outcome.clone(),
                });
            }
            if reconnect {
                client = None;
                continue 'join;
            }
            if rejoin {
                continue 'join;
            }
            match tokio::time::timeout(Duration::from_secs(5), c.heartbeat(GROUP, &m)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if must_rejoin(&e).is_some() => continue 'join,
                _ => {
                    client = None;
                    continue 'join;
                }
            }
        }
        if let Some(c) = client.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.leave_group(GROUP, &member_id)).await;
        }
    }
}

/// After healing: the group's committed offset of every partition, as the last word the
/// checker holds every acknowledged commit against.
async fn final_commits(bootstrap: &str, partitions: i32, history: &History, start: Instant) -> Result<()> {
    let all: Vec<i32> = (0..partitions).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let invoke_ms = now_ms(start);
        let attempt = async {
            let mut c = Client::connect(bootstrap).await?;
            c.committed(GROUP, TOPIC, &all).await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(v)) => {
                let complete_ms = now_ms(start);
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                for (p, o) in v {
                    h.push(Event::Committed {
                        process: usize::MAX,
                        group: GROUP.into(),
                        partition: p,
                        offset: o,
                        invoke_ms,
                        complete_ms,
                    });
                }
                return Ok(());
            }
            Ok(Err(e)) if Instant::now() > deadline => return Err(e.context("reading the group's committed offsets")),
            Err(_) if Instant::now() > deadline => bail!("timed out reading the group's committed offsets"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Every record of every partition, read from the leaders after healing.
async fn read_back(bootstrap: &str, partitions: i32) -> Result<BTreeMap<i32, Vec<(i64, String)>>> {
    let mut out = BTreeMap::new();
    let mut client: Option<Client> = None;
    for p in 0..partitions {
        // Each partition gets its own minute to become readable: after healing, a
        // partition may still be electing while the ones before it are read.
        let deadline = Instant::now() + Duration::from_secs(60);
        let records = loop {
            let attempt = async {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => client.insert(Client::connect(bootstrap).await?),
                };
                let start = c.list_offset(TOPIC, p, -2).await?;
                let end = c.list_offset(TOPIC, p, -1).await?;
                let mut pos = start;
                let mut records = Vec::new();
                while pos < end {
                    let (batch, _) = c.fetch(TOPIC, p, pos, 100, 4 << 20).await?;
                    let Some(last) = batch.last() else { break };
                    pos = last.offset + 1;
                    for r in batch {
                        records.push((r.offset, record_ident(r.key.as_deref(), r.value.as_deref())));
                    }
                }
                anyhow::Ok(records)
            };
            match attempt.await {
                Ok(r) => break r,
                Err(e) if Instant::now() > deadline => return Err(e.context(format!("reading back partition {p}"))),
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
            }
        };
        out.insert(p, records);
    }
    Ok(out)
}

/// One transactional producer of the workload: transactions of one to three partitions of
/// `chaos-txn`, two records each, committed (or, one time in five, aborted). Any error
/// abandons the transaction: it is aborted if the coordinator answers, and the producer
/// starts over with InitProducerId, which fences it and aborts what it left open.
async fn txn_producer(
    process: usize,
    bootstrap: String,
    partitions: i32,
    seed: u64,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let id = format!("chaos-txn-{process}");
    let mut client: Option<Client> = None;
    let mut producer: Option<keel_client::TxnProducer> = None;
    let mut n = 0u64;
    let wait = Duration::from_secs(10);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if client.is_none() {
            client = Client::connect(&bootstrap).await.ok();
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if producer.is_none() {
            match tokio::time::timeout(wait, keel_client::TxnProducer::init(c, &id, TXN_TIMEOUT_MS, wait)).await {
                Ok(Ok(p)) => producer = Some(p),
                _ => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(p) = producer.as_mut() else { continue };
        n += 1;
        let mut parts: Vec<i32> = (0..partitions).collect();
        shuffle(&mut parts, &mut rng);
        parts.truncate(rng.random_range(1..=3.min(partitions as usize)));
        parts.sort_unstable();
        let invoke_ms = now_ms(start);
        let mut records: Vec<(i32, String)> = Vec::new();
        let mut ok = tokio::time::timeout(wait, p.add_partitions(c, TXN_TOPIC, &parts, wait))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        for part in &parts {
            if !ok {
                break;
            }
            let values: Vec<String> = (0..2).map(|j| format!("x{process}-{n}-{part}-{j}")).collect();
            let batch: Vec<OutRecord> = values
                .iter()
                .map(|v| OutRecord {
                    key: None,
                    value: Some(Bytes::from(v.clone())),
                    timestamp: 0,
                })
                .collect();
            // Written or not, the records belong to this transaction from now on.
            records.extend(values.iter().map(|v| (*part, v.clone())));
            ok = matches!(
                tokio::time::timeout(wait, p.produce(c, TXN_TOPIC, *part, &batch)).await,
                Ok(Ok(_))
            );
        }
        let commit = ok && !rng.random_bool(0.2);
        let outcome = match tokio::time::timeout(wait, p.end(c, commit, wait)).await {
            Ok(Ok(())) => Outcome::Ok { offset: None },
            Ok(Err(e)) => Outcome::Unknown { error: e.to_string() },
            Err(_) => Outcome::Unknown {
                error: "timed out".into(),
            },
        };
        let ended = matches!(outcome, Outcome::Ok { .. });
        history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::Txn {
            process,
            txn: n,
            records,
            commit,
            invoke_ms,
            complete_ms: now_ms(start),
            outcome,
        });
        if !ended || !ok {
            // Start over: a new epoch fences this one and aborts what it left open.
            producer = None;
            client = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads the transactional topic with `read_committed` during the run, from random
/// offsets, recording what it sees (the checker looks for aborted records in it).
async fn txn_reader(
    process: usize,
    bootstrap: String,
    partitions: i32,
    seed: u64,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if client.is_none() {
            client = Client::connect(&bootstrap).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let partition = rng.random_range(0..partitions);
        let invoke_ms = now_ms(start);
        let end = match tokio::time::timeout(Duration::from_secs(5), c.list_offset(TXN_TOPIC, partition, -1)).await {
            Ok(Ok(o)) => o,
            _ => {
                client = None;
                continue;
            }
        };
        let from = if end > 0 { rng.random_range(0..end) } else { 0 };
        match tokio::time::timeout(
            Duration::from_secs(5),
            c.fetch_committed(TXN_TOPIC, partition, from, 64 * 1024),
        )
        .await
        {
            Ok(Ok((records, _, _))) => {
                let records = records
                    .into_iter()
                    .map(|r| (r.offset, record_ident(r.key.as_deref(), r.value.as_deref())))
                    .collect();
                history.lock().unwrap_or_else(|e| e.into_inner()).push(Event::TxnRead {
                    process,
                    partition,
                    records,
                    invoke_ms,
                    complete_ms: now_ms(start),
                });
            }
            _ => client = None,
        }
    }
}

/// The transactional topic as a `read_committed` reader sees it once every transaction
/// has ended: waits (bounded) until each partition's last stable offset reaches its high
/// watermark (the coordinators finish or time out whatever the faults left open), then
/// reads it whole.
async fn read_back_committed(bootstrap: &str, partitions: i32) -> Result<BTreeMap<i32, Vec<(i64, String)>>> {
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    for p in 0..partitions {
        let records = loop {
            let attempt = async {
                let mut c = Client::connect(bootstrap).await?;
                let start = c.list_offset(TXN_TOPIC, p, -2).await?;
                let end = c.list_offset(TXN_TOPIC, p, -1).await?;
                let mut pos = start;
                let mut records = Vec::new();
                while pos < end {
                    let (batch, next, lso) = c.fetch_committed(TXN_TOPIC, p, pos, 4 << 20).await?;
                    if lso < end {
                        bail!("partition {p}: transactions still open (last stable offset {lso} < {end})");
                    }
                    if next <= pos {
                        bail!("partition {p}: no progress at {pos}");
                    }
                    pos = next;
                    for r in batch {
                        records.push((r.offset, record_ident(r.key.as_deref(), r.value.as_deref())));
                    }
                }
                anyhow::Ok(records)
            };
            match attempt.await {
                Ok(r) => break r,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("reading back {TXN_TOPIC} partition {p}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        out.insert(p, records);
    }
    Ok(out)
}

async fn monkey(args: MonkeyArgs) -> Result<()> {
    let seed = args.seed.unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    eprintln!(
        "keel chaos monkey: seed {seed}, every {} s for {} s",
        args.every, args.duration
    );
    while Instant::now() + Duration::from_secs(args.every) < deadline {
        tokio::time::sleep(Duration::from_secs(args.every)).await;
        let n = rng.random_range(1..=args.nodes);
        let pattern = format!("keel serve --node-id {n} ");
        let out = Command::new("pgrep").args(["-f", &pattern]).output()?;
        let pids = String::from_utf8_lossy(&out.stdout).to_string();
        let Some(pid) = pids.split_whitespace().next() else {
            eprintln!("node {n} is not running");
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        eprintln!("monkey: kill -9 node {n} (pid {pid})");
        Command::new("kill").args(["-9", pid]).status()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some((exe, rest)) = argv.split_first() {
            let log = args.data_dir.join(format!("node-{n}.monkey.log"));
            let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            Command::new(exe)
                .args(rest)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("restarting node {n}"))?;
            eprintln!("monkey: restarted node {n}");
        }
    }
    let _ = args.base_port;
    Ok(())
}
