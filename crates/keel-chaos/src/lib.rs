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
    /// A consumer-group member committing `offset` (the next offset to read) for
    /// `partition` as a member of `generation`.
    Commit {
        process: usize,
        group: String,
        generation: i32,
        partition: i32,
        offset: i64,
        invoke_ms: u64,
        complete_ms: u64,
        outcome: Outcome,
    },
    /// The committed offset of `partition` for `group`, as OffsetFetch returned it (-1: none).
    Committed {
        process: usize,
        group: String,
        partition: i32,
        offset: i64,
        invoke_ms: u64,
        complete_ms: u64,
    },
    /// The leader of each partition (None: no leader) as Metadata showed it at `at_ms`.
    Leaders {
        at_ms: u64,
        leaders: Vec<(i32, Option<u64>)>,
    },
    /// A transaction of the transactional workload: the records it wrote (partition,
    /// value) to the transactional topic, whether it was meant to commit, and how its
    /// EndTxn ended (a transaction abandoned after a failed write has `commit: false`).
    Txn {
        process: usize,
        txn: u64,
        records: Vec<(i32, String)>,
        commit: bool,
        invoke_ms: u64,
        complete_ms: u64,
        outcome: Outcome,
    },
    /// Records a `read_committed` read of the transactional topic returned during the run.
    TxnRead {
        process: usize,
        partition: i32,
        records: Vec<(i64, String)>,
        invoke_ms: u64,
        complete_ms: u64,
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
    /// Within one generation, an acknowledged commit lower than one acknowledged before it.
    CommitWentBackwards {
        group: String,
        partition: i32,
        generation: i32,
        offset: i64,
        after: i64,
    },
    /// A `read_committed` reader saw a record of a transaction that was never committed
    /// (aborted, or abandoned).
    AbortedRead {
        partition: i32,
        value: String,
        offset: i64,
        process: usize,
        txn: u64,
    },
    /// A record of a transaction whose commit was acknowledged is not in the final
    /// committed log.
    LostCommit {
        process: usize,
        txn: u64,
        partition: i32,
        value: String,
    },
    /// Part of a transaction is in the final committed log and part is not.
    TornTransaction {
        process: usize,
        txn: u64,
        present: Vec<(i32, String)>,
        missing: Vec<(i32, String)>,
    },
    /// A transaction's record more than once in the final committed log.
    DuplicateCommit {
        partition: i32,
        value: String,
        offsets: Vec<i64>,
    },
    /// A committed offset read (or committed) after a higher commit had been acknowledged:
    /// the group's committed position went backwards.
    CommittedOffsetRegressed {
        group: String,
        partition: i32,
        acknowledged: i64,
        read: i64,
        read_at_ms: u64,
    },
}

/// The checker's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    pub reads: usize,
    /// Consumer-group commits acknowledged.
    #[serde(default)]
    pub commits: usize,
    /// Transactions whose commit was acknowledged.
    #[serde(default)]
    pub transactions_committed: usize,
    /// Transactions aborted (or abandoned).
    #[serde(default)]
    pub transactions_aborted: usize,
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

    let commits = check_commits(history, &mut anomalies);

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
        commits,
        transactions_committed: 0,
        transactions_aborted: 0,
        anomalies,
        longest_unavailable_ms: longest,
        unavailable_per_fault: per_fault,
    }
}

