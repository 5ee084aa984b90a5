//! TLS for the Kafka and HTTP listeners, with rustls (TLS 1.2 and 1.3 only, aws-lc-rs's
//! cipher suites): PEM files read at start and read again whenever they change, so a
//! renewed certificate is served without a restart; optional client certificates (mTLS),
//! whose subject becomes the connection's principal, as Kafka's SSL principal builder does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{ClientAuth, TlsConfig};

/// A listener's TLS settings, swapped whole when the files change.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' (modification time, length) when last read.
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish()
    }
}

impl Tls {
    /// Reads the certificate, key and client CAs; fails on a missing or unusable file.
    pub fn load(config: &TlsConfig) -> Result<Arc<Tls>, String> {
        let stamp = stamps(config);
        let server = build(config)?;
        Ok(Arc::new(Tls {
            config: config.clone(),
            current: RwLock::new(Arc::new(server)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        TlsAcceptor::from(current)
    }

    /// The settings in force now, for listeners that speak HTTP (ALPN http/1.1).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        let mut config = (*self.current.read().unwrap_or_else(|e| e.into_inner()).clone()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Reads the files again if any changed since they were last read. Blocking file I/O:
    /// call from a blocking thread. Ok(true) when new settings are in force; on an error
    /// the old settings stay.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamps(&self.config);
        let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *stamp == now {
            return Ok(false);
        }
        // A failure leaves the stamp as it was, so the next check tries again: a
        // certificate and its key are often replaced one after the other.
        let server = build(&self.config)?;
        *stamp = now;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(server);
        Ok(true)
    }

    /// Checks the files every `reload_interval_ms` until `self` is dropped elsewhere; with
    /// `transport`, the node-to-node transport's TLS is rebuilt from them too (new peer
    /// connections use it; open ones keep the certificate they were made with).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        metrics: Arc<crate::metrics::Metrics>,
        transport: Option<Arc<keel_raft::Transport>>,
    ) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.reload_interval_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tls) = weak.upgrade() else { return };
                let for_transport = transport.is_some();
                let reloaded = tokio::task::spawn_blocking(move || {
                    let changed = tls.reload_if_changed()?;
                    let node = if changed && for_transport {
                        Some(self::transport(&tls.config)?)
                    } else {
                        None
                    };
                    Ok::<_, String>((changed, node))
                })
                .await;
                match reloaded {
                    Ok(Ok((true, node))) => {
                        if let (Some(t), Some(node)) = (&transport, node) {
                            t.require_tls(node);
                        }
                        metrics.tls_reloads.inc();
                        info!("TLS certificate files changed: new connections use them")
                    }
                    Ok(Ok((false, _))) => {}
                    Ok(Err(e)) => {
                        metrics.tls_reload_failures.inc();
                        warn!(error = %e, "TLS certificate files changed but could not be used; keeping the previous ones")
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

fn files(config: &TlsConfig) -> Vec<&PathBuf> {
    let mut out = vec![&config.cert_file, &config.key_file];
    out.extend(config.client_ca_file.as_ref());
    out
}

fn stamps(config: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    files(config)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// The certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn build(config: &TlsConfig) -> Result<ServerConfig, String> {
    let certs = read_certs(&config.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| format!("{}: {e}", config.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match (config.client_auth, &config.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", config.cert_file.display(), config.key_file.display()))
}

/// The node-to-node transport's TLS: every node presents its certificate and requires
/// the peer's, both signed by `client_ca_file` (the cluster's CA). Built at start and again
/// whenever the files change (see [`Tls::spawn_reloader`]).
pub fn transport(config: &TlsConfig) -> Result<keel_raft::transport::TransportTls, String> {
    let ca = config
        .client_ca_file
        .as_ref()
        .ok_or("transport_tls needs tls.client_ca_file: the CA every node's certificate is signed by")?;
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let roots = Arc::new(roots);
    let certs = read_certs(&config.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| format!("{}: {e}", config.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| e.to_string())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(keel_raft::transport::TransportTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The principal a client certificate names: `User:` and its subject as RFC 2253 writes
/// a distinguished name (most specific first, comma-separated, e.g. `User:CN=alice,O=Acme`),
/// which is what Kafka's default SSL principal builder gives.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in parsed.subject().iter_rdn().collect::<Vec<_>>().into_iter().rev() {
        for attr in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr.as_str().ok()?;
            parts.push(format!("{key}={}", escape_dn(value)));
        }
    }
    Some(format!("User:{}", parts.join(",")))
}

/// RFC 2253's escapes for an attribute value.
fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == v.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        p.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_subject_is_a_kafka_style_principal() {
        use rcgen::DnType::*;
        let c = cert_with(&[(CountryName, "NL"), (OrganizationName, "Acme"), (CommonName, "alice")]);
        assert_eq!(principal_of(&c).as_deref(), Some("User:CN=alice,O=Acme,C=NL"));
        let c = cert_with(&[(CommonName, "bob, the builder")]);
        assert_eq!(principal_of(&c).as_deref(), Some("User:CN=bob\\, the builder"));
        assert_eq!(principal_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])), None);
    }

    #[test]
    fn files_are_read_again_only_when_they_change_and_a_bad_pair_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let write_pair = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        write_pair("one");
        let config = TlsConfig {
            cert_file: dir.path().join("c.pem"),
            key_file: dir.path().join("k.pem"),
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval_ms: 1000,
        };
        let tls = Tls::load(&config).unwrap();
        assert_eq!(tls.reload_if_changed(), Ok(false));
        let (_, key_two) = write_pair("two");
        assert_eq!(tls.reload_if_changed(), Ok(true));
        assert_eq!(tls.reload_if_changed(), Ok(false));
        // A key that does not match the certificate: refused, old settings kept, and tried
        // again at the next check.
        write_pair("three");
        std::fs::write(dir.path().join("k.pem"), key_two).unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(tls.reload_if_changed().is_err());
        std::fs::write(dir.path().join("c.pem"), "not a certificate").unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(Tls::load(&config).is_err());
    }
}
