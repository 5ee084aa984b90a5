//! The `keel` binary.
//!
//! - `keel serve`: run a broker (with no arguments: one node, data in `./keel-data`, Kafka
//!   on 127.0.0.1:9092, HTTP metrics and health on 127.0.0.1:9644).
//! - `keel topic|group|txn|produce|consume`: tools that talk to any broker over the Kafka protocol.
//! - `keel bench`: produce/consume throughput and latency percentiles.
//! - `keel dev --nodes 3`: a local cluster for trying replication and failover.
//! - `keel cluster status`: nodes, partition leaders, under-replicated partitions.
//! - `keel chaos run|monkey`: fault injection under a workload, with a checker.
//!
//! Settings of `serve` come from, in rising precedence: built-in defaults, a TOML file
//! (`--config`, see `config/keel.example.toml`), `KEEL_*` environment variables and flags.

/// `println!` for the tools: when stdout is closed (`keel topic list | head -1`) the
/// program ends quietly, as Unix tools do, instead of failing to print.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod acl;
mod bench;
mod certs;
mod chaos;
mod cli;
mod cluster;
mod dev;
mod group;
mod serve;
mod txn;
mod user;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel", version, about = "Keel: a Kafka-compatible event streaming platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(Box<serve::ServeArgs>),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(cli::TopicCommand),
    /// List, describe and reset consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// List and describe transactions.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Produce lines from stdin as records.
    Produce(cli::ProduceArgs),
    /// Print records to stdout.
    Consume(cli::ConsumeArgs),
    /// Measure produce and consume throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a local multi-node cluster (child processes on 127.0.0.1) for trying failover.
    Dev(dev::DevArgs),
    /// Cluster state; moving partitions between nodes, draining and removing a node.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Chaos engineering: a cluster under workload and faults, judged record by record.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Make a development CA and node and client certificates for TLS listeners.
    Certs(certs::CertsArgs),
    /// ACLs: add, remove, list.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// SCRAM users: set passwords, delete, list.
    #[command(subcommand)]
    User(user::UserCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(*args)),
        Command::Topic(cmd) => rt.block_on(cli::topic(cmd)),
        Command::Group(cmd) => rt.block_on(group::run(cmd)),
        Command::Txn(cmd) => rt.block_on(txn::run(cmd)),
        Command::Produce(args) => rt.block_on(cli::produce(args)),
        Command::Consume(args) => rt.block_on(cli::consume(args)),
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::Dev(args) => rt.block_on(dev::run(args)),
        Command::Cluster(cmd) => rt.block_on(cluster::run(cmd)),
        Command::Chaos(cmd) => rt.block_on(chaos::run(cmd)),
        Command::Certs(args) => certs::run(args),
        Command::User(cmd) => rt.block_on(user::run(cmd)),
        Command::Acl(cmd) => rt.block_on(acl::run(cmd)),
    }
}
