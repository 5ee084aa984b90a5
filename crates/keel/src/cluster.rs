//! `keel cluster`: the state of a cluster and moving partitions between its nodes.
//!
//! - `status`: the nodes a cluster reports as alive, the leader, leader epoch, replicas and
//!   in-sync replicas of every partition, which partitions are under-replicated or
//!   leaderless, and the moves in progress.
//! - `reassign`: moves one partition to a list of nodes (or cancels its move).
//! - `moves`: the moves in progress.
//! - `drain`: moves every replica off a node (before it is removed), each to the least
//!   loaded node that lacks one.
//! - `remove-node`: forgets a drained, stopped node (UnregisterBroker).
//! - `maintenance`: puts a node in maintenance (its leaderships go to other nodes, its
//!   replicas stay) or takes it out, for upgrades and repairs.
//! - `add-voter` / `remove-voter`: changes the controller's voters on the running cluster
//!   (AddRaftVoter / RemoveRaftVoter, KIP-853), so that a voter can be replaced.
//!
//! They speak Kafka's Metadata, AlterPartitionReassignments and ListPartitionReassignments,
//! so they work against any Kafka-protocol cluster that serves those; `maintenance`, which
//! Kafka has no API for, speaks Keel's admin HTTP API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keel_client::Client;

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes, partition leaders, under-replicated and leaderless partitions, moves.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a partition to other nodes (AlterPartitionReassignments).
    Reassign {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replicas, comma-separated; the first is the preferred leader.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the partition's move instead (if it is not done yet).
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        /// Wait until the move is done.
        #[arg(long)]
        wait: bool,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// The partition moves in progress (ListPartitionReassignments).
    Moves {
        #[command(flatten)]
        conn: Conn,
    },
    /// Move every replica off a node, so that it can be removed.
    Drain {
        #[command(flatten)]
        conn: Conn,
        /// The node to drain.
        #[arg(long)]
        node: i32,
        /// Wait until no partition has a replica on the node.
        #[arg(long)]
        wait: bool,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Make a node that joined the cluster a controller voter (AddRaftVoter).
    AddVoter {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        node: i32,
        /// Longest wait for the node to catch up and the change to commit, seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Stop a node voting on the cluster's metadata (RemoveRaftVoter); it stays in the
    /// cluster as a broker, and can then be drained and removed if it is to go.
    RemoveVoter {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        node: i32,
    },
    /// Forget a node that was drained and stopped (UnregisterBroker).
    RemoveNode {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        node: i32,
    },
    /// Put a node in maintenance: it hands every leadership to other nodes and is given
    /// none back (its replicas stay and follow). `--off` ends it.
    Maintenance {
        /// A node's admin HTTP address (any node of the cluster).
        #[arg(long, env = "KEEL_HTTP", default_value = "127.0.0.1:9644")]
        http: String,
        /// HTTP Basic credentials (when the authorizer is on): user.
        #[arg(long, env = "KEEL_SASL_USER")]
        user: Option<String>,
        #[arg(long, env = "KEEL_SASL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        node: u64,
        /// End the node's maintenance.
        #[arg(long)]
        off: bool,
        /// Wait until the node leads nothing (or, with --off, only until it is out).
        #[arg(long)]
        wait: bool,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
}

pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Status { conn } => status(&conn).await,
        ClusterCommand::Reassign {
            conn,
            topic,
            partition,
            replicas,
            cancel,
            wait,
            timeout_s,
        } => {
            let target = (!cancel).then_some(replicas);
            alter(&conn, vec![(topic, partition, target)]).await?;
            if wait && !cancel {
                wait_for_moves(&conn, None, Duration::from_secs(timeout_s)).await?;
            }
            Ok(())
        }
        ClusterCommand::Moves { conn } => moves(&conn).await,
        ClusterCommand::Drain {
            conn,
            node,
            wait,
            timeout_s,
        } => drain(&conn, node, wait, Duration::from_secs(timeout_s)).await,
        ClusterCommand::Maintenance {
            http,
            user,
            password,
            node,
            off,
            wait,
            timeout_s,
        } => {
            let auth = user.map(|u| (u, password.unwrap_or_default()));
            maintenance(&http, auth.as_ref(), node, !off, wait, Duration::from_secs(timeout_s)).await
        }
        ClusterCommand::AddVoter { conn, node, timeout_s } => {
            Client::connect(&conn.bootstrap)
                .await?
                .add_raft_voter(node, Duration::from_secs(timeout_s))
                .await?;
            say!("node {node} is a controller voter");
            Ok(())
        }
        ClusterCommand::RemoveVoter { conn, node } => {
            Client::connect(&conn.bootstrap).await?.remove_raft_voter(node).await?;
            say!("node {node} is no longer a controller voter");
            Ok(())
        }
        ClusterCommand::RemoveNode { conn, node } => {
            Client::connect(&conn.bootstrap).await?.unregister_broker(node).await?;
            say!("node {node} removed");
            Ok(())
        }
    }
}

type Move = (String, i32, Option<Vec<i32>>);

async fn maintenance(
    http: &str,
    auth: Option<&(String, String)>,
    node: u64,
    on: bool,
    wait: bool,
    timeout: Duration,
) -> Result<()> {
    let method = if on { "PUT" } else { "DELETE" };
    let (status, body) = http_call(http, method, &format!("/api/v1/nodes/{node}/maintenance"), auth).await?;
    if status != 200 {
        bail!("node {node}: HTTP {status}: {}", body.trim());
    }
    say!("node {node}: maintenance {}", if on { "on" } else { "off" });
    if !(wait && on) {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_call(http, "GET", "/api/v1/cluster", auth).await?;
        let c: serde_json::Value = serde_json::from_str(&body).context("the cluster's answer")?;
        let entry = c["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"].as_u64() == Some(node)))
            .cloned()
            .unwrap_or_default();
        let leads = entry["leaders"].as_u64().unwrap_or(u64::MAX);
        let controller = c["controller"].as_u64() == Some(node);
        if status == 200 && leads == 0 && !controller {
            say!("node {node} leads nothing");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {node} still leads {leads} partitions{}",
                if controller { " and the controller" } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One request to a node's admin HTTP API (plain HTTP/1.1): status and body.
async fn http_call(addr: &str, method: &str, path: &str, auth: Option<&(String, String)>) -> Result<(u16, String)> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
    if let Some((user, password)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .context("waiting for the answer")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("an answer without headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("an answer without a status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(next)) = (after.get(..n), after.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    out
}

async fn alter(conn: &Conn, moves: Vec<Move>) -> Result<()> {
    let mut c = Client::connect(&conn.bootstrap).await?;
    let mut failed = 0;
    for (topic, partition, err) in c.alter_partition_reassignments(&moves).await? {
        match err {
            None => say!("{topic}\t{partition}\tmove accepted"),
            Some((code, message)) => {
                failed += 1;
                say!("{topic}\t{partition}\terror {code}: {message}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} moves refused", moves.len());
    }
    Ok(())
}

async fn moves(conn: &Conn) -> Result<()> {
    let mut c = Client::connect(&conn.bootstrap).await?;
    let list = c.list_partition_reassignments().await?;
    say!("topic\tpartition\treplicas\tadding\tremoving");
    for m in &list {
        say!(
            "{}\t{}\t{}\t{}\t{}",
            m.topic,
            m.partition,
            join(&m.replicas),
            join(&m.adding),
            join(&m.removing)
        );
    }
    say!("{} moves in progress", list.len());
    Ok(())
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Waits until no move is in progress and, with `off`, no replica is on that node.
async fn wait_for_moves(conn: &Conn, off: Option<i32>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let mut c = Client::connect(&conn.bootstrap).await?;
        let pending = c.list_partition_reassignments().await?.len();
        let left_on_node = match off {
            Some(n) => replicas(&mut c)
                .await?
                .iter()
                .filter(|(_, _, r)| r.contains(&n))
                .count(),
            None => 0,
        };
        if pending == 0 && left_on_node == 0 {
            say!("done in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not done after {} s: {pending} moves in progress", timeout.as_secs());
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            say!("{pending} moves in progress");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every partition with its replicas.
async fn replicas(c: &mut Client) -> Result<Vec<(String, i32, Vec<i32>)>> {
    let md = c.metadata(None).await?;
    let mut out = Vec::new();
    for t in &md.topics {
        let name = t
            .name
            .as_ref()
            .map(|n| n.0.to_string())
            .context("a topic without a name")?;
        for p in &t.partitions {
            out.push((
                name.clone(),
                p.partition_index,
                p.replica_nodes.iter().map(|b| b.0).collect(),
            ));
        }
    }
    Ok(out)
}

async fn drain(conn: &Conn, node: i32, wait: bool, timeout: Duration) -> Result<()> {
    let mut c = Client::connect(&conn.bootstrap).await?;
    let md = c.metadata(None).await?;
    let nodes: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    let partitions = replicas(&mut c).await?;
    let moves = drain_plan(node, &nodes, &partitions)?;
    if moves.is_empty() {
        say!("node {node} holds no replicas");
        return Ok(());
    }
    say!("moving {} replicas off node {node}", moves.len());
    alter(conn, moves).await?;
    if wait {
        wait_for_moves(conn, Some(node), timeout).await?;
    }
    Ok(())
}

/// The moves that take every replica off `node`: in each partition that has one, the node's
/// place goes to the live node (of `nodes`) holding the fewest replicas among those that
/// hold none of that partition, appended last (the next replica becomes the preferred
/// leader). When every other node already holds one, the partition keeps one replica fewer.
pub fn drain_plan(node: i32, nodes: &[i32], partitions: &[(String, i32, Vec<i32>)]) -> Result<Vec<Move>> {
    let mut load: BTreeMap<i32, usize> = nodes.iter().filter(|n| **n != node).map(|n| (*n, 0)).collect();
    for (_, _, r) in partitions {
        for n in r {
            if let Some(l) = load.get_mut(n) {
                *l += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (topic, p, r) in partitions {
        if !r.contains(&node) {
            continue;
        }
        let mut target: Vec<i32> = r.iter().copied().filter(|n| *n != node).collect();
        let spare = load
            .iter()
            .filter(|(n, _)| !r.contains(n))
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| *n);
        if let Some(s) = spare {
            target.push(s);
            *load.entry(s).or_default() += 1;
        }
        if target.is_empty() {
            bail!("{topic}/{p} has no replica but on node {node}, and no other node is alive");
        }
        out.push((topic.clone(), *p, Some(target)));
    }
    Ok(out)
}

async fn status(conn: &Conn) -> Result<()> {
    let mut c = Client::connect(&conn.bootstrap).await?;
    let md = c.metadata(None).await?;
    let controller = md.controller_id.0;
    say!("cluster {}", md.cluster_id.as_ref().map(|s| s.as_str()).unwrap_or("-"));
    say!("node\taddress\trole");
    let mut alive: Vec<i32> = Vec::new();
    for b in &md.brokers {
        alive.push(b.node_id.0);
        let role = if b.node_id.0 == controller {
            "controller leader"
        } else {
            ""
        };
        say!("{}\t{}:{}\t{role}", b.node_id.0, b.host.as_str(), b.port);
    }
    say!("topic\tpartition\tleader\tepoch\treplicas\tin-sync");
    let (mut under, mut leaderless, mut total) = (0usize, 0usize, 0usize);
    let mut missing: Vec<i32> = Vec::new();
    for t in &md.topics {
        let name = t.name.as_ref().map(|n| n.0.as_str()).unwrap_or("?");
        for p in &t.partitions {
            total += 1;
            let ids = |v: &[kafka_protocol::messages::BrokerId]| {
                v.iter().map(|b| b.0.to_string()).collect::<Vec<_>>().join(",")
            };
            if p.leader_id.0 < 0 {
                leaderless += 1;
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                under += 1;
            }
            for r in &p.replica_nodes {
                if !alive.contains(&r.0) && !missing.contains(&r.0) {
                    missing.push(r.0);
                }
            }
            say!(
                "{name}\t{}\t{}\t{}\t{}\t{}",
                p.partition_index,
                p.leader_id.0,
                p.leader_epoch,
                ids(&p.replica_nodes),
                ids(&p.isr_nodes)
            );
        }
    }
    missing.sort_unstable();
    let moving = c.list_partition_reassignments().await.map(|m| m.len()).unwrap_or(0);
    say!(
        "{total} partitions, {under} under-replicated, {leaderless} without a leader, {moving} moving; nodes not answering: {}",
        if missing.is_empty() {
            "none".to_string()
        } else {
            missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",")
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(t: &str, p: i32, r: &[i32]) -> (String, i32, Vec<i32>) {
        (t.to_string(), p, r.to_vec())
    }

    /// Draining moves each replica on the node to the least loaded node without one, keeps
    /// the other replicas (the next one becomes preferred leader), and shrinks a partition
    /// that every other node already holds.
    #[test]
    fn drain_spreads_the_node_s_replicas() {
        let parts = vec![
            part("a", 0, &[1, 2, 3]),
            part("a", 1, &[2, 3, 4]),
            part("a", 2, &[3, 1, 2]),
            part("b", 0, &[1]),
            part("__consumer_offsets", 0, &[1, 2, 3, 4]),
        ];
        let plan = drain_plan(1, &[1, 2, 3, 4], &parts).unwrap();
        assert_eq!(
            plan,
            vec![
                ("a".to_string(), 0, Some(vec![2, 3, 4])),
                // Node 4 held two replicas against four on nodes 2 and 3: it takes both.
                ("a".to_string(), 2, Some(vec![3, 2, 4])),
                // Now all hold four: the lowest id breaks the tie.
                ("b".to_string(), 0, Some(vec![2])),
                ("__consumer_offsets".to_string(), 0, Some(vec![2, 3, 4])),
            ]
        );
        assert!(drain_plan(1, &[1], &[part("b", 0, &[1])]).is_err(), "nowhere to go");
        assert!(drain_plan(9, &[1, 2], &parts).unwrap().is_empty(), "holds nothing");
    }
}
