//! Topic-level configs: the Kafka names Keel honours, their defaults from the broker
//! config, validation, and the log settings they produce.

use std::collections::BTreeMap;

use keel_log::LogConfig;

use crate::config::{BrokerConfig, FsyncPolicy};

/// Timestamp type of a topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The effective settings of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub fsync: FsyncPolicy,
    pub timestamp_type: TimestampType,
    pub message_bytes_max: usize,
    /// cleanup.policy includes compact: every record must have a key, and the log cleaner
    /// keeps the latest record of each (see [`crate::cleaner`]).
    pub compacted: bool,
    pub compaction: CompactionSettings,
    /// compression.type: the codec every batch is stored with (Kafka's codec ids, 0 for
    /// uncompressed), or `None` ("producer") to store batches as the producer sent them.
    pub compression: Option<i16>,
}

/// The log cleaner's settings for a compacted topic, as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionSettings {
    /// How long a tombstone (and an empty transaction's marker) stays once it could go.
    pub delete_retention_ms: i64,
    /// Records newer than this are not cleaned.
    pub min_compaction_lag_ms: i64,
    /// A log with dirty records older than this is cleaned whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// Clean when at least this share of the cleanable bytes is dirty (not yet cleaned),
    /// in thousandths.
    pub min_cleanable_dirty_permille: u32,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_permille: 500,
        }
    }
}

/// Config names Keel accepts on a topic, with a one-line description each.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    (
        "cleanup.policy",
        "delete, compact or delete,compact. delete: retention removes whole segments. compact: \
         records must have keys, and the log cleaner keeps the latest record of each key",
    ),
    (
        "delete.retention.ms",
        "compacted topics: how long a tombstone is kept once the cleaner could remove it",
    ),
    (
        "min.compaction.lag.ms",
        "compacted topics: records newer than this are not cleaned",
    ),
    (
        "max.compaction.lag.ms",
        "compacted topics: records older than this are cleaned whatever the dirty ratio",
    ),
    (
        "min.cleanable.dirty.ratio",
        "compacted topics: clean once this share of the cleanable log is not yet cleaned",
    ),
    (
        "compression.type",
        "producer (batches stored as the producer compressed them), uncompressed, gzip, snappy, \
         lz4 or zstd (the leader recompresses batches sent otherwise)",
    ),
    (
        "retention.ms",
        "delete segments whose newest record is older than this (-1: keep)",
    ),
    (
        "retention.bytes",
        "delete oldest segments while the partition is larger than this (-1: no limit)",
    ),
    ("segment.bytes", "roll the active segment at this size"),
    ("segment.ms", "roll the active segment at this age"),
    (
        "file.delete.delay.ms",
        "accepted and ignored: a removed segment's file is deleted at once",
    ),
    (
        "flush.messages",
        "accepted; Keel fsyncs as keel.fsync.policy says (by default before every \
         acknowledgement, as often as flush.messages=1 asks)",
    ),
    (
        "flush.ms",
        "accepted; Keel fsyncs as keel.fsync.policy says (by default before every \
         acknowledgement, as often as any flush.ms asks)",
    ),
    ("max.message.bytes", "largest record batch accepted"),
    ("message.timestamp.type", "CreateTime or LogAppendTime"),
    (
        "message.format.version",
        "accepted and ignored, as Kafka 3.0 and later do (KIP-724): batches are kept in format v2",
    ),
    ("min.insync.replicas", "replicas that must have a write for acks=all"),
    (
        "keel.fsync.policy",
        "always (fsync before ack, group commit), interval or never",
    ),
];

fn opt_ms(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-1".into())
}

