//! `keel topic`, `keel produce`, `keel consume`: tools over the Kafka protocol.

use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::records::Compression;
use keel_client::{Client, OutRecord};

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Broker addresses (comma-separated; the first that answers is used).
    #[arg(long, short = 'b', env = "KEEL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Authenticate with SASL/PLAIN as this user (a SASL_PLAINTEXT listener).
    #[arg(long, env = "KEEL_SASL_USER")]
    pub sasl_user: Option<String>,
    /// The SASL/PLAIN user's password.
    #[arg(long, env = "KEEL_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
}

impl Conn {
    /// A connection to the first broker that answers, authenticated if asked.
    pub async fn connect(&self) -> anyhow::Result<keel_client::Client> {
        let mut c = keel_client::Client::connect(&self.bootstrap).await?;
        if let Some(user) = &self.sasl_user {
            c.authenticate_plain(user, self.sasl_password.as_deref().unwrap_or_default())
                .await?;
        }
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Replicas per partition [default: the broker's default_replication_factor].
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// Topic config as name=value (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List topics.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a topic's partitions, offsets and configs.
    Describe {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Grow a topic to more partitions (existing records stay where they are).
    AddPartitions {
        name: String,
        /// The new total number of partitions.
        #[arg(long, short = 'p')]
        partitions: i32,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn topic(cmd: TopicCommand) -> Result<()> {
    match cmd {
        TopicCommand::AddPartitions { name, partitions, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            c.create_partitions(&name, partitions).await?;
            say!("topic {name} now has {partitions} partitions");
        }
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            conn,
        } => {
            let configs = configs
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow!("config {kv:?} is not name=value"))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut c = Client::connect(&conn.bootstrap).await?;
            let r = c
                .create_topic_replicated(&name, partitions, replication_factor, &configs)
                .await?;
            let t = r.topics.first().ok_or_else(|| anyhow!("empty response"))?;
            if t.error_code != 0 {
                bail!(
                    "create {name} failed: error code {} {}",
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default()
                );
            }
            say!("created topic {name} with {} partitions", t.num_partitions);
        }
        TopicCommand::List { conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let md = c.metadata(None).await?;
            let mut names: Vec<(String, usize)> = md
                .topics
                .iter()
                .map(|t| {
                    (
                        t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                        t.partitions.len(),
                    )
                })
                .collect();
            names.sort();
            for (n, p) in names {
                say!("{n}\t{p} partitions");
            }
        }
        TopicCommand::Describe { name, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let md = c.metadata(Some(&[name.as_str()])).await?;
            let t = md.topics.first().ok_or_else(|| anyhow!("empty metadata"))?;
            if t.error_code != 0 {
                bail!("topic {name}: error code {}", t.error_code);
            }
            say!("topic {name} id {} partitions {}", t.topic_id, t.partitions.len());
            say!("partition\tleader\tstart\tend");
            for p in &t.partitions {
                let start = c.list_offset(&name, p.partition_index, -2).await?;
                let end = c.list_offset(&name, p.partition_index, -1).await?;
                say!("{}\t{}\t{start}\t{end}", p.partition_index, p.leader_id.0);
            }
            let cfg = c.describe_topic_configs(&name).await?;
            if let Some(r) = cfg.results.first() {
                say!("configs:");
                for e in &r.configs {
                    let src = if e.config_source == 1 { " (set on topic)" } else { "" };
                    say!(
                        "  {}={}{src}",
                        e.name.as_str(),
                        e.value.as_ref().map(|v| v.as_str()).unwrap_or("")
                    );
                }
            }
        }
        TopicCommand::Delete { name, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let r = c.delete_topic(&name).await?;
            let t = r.responses.first().ok_or_else(|| anyhow!("empty response"))?;
            if t.error_code != 0 {
                bail!("delete {name} failed: error code {}", t.error_code);
            }
            say!("deleted topic {name}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Partition to write to; without it, keyed records go by the murmur2 hash of the key
    /// (as Kafka's default partitioner) and unkeyed batches round-robin.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Split each line at the first occurrence of this into key and value.
    #[arg(long, short = 'k')]
    pub key_separator: Option<String>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Lines per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn parse_acks(s: &str) -> Result<i16> {
    match s {
        "all" | "-1" => Ok(-1),
        "1" => Ok(1),
        "0" => Ok(0),
        other => bail!("acks {other:?}: use 0, 1 or all"),
    }
}

/// Kafka's murmur2 (as the Java client's default partitioner uses it).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

async fn partition_count(c: &mut Client, topic: &str, allow_create: bool) -> Result<i32> {
    let md = c.metadata_creating(Some(&[topic]), allow_create).await?;
    let t = md.topics.first().ok_or_else(|| anyhow!("empty metadata"))?;
    if t.error_code != 0 {
        bail!(
            "topic {topic}: error code {} (create it with `keel topic create {topic}`)",
            t.error_code
        );
    }
    Ok(t.partitions.len() as i32)
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let acks = parse_acks(&args.acks)?;
    let mut c = Client::connect(&args.conn.bootstrap).await?;
    let partitions = partition_count(&mut c, &args.topic, true).await?;
    let stdin = std::io::stdin();
    let mut pending: Vec<Vec<OutRecord>> = vec![Vec::new(); partitions.max(1) as usize];
    let mut rr = 0i32;
    let mut sent = 0usize;
    let now = keel_log::disk::now_ms();
    for line in stdin.lock().lines() {
        let line = line?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                None => (None, line.clone()),
            },
            None => (None, line.clone()),
        };
        let p = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => (murmur2(k) & 0x7fff_ffff) % partitions,
            (None, None) => rr,
        };
        let slot = pending
            .get_mut(p as usize)
            .ok_or_else(|| anyhow!("partition {p} does not exist"))?;
        slot.push(OutRecord {
            key,
            value: Some(Bytes::from(value)),
            timestamp: now,
        });
        if slot.len() >= args.batch {
            let batch = std::mem::take(slot);
            sent += batch.len();
            c.produce_batch(&args.topic, p, Client::encode_batch(&batch, Compression::None)?, acks)
                .await?;
            rr = (rr + 1) % partitions;
        }
    }
    for (p, batch) in pending.into_iter().enumerate() {
        if !batch.is_empty() {
            sent += batch.len();
            c.produce_batch(
                &args.topic,
                p as i32,
                Client::encode_batch(&batch, Compression::None)?,
                acks,
            )
            .await?;
        }
    }
    eprintln!("produced {sent} records to {}", args.topic);
    Ok(())
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Only this partition (default: all).
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Start offset: a number, `earliest` or `latest`.
    #[arg(long, short = 'o', default_value = "earliest")]
    pub offset: String,
    /// Start at the first record with a timestamp (ms) at or after this; overrides --offset.
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// Keep waiting for new records instead of exiting at the end.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print partition, offset, timestamp and key before each value, tab-separated.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn consume(args: ConsumeArgs) -> Result<()> {
    let mut c = Client::connect(&args.conn.bootstrap).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) => vec![p],
        None => (0..partition_count(&mut c, &args.topic, false).await?).collect(),
    };
    let mut positions = Vec::new();
    for &p in &partitions {
        let start = match (args.timestamp, args.offset.as_str()) {
            (Some(ts), _) => {
                let o = c.list_offset(&args.topic, p, ts).await?;
                if o < 0 {
                    c.list_offset(&args.topic, p, -1).await?
                } else {
                    o
                }
            }
            (None, "earliest") => c.list_offset(&args.topic, p, -2).await?,
            (None, "latest") => c.list_offset(&args.topic, p, -1).await?,
            (None, n) => n
                .parse::<i64>()
                .context("--offset must be a number, earliest or latest")?,
        };
        positions.push((p, start));
    }
    let mut printed = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let mut all_at_end = true;
        for (p, pos) in positions.iter_mut() {
            let wait = if args.follow && positions_len_one(&partitions) {
                1000
            } else {
                0
            };
            let (records, hw) = c.fetch(&args.topic, *p, *pos, wait, 4 * 1024 * 1024).await?;
            for r in records {
                let written = (|| {
                    if args.verbose {
                        let key = r
                            .key
                            .as_ref()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default();
                        write!(out, "{}\t{}\t{}\t{}\t", p, r.offset, r.timestamp, key)?;
                    }
                    out.write_all(r.value.as_deref().unwrap_or_default())?;
                    out.write_all(b"\n")
                })();
                match written {
                    // Whoever reads stdout has had enough (`keel consume ... | head`).
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other?,
                }
                *pos = r.offset + 1;
                printed += 1;
                if args.count.map(|n| printed >= n).unwrap_or(false) {
                    out.flush()?;
                    return Ok(());
                }
            }
            if *pos < hw {
                all_at_end = false;
            }
        }
        out.flush()?;
        if all_at_end {
            if !args.follow {
                return Ok(());
            }
            if !positions_len_one(&partitions) {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

fn positions_len_one(p: &[i32]) -> bool {
    p.len() == 1
}

#[cfg(test)]
mod tests {
    use super::murmur2;

    /// murmur2 matches the Java client's values, so keyed records land where Kafka puts them.
    #[test]
    fn murmur2_matches_kafka() {
        // Reference values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
