//! A failed fsync poisons the partition it hit: that partition refuses writes with
//! KAFKA_STORAGE_ERROR from then on (even once the disk recovers), keeps serving what was
//! durable, and no other partition is affected. A full disk poisons nothing: appends wait
//! for space, new writes are refused with KAFKA_STORAGE_ERROR meanwhile, and everything
//! carries on once space is freed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use keel_broker::cluster::partition::Partition;
use keel_broker::{Broker, BrokerConfig};
use keel_log::fault;

fn batch(tag: &str) -> Vec<(keel_proto::batch::BatchHeader, Bytes)> {
    let rec = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1,
        key: None,
        value: Some(Bytes::from(tag.to_string())),
        headers: Default::default(),
    };
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        &[rec],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    keel_proto::batch::split_batches(&b.freeze()).unwrap()
}

async fn part(b: &Arc<Broker>, topic: &str) -> Arc<Partition> {
    b.topics
        .create(topic, 1, Default::default(), false)
        .await
        .unwrap()
        .partition(0)
        .unwrap()
}

const KAFKA_STORAGE_ERROR: i16 = 56;

/// The fault switches are process-wide: tests that flip them take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// fsync fails: the waiting producer gets KAFKA_STORAGE_ERROR, the partition stays poisoned
/// after the fault clears, durable records stay readable, other partitions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_poisons_the_partition() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(
        BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        9092,
    )
    .await
    .unwrap();
    let a = part(&broker, "a").await;
    let b = part(&broker, "b").await;
    assert_eq!(a.append(batch("first"), true).await.unwrap().base_offset, 0);

    fault::set_fsync_fails(true);
    let err = a.append(batch("during"), true).await.unwrap_err();
    fault::set_fsync_fails(false);
    assert_eq!(err.code(), KAFKA_STORAGE_ERROR, "{err}");
    assert!(a.committed().poisoned);
    let again = a.append(batch("after"), true).await.unwrap_err();
    assert_eq!(
        again.code(),
        KAFKA_STORAGE_ERROR,
        "a poisoned partition accepted a write: {again}"
    );

    let read = a.read(0, 1 << 20).unwrap();
    assert_eq!(read.high_watermark, 1, "the unacknowledged write became visible");
    assert_eq!(keel_proto::batch::split_batches(&read.records).unwrap().len(), 1);

    assert_eq!(
        b.append(batch("other"), true).await.unwrap().base_offset,
        0,
        "another partition was affected"
    );
    assert!(!b.committed().poisoned);
    let text = broker.metrics.encode();
    assert!(text.lines().any(|l| l == "keel_poisoned_partitions 1"), "{text}");
}

/// A full disk (writes fail with ENOSPC) holds the write that hit it until space is freed,
/// refuses new ones with KAFKA_STORAGE_ERROR meanwhile, and then carries on: nothing is
/// poisoned and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_writes_until_space_is_freed() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(
        BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        9092,
    )
    .await
    .unwrap();
    let c = part(&broker, "c").await;
    assert_eq!(c.append(batch("x"), true).await.unwrap().base_offset, 0);
    fault::set_write_fails(true);
    let held = {
        let c = c.clone();
        tokio::spawn(async move { c.append(batch("y"), true).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let refused = c.append(batch("meanwhile"), true).await;
    let still_held = !held.is_finished();
    let hw_while_full = c.read(0, 1 << 20).map(|r| r.high_watermark);
    fault::set_write_fails(false);
    assert!(still_held, "the write that hit the full disk did not wait for space");
    assert_eq!(
        refused.map(|a| a.base_offset).unwrap_err().code(),
        KAFKA_STORAGE_ERROR,
        "a write was accepted while the disk was full"
    );
    assert_eq!(hw_while_full.unwrap(), 1);
    let y = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("the held write did not complete once space was freed")
        .unwrap()
        .unwrap();
    assert_eq!(y.base_offset, 1);
    assert!(!c.committed().poisoned);
    assert_eq!(c.append(batch("z"), true).await.unwrap().base_offset, 2);
    let read = c.read(0, 1 << 20).unwrap();
    assert_eq!(read.high_watermark, 3);
    assert_eq!(keel_proto::batch::split_batches(&read.records).unwrap().len(), 3);
}
