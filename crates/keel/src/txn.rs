//! `keel txn list|describe`: transactions, from their coordinator over the Kafka protocol.

use anyhow::Result;
use clap::Subcommand;
use keel_client::Client;

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum TxnCommand {
    /// Transactional ids, their producer ids and states.
    List {
        /// Only these states (Empty, Ongoing, PrepareCommit, PrepareAbort,
        /// CompleteCommit, CompleteAbort), comma-separated.
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// One transactional id: state, producer id and epoch, timeout, start and partitions.
    Describe {
        transactional_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(cmd: TxnCommand) -> Result<()> {
    match cmd {
        TxnCommand::List { state, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let mut list = c.list_transactions(&state).await?;
            list.sort();
            say!("transactional id\tproducer id\tstate");
            for (id, pid, st) in list {
                say!("{id}\t{pid}\t{st}");
            }
        }
        TxnCommand::Describe { transactional_id, conn } => {
            let mut c = Client::connect(&conn.bootstrap).await?;
            let d = c.describe_transaction(&transactional_id).await?;
            say!("transactional id\t{}", d.transactional_id);
            say!("state\t{}", d.state);
            say!("producer id\t{}", d.producer_id);
            say!("producer epoch\t{}", d.producer_epoch);
            say!("timeout ms\t{}", d.timeout_ms);
            say!("started ms\t{}", d.start_ms);
            for (t, p) in d.partitions {
                say!("partition\t{t}-{p}");
            }
        }
    }
    Ok(())
}
