//! The cleaner's pure core against random logs: keys, values, tombstones, keyless records,
//! idempotent producers and committed and aborted transactions.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use keel_log::Entry;
use keel_proto::batch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::cluster::txn_index::TxnIndex;

/// One record as written, for the oracle.
#[derive(Debug, Clone)]
struct Written {
    offset: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    /// Producer id of a transactional record.
    txn: Option<i64>,
}

struct Log {
    entries: Vec<Entry>,
    written: Vec<Written>,
    index: TxnIndex,
    next_offset: i64,
    /// Base offset and producer id of every idempotent batch.
    producer_batches: Vec<(i64, i64)>,
}

fn encode(
    records: &[(Option<Bytes>, Option<Bytes>)],
    producer: Option<(i64, bool, i32)>,
    ts: i64,
    compression: Compression,
) -> Bytes {
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: producer.is_some_and(|p| p.1),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.map(|p| p.0).unwrap_or(-1),
            producer_epoch: if producer.is_some() { 0 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: producer.map(|p| p.2 + i as i32).unwrap_or(-1),
            timestamp: ts,
            key: k.clone(),
            value: v.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A random log of `entries` entries, each of one to three batches.
fn random_log(rng: &mut StdRng, entries: usize, keys: u32) -> Log {
    let mut log = Log {
        entries: Vec::new(),
        written: Vec::new(),
        index: TxnIndex::default(),
        next_offset: 0,
        producer_batches: Vec::new(),
    };
    let mut seq: HashMap<i64, i32> = HashMap::new();
    let mut open: BTreeMap<i64, bool> = BTreeMap::new();
    for i in 0..entries {
        let mut payload = Vec::new();
        let batches = rng.random_range(1..=3);
        let mut offset = log.next_offset;
        let ts = 1_000 + i as i64;
        for _ in 0..batches {
            let kind = rng.random_range(0..10);
            let bytes = if kind == 0 && !open.is_empty() {
                // A marker ends one open transaction.
                let pid = *open.keys().nth(rng.random_range(0..open.len())).unwrap();
                open.remove(&pid);
                let commit = rng.random_bool(0.5);
                let b = batch::encode_control_batch(pid, 0, commit, 1, ts).unwrap();
                log.index.on_marker(pid, 0, commit, 1, offset);
                offset += 1;
                b
            } else {
                let n = rng.random_range(1..=4);
                let records: Vec<(Option<Bytes>, Option<Bytes>)> = (0..n)
                    .map(|_| {
                        let key =
                            (!rng.random_bool(0.05)).then(|| Bytes::from(format!("k{}", rng.random_range(0..keys))));
                        let value = (!rng.random_bool(0.15)).then(|| Bytes::from(format!("v{}", rng.random::<u32>())));
                        (key, value)
                    })
                    .collect();
                // Plain, idempotent, or transactional (producers 100..103).
                let producer = match kind {
                    1..=3 => Some(100 + rng.random_range(0..4i64)),
                    _ => None,
                };
                let transactional = producer.is_some_and(|p| p >= 102);
                let pinfo = producer.map(|p| {
                    let s = seq.entry(p).or_insert(0);
                    let first = *s;
                    *s += n;
                    (p, transactional, first)
                });
                let compression = if rng.random_bool(0.3) {
                    Compression::Lz4
                } else {
                    Compression::None
                };
                let b = encode(&records, pinfo, ts, compression);
                if let Some(p) = producer {
                    log.producer_batches.push((offset, p));
                    if transactional {
                        open.insert(p, true);
                        log.index.on_data(p, 0, true, offset, n as i64);
                    }
                }
                for (j, (key, value)) in records.into_iter().enumerate() {
                    log.written.push(Written {
                        offset: offset + j as i64,
                        key,
                        value,
                        txn: producer.filter(|_| transactional),
                    });
                }
                offset += n as i64;
                b
            };
            payload.extend_from_slice(&bytes);
        }
        let (placed, count, max_ts) = batch::place(Bytes::from(payload), log.next_offset, 1).unwrap();
        log.entries
            .push(Entry::data(i as u64, 1, log.next_offset, count, max_ts, placed));
        log.next_offset += i64::from(count);
    }
    // Transactions still open at the end would hold the LSO: close them.
    for pid in open.keys().copied().collect::<Vec<_>>() {
        let b = batch::encode_control_batch(pid, 0, false, 1, 9_000).unwrap();
        log.index.on_marker(pid, 0, false, 1, log.next_offset);
        let (placed, count, max_ts) = batch::place(b, log.next_offset, 1).unwrap();
        log.entries.push(Entry::data(
            log.entries.len() as u64,
            1,
            log.next_offset,
            count,
            max_ts,
            placed,
        ));
        log.next_offset += i64::from(count);
    }
    log
}

fn aborted_at(index: &TxnIndex, pid: i64, offset: i64) -> bool {
    index
        .aborted_between(i64::MIN, i64::MAX)
        .iter()
        .any(|a| a.producer_id == pid && a.first_offset <= offset && offset < a.last_offset)
}

/// After cleaning, every entry keeps its index, offset and span; a reader from the start
/// sees, in offset order, the latest value of every live key, no superseded record, no
/// aborted record, every keyless record, and tombstones only while they are young; each
/// idempotent producer's last batch is still there; and cleaning again changes nothing.
#[test]
fn cleaned_logs_keep_the_latest_of_every_key() {
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = rng.random_range(1..12);
        let n = rng.random_range(1..40);
        let log = random_log(&mut rng, n, keys);
        let aborted = log.index.aborted_between(i64::MIN, i64::MAX);
        for expire_tombstones in [false, true] {
            let cleaning = Cleaning {
                now_ms: 20_000,
                delete_retention_ms: if expire_tombstones { 1_000 } else { 1_000_000 },
            };
            let mut plan = Plan::new(&aborted);
            for e in &log.entries {
                assert!(plan.feed(e));
            }
            let mut kept_txn = TxnKept::new();
            let cleaned: Vec<Entry> = log
                .entries
                .iter()
                .map(|e| {
                    let mut c = e.clone();
                    if let Some(p) = clean_entry(e, &plan, &cleaning, &mut kept_txn) {
                        c.payload = p;
                    }
                    c
                })
                .collect();
            // Raft's view and the offsets are unchanged; a follower placing a cleaned entry
            // gets the same span.
            let mut seen: Vec<(i64, Option<Bytes>, Option<Bytes>)> = Vec::new();
            let mut last_batch_of: HashMap<i64, i64> = HashMap::new();
            let mut markers_left: Vec<(i64, bool)> = Vec::new();
            for (a, b) in log.entries.iter().zip(&cleaned) {
                assert_eq!((a.index, a.offset, a.offset_count), (b.index, b.offset, b.offset_count));
                let (_, span, _) = batch::place(b.payload.clone(), b.offset, 1).unwrap();
                assert_eq!(span, b.offset_count, "seed {seed}: a cleaned entry's span changed");
                let mut next = b.offset;
                for (pos, h) in batch::batches(&b.payload).map(Result::unwrap) {
                    assert_eq!(h.base_offset, next, "seed {seed}: batches must stay back to back");
                    next += h.offset_span();
                    let raw = b.payload.slice(pos..pos + h.total_len());
                    batch::verify_crc(&raw).unwrap();
                    if h.producer_id >= 0 && !h.is_control() {
                        last_batch_of.insert(h.producer_id, h.base_offset);
                    }
                    if h.is_control() {
                        let commit = batch::control_type(&raw) == Some(batch::CONTROL_COMMIT);
                        markers_left.push((h.producer_id, commit));
                        continue;
                    }
                    for r in batch::decode_records(&raw, 1 << 20).unwrap() {
                        assert!(r.offset >= h.base_offset && r.offset <= h.last_offset());
                        seen.push((r.offset, r.key, r.value));
                    }
                }
            }
            assert!(
                seen.windows(2).all(|w| w[0].0 < w[1].0),
                "seed {seed}: offsets must grow"
            );
            // The oracle.
            let visible: Vec<&Written> = log
                .written
                .iter()
                .filter(|w| !w.txn.is_some_and(|p| aborted_at(&log.index, p, w.offset)))
                .collect();
            let mut latest: HashMap<&Bytes, &Written> = HashMap::new();
            for w in &visible {
                if let Some(k) = &w.key {
                    latest.insert(k, w);
                }
            }
            let seen_at: HashMap<i64, &(i64, Option<Bytes>, Option<Bytes>)> = seen.iter().map(|s| (s.0, s)).collect();
            for w in &log.written {
                let present = seen_at.contains_key(&w.offset);
                let aborted = w.txn.is_some_and(|p| aborted_at(&log.index, p, w.offset));
                let expected = if aborted {
                    false
                } else {
                    match &w.key {
                        None => true,
                        Some(k) => {
                            let is_latest = latest.get(k).is_some_and(|l| l.offset == w.offset);
                            is_latest && !(w.value.is_none() && expire_tombstones)
                        }
                    }
                };
                assert_eq!(
                    present, expected,
                    "seed {seed} (expire {expire_tombstones}): record at {} (key {:?}, value {:?}, aborted {aborted})",
                    w.offset, w.key, w.value
                );
                if present {
                    let (_, k, v) = seen_at[&w.offset];
                    assert_eq!(
                        (k, v),
                        (&w.key, &w.value),
                        "seed {seed}: record at {} changed",
                        w.offset
                    );
                }
            }
            // Markers stay while young; old ones go once nothing of their transaction is
            // left, which is always so for aborted transactions.
            let markers_written = log
                .entries
                .iter()
                .flat_map(|e| {
                    batch::batches(&e.payload)
                        .map(Result::unwrap)
                        .filter(|(_, h)| h.is_control())
                        .collect::<Vec<_>>()
                })
                .count();
            if expire_tombstones {
                assert!(
                    markers_left.iter().all(|(_, commit)| *commit),
                    "seed {seed}: an old ABORT marker outlived its transaction's records"
                );
            } else {
                assert_eq!(markers_left.len(), markers_written, "seed {seed}: a young marker went");
            }
            // Each idempotent producer's last batch keeps its place.
            let mut last_written: HashMap<i64, i64> = HashMap::new();
            for (offset, p) in &log.producer_batches {
                last_written.insert(*p, *offset);
            }
            for (p, offset) in &last_written {
                assert_eq!(
                    last_batch_of.get(p),
                    Some(offset),
                    "seed {seed}: producer {p}'s last batch is gone"
                );
            }
            // Cleaning what is clean changes nothing.
            let mut again = Plan::new(&aborted);
            for e in &cleaned {
                again.feed(e);
            }
            let mut kept_txn = TxnKept::new();
            for e in &cleaned {
                let out = clean_entry(e, &again, &cleaning, &mut kept_txn);
                assert!(
                    out.is_none() || out.as_ref() == Some(&e.payload),
                    "seed {seed}: a second pass changed entry {}",
                    e.index
                );
            }
        }
    }
}
