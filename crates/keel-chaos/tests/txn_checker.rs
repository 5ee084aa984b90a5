//! The transaction checker on hand-made histories: a clean one, and one per anomaly.

use std::collections::BTreeMap;

use keel_chaos::{check, check_transactions, Anomaly, Event, Outcome};

fn txn(txn: u64, records: &[(i32, &str)], commit: bool, outcome: Outcome) -> Event {
    Event::Txn {
        process: 1,
        txn,
        records: records.iter().map(|(p, v)| (*p, v.to_string())).collect(),
        commit,
        invoke_ms: txn * 10,
        complete_ms: txn * 10 + 5,
        outcome,
    }
}

fn ok() -> Outcome {
    Outcome::Ok { offset: None }
}

fn unknown() -> Outcome {
    Outcome::Unknown {
        error: "timed out".into(),
    }
}

fn committed(records: &[(i32, i64, &str)]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut m: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, o, v) in records {
        m.entry(*p).or_default().push((*o, v.to_string()));
    }
    m
}

fn judge(history: &[Event], view: &BTreeMap<i32, Vec<(i64, String)>>) -> keel_chaos::Verdict {
    let mut v = check(history, &BTreeMap::new());
    check_transactions(history, view, &mut v);
    v
}

/// Committed transactions whole, aborted ones absent, an unknown commit either way.
#[test]
fn a_clean_transactional_history_is_valid() {
    let h = vec![
        txn(1, &[(0, "a1"), (1, "a2")], true, ok()),
        txn(2, &[(0, "b1")], false, ok()),
        txn(3, &[(1, "c1"), (0, "c2")], true, unknown()),
        txn(4, &[(1, "d1")], true, unknown()),
    ];
    let view = committed(&[(0, 0, "a1"), (1, 0, "a2"), (1, 3, "c1"), (0, 4, "c2")]);
    let v = judge(&h, &view);
    assert!(v.valid, "{:?}", v.anomalies);
    assert_eq!((v.transactions_committed, v.transactions_aborted), (1, 1));
}

/// A committed transaction's record missing is a lost commit.
#[test]
fn a_lost_commit_is_caught() {
    let h = vec![txn(1, &[(0, "a1"), (1, "a2")], true, ok())];
    let v = judge(&h, &committed(&[(0, 0, "a1")]));
    assert!(!v.valid);
    assert!(matches!(&v.anomalies[..], [Anomaly::LostCommit { value, .. }] if value == "a2"));
}

/// An aborted transaction's record in the committed view, or in a read_committed read
/// during the run, is an aborted read.
#[test]
fn aborted_reads_are_caught() {
    let h = vec![txn(1, &[(0, "x1")], false, ok())];
    let v = judge(&h, &committed(&[(0, 5, "x1")]));
    assert!(matches!(&v.anomalies[..], [Anomaly::AbortedRead { offset: 5, .. }]));
    let h = vec![
        txn(1, &[(0, "x1")], false, ok()),
        Event::TxnRead {
            process: 2,
            partition: 0,
            records: vec![(7, "x1".into())],
            invoke_ms: 1,
            complete_ms: 2,
        },
    ];
    let v = judge(&h, &committed(&[]));
    assert!(matches!(&v.anomalies[..], [Anomaly::AbortedRead { offset: 7, .. }]));
}

/// A transaction of unknown outcome found in part is torn.
#[test]
fn a_torn_transaction_is_caught() {
    let h = vec![txn(1, &[(0, "t1"), (1, "t2"), (2, "t3")], true, unknown())];
    let v = judge(&h, &committed(&[(1, 0, "t2")]));
    assert!(!v.valid);
    match &v.anomalies[..] {
        [Anomaly::TornTransaction { present, missing, .. }] => {
            assert_eq!(present, &vec![(1, "t2".to_string())]);
            assert_eq!(missing.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

/// A committed record twice, or one no transaction wrote, is caught.
#[test]
fn duplicate_and_phantom_commits_are_caught() {
    let h = vec![txn(1, &[(0, "d1")], true, ok())];
    let v = judge(&h, &committed(&[(0, 0, "d1"), (0, 3, "d1"), (0, 4, "ghost")]));
    assert!(v
        .anomalies
        .iter()
        .any(|a| matches!(a, Anomaly::DuplicateCommit { offsets, .. } if offsets == &vec![0, 3])));
    assert!(v
        .anomalies
        .iter()
        .any(|a| matches!(a, Anomaly::Phantom { value, .. } if value == "ghost")));
}