/// The value of every topic config for `overrides` on top of the broker defaults, with
/// whether it was set on the topic.
pub fn describe(broker: &BrokerConfig, overrides: &BTreeMap<String, String>) -> Vec<(String, String, bool)> {
    let defaults: BTreeMap<&str, String> = [
        ("cleanup.policy", "delete".to_string()),
        ("delete.retention.ms", "86400000".to_string()),
        ("min.compaction.lag.ms", "0".to_string()),
        ("max.compaction.lag.ms", i64::MAX.to_string()),
        ("min.cleanable.dirty.ratio", "0.5".to_string()),
        ("compression.type", "producer".to_string()),
        ("retention.ms", opt_ms(broker.log.retention_ms)),
        ("retention.bytes", opt_ms(broker.log.retention_bytes)),
        ("segment.bytes", broker.log.segment_bytes.to_string()),
        ("segment.ms", broker.log.segment_ms.to_string()),
        ("max.message.bytes", broker.message_bytes_max.to_string()),
        ("message.timestamp.type", "CreateTime".to_string()),
        ("message.format.version", "3.0-IV1".to_string()),
        ("file.delete.delay.ms", "60000".to_string()),
        ("flush.messages", i64::MAX.to_string()),
        ("flush.ms", i64::MAX.to_string()),
        ("min.insync.replicas", "1".to_string()),
        ("keel.fsync.policy", broker.fsync.as_str().to_string()),
    ]
    .into_iter()
    .collect();
    TOPIC_CONFIGS
        .iter()
        .map(|(name, _)| match overrides.get(*name) {
            Some(v) => (name.to_string(), v.clone(), true),
            None => (name.to_string(), defaults.get(name).cloned().unwrap_or_default(), false),
        })
        .collect()
}

fn parse_i64(name: &str, v: &str) -> Result<i64, String> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| format!("{name}={v:?} is not an integer"))
}

fn optional_limit(name: &str, v: &str) -> Result<Option<u64>, String> {
    match parse_i64(name, v)? {
        -1 => Ok(None),
        x if x >= 0 => Ok(Some(x as u64)),
        x => Err(format!("{name}={x} must be -1 or non-negative")),
    }
}

/// compression.type's value as a codec id (`None` for "producer"), as Kafka names them.
pub fn compression_type(v: &str) -> Result<Option<i16>, String> {
    Ok(Some(match v.trim() {
        "producer" => return Ok(None),
        "uncompressed" => 0,
        "gzip" => 1,
        "snappy" => 2,
        "lz4" => 3,
        "zstd" => 4,
        _ => {
            return Err(format!(
                "compression.type={v:?} (producer, uncompressed, gzip, snappy, lz4 or zstd)"
            ))
        }
    }))
}

/// Applies `overrides` on the broker defaults, refusing unknown names and bad values.
pub fn settings(broker: &BrokerConfig, overrides: &BTreeMap<String, String>) -> Result<TopicSettings, String> {
    let mut s = TopicSettings {
        log: broker.log.clone(),
        fsync: broker.fsync,
        timestamp_type: TimestampType::CreateTime,
        message_bytes_max: broker.message_bytes_max,
        compacted: false,
        compaction: CompactionSettings::default(),
        compression: None,
    };
    let mut compact_only = false;
    for (name, v) in overrides {
        match name.as_str() {
            "cleanup.policy" => {
                let mut policies: Vec<&str> = v.split(',').map(str::trim).collect();
                policies.sort_unstable();
                policies.dedup();
                match policies.as_slice() {
                    ["delete"] => {}
                    ["compact"] | ["compact", "delete"] => s.compacted = true,
                    _ => return Err(format!("cleanup.policy={v:?} (delete, compact or delete,compact)")),
                }
                compact_only = !policies.contains(&"delete");
            }
            "delete.retention.ms" | "min.compaction.lag.ms" | "max.compaction.lag.ms" => {
                let x = parse_i64(name, v)?;
                if x < 0 {
                    return Err(format!("{name}={x} must be non-negative"));
                }
                match name.as_str() {
                    "delete.retention.ms" => s.compaction.delete_retention_ms = x,
                    "min.compaction.lag.ms" => s.compaction.min_compaction_lag_ms = x,
                    _ => s.compaction.max_compaction_lag_ms = x.max(1),
                }
            }
            "min.cleanable.dirty.ratio" => {
                let x: f64 = v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number"))?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(format!("{name}={x} must be between 0 and 1"));
                }
                s.compaction.min_cleanable_dirty_permille = (x * 1000.0).round() as u32;
            }
            // Kafka's delay before deleting a removed segment's file: Keel removes them at
            // once (readers open closed segments per read).
            "file.delete.delay.ms" => {
                parse_i64(name, v)?;
            }
            // Kafka's forced flush after so many records or so long: Keel's fsync is set by
            // keel.fsync.policy, by default before every acknowledgement, which is at
            // least as often as any value here asks.
            "flush.messages" | "flush.ms" => {
                let x = parse_i64(name, v)?;
                let min = if name == "flush.messages" { 1 } else { 0 };
                if x < min {
                    return Err(format!("{name}={x} is below {min}"));
                }
            }
            "compression.type" => s.compression = compression_type(v)?,
            "retention.ms" => s.log.retention_ms = optional_limit(name, v)?,
            "retention.bytes" => s.log.retention_bytes = optional_limit(name, v)?,
            "segment.bytes" => {
                let x = parse_i64(name, v)?;
                if x < 1024 {
                    return Err(format!("segment.bytes={x} is below 1024"));
                }
                s.log.segment_bytes = x as u64;
            }
            "segment.ms" => {
                let x = parse_i64(name, v)?;
                if x < 1 {
                    return Err(format!("segment.ms={x} must be positive"));
                }
                s.log.segment_ms = x as u64;
            }
            "max.message.bytes" => {
                let x = parse_i64(name, v)?;
                if x < 0 {
                    return Err(format!("max.message.bytes={x} must be non-negative"));
                }
                s.message_bytes_max = x as usize;
            }
            "message.timestamp.type" => {
                s.timestamp_type = match v.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(format!("message.timestamp.type={v:?} (CreateTime or LogAppendTime)")),
                }
            }
            "min.insync.replicas" => {
                if parse_i64(name, v)? != 1 {
                    return Err("min.insync.replicas must be 1 on a single node".into());
                }
            }
            "keel.fsync.policy" => s.fsync = v.parse()?,
            // A Kafka version such as 0.10.0, 2.8-IV1 or 3.0-IV1.
            "message.format.version" => {
                let ok = v
                    .split(['.', '-'])
                    .next()
                    .is_some_and(|major| major.parse::<u32>().is_ok());
                if !ok {
                    return Err(format!("message.format.version={v:?} is not a Kafka version"));
                }
            }
            other => return Err(format!("unknown topic config {other:?}")),
        }
    }
    // Retention does not delete from a topic that is only compacted.
    if compact_only {
        s.log.retention_ms = None;
        s.log.retention_bytes = None;
    }
    s.log.validate()?;
    Ok(s)
}

