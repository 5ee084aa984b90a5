//! `keel acl add|remove|list`: ACLs through the Kafka protocol's CreateAcls, DeleteAcls
//! and DescribeAcls, as `kafka-acls` manages them.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;
use keel_broker::acl::{self, op, pattern, permission, resource};

use crate::cli::Conn;

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Add ACLs: each operation given, for the principal, on the resource.
    Add(Spec),
    /// Remove exactly the ACLs `add` with the same arguments would add.
    Remove(Spec),
    /// List ACLs (all, or those of a principal).
    List {
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub struct Spec {
    /// Who: User:<name> (SASL), User:CN=... (a client certificate), or User:* for anyone.
    #[arg(long)]
    principal: String,
    /// Operations, comma-separated: READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE,
    /// DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE, CLUSTER_ACTION, ALL.
    #[arg(long, value_delimiter = ',', required = true)]
    operation: Vec<String>,
    /// Deny instead of allow (a deny wins over any allow).
    #[arg(long)]
    deny: bool,
    /// The host the principal connects from [default: any].
    #[arg(long, default_value = "*")]
    host: String,
    /// A topic (or a prefix with --prefixed; * for every topic).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group.
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A transactional id.
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix.
    #[arg(long)]
    prefixed: bool,
    #[command(flatten)]
    conn: Conn,
}

fn op_code(name: &str) -> Result<i8> {
    (op::ALL..=op::DESCRIBE_TOKENS)
        .find(|c| acl::op_name(*c).eq_ignore_ascii_case(name))
        .ok_or_else(|| anyhow::anyhow!("unknown operation {name:?}"))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

impl Spec {
    /// (resource type, name, pattern, operations, permission).
    fn parts(&self) -> Result<(i8, String, i8, Vec<i8>, i8)> {
        let (rt, name) = match (&self.topic, &self.group, &self.transactional_id, self.cluster) {
            (Some(t), None, None, false) => (resource::TOPIC, t.clone()),
            (None, Some(g), None, false) => (resource::GROUP, g.clone()),
            (None, None, Some(t), false) => (resource::TRANSACTIONAL_ID, t.clone()),
            (None, None, None, true) => (resource::CLUSTER, acl::CLUSTER_NAME.to_string()),
            _ => bail!("name one resource: --topic, --group, --transactional-id or --cluster"),
        };
        let pt = if self.prefixed {
            pattern::PREFIXED
        } else {
            pattern::LITERAL
        };
        let ops = self.operation.iter().map(|o| op_code(o)).collect::<Result<Vec<_>>>()?;
        let perm = if self.deny { permission::DENY } else { permission::ALLOW };
        Ok((rt, name, pt, ops, perm))
    }
}

pub async fn run(cmd: AclCommand) -> Result<()> {
    match cmd {
        AclCommand::Add(spec) => {
            let (rt, name, pt, ops, perm) = spec.parts()?;
            let mut req = CreateAclsRequest::default();
            for o in &ops {
                let mut c = AclCreation::default();
                c.resource_type = rt;
                c.resource_name = s(&name);
                c.resource_pattern_type = pt;
                c.principal = s(&spec.principal);
                c.host = s(&spec.host);
                c.operation = *o;
                c.permission_type = perm;
                req.creations.push(c);
            }
            let mut c = spec.conn.connect().await?;
            let resp = c.call(&req).await?;
            for r in &resp.results {
                if r.error_code != 0 {
                    bail!("error {}: {}", r.error_code, r.error_message.as_deref().unwrap_or(""));
                }
            }
            say!("added {} ACL(s)", resp.results.len());
        }
        AclCommand::Remove(spec) => {
            let (rt, name, pt, ops, perm) = spec.parts()?;
            let mut req = DeleteAclsRequest::default();
            for o in &ops {
                let mut f = DeleteAclsFilter::default();
                f.resource_type_filter = rt;
                f.resource_name_filter = Some(s(&name));
                f.pattern_type_filter = pt;
                f.principal_filter = Some(s(&spec.principal));
                f.host_filter = Some(s(&spec.host));
                f.operation = *o;
                f.permission_type = perm;
                req.filters.push(f);
            }
            let mut c = spec.conn.connect().await?;
            let resp = c.call(&req).await?;
            let mut n = 0;
            for r in &resp.filter_results {
                if r.error_code != 0 {
                    bail!("error {}: {}", r.error_code, r.error_message.as_deref().unwrap_or(""));
                }
                n += r.matching_acls.len();
            }
            say!("removed {n} ACL(s)");
        }
        AclCommand::List { principal, conn } => {
            let mut req = DescribeAclsRequest::default();
            req.resource_type_filter = resource::ANY;
            req.resource_name_filter = None;
            req.pattern_type_filter = pattern::ANY;
            req.principal_filter = principal.as_deref().map(s);
            req.host_filter = None;
            req.operation = op::ANY;
            req.permission_type = permission::ANY;
            let mut c = conn.connect().await?;
            let resp = c.call(&req).await?;
            if resp.error_code != 0 {
                bail!(
                    "error {}: {}",
                    resp.error_code,
                    resp.error_message.as_deref().unwrap_or("")
                );
            }
            say!("resource\tpattern\tprincipal\thost\toperation\tpermission");
            for res in resp.resources {
                let pt = if res.pattern_type == pattern::PREFIXED {
                    "PREFIXED"
                } else {
                    "LITERAL"
                };
                for a in res.acls {
                    let perm = if a.permission_type == permission::DENY {
                        "DENY"
                    } else {
                        "ALLOW"
                    };
                    say!(
                        "{}:{}\t{pt}\t{}\t{}\t{}\t{perm}",
                        acl::resource_name(res.resource_type),
                        res.resource_name.as_str(),
                        a.principal.as_str(),
                        a.host.as_str(),
                        acl::op_name(a.operation)
                    );
                }
            }
        }
    }
    Ok(())
}
