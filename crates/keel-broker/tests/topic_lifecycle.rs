//! A topic's data belongs to that topic: deleting a topic and creating another of the same
//! name leaves the new topic's records in place through a restart, when the controller's
//! log (creation, deletion, creation) is replayed.

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use keel_broker::{Broker, BrokerConfig};
use keel_proto::batch::{encode_batch, split_batches, NewRecord};

fn batch(value: &str) -> Vec<(keel_proto::batch::BatchHeader, Bytes)> {
    let record = NewRecord {
        key: None,
        value: Some(Bytes::from(value.to_string())),
        timestamp: 1,
    };
    split_batches(&encode_batch(&[record], Compression::None).unwrap()).unwrap()
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    }
}

/// The values in partition 0 of `topic`.
fn values(b: &Broker, topic: &str) -> Vec<String> {
    let p = b.topics.get(topic).expect("topic").partition(0).expect("partition");
    let mut records = p.read(0, 1 << 20).expect("read").records;
    let mut out = Vec::new();
    while !records.is_empty() {
        let set = RecordBatchDecoder::decode(&mut records).expect("decode");
        for r in set.records {
            out.push(String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_keeps_its_records_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first_id;
    {
        let b = Broker::open(config(dir.path()), 9092).await.unwrap();
        let t = b.topics.create("t", 1, Default::default(), false).await.unwrap();
        first_id = t.meta().id;
        t.partition(0).unwrap().append(batch("old"), true).await.unwrap();
        b.topics.delete("t").await.unwrap();
        let t = b.topics.create("t", 1, Default::default(), false).await.unwrap();
        assert_ne!(t.meta().id, first_id);
        t.partition(0).unwrap().append(batch("new"), true).await.unwrap();
        assert_eq!(values(&b, "t"), vec!["new".to_string()]);
        b.sync_all().await;
    }
    let b = Broker::open(config(dir.path()), 9092).await.unwrap();
    assert_ne!(b.topics.get("t").unwrap().meta().id, first_id);
    assert_eq!(
        values(&b, "t"),
        vec!["new".to_string()],
        "the new topic's records are gone"
    );
}
