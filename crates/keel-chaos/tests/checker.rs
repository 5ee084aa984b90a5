//! The checker on hand-made histories: a clean one passes, and each anomaly is caught.

use std::collections::BTreeMap;

use keel_chaos::{check, Anomaly, Event, Outcome};

fn produce(value: &str, offset: Option<i64>, t: u64) -> Event {
    Event::Produce {
        process: 0,
        partition: 0,
        value: value.into(),
        invoke_ms: t,
        complete_ms: t + 5,
        outcome: match offset {
            Some(o) => Outcome::Ok { offset: Some(o) },
            None => Outcome::Unknown {
                error: "timeout".into(),
            },
        },
    }
}

fn read(records: &[(i64, &str)], t: u64) -> Event {
    Event::Read {
        process: 1,
        partition: 0,
        from: 0,
        records: records.iter().map(|(o, v)| (*o, v.to_string())).collect(),
        invoke_ms: t,
        complete_ms: t + 1,
    }
}

fn finals(records: &[(i64, &str)]) -> BTreeMap<i32, Vec<(i64, String)>> {
    [(0, records.iter().map(|(o, v)| (*o, v.to_string())).collect())]
        .into_iter()
        .collect()
}

fn clean() -> Vec<Event> {
    vec![
        produce("a", Some(0), 0),
        produce("b", Some(1), 10),
        produce("c", None, 20),
        read(&[(0, "a"), (1, "b")], 30),
    ]
}

#[test]
fn a_clean_history_is_valid_and_an_unknown_write_may_land_or_not() {
    let v = check(&clean(), &finals(&[(0, "a"), (1, "b")]));
    assert!(v.valid, "{:?}", v.anomalies);
    assert_eq!((v.acknowledged, v.unknown, v.reads), (2, 1, 1));
    let v = check(&clean(), &finals(&[(0, "a"), (1, "b"), (2, "c")]));
    assert!(v.valid, "{:?}", v.anomalies);
}

#[test]
fn a_lost_write_is_caught() {
    let v = check(&clean(), &finals(&[(0, "a")]));
    assert!(v.anomalies.contains(&Anomaly::Lost {
        partition: 0,
        value: "b".into(),
        offset: 1
    }));
    assert!(!v.valid);
}

#[test]
fn a_moved_write_is_caught() {
    let v = check(&clean(), &finals(&[(0, "a"), (2, "b")]));
    assert!(
        v.anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::Moved { value, acknowledged: 1, found: 2, .. } if value == "b")),
        "{:?}",
        v.anomalies
    );
}

#[test]
fn a_duplicate_is_caught() {
    let v = check(&clean(), &finals(&[(0, "a"), (1, "b"), (2, "b")]));
    assert!(
        v.anomalies.contains(&Anomaly::Duplicate {
            partition: 0,
            value: "b".into(),
            offsets: vec![1, 2]
        }),
        "{:?}",
        v.anomalies
    );
}

#[test]
fn two_records_at_one_offset_are_caught() {
    let mut h = clean();
    h.push(read(&[(1, "c")], 40));
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    assert!(v.anomalies.iter().any(|a| matches!(a, Anomaly::InconsistentOffset { offset: 1, values, .. } if values == &vec!["b".to_string(), "c".to_string()])), "{:?}", v.anomalies);
}

#[test]
fn a_phantom_and_a_dirty_read_are_caught() {
    let mut h = clean();
    h.push(read(&[(2, "never-sent")], 40));
    h.push(read(&[(2, "c")], 50));
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    assert!(
        v.anomalies.contains(&Anomaly::Phantom {
            partition: 0,
            value: "never-sent".into(),
            offset: 2
        }),
        "{:?}",
        v.anomalies
    );
    assert!(
        v.anomalies.contains(&Anomaly::ReadThenVanished {
            partition: 0,
            value: "c".into(),
            offset: 2
        }),
        "{:?}",
        v.anomalies
    );
}