/// Judges the transactional workload: `committed` is the final `read_committed` view of the
/// transactional topic (offset, value) per partition, read after the cluster healed and
/// every transaction ended. Every record of a transaction whose commit was acknowledged is
/// there once; no record of a transaction not meant to commit is there or was read during
/// the run; a transaction whose commit is unknown is there whole or not at all; nothing is
/// there that no transaction wrote. Adds its counts and anomalies to `verdict`.
pub fn check_transactions(history: &[Event], committed: &BTreeMap<i32, Vec<(i64, String)>>, verdict: &mut Verdict) {
    let mut anomalies = Vec::new();
    // value -> (process, txn, committing)
    let mut owner: HashMap<(i32, &str), (usize, u64, bool, bool)> = HashMap::new();
    for e in history {
        if let Event::Txn {
            process,
            txn,
            records,
            commit,
            outcome,
            ..
        } = e
        {
            let acked = matches!(outcome, Outcome::Ok { .. });
            if *commit && acked {
                verdict.transactions_committed += 1;
            } else if !*commit {
                verdict.transactions_aborted += 1;
            }
            for (p, v) in records {
                owner.insert((*p, v.as_str()), (*process, *txn, *commit, acked));
            }
        }
    }
    let mut found: HashMap<(i32, &str), Vec<i64>> = HashMap::new();
    for (p, records) in committed {
        for (o, v) in records {
            found.entry((*p, v.as_str())).or_default().push(*o);
            match owner.get(&(*p, v.as_str())) {
                None => anomalies.push(Anomaly::Phantom {
                    partition: *p,
                    value: v.clone(),
                    offset: *o,
                }),
                Some((process, txn, false, _)) => anomalies.push(Anomaly::AbortedRead {
                    partition: *p,
                    value: v.clone(),
                    offset: *o,
                    process: *process,
                    txn: *txn,
                }),
                Some(_) => {}
            }
        }
    }
    let mut dups: Vec<_> = found.iter().filter(|(_, os)| os.len() > 1).collect();
    dups.sort();
    for ((p, v), offsets) in dups {
        anomalies.push(Anomaly::DuplicateCommit {
            partition: *p,
            value: v.to_string(),
            offsets: offsets.clone(),
        });
    }
    for e in history {
        match e {
            Event::Txn {
                process,
                txn,
                records,
                commit: true,
                outcome,
                ..
            } => {
                type Records<'a> = Vec<&'a (i32, String)>;
                let (present, missing): (Records, Records) =
                    records.iter().partition(|(p, v)| found.contains_key(&(*p, v.as_str())));
                if matches!(outcome, Outcome::Ok { .. }) {
                    for (p, v) in missing.iter().copied() {
                        anomalies.push(Anomaly::LostCommit {
                            process: *process,
                            txn: *txn,
                            partition: *p,
                            value: v.clone(),
                        });
                    }
                } else if !present.is_empty() && !missing.is_empty() {
                    anomalies.push(Anomaly::TornTransaction {
                        process: *process,
                        txn: *txn,
                        present: present.into_iter().cloned().collect(),
                        missing: missing.into_iter().cloned().collect(),
                    });
                }
            }
            Event::TxnRead { partition, records, .. } => {
                for (o, v) in records {
                    if let Some((process, txn, false, _)) = owner.get(&(*partition, v.as_str())) {
                        anomalies.push(Anomaly::AbortedRead {
                            partition: *partition,
                            value: v.clone(),
                            offset: *o,
                            process: *process,
                            txn: *txn,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    verdict.valid &= anomalies.is_empty();
    verdict.anomalies.extend(anomalies);
}

/// Committed offsets never go backwards: within a generation, acknowledged commits of a
/// partition (in completion order) do not decrease; and no committed offset read, or commit
/// acknowledged, after a commit was acknowledged is lower than it. Returns the number of
/// acknowledged commits. A commit with an unknown outcome sets no floor: it may never land.
/// An acknowledged commit: (complete_ms, offset, generation).
type AckedCommit = (u64, i64, i32);

fn check_commits(history: &[Event], anomalies: &mut Vec<Anomaly>) -> usize {
    // (group, partition) -> acknowledged commits as (complete_ms, offset, generation).
    let mut acked: BTreeMap<(&str, i32), Vec<AckedCommit>> = BTreeMap::new();
    // (group, partition) -> observations as (invoke_ms, offset): reads and acked commits.
    let mut seen: BTreeMap<(&str, i32), Vec<(u64, i64)>> = BTreeMap::new();
    for e in history {
        match e {
            Event::Commit {
                group,
                generation,
                partition,
                offset,
                invoke_ms,
                complete_ms,
                outcome: Outcome::Ok { .. },
                ..
            } => {
                acked
                    .entry((group.as_str(), *partition))
                    .or_default()
                    .push((*complete_ms, *offset, *generation));
                seen.entry((group.as_str(), *partition))
                    .or_default()
                    .push((*invoke_ms, *offset));
            }
            Event::Committed {
                group,
                partition,
                offset,
                invoke_ms,
                ..
            } => seen
                .entry((group.as_str(), *partition))
                .or_default()
                .push((*invoke_ms, *offset)),
            _ => {}
        }
    }
    let mut count = 0;
    for ((group, partition), commits) in &mut acked {
        count += commits.len();
        commits.sort_unstable();
        let mut last_in_gen: HashMap<i32, i64> = HashMap::new();
        for (_, offset, generation) in commits.iter() {
            if let Some(prev) = last_in_gen.get(generation) {
                if offset < prev {
                    anomalies.push(Anomaly::CommitWentBackwards {
                        group: group.to_string(),
                        partition: *partition,
                        generation: *generation,
                        offset: *offset,
                        after: *prev,
                    });
                }
            }
            last_in_gen.insert(*generation, *offset);
        }
        // Sweep observations by invoke time; the floor is the highest commit acknowledged
        // before the observation began.
        let mut obs = seen.remove(&(*group, *partition)).unwrap_or_default();
        obs.sort_unstable();
        let (mut floor, mut i) = (i64::MIN, 0);
        for (at, read) in obs {
            while i < commits.len() && commits[i].0 < at {
                floor = floor.max(commits[i].1);
                i += 1;
            }
            if read < floor {
                anomalies.push(Anomaly::CommittedOffsetRegressed {
                    group: group.to_string(),
                    partition: *partition,
                    acknowledged: floor,
                    read,
                    read_at_ms: at,
                });
            }
        }
    }
    count
}

/// A self-contained HTML report (no network needed to view it): the verdict, a timeline of
/// acknowledged writes per second and the slowest acknowledgement per second with the faults
/// drawn as bands, the unavailability per fault, and every anomaly.
pub fn report_html(seed: u64, history: &[Event], verdict: &Verdict) -> String {
    let end_ms = history
        .iter()
        .map(|e| match e {
            Event::Produce { complete_ms, .. }
            | Event::Read { complete_ms, .. }
            | Event::Commit { complete_ms, .. }
            | Event::Committed { complete_ms, .. }
            | Event::Txn { complete_ms, .. }
            | Event::TxnRead { complete_ms, .. } => *complete_ms,
            Event::Fault { end_ms, .. } => *end_ms,
            Event::Leaders { at_ms, .. } => *at_ms,
        })
        .max()
        .unwrap_or(0);
    let seconds = (end_ms / 1000 + 1) as usize;
    let mut acks = vec![0u64; seconds];
    let mut slowest = vec![0u64; seconds];
    for e in history {
        if let Event::Produce {
            invoke_ms,
            complete_ms,
            outcome: Outcome::Ok { .. },
            ..
        } = e
        {
            let s = (*complete_ms / 1000) as usize;
            if let Some(a) = acks.get_mut(s) {
                *a += 1;
            }
            if let Some(m) = slowest.get_mut(s) {
                *m = (*m).max(complete_ms.saturating_sub(*invoke_ms));
            }
        }
    }
    let (w, h) = (900.0f64, 160.0f64);
    let x = |ms: f64| ms / (end_ms.max(1) as f64) * w;
    let mut bands = String::new();
    for e in history {
        if let Event::Fault {
            name,
            node,
            start_ms,
            end_ms: fe,
            ..
        } = e
        {
            let color = fault_color(name);
            bands.push_str(&format!(
                "<rect x='{:.1}' y='0' width='{:.1}' height='{h}' fill='{color}' opacity='0.6'><title>{name} node {}</title></rect>",
                x(*start_ms as f64),
                (x(*fe as f64) - x(*start_ms as f64)).max(1.0),
                node.map(|n| n.to_string()).unwrap_or_default()
            ));
        }
    }
    let bars = |values: &[u64], color: &str| {
        let max = values.iter().copied().max().unwrap_or(1).max(1) as f64;
        let bw = w / values.len().max(1) as f64;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let bh = *v as f64 / max * (h - 10.0);
                format!(
                    "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{color}'><title>{i} s: {v}</title></rect>",
                    i as f64 * bw,
                    h - bh,
                    (bw - 1.0).max(0.5),
                    bh
                )
            })
            .collect::<String>()
    };
    let lanes = leader_lanes(history, end_ms, w);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let faults_rows: String = verdict
        .unavailable_per_fault
        .iter()
        .map(|(f, ms)| format!("<tr><td>{}</td><td>{ms}</td></tr>", esc(f)))
        .collect();
    let anomaly_rows: String = if verdict.anomalies.is_empty() {
        "<tr><td>none</td></tr>".to_string()
    } else {
        verdict
            .anomalies
            .iter()
            .map(|a| {
                format!(
                    "<tr><td><code>{}</code></td></tr>",
                    esc(&serde_json::to_string(a).unwrap_or_default())
                )
            })
            .collect()
    };
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>keel chaos seed {seed}</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:960px}} .ok{{color:#196c2e}} .bad{{color:#b00020}} \
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} svg{{border:1px solid #ddd}}</style>\
</head><body><h1>keel chaos, seed {seed}: <span class='{cls}'>{word}</span></h1>\
<p>{ack} acknowledged writes, {failed} refused, {unknown} with unknown outcome, {reads} reads, \
{commits} acknowledged consumer-group commits, {n} anomalies. \
Longest time without an acknowledged write: {longest} ms.</p>\
<h2>Acknowledged writes per second</h2><p>Bands: kill (red), pause (yellow), network partition or bridge (blue), \
slow links (green), corrupted segment (grey), full disk (purple). Hover for details.</p>\
<svg width='{w}' height='{h}'>{bands}{ack_bars}</svg>\
<h2>Slowest acknowledgement in each second (ms)</h2><svg width='{w}' height='{h}'>{bands}{lat_bars}</svg>\
<h2>Leader of each partition</h2><p>One lane per partition, coloured by the node Metadata named as its leader; \
white where it named none.</p>{lanes}\
<h2>Unavailability per fault (ms without an acknowledged write)</h2><table><tr><th>fault</th><th>ms</th></tr>{faults_rows}</table>\
<h2>Anomalies</h2><table>{anomaly_rows}</table></body></html>\n",
        cls = if verdict.valid { "ok" } else { "bad" },
        word = if verdict.valid { "valid" } else { "INVALID" },
        ack = verdict.acknowledged,
        failed = verdict.failed,
        unknown = verdict.unknown,
        reads = verdict.reads,
        commits = verdict.commits,
        n = verdict.anomalies.len(),
        longest = verdict.longest_unavailable_ms,
        ack_bars = bars(&acks, "#2e7d32"),
        lat_bars = bars(&slowest, "#6a1b9a"),
    )
}

fn fault_color(name: &str) -> &'static str {
    match name {
        "kill" => "#f4a3a3",
        "power-loss" => "#e07b7b",
        "pause" => "#f7d48b",
        "slow" => "#b7e4b0",
        "corrupt" => "#c8c8c8",
        "disk-full" => "#d6b4f0",
        "move" => "#f0c0a0",
        _ => "#a9c8f5",
    }
}

/// When a Metadata was read, and each partition's leader in it.
type LeaderSample<'a> = (u64, &'a [(i32, Option<u64>)]);

/// The leader-per-partition lanes: an SVG with one row per partition, each stretch of time
/// coloured by the leader the last Metadata before it named.
fn leader_lanes(history: &[Event], end_ms: u64, w: f64) -> String {
    const PALETTE: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let mut samples: Vec<LeaderSample> = history
        .iter()
        .filter_map(|e| match e {
            Event::Leaders { at_ms, leaders } => Some((*at_ms, leaders.as_slice())),
            _ => None,
        })
        .collect();
    samples.sort_by_key(|(t, _)| *t);
    let mut partitions: Vec<i32> = samples.iter().flat_map(|(_, l)| l.iter().map(|(p, _)| *p)).collect();
    partitions.sort_unstable();
    partitions.dedup();
    if partitions.is_empty() {
        return "<p>No leader samples.</p>".to_string();
    }
    let lane_h = 16.0;
    let x = |ms: u64| ms as f64 / (end_ms.max(1) as f64) * w;
    let mut rects = String::new();
    let mut nodes: Vec<u64> = Vec::new();
    for (row, p) in partitions.iter().enumerate() {
        let y = row as f64 * lane_h;
        rects.push_str(&format!(
            "<text x='2' y='{:.1}' font-size='11'>p{p}</text>",
            y + lane_h - 4.0
        ));
        for (i, (t, leaders)) in samples.iter().enumerate() {
            let until = samples.get(i + 1).map(|(t, _)| *t).unwrap_or(end_ms);
            let Some(Some(node)) = leaders.iter().find(|(q, _)| q == p).map(|(_, l)| *l) else {
                continue;
            };
            if !nodes.contains(&node) {
                nodes.push(node);
            }
            let color = PALETTE[(node as usize) % PALETTE.len()];
            rects.push_str(&format!(
                "<rect x='{:.1}' y='{y:.1}' width='{:.1}' height='{:.1}' fill='{color}'><title>p{p}: node {node} from {t} ms</title></rect>",
                30.0 + x(*t) * (w - 30.0) / w,
                ((x(until) - x(*t)) * (w - 30.0) / w).max(0.5),
                lane_h - 2.0
            ));
        }
    }
    nodes.sort_unstable();
    let legend: String = nodes
        .iter()
        .map(|n| {
            format!(
                "<span style='color:{}'>&#9632; node {n}</span> ",
                PALETTE[(*n as usize) % PALETTE.len()]
            )
        })
        .collect();
    format!(
        "<svg width='{w}' height='{:.0}'>{rects}</svg><p>{legend}</p>",
        partitions.len() as f64 * lane_h
    )
}
