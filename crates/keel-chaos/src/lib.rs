//! Keel's chaos engineering, the pure parts: what a run records and how it is judged.
//!
//! - [`Event`]: one line of `history.jsonl`: an operation (a produce or a read, with its
//!   invoke and complete times and outcome) or a fault (with its start and end).
//! - [`check`]: the checker. Given the history and the final contents of every partition
//!   (read after the faults stopped and the cluster healed), it reports every anomaly:
//!   acknowledged records lost or moved, records stored twice, two records at one offset,
//!   records read that were never written, records read that later vanished, and the
//!   longest window without an acknowledged write.
//!
//! The process orchestration (`keel chaos run`) lives in the `keel` binary; everything here
//! is deterministic and tested on hand-made histories that contain each anomaly.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Outcome {
    /// Acknowledged (for a produce: at this offset).
    Ok { offset: Option<i64> },
    /// Refused: the record was certainly not written.
    Failed { error: String },
    /// No answer (timeout, connection lost): it may or may not have been written.
    Unknown { error: String },
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Event {
    Produce {
        process: usize,
        partition: i32,
        value: String,
        invoke_ms: u64,
        complete_ms: u64,
        outcome: Outcome,
    },
    /// Records (offset, value) returned by a read of `partition` during the run.
    Read {
        process: usize,
        partition: i32,
        from: i64,
        records: Vec<(i64, String)>,
        invoke_ms: u64,
        complete_ms: u64,
    },
    Fault {
        name: String,
        node: Option<u64>,
        start_ms: u64,
        end_ms: u64,
    },
}

/// One thing the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Anomaly {
    /// Acknowledged, but not in the final log.
    Lost { partition: i32, value: String, offset: i64 },
    /// Acknowledged at one offset, found at another.
    Moved {
        partition: i32,
        value: String,
        acknowledged: i64,
        found: i64,
    },
    /// The same record at more than one offset.
    Duplicate {
        partition: i32,
        value: String,
        offsets: Vec<i64>,
    },
    /// Two different records seen at one offset (by reads during the run or the final log).
    InconsistentOffset {
        partition: i32,
        offset: i64,
        values: Vec<String>,
    },
    /// A record read that no producer ever sent.
    Phantom { partition: i32, value: String, offset: i64 },
    /// A record read during the run that is not in the final log (a dirty read).
    ReadThenVanished { partition: i32, value: String, offset: i64 },
    /// Offsets in the final log that do not increase.
    NonMonotonic { partition: i32, offset: i64, after: i64 },
}

/// The checker's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    pub reads: usize,
    pub anomalies: Vec<Anomaly>,
    /// Longest time, ms, between two acknowledged writes (or from the first invoke).
    pub longest_unavailable_ms: u64,
    /// Longest such window per fault that overlapped it: (fault name, ms).
    pub unavailable_per_fault: Vec<(String, u64)>,
}

