//! Produce requests sent back to back on one connection, without waiting for answers, are
//! logged in the order they were sent and answered in that order; a request of another
//! kind sent behind them is served and answered after them; acks=0 requests in the stream
//! get no answer and still land in order.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use keel_broker::{Broker, BrokerConfig};
use keel_proto::batch::{encode_batch, NewRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PRODUCE_V: i16 = 8;
const LIST_OFFSETS_V: i16 = 1;

fn frame<R: Request>(req: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let key = ApiKey::try_from(R::KEY).unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("pipeline-test")));
    let mut body = BytesMut::new();
    header.encode(&mut body, key.request_header_version(version)).unwrap();
    req.encode(&mut body, version).unwrap();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32);
    out.extend_from_slice(&body);
    out
}

fn produce(topic: &str, acks: i16, values: &[String]) -> ProduceRequest {
    let records: Vec<NewRecord> = values
        .iter()
        .map(|v| NewRecord {
            key: None,
            value: Some(Bytes::from(v.clone())),
            timestamp: 1_700_000_000_000,
        })
        .collect();
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(encode_batch(&records, Compression::None).unwrap());
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 10_000;
    req.topic_data = vec![td];
    req
}

/// Reads one response frame: (correlation id, body).
async fn response(conn: &mut TcpStream) -> (i32, Bytes) {
    let len = tokio::time::timeout(Duration::from_secs(20), conn.read_i32())
        .await
        .expect("a response within 20 s")
        .expect("read") as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await.unwrap();
    let mut b = Bytes::from(buf);
    let corr = b.get_i32();
    (corr, b)
}

/// Every value in partition 0 of `topic`, in log order.
fn values(b: &Broker, topic: &str) -> Vec<String> {
    let p = b.topics.get(topic).unwrap().partition(0).unwrap();
    let mut records = p.read(0, 16 << 20).unwrap().records;
    let mut out = Vec::new();
    while !records.is_empty() {
        for r in RecordBatchDecoder::decode(&mut records).unwrap().records {
            out.push(String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_are_logged_and_answered_in_the_order_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..BrokerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let broker = Broker::open(config, port).await.unwrap();
    broker
        .topics
        .create("pipe", 1, Default::default(), false)
        .await
        .unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_broker::server::run(broker.clone(), listener, stop_rx));

    // 40 requests of 1 to 4 records each, every fifth one acks=0 (the last two acks=all),
    // then a ListOffsets request for the latest offset, all written before any answer is
    // read.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut sent: Vec<String> = Vec::new();
    let mut answered: Vec<(i32, usize)> = Vec::new(); // (correlation id, records) with acks=all
    let mut wire = Vec::new();
    for i in 0..40 {
        let n = 1 + i % 4;
        let vals: Vec<String> = (0..n).map(|j| format!("req{i:02}-rec{j}")).collect();
        let acks = if i % 5 == 2 { 0 } else { -1 };
        wire.extend(frame(&produce("pipe", acks, &vals), PRODUCE_V, i as i32));
        if acks != 0 {
            answered.push((i as i32, n));
        }
        sent.extend(vals);
    }
    let mut lp = list_offsets_request::ListOffsetsPartition::default();
    lp.partition_index = 0;
    lp.timestamp = -1;
    let mut lt = list_offsets_request::ListOffsetsTopic::default();
    lt.name = TopicName(StrBytes::from_static_str("pipe"));
    lt.partitions = vec![lp];
    let mut lo = ListOffsetsRequest::default();
    lo.replica_id = BrokerId(-1);
    lo.topics = vec![lt];
    wire.extend(frame(&lo, LIST_OFFSETS_V, 1000));
    conn.write_all(&wire).await.unwrap();

    // Answers come in the order sent: the acks=all ones, then ListOffsets.
    let mut counted = 0usize;
    for (corr, records) in &answered {
        let (got, mut body) = response(&mut conn).await;
        assert_eq!(got, *corr, "answers out of order");
        let resp = ProduceResponse::decode(&mut body, PRODUCE_V).unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "request {corr} failed: {:?}", p.error_message);
        // The log holds the requests in the order sent: this one's base offset counts
        // every record sent before it, acks=0 requests included.
        let before: usize = (0..*corr as usize).map(|i| 1 + i % 4).sum();
        assert_eq!(p.base_offset, before as i64, "request {corr} logged out of order");
        counted += records;
    }
    assert!(counted > 0);
    let (got, mut body) = response(&mut conn).await;
    assert_eq!(
        got, 1000,
        "the ListOffsets request was answered before the Produce requests sent ahead of it"
    );
    // It was served after them, too: the latest offset counts every record sent.
    let resp = ListOffsetsResponse::decode(&mut body, LIST_OFFSETS_V).unwrap();
    let latest = &resp.topics[0].partitions[0];
    assert_eq!(latest.error_code, 0);
    assert_eq!(
        latest.offset,
        sent.len() as i64,
        "ListOffsets was served before the Produce requests ahead of it"
    );

    // Every record is in the log once, in the order sent (acks=0 ones included: the last
    // requests were acks=all, and their commit covers everything logged before them).
    assert_eq!(values(&broker, "pipe"), sent);
}
