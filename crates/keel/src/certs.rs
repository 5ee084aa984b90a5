//! `keel certs`: a development certificate authority and certificates signed by it, so
//! that TLS listeners and mTLS clients can be tried with one command. Not a production
//! PKI: the CA's key is written beside its certificate.
//!
//! Files written to `--out`: `ca.pem`/`ca.key` (kept and reused when they exist, so more
//! certificates can be signed by the same CA later), `node.pem`/`node.key` (valid for
//! `--hosts`), and `client-<name>.pem`/`.key` per `--clients` name (subject `CN=<name>`,
//! which a TLS listener maps to the principal `User:CN=<name>`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = "keel-certs")]
    pub out: PathBuf,
    /// Host names and IP addresses the node certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub hosts: Vec<String>,
    /// Client certificates to make, by common name.
    #[arg(long, value_delimiter = ',', default_value = "admin")]
    pub clients: Vec<String>,
    /// Days the new certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

pub fn run(args: CertsArgs) -> Result<()> {
    let written = make(&args.out, &args.hosts, &args.clients, args.days)?;
    for f in written {
        println!("{}", f.display());
    }
    Ok(())
}

/// Writes the CA (unless it exists), the node certificate and the client certificates;
/// returns the files written.
pub fn make(out: &Path, hosts: &[String], clients: &[String], days: u32) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let (ca_pem, ca_key) = (out.join("ca.pem"), out.join("ca.key"));
    let ca_params = ca_params(days);
    let ca_key_pair = if ca_pem.exists() && ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("{}: not a usable key", ca_key.display()))?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write(&ca_pem, &cert.pem(), false)?;
        write(&ca_key, &key.serialize_pem(), true)?;
        written.extend([ca_pem.clone(), ca_key.clone()]);
        key
    };
    // The issuer's name and key identifier are what signing uses; the reused CA's
    // parameters are made the same way as when it was created.
    let issuer = Issuer::new(ca_params, ca_key_pair);

    let mut node = leaf_params(days, "keel-node")?;
    node.subject_alt_names = CertificateParams::new(hosts.to_vec())?.subject_alt_names;
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = node.signed_by(&key, &issuer)?;
    for (path, text, secret) in [("node.pem", cert.pem(), false), ("node.key", key.serialize_pem(), true)] {
        write(&out.join(path), &text, secret)?;
        written.push(out.join(path));
    }
    for name in clients.iter().filter(|n| !n.is_empty()) {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            anyhow::bail!("client name {name:?}: letters, digits and -_.@ only");
        }
        let mut client = leaf_params(days, name)?;
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = client.signed_by(&key, &issuer)?;
        for (path, text, secret) in [
            (format!("client-{name}.pem"), cert.pem(), false),
            (format!("client-{name}.key"), key.serialize_pem(), true),
        ] {
            write(&out.join(&path), &text, secret)?;
            written.push(out.join(path));
        }
    }
    Ok(written)
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Back-dated a day, for clocks a little behind.
    p.not_before = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now.saturating_sub(86_400));
    p.not_after = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now + u64::from(days) * 86_400);
}

fn ca_params(days: u32) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Keel development");
    dn.push(DnType::CommonName, "Keel development CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days.max(3650));
    p
}

fn leaf_params(days: u32, common_name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    Ok(p)
}

/// Writes `text` to `path`, readable by its owner only when it is a private key.
fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
