//! The shared log suite against every implementation, and the on-disk log's recovery.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_log::suite::{self, fill};
use keel_log::{DiskLog, LogConfig, LogStore, MemLog};

/// Small segments so every check crosses segment boundaries.
fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().map(|x| x == "log").unwrap_or(false))
        .collect();
    v.sort();
    v
}

/// The in-memory log passes the shared suite.
#[test]
fn mem_log_passes_suite() {
    suite::run_all(|| MemLog::new(small()));
}

/// The on-disk log passes the shared suite with small segments, and with the default size.
#[test]
fn disk_log_passes_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    suite::run_all(|| {
        n += 1;
        DiskLog::open(&tmp.path().join(format!("small{n}")), small()).unwrap()
    });
    suite::run_all(|| {
        n += 1;
        DiskLog::open(&tmp.path().join(format!("big{n}")), LogConfig::default()).unwrap()
    });
}

/// The on-disk log passes the suite again after being closed and reopened mid-way.
#[test]
fn reopened_log_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), small()).unwrap();
        fill(&mut log, 40);
        log.sync().unwrap();
    }
    let mut log = DiskLog::open(tmp.path(), small()).unwrap();
    assert!(log.segment_count() > 3);
    assert_eq!((log.next_index(), log.next_offset()), (40, 400));
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 40);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(*e, suite::data(i as u64, 10 * i as i64, 10, 1000 + 10 * i as i64, 100));
    }
    fill(&mut log, 5);
    assert_eq!(log.read(44, 10).unwrap()[0].offset, 440);
}

/// A torn write at the tail (a partial last entry) is cut off at open; every complete
/// entry before it survives and the log appends after it.
#[test]
fn recovery_cuts_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
        fill(&mut log, 10);
        log.sync().unwrap();
    }
    let seg = segment_files(tmp.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Chop the last entry in half.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 70)
        .unwrap();
    let mut log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!((log.next_index(), log.next_offset()), (9, 90));
    assert_eq!(log.damaged_through(), None, "a torn tail is not damage");
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 9);
    fill(&mut log, 1);
    assert_eq!(log.read(9, 10).unwrap()[0].offset, 90);
    let dropped: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("dropped"))
        .collect();
    assert_eq!(dropped.len(), 1, "the cut bytes are kept beside the segment");
}

/// A flipped byte inside the active segment is detected by the CRC at open; the log is
/// truncated to the last valid entry before it, and nothing damaged is ever served.
#[test]
fn recovery_detects_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
        fill(&mut log, 10);
        log.sync().unwrap();
    }
    let seg = segment_files(tmp.path()).pop().unwrap();
    let entry_len = 48 + 100;
    let f = OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    let mut b = [0u8; 1];
    let at = (entry_len * 6 + 60) as u64; // inside entry 6's payload
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    drop(f);
    let log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!(log.next_index(), 6);
    // Entries 7-9 were intact behind the damage: this was no torn tail, and the log says
    // how far it reached (the replica may have acknowledged up to there).
    assert_eq!(log.damaged_through(), Some(9));
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 6);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| *e == suite::data(i as u64, 10 * i as i64, 10, 1000 + 10 * i as i64, 100)));
}

/// When the damaged entry's length field itself is hit, the entries after it are still
/// found (by searching the cut bytes), so the damage is not mistaken for a torn tail.
#[test]
fn damage_to_a_length_field_is_still_told_from_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
        fill(&mut log, 10);
        log.sync().unwrap();
    }
    let seg = segment_files(tmp.path()).pop().unwrap();
    let entry_len = 48 + 100;
    let f = OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    f.write_all_at(&[0x7f], (entry_len * 3) as u64).unwrap(); // entry 3's length, high byte
    drop(f);
    let log = DiskLog::open(tmp.path(), LogConfig::default()).unwrap();
    assert_eq!(log.next_index(), 3);
    assert_eq!(log.damaged_through(), Some(9));
}

/// A flipped byte in a closed segment is never served: the read reports corruption.
#[test]
fn corrupt_closed_segment_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = DiskLog::open(tmp.path(), small()).unwrap();
    fill(&mut log, 30);
    log.sync().unwrap();
    let first = segment_files(tmp.path()).remove(0);
    let f = OpenOptions::new().read(true).write(true).open(&first).unwrap();
    f.write_all_at(&[0xff], 200).unwrap();
    drop(f);
    let err = log.read(0, usize::MAX).unwrap_err();
    assert!(matches!(err, keel_log::LogError::Corrupt { .. }), "got {err:?}");
    drop(log);
    let log = DiskLog::open(tmp.path(), small()).unwrap();
    assert!(log.read(0, usize::MAX).is_err(), "still refused after reopen");
    assert_eq!(log.next_index(), 30, "later segments are intact");
    assert!(log.read(20, usize::MAX).unwrap().len() == 10);
}

