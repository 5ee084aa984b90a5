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

/// acks=all requests that queue behind the ones being replicated share Raft entries (the
/// batches back to back), each request still answered with its own base offset; a read
/// from any offset inside such an entry starts at the batch that holds the offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_share_an_entry_and_reads_start_at_their_batch() {
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
        .create("shared", 1, Default::default(), false)
        .await
        .unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_broker::server::run(broker.clone(), listener, stop_rx));

    // Two connections, 30 requests of 1 to 3 records each, all written before any answer
    // is read.
    let mut conns = Vec::new();
    let mut sent = 0usize;
    for c in 0..2 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut wire = Vec::new();
        let mut asked = Vec::new();
        for i in 0..30i32 {
            let vals: Vec<String> = (0..1 + i % 3).map(|j| format!("c{c}-req{i:02}-rec{j}")).collect();
            wire.extend(frame(&produce("shared", -1, &vals), PRODUCE_V, i));
            asked.push((i, vals.len()));
            sent += vals.len();
        }
        conn.write_all(&wire).await.unwrap();
        conns.push((conn, asked));
    }
    let mut bases = Vec::new();
    for (conn, asked) in &mut conns {
        for (corr, n) in asked.iter() {
            let (got, mut body) = response(conn).await;
            assert_eq!(got, *corr);
            let resp = ProduceResponse::decode(&mut body, PRODUCE_V).unwrap();
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0, "request {corr} failed: {:?}", p.error_message);
            bases.push((p.base_offset, *n));
        }
    }
    // Every request got its own offsets: together they cover 0..sent exactly once.
    bases.sort();
    let mut next = 0i64;
    for (base, n) in &bases {
        assert_eq!(*base, next, "request offsets overlap or leave a gap");
        next += *n as i64;
    }
    assert_eq!(next, sent as i64);

    let part = broker.topics.get("shared").unwrap().partition(0).unwrap();
    let data_entries = part
        .group()
        .shared
        .log()
        .read(0, 64 << 20)
        .unwrap()
        .iter()
        .filter(|e| e.kind == keel_log::EntryKind::Data)
        .count();
    assert!(
        data_entries < bases.len(),
        "{} requests took {data_entries} entries: none were shared",
        bases.len()
    );
    // A read from each offset starts with the batch that holds it.
    for offset in 0..sent as i64 {
        let mut records = part.read(offset, 1).unwrap().records;
        let batch = RecordBatchDecoder::decode(&mut records).unwrap();
        let first = batch.records.first().unwrap().offset;
        let last = batch.records.last().unwrap().offset;
        assert!(
            first <= offset && offset <= last,
            "a read from {offset} began with the batch of {first}..={last}"
        );
    }
}