/// Judges `history` against the final contents of each partition (offset, value), read
/// after the cluster healed.
pub fn check(history: &[Event], finals: &BTreeMap<i32, Vec<(i64, String)>>) -> Verdict {
    let mut anomalies = Vec::new();
    let (mut acknowledged, mut failed, mut unknown, mut reads) = (0, 0, 0, 0);
    let mut sent: HashSet<(i32, &str)> = HashSet::new();
    for e in history {
        if let Event::Produce { partition, value, .. } = e {
            sent.insert((*partition, value.as_str()));
        }
    }

    // The final log: monotonic offsets, no duplicates, nothing never sent.
    let mut final_at: HashMap<(i32, i64), &str> = HashMap::new();
    let mut final_of: HashMap<(i32, &str), Vec<i64>> = HashMap::new();
    for (p, records) in finals {
        let mut prev: Option<i64> = None;
        for (o, v) in records {
            if let Some(pr) = prev {
                if *o <= pr {
                    anomalies.push(Anomaly::NonMonotonic {
                        partition: *p,
                        offset: *o,
                        after: pr,
                    });
                }
            }
            prev = Some(*o);
            final_at.insert((*p, *o), v.as_str());
            final_of.entry((*p, v.as_str())).or_default().push(*o);
            if !sent.contains(&(*p, v.as_str())) {
                anomalies.push(Anomaly::Phantom {
                    partition: *p,
                    value: v.clone(),
                    offset: *o,
                });
            }
        }
    }
    let mut dups: Vec<_> = final_of.iter().filter(|(_, os)| os.len() > 1).collect();
    dups.sort();
    for ((p, v), offsets) in dups {
        anomalies.push(Anomaly::Duplicate {
            partition: *p,
            value: v.to_string(),
            offsets: offsets.clone(),
        });
    }

    // Acknowledged writes: present, at their offset.
    let mut ack_times: Vec<u64> = Vec::new();
    let mut first_invoke = u64::MAX;
    for e in history {
        let Event::Produce {
            partition,
            value,
            outcome,
            complete_ms,
            invoke_ms,
            ..
        } = e
        else {
            continue;
        };
        first_invoke = first_invoke.min(*invoke_ms);
        match outcome {
            Outcome::Ok { offset } => {
                acknowledged += 1;
                ack_times.push(*complete_ms);
                let found = final_of.get(&(*partition, value.as_str()));
                match (offset, found) {
                    (_, None) => anomalies.push(Anomaly::Lost {
                        partition: *partition,
                        value: value.clone(),
                        offset: offset.unwrap_or(-1),
                    }),
                    (Some(o), Some(found)) if !found.contains(o) => anomalies.push(Anomaly::Moved {
                        partition: *partition,
                        value: value.clone(),
                        acknowledged: *o,
                        found: found.first().copied().unwrap_or(-1),
                    }),
                    _ => {}
                }
            }
            Outcome::Failed { .. } => failed += 1,
            Outcome::Unknown { .. } => unknown += 1,
        }
    }

    // Reads during the run: consistent with each other and with the final log.
    let mut seen_at: BTreeMap<(i32, i64), HashSet<&str>> = BTreeMap::new();
    for e in history {
        let Event::Read { partition, records, .. } = e else {
            continue;
        };
        reads += 1;
        for (o, v) in records {
            seen_at.entry((*partition, *o)).or_default().insert(v.as_str());
            if !sent.contains(&(*partition, v.as_str())) {
                anomalies.push(Anomaly::Phantom {
                    partition: *partition,
                    value: v.clone(),
                    offset: *o,
                });
            } else if final_at.get(&(*partition, *o)) != Some(&v.as_str())
                && !final_of.contains_key(&(*partition, v.as_str()))
            {
                anomalies.push(Anomaly::ReadThenVanished {
                    partition: *partition,
                    value: v.clone(),
                    offset: *o,
                });
            }
        }
    }
    for ((p, o), values) in &seen_at {
        let mut all: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        if let Some(f) = final_at.get(&(*p, *o)) {
            if !values.contains(f) {
                all.push(f.to_string());
            }
        }
        if all.len() > 1 {
            all.sort();
            anomalies.push(Anomaly::InconsistentOffset {
                partition: *p,
                offset: *o,
                values: all,
            });
        }
    }

    // Unavailability: gaps between acknowledgements.
    ack_times.sort_unstable();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut prev = if first_invoke == u64::MAX { 0 } else { first_invoke };
    for t in &ack_times {
        gaps.push((prev, *t));
        prev = *t;
    }
    let longest = gaps.iter().map(|(a, b)| b.saturating_sub(*a)).max().unwrap_or(0);
    let mut per_fault = Vec::new();
    for e in history {
        if let Event::Fault {
            name,
            start_ms,
            end_ms,
            node,
        } = e
        {
            let worst = gaps
                .iter()
                .filter(|(a, b)| *b >= *start_ms && *a <= *end_ms)
                .map(|(a, b)| b.saturating_sub(*a))
                .max()
                .unwrap_or(end_ms.saturating_sub(*start_ms));
            let label = match node {
                Some(n) => format!("{name} node {n} at {start_ms} ms"),
                None => format!("{name} at {start_ms} ms"),
            };
            per_fault.push((label, worst));
        }
    }

    Verdict {
        valid: anomalies.is_empty(),
        acknowledged,
        failed,
        unknown,
        reads,
        anomalies,
        longest_unavailable_ms: longest,
        unavailable_per_fault: per_fault,
    }
}
