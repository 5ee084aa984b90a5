//! The behavioural test suite every [`LogStore`] passes.
//!
//! Each check takes a fresh, empty log from the factory. Call [`run_all`] from the
//! implementation's tests; a failing check panics with its name.

// Test support: a failed check is meant to panic.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use bytes::Bytes;

use crate::entry::{Entry, EntryKind};
use crate::{LogError, LogStore};

/// A data entry at `index` with `count` offsets from `offset`, a payload of `len` bytes and
/// timestamp `ts`.
pub fn data(index: u64, offset: i64, count: u32, ts: i64, len: usize) -> Entry {
    let payload = Bytes::from((0..len).map(|i| (i as u64 ^ index) as u8).collect::<Vec<u8>>());
    Entry::data(index, 1, offset, count, ts, payload)
}

/// Appends `n` data entries of 10 offsets and 100 bytes each, timestamps 1000 + 10*i.
pub fn fill<L: LogStore>(log: &mut L, n: u64) {
    for _ in 0..n {
        let i = log.next_index();
        let off = log.next_offset();
        log.append(&data(i, off, 10, 1000 + 10 * i as i64, 100))
            .expect("append");
    }
}

/// Runs every check.
pub fn run_all<L: LogStore>(mut make: impl FnMut() -> L) {
    append_and_read(make());
    non_contiguous_refused(make());
    read_by_offset(make());
    non_data_entries(make());
    read_budget(make());
    truncate_after(make());
    purge_before(make());
    time_lookup(make());
    poison_refuses_writes(make());
}

/// Appended entries read back identical, in order, from any index.
pub fn append_and_read<L: LogStore>(mut log: L) {
    assert_eq!(log.next_index(), log.first_index());
    fill(&mut log, 50);
    assert_eq!(log.next_index(), 50);
    assert_eq!(log.next_offset(), 500);
    let all = log.read(0, usize::MAX).expect("read");
    assert_eq!(all.len(), 50, "append_and_read: all entries");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            *e,
            data(i as u64, 10 * i as i64, 10, 1000 + 10 * i as i64, 100),
            "append_and_read: entry {i}"
        );
    }
    let tail = log.read(37, usize::MAX).expect("read");
    assert_eq!(tail.first().map(|e| e.index), Some(37));
    assert!(
        log.read(50, usize::MAX).expect("read").is_empty(),
        "append_and_read: read at end is empty"
    );
    log.sync().expect("sync");
}

/// Appends that skip or repeat an index, or move offsets backwards, are refused.
pub fn non_contiguous_refused<L: LogStore>(mut log: L) {
    fill(&mut log, 3);
    assert!(matches!(
        log.append(&data(5, 30, 1, 0, 1)),
        Err(LogError::NonContiguous { .. })
    ));
    assert!(matches!(
        log.append(&data(2, 30, 1, 0, 1)),
        Err(LogError::NonContiguous { .. })
    ));
    assert!(matches!(
        log.append(&data(3, 29, 1, 0, 1)),
        Err(LogError::OffsetRegression { .. })
    ));
    assert_eq!(log.next_index(), 3);
}

/// Reading by offset starts at the entry covering that offset.
pub fn read_by_offset<L: LogStore>(mut log: L) {
    fill(&mut log, 20);
    for off in [0i64, 5, 9, 10, 99, 100, 199] {
        let got = log.read_from_offset(off, 1).expect("read");
        let first = got.first().expect("an entry");
        assert!(
            first.offset <= off && off < first.next_offset(),
            "read_by_offset {off}: got {}",
            first.offset
        );
    }
    assert!(log.read_from_offset(200, 1000).expect("read").is_empty());
}