/// Missing or garbage index files are rebuilt by a scan, and lookups still find entries.
#[test]
fn missing_or_bad_index_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), small()).unwrap();
        fill(&mut log, 40);
    }
    let mut removed = 0;
    for ent in std::fs::read_dir(tmp.path()).unwrap() {
        let p = ent.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".index") {
            if removed % 2 == 0 {
                std::fs::remove_file(&p).unwrap();
            } else {
                std::fs::write(&p, b"garbage!").unwrap();
            }
            removed += 1;
        }
    }
    assert!(removed >= 2);
    let log = DiskLog::open(tmp.path(), small()).unwrap();
    for off in [0i64, 55, 123, 399] {
        let e = &log.read_from_offset(off, 1).unwrap()[0];
        assert!(e.offset <= off && off < e.next_offset());
    }
    assert_eq!(log.entry_for_timestamp(1255).unwrap().unwrap().index, 26);
}

/// Retention by size deletes whole oldest segments; by time, segments whose newest record
/// is older than the limit. The active segment is never deleted.
#[test]
fn retention_by_size_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(3000),
        retention_ms: None,
        ..small()
    };
    let mut log = DiskLog::open(&tmp.path().join("size"), cfg).unwrap();
    fill(&mut log, 60);
    let before = log.size_bytes();
    let removed = log.apply_retention(0).unwrap();
    assert!(removed > 0);
    assert!(
        log.size_bytes() >= 3000 - 1024 && log.size_bytes() < before,
        "size {}",
        log.size_bytes()
    );
    assert_eq!(log.next_index(), 60);
    assert!(log.read(log.first_index(), 10).is_ok());

    let cfg = LogConfig {
        retention_ms: Some(100),
        retention_bytes: None,
        ..small()
    };
    let mut log = DiskLog::open(&tmp.path().join("time"), cfg).unwrap();
    fill(&mut log, 60); // timestamps 1000..1590
    let removed = log.apply_retention(1300).unwrap();
    assert!(removed > 0);
    let first = log.read(log.first_index(), 1).unwrap()[0].clone();
    assert!(
        first.max_timestamp >= 1100,
        "kept a segment entirely older than the limit"
    );
    let removed_all = log.apply_retention(1_000_000).unwrap();
    assert!(removed_all > 0);
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
    assert_eq!(log.next_offset(), 600);
}

/// Rolling by age starts a new segment once the active one is older than `segment_ms`.
#[test]
fn roll_by_age() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 1,
        ..LogConfig::default()
    };
    let mut log = DiskLog::open(tmp.path(), cfg).unwrap();
    fill(&mut log, 1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    fill(&mut log, 1);
    assert_eq!(log.segment_count(), 2);
}

/// Truncation across segments survives a reopen.
#[test]
fn truncate_then_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), small()).unwrap();
        fill(&mut log, 40);
        log.truncate_after(17).unwrap();
        fill(&mut log, 2);
    }
    let log = DiskLog::open(tmp.path(), small()).unwrap();
    assert_eq!((log.next_index(), log.next_offset()), (20, 200));
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 20);
    assert!(all
        .windows(2)
        .all(|w| w[1].index == w[0].index + 1 && w[1].offset == w[0].next_offset()));
}

/// Descriptors this process holds open on files under `dir`.
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Only the active segment keeps a descriptor: a log of many segments holds one, before
/// and after a reopen, and still reads every entry of its closed segments and truncates
/// back into one of them.
#[test]
fn closed_segments_hold_no_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let mut log = DiskLog::open(&dir, small()).unwrap();
    fill(&mut log, 40);
    assert!(log.segment_count() > 3, "small segments roll");
    assert_eq!(fds_under(&dir), 1);
    drop(log);
    let mut log = DiskLog::open(&dir, small()).unwrap();
    assert_eq!(fds_under(&dir), 1);
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 40);
    assert_eq!(
        fds_under(&dir),
        1,
        "a read of closed segments gives their descriptors back"
    );
    log.truncate_after(5).unwrap();
    fill(&mut log, 3);
    assert_eq!((log.next_index(), log.next_offset()), (9, 90));
    assert_eq!(fds_under(&dir), 1);
    let handle = log.sync_handle().unwrap();
    handle.sync().unwrap();
}

/// A segment missing from the middle of the log (lost at power loss) is damage, not a
/// shorter log: the log ends before the gap, what followed is set aside, and the log
/// reports the last index it had, so the replica does not vote as if whole.
#[test]
fn a_missing_middle_segment_is_damage() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = DiskLog::open(tmp.path(), small()).unwrap();
        fill(&mut log, 40);
        log.sync().unwrap();
    }
    let files = segment_files(tmp.path());
    assert!(files.len() >= 4);
    std::fs::remove_file(&files[1]).unwrap();
    let log = DiskLog::open(tmp.path(), small()).unwrap();
    assert_eq!(log.damaged_through(), Some(39));
    let first_gone = files[1].file_stem().unwrap().to_string_lossy().parse::<u64>().unwrap();
    assert_eq!(log.next_index(), first_gone, "the log ends where the gap begins");
    assert_eq!(log.read(0, usize::MAX).unwrap().len() as u64, first_gone);
    drop(log);
    // Reopened again, the set-aside segments stay aside and the log is whole up to the gap.
    let log = DiskLog::open(tmp.path(), small()).unwrap();
    assert_eq!(log.next_index(), first_gone);
}
