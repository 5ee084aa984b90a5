//! Bad bytes on the wire never crash Keel or damage stored data: each is answered with
//! the right Kafka error or a closed connection, and the broker keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Keel;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

fn connect(k: &Keel) -> TcpStream {
    let s = TcpStream::connect(&k.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends raw bytes and reports whether the broker closed the connection without answering.
fn closed_after(k: &Keel, bytes: &[u8]) -> bool {
    let mut s = connect(k);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Sends one framed request and returns the response body after the correlation id.
fn round_trip(k: &Keel, request: &[u8]) -> Option<Vec<u8>> {
    let mut s = connect(k);
    s.write_all(request).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn batch(n: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1,
            key: Some(bytes::Bytes::from(format!("k{i}"))),
            value: Some(bytes::Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// A Produce v9 request of `records` to `topic` partition 0.
fn produce_frame(topic: &str, records: Vec<u8>) -> Vec<u8> {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.into()))])]);
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(77);
    let mut buf = bytes::BytesMut::new();
    header.encode(&mut buf, 2).unwrap();
    req.encode(&mut buf, 9).unwrap();
    frame(&buf)
}

fn produce_error(k: &Keel, topic: &str, records: Vec<u8>) -> (i16, i64) {
    let body = round_trip(k, &produce_frame(topic, records)).expect("produce response");
    let mut b = bytes::Bytes::from(body);
    let corr = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(corr, 77);
    let mut rest = b.split_off(5); // correlation id + empty tagged fields (header v1)
    let resp = ProduceResponse::decode(&mut rest, 9).unwrap();
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Garbage, truncated and oversized frames, unknown APIs, bad CRCs and lying record counts:
/// the broker answers or closes, and afterwards still serves a well-formed produce whose
/// offsets show that nothing bad was stored.
#[test]
fn malformed_input_leaves_the_broker_serving() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);

    // A good batch first, to know what the log holds.
    assert_eq!(produce_error(&k, "victim", batch(3)), (0, 0));

    // Random garbage, negative and huge lengths, a frame cut short.
    assert!(closed_after(&k, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]));
    assert!(closed_after(&k, &(-5i32).to_be_bytes()));
    assert!(closed_after(&k, &i32::MAX.to_be_bytes()));
    assert!(closed_after(&k, &[0, 0, 0, 100, 0, 3, 0, 1]));
    assert!(closed_after(&k, &frame(&[0, 3])));
    // Unknown API key, and a known key at an unsupported version.
    assert!(closed_after(&k, &frame(&[3, 231, 0, 0, 0, 0, 0, 1, 0, 0])));
    assert!(closed_after(&k, &frame(&[0, 3, 0, 99, 0, 0, 0, 1, 0, 0])));
    // A Metadata v1 request whose topic array claims two billion entries.
    assert!(closed_after(
        &k,
        &frame(&[0, 3, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff])
    ));
    // A CreateTopics v4 request with an array count of i32::MAX.
    assert!(closed_after(
        &k,
        &frame(&[0, 19, 0, 4, 0, 0, 0, 9, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff])
    ));

    // ApiVersions at an unknown version gets a v0 UNSUPPORTED_VERSION answer (KIP-511).
    let body = round_trip(&k, &frame(&[0, 18, 0, 99, 0, 0, 0, 42, 0, 0])).expect("ApiVersions answer");
    assert_eq!(&body[0..4], &42i32.to_be_bytes());
    assert_eq!(&body[4..6], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");

    // A batch with a flipped byte: CORRUPT_MESSAGE.
    let mut flipped = batch(2);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    assert_eq!(produce_error(&k, "victim", flipped).0, 2);
    // A 69-byte batch claiming i32::MAX records (with a valid CRC): CORRUPT_MESSAGE.
    let mut liar = batch(1);
    liar[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    liar[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    let crc = crc32c::crc32c(&liar[21..]);
    liar[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(produce_error(&k, "victim", liar).0, 2);
    // A batch_length pointing past the bytes sent.
    let mut long = batch(1);
    long[8..12].copy_from_slice(&100_000i32.to_be_bytes());
    assert_eq!(produce_error(&k, "victim", long).0, 2);
    // Garbage where records should be.
    assert_eq!(produce_error(&k, "victim", vec![7u8; 40]).0, 2);

    // The broker still serves, and the next offset proves nothing bad was appended.
    assert_eq!(produce_error(&k, "victim", batch(2)), (0, 3));
    let (status, body) = k.http_get("/health");
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = k.http_get("/metrics");
    let malformed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("keel_malformed_requests_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("malformed counter");
    assert!(malformed >= 7.0, "malformed requests counted: {malformed}");
}