/// Non-data entries take an index but no offsets, and are skipped by offset reads.
pub fn non_data_entries<L: LogStore>(mut log: L) {
    fill(&mut log, 2);
    log.append(&Entry::control(2, 2, EntryKind::Blank, 20, Bytes::new()))
        .expect("blank");
    log.append(&Entry::control(
        3,
        2,
        EntryKind::Membership,
        20,
        Bytes::from_static(b"{1,2,3}"),
    ))
    .expect("membership");
    fill(&mut log, 1);
    assert_eq!(log.next_offset(), 30);
    assert_eq!(log.last_term(), Some(1));
    let by_index = log.read(2, usize::MAX).expect("read");
    assert_eq!(
        by_index.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EntryKind::Blank, EntryKind::Membership, EntryKind::Data]
    );
    assert_eq!(
        by_index.get(1).map(|e| e.payload.clone()),
        Some(Bytes::from_static(b"{1,2,3}"))
    );
    let by_offset = log.read_from_offset(20, usize::MAX).expect("read");
    assert_eq!(by_offset.iter().map(|e| e.index).collect::<Vec<_>>(), vec![4]);
}

/// `max_bytes` bounds a read, but the first entry always comes whole.
pub fn read_budget<L: LogStore>(mut log: L) {
    fill(&mut log, 10);
    assert_eq!(log.read(0, 1).expect("read").len(), 1);
    assert_eq!(log.read(0, 250).expect("read").len(), 2);
    assert_eq!(log.read(0, 300).expect("read").len(), 3);
}

/// `truncate_after` drops the tail and the log continues from there.
pub fn truncate_after<L: LogStore>(mut log: L) {
    fill(&mut log, 30);
    log.truncate_after(11).expect("truncate");
    assert_eq!(log.next_index(), 12);
    assert_eq!(log.next_offset(), 120);
    assert_eq!(log.read(0, usize::MAX).expect("read").len(), 12);
    fill(&mut log, 3);
    let tail = log.read(11, usize::MAX).expect("read");
    assert_eq!(tail.iter().map(|e| e.index).collect::<Vec<_>>(), vec![11, 12, 13, 14]);
    assert_eq!(tail.last().map(|e| e.offset), Some(140));
    log.truncate_after(100).expect("truncate past end is a no-op");
    assert_eq!(log.next_index(), 15);
}

/// `purge_before` removes a prefix (never past the given index) and reads below fail.
pub fn purge_before<L: LogStore>(mut log: L) {
    fill(&mut log, 40);
    log.purge_before(20).expect("purge");
    assert!(log.first_index() <= 20, "purged past the requested index");
    assert!(log.start_offset() <= 200);
    assert_eq!(log.next_index(), 40);
    let first = log.first_index();
    assert_eq!(
        log.read(first, usize::MAX).expect("read").first().map(|e| e.index),
        Some(first)
    );
    if first > 0 {
        assert!(matches!(log.read(first - 1, 10), Err(LogError::OutOfRange(_))));
    }
}

/// The first data entry with a timestamp at or after the target is found.
pub fn time_lookup<L: LogStore>(mut log: L) {
    fill(&mut log, 30);
    let e = log.entry_for_timestamp(1055).expect("lookup").expect("found");
    assert_eq!(e.index, 6);
    assert_eq!(log.entry_for_timestamp(0).expect("lookup").map(|e| e.index), Some(0));
    assert!(log.entry_for_timestamp(5000).expect("lookup").is_none());
}

/// A poisoned log refuses appends, truncation and syncs with the reason.
pub fn poison_refuses_writes<L: LogStore>(mut log: L) {
    fill(&mut log, 2);
    log.poison("disk said EIO".into());
    assert!(matches!(log.append(&data(2, 20, 1, 0, 1)), Err(LogError::Poisoned(r)) if r.contains("EIO")));
    assert!(matches!(log.sync(), Err(LogError::Poisoned(_))));
    assert!(matches!(log.truncate_after(0), Err(LogError::Poisoned(_))));
    assert_eq!(log.read(0, usize::MAX).expect("reads still work").len(), 2);
}