#[test]
fn unavailability_is_the_longest_gap_between_acknowledgements_per_fault() {
    let mut h = vec![
        produce("a", Some(0), 0),
        produce("b", Some(1), 1000),
        produce("c", Some(2), 1100),
    ];
    h.push(Event::Fault {
        name: "kill".into(),
        node: Some(2),
        start_ms: 100,
        end_ms: 200,
    });
    let v = check(&h, &finals(&[(0, "a"), (1, "b"), (2, "c")]));
    assert!(v.valid);
    assert_eq!(v.longest_unavailable_ms, 1000);
    assert_eq!(
        v.unavailable_per_fault,
        vec![("kill node 2 at 100 ms".to_string(), 1000)]
    );
}

#[test]
fn history_lines_round_trip_as_json() {
    for e in clean() {
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}

#[test]
fn the_report_shows_the_verdict_faults_and_anomalies() {
    let mut h = clean();
    h.push(Event::Fault {
        name: "pause".into(),
        node: Some(3),
        start_ms: 5,
        end_ms: 15,
    });
    let v = check(&h, &finals(&[(0, "a")]));
    let html = keel_chaos::report_html(7, &h, &v);
    assert!(html.contains("INVALID"));
    assert!(html.contains("pause node 3"));
    assert!(html.contains("\"kind\":\"lost\""), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report must not fetch anything"
    );
}

fn commit(generation: i32, offset: i64, t: u64, acked: bool) -> Event {
    Event::Commit {
        process: 5,
        group: "g".into(),
        generation,
        partition: 0,
        offset,
        invoke_ms: t,
        complete_ms: t + 5,
        outcome: if acked {
            Outcome::Ok { offset: None }
        } else {
            Outcome::Unknown {
                error: "timeout".into(),
            }
        },
    }
}

fn committed(offset: i64, t: u64) -> Event {
    Event::Committed {
        process: 6,
        group: "g".into(),
        partition: 0,
        offset,
        invoke_ms: t,
        complete_ms: t + 1,
    }
}

#[test]
fn commits_that_only_move_forward_across_generations_are_valid() {
    let mut h = clean();
    h.extend([
        commit(1, 1, 100, true),
        commit(1, 2, 200, true),
        committed(2, 300),
        // A new generation starts from what was committed.
        commit(2, 2, 400, true),
        commit(2, 3, 500, true),
        // A commit with an unknown outcome sets no floor.
        commit(2, 9, 600, false),
        committed(3, 700),
    ]);
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    assert!(v.valid, "{:?}", v.anomalies);
    assert_eq!(v.commits, 4);
}

#[test]
fn a_commit_going_backwards_within_a_generation_is_caught() {
    let mut h = clean();
    h.extend([commit(3, 5, 100, true), commit(3, 4, 200, true)]);
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    assert!(
        v.anomalies.contains(&Anomaly::CommitWentBackwards {
            group: "g".into(),
            partition: 0,
            generation: 3,
            offset: 4,
            after: 5
        }),
        "{:?}",
        v.anomalies
    );
}

#[test]
fn a_committed_offset_read_below_an_acknowledged_commit_is_caught() {
    let mut h = clean();
    // Acknowledged at 105 ms; a read invoked at 150 ms sees an older value (a lost commit).
    h.extend([commit(1, 7, 100, true), committed(3, 150)]);
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    assert!(
        v.anomalies.contains(&Anomaly::CommittedOffsetRegressed {
            group: "g".into(),
            partition: 0,
            acknowledged: 7,
            read: 3,
            read_at_ms: 150
        }),
        "{:?}",
        v.anomalies
    );
    // A read that began before the commit was acknowledged may see the older value.
    let mut h = clean();
    h.extend([commit(1, 7, 100, true), committed(3, 104)]);
    assert!(check(&h, &finals(&[(0, "a"), (1, "b")])).valid);
}

#[test]
fn the_report_draws_a_leader_lane_per_partition() {
    let mut h = clean();
    h.push(Event::Leaders {
        at_ms: 0,
        leaders: vec![(0, Some(1)), (1, None)],
    });
    h.push(Event::Leaders {
        at_ms: 20,
        leaders: vec![(0, Some(2)), (1, Some(3))],
    });
    let v = check(&h, &finals(&[(0, "a"), (1, "b")]));
    let html = keel_chaos::report_html(7, &h, &v);
    assert!(html.contains("p0: node 1 from 0 ms"), "{html}");
    assert!(html.contains("p0: node 2 from 20 ms"));
    assert!(html.contains("p1: node 3 from 20 ms"));
    assert!(!html.contains("p1: node 3 from 0 ms"));
}
