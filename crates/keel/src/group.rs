//! `keel group list|describe|reset-offsets`: consumer groups over the Kafka protocol.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use keel_client::group::decode_assignment;
use keel_client::Client;

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups and their states.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Members, assignments, committed offsets, log end offsets and lag of a group.
    Describe {
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a group's committed offsets (refused while the group has members).
    ResetOffsets {
        group: String,
        /// Topic to reset (every partition of it).
        #[arg(long)]
        topic: String,
        /// earliest, latest, timestamp:<ms> or offset:<n>.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Partitions of a member's assignment, as the consumer protocol encodes them.
async fn group_state(c: &mut Client, group: &str) -> Result<(String, Vec<(String, String, Vec<(String, Vec<i32>)>)>)> {
    let d = c.describe_group(group).await?;
    let g = d
        .groups
        .first()
        .ok_or_else(|| anyhow!("empty DescribeGroups response"))?;
    if g.error_code != 0 {
        bail!("describe {group}: error code {}", g.error_code);
    }
    let members = g
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.client_host.to_string(),
                decode_assignment(&m.member_assignment),
            )
        })
        .collect();
    Ok((g.group_state.to_string(), members))
}

pub async fn run(cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::List { conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let r = c.list_groups().await?;
            say!("group\tstate\tprotocol type");
            for g in r.groups {
                say!(
                    "{}\t{}\t{}",
                    g.group_id.0.as_str(),
                    g.group_state.as_str(),
                    g.protocol_type.as_str()
                );
            }
        }
        GroupCommand::Describe { group, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let (state, members) = group_state(&mut c, &group).await?;
            say!("group {group} state {state} members {}", members.len());
            let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
            for (id, _, assignment) in &members {
                for (topic, parts) in assignment {
                    for p in parts {
                        owner.insert((topic.clone(), *p), id.clone());
                    }
                }
            }
            for (id, host, assignment) in &members {
                let parts: Vec<String> = assignment.iter().map(|(t, ps)| format!("{t}{ps:?}")).collect();
                say!("member {id} {host} {}", parts.join(" "));
            }
            say!("topic\tpartition\tcommitted\tlog end\tlag\tmember");
            let committed = c.committed_offsets(&group).await?;
            for (topic, part, offset, _) in committed {
                let end = c.list_offset(&topic, part, -1).await.unwrap_or(-1);
                let lag = if end >= 0 {
                    (end - offset).max(0).to_string()
                } else {
                    "?".into()
                };
                let who = owner.get(&(topic.clone(), part)).cloned().unwrap_or_else(|| "-".into());
                say!("{topic}\t{part}\t{offset}\t{end}\t{lag}\t{who}");
            }
        }
        GroupCommand::ResetOffsets { group, topic, to, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            if let Ok((state, members)) = group_state(&mut c, &group).await {
                if !members.is_empty() {
                    bail!(
                        "group {group} is active ({state}, {} members): stop its consumers first",
                        members.len()
                    );
                }
            }
            let md = c.metadata(Some(&[topic.as_str()])).await?;
            let t = md.topics.first().ok_or_else(|| anyhow!("empty metadata"))?;
            if t.error_code != 0 {
                bail!("topic {topic}: error code {}", t.error_code);
            }
            let mut offsets = Vec::new();
            for p in &t.partitions {
                let part = p.partition_index;
                let offset = match to.as_str() {
                    "earliest" => c.list_offset(&topic, part, -2).await?,
                    "latest" => c.list_offset(&topic, part, -1).await?,
                    other => {
                        if let Some(ts) = other.strip_prefix("timestamp:") {
                            let ts: i64 = ts.parse().context("timestamp:<ms>")?;
                            match c.list_offset(&topic, part, ts).await? {
                                o if o >= 0 => o,
                                _ => c.list_offset(&topic, part, -1).await?,
                            }
                        } else if let Some(n) = other.strip_prefix("offset:") {
                            n.parse().context("offset:<n>")?
                        } else {
                            bail!("--to must be earliest, latest, timestamp:<ms> or offset:<n>");
                        }
                    }
                };
                offsets.push((topic.clone(), part, offset));
            }
            c.commit_offsets(&group, &offsets).await?;
            for (t, p, o) in offsets {
                say!("{group} {t} {p} -> {o}");
            }
        }
    }
    Ok(())
}
