//! `keel user set|delete|list`: SCRAM users (SASL/SCRAM-SHA-256 and -512), through the
//! Kafka protocol's AlterUserScramCredentials and DescribeUserScramCredentials (KIP-554),
//! as `kafka-configs --alter --add-config 'SCRAM-SHA-256=[...]' --entity-type users` does.
//! The password is salted and hashed here (`Hi(password, salt, iterations)`); it never
//! leaves this process.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest};
use kafka_protocol::protocol::StrBytes;
use keel_broker::scram::Mechanism;
use keel_client::Client;
use rand::RngCore;

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user or change its password, for each mechanism given.
    Set {
        name: String,
        /// The password [default: read from the first line of stdin].
        #[arg(long, env = "KEEL_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Mechanisms, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "SCRAM-SHA-256,SCRAM-SHA-512")]
        mechanism: Vec<String>,
        /// PBKDF2 iterations (4096 to 16384, as Kafka allows).
        #[arg(long, default_value_t = 8192)]
        iterations: i32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a user's credentials (every mechanism it has, unless given).
    Delete {
        name: String,
        #[arg(long, value_delimiter = ',')]
        mechanism: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Users and their mechanisms.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

fn mechanisms(names: &[String]) -> Result<Vec<Mechanism>> {
    names
        .iter()
        .map(|n| Mechanism::from_name(&n.to_ascii_uppercase()).with_context(|| format!("unknown mechanism {n:?}")))
        .collect()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Each user's mechanisms and iteration counts.
async fn describe(c: &mut Client, user: Option<&str>) -> Result<Vec<(String, Vec<(Mechanism, i32)>)>> {
    let mut req = DescribeUserScramCredentialsRequest::default();
    req.users = user.map(|u| vec![UserName::default().with_name(s(u))]);
    let resp = c.call(&req).await?;
    if resp.error_code != 0 {
        bail!("describe failed: error {} {:?}", resp.error_code, resp.error_message);
    }
    let mut out = Vec::new();
    for r in resp.results {
        if r.error_code != 0 {
            bail!("{}: {}", r.user.as_str(), r.error_message.as_deref().unwrap_or("error"));
        }
        let creds = r
            .credential_infos
            .iter()
            .filter_map(|i| Mechanism::from_kafka_type(i.mechanism).map(|m| (m, i.iterations)))
            .collect();
        out.push((r.user.to_string(), creds));
    }
    Ok(out)
}

async fn alter(c: &mut Client, req: AlterUserScramCredentialsRequest) -> Result<()> {
    let resp = c.call(&req).await?;
    for r in resp.results {
        if r.error_code != 0 {
            bail!(
                "{}: error {}: {}",
                r.user.as_str(),
                r.error_code,
                r.error_message.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

pub async fn run(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Set {
            name,
            password,
            mechanism,
            iterations,
            conn,
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.is_empty() {
                bail!("empty password");
            }
            if !(keel_broker::scram::MIN_ITERATIONS..=keel_broker::scram::MAX_ITERATIONS).contains(&iterations) {
                bail!("--iterations must be from 4096 to 16384");
            }
            let mut req = AlterUserScramCredentialsRequest::default();
            for m in mechanisms(&mechanism)? {
                let mut salt = vec![0u8; 32];
                rand::rng().fill_bytes(&mut salt);
                let salted = m.salted_password(password.as_bytes(), &salt, iterations as u32);
                let mut u = ScramCredentialUpsertion::default();
                u.name = s(&name);
                u.mechanism = m.kafka_type();
                u.iterations = iterations;
                u.salt = salt.into();
                u.salted_password = salted.into();
                req.upsertions.push(u);
            }
            let mut c = conn.connect().await?;
            alter(&mut c, req).await?;
            say!("user {name}: {} set", mechanism.join(", "));
        }
        UserCommand::Delete { name, mechanism, conn } => {
            let mut c = conn.connect().await?;
            let chosen = if mechanism.is_empty() {
                describe(&mut c, Some(&name))
                    .await?
                    .into_iter()
                    .flat_map(|(_, m)| m.into_iter().map(|(m, _)| m))
                    .collect()
            } else {
                mechanisms(&mechanism)?
            };
            let mut req = AlterUserScramCredentialsRequest::default();
            for m in &chosen {
                let mut d = ScramCredentialDeletion::default();
                d.name = s(&name);
                d.mechanism = m.kafka_type();
                req.deletions.push(d);
            }
            alter(&mut c, req).await?;
            say!("user {name}: deleted");
        }
        UserCommand::List { conn } => {
            let mut c = conn.connect().await?;
            say!("user\tmechanisms");
            for (user, creds) in describe(&mut c, None).await? {
                let list: Vec<String> = creds
                    .iter()
                    .map(|(m, i)| format!("{} ({i} iterations)", m.name()))
                    .collect();
                say!("{user}\t{}", list.join(", "));
            }
        }
    }
    Ok(())
}
