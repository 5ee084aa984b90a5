//! A Produce request is checked whole before any of it is logged: when one of a
//! partition's batches is refused, none of that request's batches is written, so the
//! client's retry of the request cannot duplicate the ones that came before it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use keel_broker::cluster::partition::{Acks, Partition};
use keel_broker::error::PartitionError;
use keel_broker::{Broker, BrokerConfig};
use keel_proto::batch::BatchHeader;

/// One record from idempotent producer `pid` at sequence `seq`.
fn batch(pid: i64, seq: i32, value: &str) -> (BatchHeader, Bytes) {
    let rec = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: pid,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: seq,
        timestamp: 1,
        key: None,
        value: Some(Bytes::from(value.to_string())),
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
    keel_proto::batch::split_batches(&b.freeze()).unwrap().remove(0)
}

async fn partition(dir: &std::path::Path) -> (Arc<Broker>, Arc<Partition>) {
    let broker = Broker::open(
        BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        },
        9092,
    )
    .await
    .unwrap();
    let p = broker
        .topics
        .create("checked", 1, Default::default(), false)
        .await
        .unwrap()
        .partition(0)
        .unwrap();
    (broker, p)
}

/// Producer 7 has written sequence 0. A request with a new producer's batch followed by
/// producer 7's batch at sequence 5 (a gap) is refused with OUT_OF_ORDER_SEQUENCE_NUMBER,
/// and the new producer's batch is not in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_keeps_the_whole_request_out_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, p) = partition(dir.path()).await;
    p.append_acks(vec![batch(7, 0, "seven-0")], Acks::All).await.unwrap();
    assert_eq!(p.high_watermark(), 1);

    let err = p
        .append_acks(vec![batch(9, 0, "nine-0"), batch(7, 5, "seven-5")], Acks::All)
        .await
        .unwrap_err();
    assert!(matches!(err, PartitionError::Producer(45)), "{err:?}");
    // Nothing of the refused request was logged, then or since.
    p.append_acks(vec![batch(7, 1, "seven-1")], Acks::All).await.unwrap();
    assert_eq!(p.high_watermark(), 2, "the refused request's first batch was logged");

    // The client's retry of the request, corrected, lands whole and once.
    let ok = p
        .append_acks(vec![batch(9, 0, "nine-0"), batch(7, 2, "seven-2")], Acks::All)
        .await
        .unwrap();
    assert_eq!(ok.base_offset, 2);
    assert_eq!(p.high_watermark(), 4);
}

/// An idempotent producer keeps several requests in flight (librdkafka and the Java client
/// up to five): a batch that follows one still being replicated is accepted in sequence,
/// not refused as out of order because the one before it is not applied yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_may_pipeline_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, p) = partition(dir.path()).await;
    p.append_acks(vec![batch(7, 0, "seven-0")], Acks::All).await.unwrap();
    // Five requests handed to the log before any of them is answered.
    let mut waits = Vec::new();
    for seq in 1..=5 {
        waits.push(
            p.append_start(vec![batch(7, seq, &format!("seven-{seq}"))], Acks::All)
                .await
                .unwrap_or_else(|e| panic!("sequence {seq} refused: {e:?}")),
        );
    }
    for (i, w) in waits.into_iter().enumerate() {
        assert_eq!(w.await.unwrap().base_offset, i as i64 + 1);
    }
    // A retry of one of them is answered as a duplicate, with its offset.
    let again = p.append_acks(vec![batch(7, 3, "seven-3")], Acks::All).await.unwrap();
    assert_eq!(again.base_offset, 3);
    // A gap is still refused.
    let gap = p
        .append_acks(vec![batch(7, 9, "seven-9")], Acks::All)
        .await
        .unwrap_err();
    assert!(matches!(gap, PartitionError::Producer(45)), "{gap:?}");
    assert_eq!(p.high_watermark(), 6);
}
