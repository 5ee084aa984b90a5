//! `keel bench`: produce then consume against a running broker, reporting throughput and
//! per-request latency percentiles.
//!
//! Each producer task owns a connection and keeps one request in flight, so the latency of
//! a request is the broker's acknowledgement latency for that batch (including fsync and
//! group commit under acks=all). `--fsync always,never` runs the same workload once per
//! policy on topics created with `keel.fsync.policy`, interleaved, so that the ratio between
//! them is measured side by side on a shared machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use kafka_protocol::records::Compression;
use keel_client::{Client, OutRecord};
use rand::RngCore;

use crate::cli::{parse_acks, Conn};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Messages to produce per run.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Message value size, bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per produce request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Partitions of each benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Concurrent producer connections.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Comma-separated fsync policies to compare (a topic per policy), e.g. always,never.
    /// Empty: use the broker's default policy.
    #[arg(long, default_value = "")]
    pub fsync: String,
    /// Rounds per policy; results of every round are printed.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Skip the consume phase.
    #[arg(long)]
    pub no_consume: bool,
    #[command(flatten)]
    pub conn: Conn,
}

fn compression(s: &str) -> Result<Compression> {
    Ok(match s {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("unknown compression {other:?}"),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct RunResult {
    msgs_per_s: f64,
    mb_per_s: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    consume_mb_per_s: Option<f64>,
}

async fn produce_phase(args: &BenchArgs, topic: &str) -> Result<(Duration, Vec<Duration>)> {
    let acks = parse_acks(&args.acks)?;
    let codec = compression(&args.compression)?;
    let batches_total = args.messages.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let (args, topic, next) = (args.clone(), topic.to_string(), next.clone());
        tasks.spawn(async move {
            let mut c = Client::connect(&args.conn.bootstrap).await?;
            let mut value = vec![0u8; args.size];
            rand::rng().fill_bytes(&mut value);
            let value = Bytes::from(value);
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= batches_total {
                    break;
                }
                let n = args.batch.min(args.messages - i * args.batch);
                let now = keel_log::disk::now_ms();
                let recs: Vec<OutRecord> = (0..n)
                    .map(|j| OutRecord {
                        key: Some(Bytes::from(format!("{worker}-{i}-{j}"))),
                        value: Some(value.clone()),
                        timestamp: now,
                    })
                    .collect();
                let batch = Client::encode_batch(&recs, codec)?;
                let partition = (i % args.partitions as usize) as i32;
                let t = Instant::now();
                c.produce_batch(&topic, partition, batch, acks).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(batches_total);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok((started.elapsed(), all))
}

async fn consume_phase(args: &BenchArgs, topic: &str) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let (addr, topic) = (args.conn.bootstrap.clone(), topic.to_string());
        tasks.spawn(async move {
            let mut c = Client::connect(&addr).await?;
            let end = c.list_offset(&topic, p, -1).await?;
            let mut pos = 0i64;
            let mut bytes = 0usize;
            while pos < end {
                let (recs, _) = c.fetch(&topic, p, pos, 500, 8 * 1024 * 1024).await?;
                for r in &recs {
                    bytes += r.value.as_ref().map(|v| v.len()).unwrap_or(0);
                    pos = r.offset + 1;
                }
            }
            anyhow::Ok(bytes)
        });
    }
    let mut bytes = 0usize;
    while let Some(r) = tasks.join_next().await {
        bytes += r??;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

async fn one_run(args: &BenchArgs, policy: Option<&str>, round: usize) -> Result<RunResult> {
    let topic = format!(
        "keel-bench-{}-{}-{}",
        policy.unwrap_or("default"),
        std::process::id(),
        round
    );
    let mut admin = Client::connect(&args.conn.bootstrap).await?;
    let configs: Vec<(String, String)> = policy
        .map(|p| vec![("keel.fsync.policy".to_string(), p.to_string())])
        .unwrap_or_default();
    let r = admin.create_topic(&topic, args.partitions, &configs).await?;
    if let Some(t) = r.topics.first() {
        if t.error_code != 0 {
            bail!("creating {topic}: error code {}", t.error_code);
        }
    }
    let (elapsed, mut lat) = produce_phase(args, &topic).await?;
    lat.sort_unstable();
    let secs = elapsed.as_secs_f64();
    let consume_mb_per_s = if args.no_consume {
        None
    } else {
        Some(consume_phase(args, &topic).await?)
    };
    let _ = admin.delete_topic(&topic).await;
    Ok(RunResult {
        msgs_per_s: args.messages as f64 / secs,
        mb_per_s: (args.messages * args.size) as f64 / secs / 1e6,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        max: lat.last().copied().unwrap_or_default(),
        consume_mb_per_s,
    })
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let policies: Vec<Option<String>> = if args.fsync.is_empty() {
        vec![None]
    } else {
        args.fsync.split(',').map(|s| Some(s.trim().to_string())).collect()
    };
    println!(
        "keel bench: {} messages of {} B, batch {}, acks={}, {} partitions, {} producers, compression {}",
        args.messages, args.size, args.batch, args.acks, args.partitions, args.concurrency, args.compression
    );
    println!("| fsync | round | produce msg/s | produce MB/s | p50 ms | p99 ms | p99.9 ms | max ms | consume MB/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 0..args.rounds {
        for policy in &policies {
            let r = one_run(&args, policy.as_deref(), round).await?;
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                policy.as_deref().unwrap_or("broker default"),
                round + 1,
                r.msgs_per_s,
                r.mb_per_s,
                ms(r.p50),
                ms(r.p99),
                ms(r.p999),
                ms(r.max),
                r.consume_mb_per_s
                    .map(|m| format!("{m:.1}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    println!(
        "latency is per produce request ({} messages), from send to acknowledgement",
        args.batch
    );
    Ok(())
}