/// Whether `name` is a legal topic name, as Kafka defines it.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if name.len() > 249 {
        return Err(format!("topic name is {} characters, the limit is 249", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "topic name contains {c:?}; legal characters are ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overrides change the effective settings; unknown names and bad values are refused.
    #[test]
    fn overrides_validated() {
        let b = BrokerConfig::default();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "-1".to_string());
        o.insert("message.timestamp.type".to_string(), "LogAppendTime".to_string());
        o.insert("keel.fsync.policy".to_string(), "never".to_string());
        o.insert("message.format.version".to_string(), "0.10.0.0".to_string());
        o.insert("compression.type".to_string(), "lz4".to_string());
        let s = settings(&b, &o).unwrap();
        assert_eq!(s.compression, Some(3));
        assert_eq!(s.log.retention_ms, None);
        assert_eq!(s.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(s.fsync, FsyncPolicy::Never);
        for (k, v) in [
            ("nope", "1"),
            ("segment.bytes", "10"),
            ("cleanup.policy", "shred"),
            ("message.format.version", "latest"),
            ("retention.ms", "x"),
            ("compression.type", "brotli"),
        ] {
            let o: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into_iter().collect();
            assert!(settings(&b, &o).is_err(), "{k}={v} accepted");
        }
        let d = describe(&b, &o);
        assert_eq!(d.len(), TOPIC_CONFIGS.len());
    }

    /// cleanup.policy: delete, compact, or both in either order; compact asks for keys.
    #[test]
    fn cleanup_policies() {
        let b = BrokerConfig::default();
        for (v, compacted) in [
            ("delete", false),
            ("compact", true),
            ("delete,compact", true),
            ("compact, delete", true),
        ] {
            let o: BTreeMap<String, String> = [("cleanup.policy".to_string(), v.to_string())].into_iter().collect();
            assert_eq!(settings(&b, &o).unwrap().compacted, compacted, "{v}");
        }
        for v in ["", "compact,shred", "none"] {
            let o: BTreeMap<String, String> = [("cleanup.policy".to_string(), v.to_string())].into_iter().collect();
            assert!(settings(&b, &o).is_err(), "{v:?} accepted");
        }
    }

    /// Topic names follow Kafka's rules.
    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
