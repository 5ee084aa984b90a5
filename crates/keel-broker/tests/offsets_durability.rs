//! Committed offsets are durable: they survive a broker restart, and compaction of the
//! internal topic (snapshot, then drop older segments) keeps exactly the live offsets.

use keel_broker::group::offsets::CommittedOffset;
use keel_broker::{Broker, BrokerConfig};

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        offsets_segment_bytes: 4096,
        fsync: keel_broker::FsyncPolicy::Never,
        ..BrokerConfig::default()
    }
}

fn at(offset: i64, meta: &str) -> CommittedOffset {
    CommittedOffset {
        offset,
        leader_epoch: -1,
        metadata: Some(meta.to_string()),
        commit_ms: 1,
    }
}

/// 3,000 commits over a few keys, deletions included: after compaction the internal
/// partition is a fraction of its size, and after a restart every group reads back
/// exactly its last commits (deleted ones stay deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_restart_keep_exactly_the_live_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Broker::open(config(dir.path()), 9092).await.unwrap();
        b.topics.create("t", 4, Default::default(), false).await.unwrap();
        let o = &b.groups.offsets;
        for i in 0..1000i64 {
            o.commit("g1", vec![(("t".into(), (i % 4) as i32), at(i, "m1"))])
                .await
                .unwrap();
            o.commit("g2", vec![(("t".into(), 0), at(i * 2, "m2"))]).await.unwrap();
            o.commit("gone", vec![(("t".into(), 1), at(i, ""))]).await.unwrap();
        }
        o.delete_group("gone").await.unwrap();
        o.delete("g1", vec![("t".into(), 3)]).await.unwrap();
        let before = o.size_bytes();
        let purged = o.compact_if_larger_than(0).await.unwrap();
        assert!(purged > 0, "nothing purged");
        assert!(o.size_bytes() * 4 < before, "{} bytes left of {before}", o.size_bytes());
        // Commits after the snapshot still count.
        o.commit("g2", vec![(("t".into(), 1), at(5, "late"))]).await.unwrap();
        b.sync_all().await;
    }
    let b = Broker::open(config(dir.path()), 9092).await.unwrap();
    let o = &b.groups.offsets;
    assert_eq!(o.fetch("g1", "t", 0).map(|c| c.offset), Some(996));
    assert_eq!(o.fetch("g1", "t", 1).map(|c| c.offset), Some(997));
    assert_eq!(
        o.fetch("g1", "t", 2).map(|c| (c.offset, c.metadata)),
        Some((998, Some("m1".into())))
    );
    assert_eq!(o.fetch("g1", "t", 3), None, "deleted offset came back");
    assert_eq!(o.fetch("g2", "t", 0).map(|c| c.offset), Some(1998));
    assert_eq!(o.fetch("g2", "t", 1).map(|c| c.offset), Some(5));
    assert!(o.group_offsets("gone").is_empty(), "deleted group came back");
    assert_eq!(o.groups(), vec!["g1".to_string(), "g2".to_string()]);
}

/// Deleting a topic through DeleteTopics removes every group's offsets for it, and only
/// for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_removes_its_offsets() {
    use kafka_protocol::messages::{DeleteTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(config(dir.path()), 9092).await.unwrap();
    b.topics.create("doomed", 2, Default::default(), false).await.unwrap();
    b.topics.create("kept", 1, Default::default(), false).await.unwrap();
    let o = &b.groups.offsets;
    o.commit(
        "g",
        vec![
            (("doomed".into(), 0), at(3, "")),
            (("doomed".into(), 1), at(4, "")),
            (("kept".into(), 0), at(5, "")),
        ],
    )
    .await
    .unwrap();
    o.commit("h", vec![(("doomed".into(), 1), at(9, ""))]).await.unwrap();
    let req = DeleteTopicsRequest::default().with_topic_names(vec![TopicName(StrBytes::from_static_str("doomed"))]);
    let admin = keel_broker::handlers::sasl::Session::default();
    let resp = keel_broker::handlers::delete_topics::handle(&b, req, 5, &admin).await;
    assert_eq!(resp.responses[0].error_code, 0);
    assert_eq!(o.fetch("g", "doomed", 0), None);
    assert_eq!(o.fetch("g", "doomed", 1), None);
    assert!(o.group_offsets("h").is_empty());
    assert_eq!(o.fetch("g", "kept", 0).map(|c| c.offset), Some(5));
}
