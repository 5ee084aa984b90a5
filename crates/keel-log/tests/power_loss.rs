//! The power-loss model of `keel_log::fault`: what was fsynced survives, what was not is
//! gone (or torn), and a log reopened after it recovers to exactly its synced entries.

use keel_log::suite::fill;
use keel_log::{fault, DiskLog, LogConfig, LogStore};

/// One segment for the whole test, so that no roll (which syncs) intervenes.
fn config() -> LogConfig {
    LogConfig::default()
}

/// Entries appended after the last fsync are lost; a torn power loss leaves part of them,
/// which recovery cuts as a torn tail; entries synced before survive either way; a file
/// whose name was never made durable disappears.
#[test]
fn power_loss_keeps_exactly_what_was_synced() {
    fault::track_durability(true);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    {
        let mut log = DiskLog::open(&dir, config()).unwrap();
        fill(&mut log, 30);
        log.sync().unwrap();
        fill(&mut log, 5);
        assert_eq!(log.next_index(), 35);
    }
    let lost = fault::power_loss(tmp.path(), None).unwrap();
    assert!(lost.bytes_lost > 0, "{lost:?}");
    let mut log = DiskLog::open(&dir, config()).unwrap();
    assert_eq!(log.next_index(), 30, "unsynced entries survived the power loss");
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 30);

    // Torn: part of the unsynced tail stays, and recovery cuts it.
    fill(&mut log, 3);
    let handle = log.sync_handle().unwrap();
    handle.sync().unwrap();
    fill(&mut log, 4);
    drop(log);
    let mut keep_some = |unsynced: u64| unsynced.min(3);
    fault::power_loss(tmp.path(), Some(&mut keep_some)).unwrap();
    let log = DiskLog::open(&dir, config()).unwrap();
    assert_eq!(
        log.next_index(),
        33,
        "the group-commit sync's entries are durable, the rest not"
    );
    assert!(log.recovered_bytes() > 0, "the torn write was cut at open");
    drop(log);

    // A file created in the directory whose entry was never fsynced is gone.
    let stray = dir.join("stray.json");
    std::fs::write(&stray, b"{}").unwrap();
    fault::created(&stray);
    let lost = fault::power_loss(tmp.path(), None).unwrap();
    assert_eq!(lost.files_removed, 1);
    assert!(!stray.exists());
    // What replace_file writes is durable.
    keel_log::durable::replace_file(&stray, b"kept").unwrap();
    fault::power_loss(tmp.path(), None).unwrap();
    assert_eq!(std::fs::read(&stray).unwrap(), b"kept");
}

/// Segments created at rolls survive a power loss once the log has synced: their names
/// are made durable with a directory fsync, so the log does not come back shorter than
/// what it had fsynced.
#[test]
fn rolled_segments_survive_power_loss() {
    fault::track_durability(true);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let small = LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 300,
        ..LogConfig::default()
    };
    {
        let mut log = DiskLog::open(&dir, small.clone()).unwrap();
        fill(&mut log, 40);
        log.sync().unwrap();
        assert!(log.segment_count() > 3);
    }
    fault::power_loss(tmp.path(), None).unwrap();
    let log = DiskLog::open(&dir, small).unwrap();
    assert_eq!(log.next_index(), 40, "segments created at rolls were lost");
    assert_eq!(log.damaged_through(), None);
}
