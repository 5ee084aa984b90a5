//! `keel cluster status`: the nodes a cluster reports as alive, the leader, leader epoch,
//! replicas and in-sync replicas of every partition, and which partitions are
//! under-replicated or leaderless. Works against any Kafka-protocol cluster (Metadata only).

use anyhow::Result;
use clap::Subcommand;
use keel_client::Client;

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes, partition leaders, under-replicated and leaderless partitions.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Status { conn } => status(&conn).await,
    }
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
    say!(
        "{total} partitions, {under} under-replicated, {leaderless} without a leader; nodes not answering: {}",
        if missing.is_empty() {
            "none".to_string()
        } else {
            missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",")
        }
    );
    Ok(())
}
