//! `keel dev --nodes 3`: a local cluster of `keel serve` processes on 127.0.0.1, for
//! trying replication and failover by hand (kill one, watch the others carry on).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Node N listens for Kafka on base+N-1, for Raft on base+100+N-1, for HTTP on
    /// base+200+N-1.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// Each node's data lives in DIR/node-N.
    #[arg(long, default_value = "keel-dev")]
    pub data_dir: PathBuf,
    /// A secure cluster: a development CA and node certificate (DIR/certs, see `keel
    /// certs`), Kafka listeners speaking SASL_SSL (SCRAM or PLAIN), the ACL authorizer with
    /// `User:admin` as super user (password in DIR/admin-password), an audit log per node,
    /// mutual TLS between the nodes, and a loopback SASL_PLAINTEXT listener per node on
    /// base+300+N-1 for `keel` commands.
    #[arg(long)]
    pub secure: bool,
}

/// The ports of node `n` (1-based): Kafka, Raft, HTTP.
pub fn ports(base: u16, n: u16) -> (u16, u16, u16) {
    (base + n - 1, base + 100 + n - 1, base + 200 + n - 1)
}

/// The cluster secret of a local cluster under `dir` (`dir/cluster-secret`, readable by
/// its owner only): made once, random, and kept, so restarted nodes still hold it.
pub fn write_cluster_secret(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("cluster-secret");
    random_secret_file(&path, 32)?;
    Ok(path)
}

/// The content of `path`, a secret of `bytes` random bytes in hex made (readable by its
/// owner only) on first use and kept.
fn random_secret_file(path: &std::path::Path, bytes: usize) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !path.exists() {
        let secret: String = (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

pub async fn run(args: DevArgs) -> Result<()> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be between 1 and 9");
    let exe = std::env::current_exe().context("locating the keel binary")?;
    let peers: Vec<String> = (1..=args.nodes)
        .map(|n| format!("{n}@127.0.0.1:{}", ports(args.base_port, n).1))
        .collect();
    let secret_file = write_cluster_secret(&args.data_dir)?;
    let secure = if args.secure {
        Some(secure_setup(&args.data_dir)?)
    } else {
        None
    };
    let mut children: Vec<(u16, Child)> = Vec::new();
    for n in 1..=args.nodes {
        let (kafka, raft, http) = ports(args.base_port, n);
        let dir = args.data_dir.join(format!("node-{n}"));
        let mut cmd = Command::new(&exe);
        if let Some((certs, password)) = &secure {
            let config = args.data_dir.join(format!("node-{n}.toml"));
            let admin = args.base_port + 300 + n - 1;
            let toml = format!(
                "kafka_protocol = \"SASL_SSL\"\n\
                 listeners = [{{ name = \"ADMIN\", listen = \"127.0.0.1:{admin}\", protocol = \"SASL_PLAINTEXT\" }}]\n\
                 authorizer = true\n\
                 transport_tls = true\n\
                 super_users = [\"User:admin\"]\n\
                 audit_log = {audit:?}\n\
                 [sasl_plain_users]\n\
                 admin = {password:?}\n\
                 [tls]\n\
                 cert_file = {cert:?}\n\
                 key_file = {key:?}\n\
                 client_ca_file = {ca:?}\n",
                audit = dir.join("audit.log").display().to_string(),
                cert = certs.join("node.pem").display().to_string(),
                key = certs.join("node.key").display().to_string(),
                ca = certs.join("ca.pem").display().to_string(),
            );
            std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
            cmd.arg("serve").arg("--config").arg(&config);
        } else {
            cmd.arg("serve");
        }
        let child = cmd
            .args(["--node-id", &n.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--kafka-listen", &format!("127.0.0.1:{kafka}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--peers", &peers.join(",")])
            .arg("--cluster-secret-file")
            .arg(&secret_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting node {n}"))?;
        eprintln!(
            "node {n}: pid {} kafka=127.0.0.1:{kafka} raft=127.0.0.1:{raft} http=127.0.0.1:{http} data={}",
            child.id(),
            dir.display()
        );
        children.push((n, child));
    }
    let bootstrap: Vec<String> = (1..=args.nodes)
        .map(|n| format!("127.0.0.1:{}", ports(args.base_port, n).0))
        .collect();
    println!(
        "keel dev: {} nodes; bootstrap servers {}",
        args.nodes,
        bootstrap.join(",")
    );
    if let Some((certs, _)) = &secure {
        let admin: Vec<String> = (1..=args.nodes)
            .map(|n| format!("127.0.0.1:{}", args.base_port + 300 + n - 1))
            .collect();
        println!(
            "secure: clients use SASL_SSL with ssl.ca.location={}; keel commands use -b {} with \
             --sasl-user admin --sasl-password \"$(cat {})\"",
            certs.join("ca.pem").display(),
            admin.join(","),
            args.data_dir.join("admin-password").display()
        );
    }
    println!("kill a node (kill -9 PID) and watch the others elect new leaders; Ctrl-C stops all");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = watch_children(&mut children) => {}
    }
    for (n, c) in &mut children {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let _ = (n, c.wait());
    }
    Ok(())
}

/// A secure cluster's certificates (made once: DIR/certs) and the admin's password (made
/// once: DIR/admin-password, readable by its owner only).
fn secure_setup(dir: &std::path::Path) -> Result<(PathBuf, String)> {
    let certs = dir.join("certs");
    if !certs.join("node.pem").exists() {
        crate::certs::make(
            &certs,
            &["localhost".into(), "127.0.0.1".into()],
            &["admin".into()],
            365,
        )?;
    }
    let password = random_secret_file(&dir.join("admin-password"), 16)?;
    Ok((certs, password))
}

/// Returns once every node has exited (each reported as it goes).
async fn watch_children(children: &mut [(u16, Child)]) {
    let mut reported = vec![false; children.len()];
    loop {
        for (i, (n, c)) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                if !reported.get(i).copied().unwrap_or(true) {
                    eprintln!("node {n} exited: {status}");
                    if let Some(r) = reported.get_mut(i) {
                        *r = true;
                    }
                }
            }
        }
        if reported.iter().all(|r| *r) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
