//! The node's vote journal under a full disk (the `fault-injection` write fault).

use std::time::Duration;

use keel_raft::{Vote, VoteStore};

/// A save that meets a full disk waits until space is freed, then lands durably; it is
/// never reported saved while it is not, and never fails the group over a full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_delays_a_vote_save_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-votes.log");
    let store = VoteStore::open(&path).unwrap();
    store.save("before", Vote::new(1, 1)).await.unwrap();

    keel_log::fault::set_write_fails(true);
    let mut waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.save("during", Vote::new(2, 3)).await })
    };
    // Spans several of the writer's retries (10, 20, 40, 80, 160 ms apart).
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    keel_log::fault::set_write_fails(false);
    assert!(
        early.is_err(),
        "a vote save completed while every write failed with ENOSPC: {early:?}"
    );
    waiting.await.unwrap().unwrap();
    assert_eq!(store.get("during"), Some(Vote::new(2, 3)));
    drop(store);

    let reopened = VoteStore::open(&path).unwrap();
    assert_eq!(reopened.get("before"), Some(Vote::new(1, 1)));
    assert_eq!(reopened.get("during"), Some(Vote::new(2, 3)));
}
