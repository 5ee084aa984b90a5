//! The audit log: one JSON object per line for every authentication (success or failure),
//! every authorization denial and every change to topics, configs, ACLs, users and cluster
//! membership, written to `audit_log` and rotated by size.
//!
//! Fields (see docs/security.md): `time` (RFC 3339, UTC, milliseconds), `node`, `event`
//! (`authentication`, `authorization`, `change`), `principal`, `client` (address and port),
//! `listener`, `operation` (the Kafka API, or the ACL operation refused), `resource_type`,
//! `resource`, `outcome` (`success`, `failure`, `denied`) and, when there is one,
//! `detail` (an error's name or a mechanism).
//!
//! Writing happens on a thread of its own behind a bounded queue: a request never waits
//! on the audit file. When the queue is full, events are dropped and counted
//! (`keel_audit_events_dropped_total`); a write error is logged and counted likewise.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

use crate::handlers::sasl::Session;
use crate::metrics::Metrics;

/// Events waiting to be written, at most.
const QUEUE: usize = 16_384;

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub time: String,
    pub node: i32,
    pub event: &'static str,
    pub principal: String,
    pub client: String,
    pub listener: String,
    pub operation: String,
    pub resource_type: &'static str,
    pub resource: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The audit log's sending end; a disabled log drops everything at no cost.
pub struct Audit {
    node: i32,
    tx: Option<SyncSender<Event>>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// No audit log.
    pub fn disabled(metrics: Arc<Metrics>) -> Audit {
        Audit {
            node: 0,
            tx: None,
            metrics,
        }
    }

    /// Opens (appends to) `path` and starts the writer thread; the file is rotated when it
    /// passes `max_bytes`, keeping `keep` older files (`path.1` the newest).
    pub fn open(path: &Path, max_bytes: u64, keep: usize, node: i32, metrics: Arc<Metrics>) -> std::io::Result<Audit> {
        let writer = Writer::open(path.to_path_buf(), max_bytes, keep)?;
        let (tx, rx) = sync_channel::<Event>(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new().name("keel-audit".into()).spawn(move || {
            let mut writer = writer;
            while let Ok(event) = rx.recv() {
                if let Err(e) = writer.write(&event) {
                    m.audit_write_failures.inc();
                    tracing::warn!(error = %e, "audit log write failed");
                }
            }
        })?;
        Ok(Audit {
            node,
            tx: Some(tx),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    fn send(&self, who: &Session, client: Option<std::net::SocketAddr>, mut e: Event) {
        let Some(tx) = &self.tx else { return };
        e.time = now_rfc3339();
        e.node = self.node;
        e.principal = who.principal.clone();
        e.listener = who.listener.to_string();
        e.client = client.map(|c| c.to_string()).unwrap_or_else(|| who.client.clone());
        match tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.audit_dropped.inc();
            }
        }
    }

    /// A SASL or TLS authentication.
    pub fn authentication(
        &self,
        who: &Session,
        client: Option<std::net::SocketAddr>,
        mechanism: &str,
        ok: bool,
        detail: Option<String>,
    ) {
        self.send(
            who,
            client,
            Event {
                event: "authentication",
                operation: mechanism.to_string(),
                outcome: if ok { "success" } else { "failure" },
                detail,
                ..Event::blank()
            },
        );
    }

    /// An operation the authorizer refused.
    pub fn denied(&self, who: &Session, operation: &str, resource_type: &'static str, resource: &str) {
        self.send(
            who,
            None,
            Event {
                event: "authorization",
                operation: operation.to_string(),
                resource_type,
                resource: resource.to_string(),
                outcome: "denied",
                ..Event::blank()
            },
        );
    }

    /// A change through an admin API: `code` is its Kafka error code for this resource.
    pub fn change(&self, who: &Session, api: &str, resource_type: &'static str, resource: &str, code: i16) {
        if self.tx.is_none() {
            return;
        }
        let detail = (code != 0).then(|| {
            kafka_protocol::ResponseError::try_from_code(code)
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|| format!("error {code}"))
        });
        self.send(
            who,
            None,
            Event {
                event: "change",
                operation: api.to_string(),
                resource_type,
                resource: resource.to_string(),
                outcome: if code == 0 { "success" } else { "failure" },
                detail,
                ..Event::blank()
            },
        );
    }
}

impl Event {
    fn blank() -> Event {
        Event {
            time: String::new(),
            node: 0,
            event: "",
            principal: String::new(),
            client: String::new(),
            listener: String::new(),
            operation: String::new(),
            resource_type: "",
            resource: String::new(),
            outcome: "",
            detail: None,
        }
    }
}

/// The file end: appends lines, rotates by size.
struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl Writer {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Writer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path,
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep,
        })
    }

    fn write(&mut self, e: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                if name(i).exists() {
                    std::fs::rename(name(i), name(i + 1))?;
                }
            }
            std::fs::rename(&self.path, name(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Now as RFC 3339 in UTC with milliseconds.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = Writer::open(path.clone(), 4096, 2).unwrap();
        let mut e = Event::blank();
        e.event = "change";
        e.operation = "CreateTopics".into();
        e.resource_type = "TOPIC";
        e.resource = "x".repeat(1000);
        e.outcome = "success";
        for _ in 0..20 {
            w.write(&e).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 4096);
        for line in current.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["operation"], "CreateTopics");
            assert!(v.get("detail").is_none());
        }
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists(), "only 2 old files are kept");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-12-07T01:02:03.456Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let year: i32 = t[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{t}");
    }
}
