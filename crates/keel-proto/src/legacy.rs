//! Produce v0-2 and the pre-0.11 message format (magic 0 and 1), which clients still send
//! when told to speak to an old broker (`api.version.request=false`). Keel stores only v2
//! record batches, so such a produce is converted on the way in, as Kafka converts it when
//! the log is in the v2 format: the request is decoded here (kafka-protocol decodes Produce
//! v3 and later only), each partition's message set becomes one v2 batch, and the answer is
//! encoded in the old layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::Compression;

use crate::batch::{encode_batch, inflate, NewRecord};
use crate::ProtoError;

/// Most messages one legacy message set may hold (after decompression).
const MESSAGES_MAX: usize = 1_000_000;

/// A Produce v0-2 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceV0 {
    pub acks: i16,
    pub timeout_ms: i32,
    /// (topic, [(partition, message set)]).
    pub topics: Vec<(String, Vec<(i32, Bytes)>)>,
}

/// One partition's answer to a Produce v0-2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAnswer {
    pub partition: i32,
    pub error_code: i16,
    pub base_offset: i64,
    /// v2 only: the broker's append time for LogAppendTime topics, else -1.
    pub log_append_time: i64,
}

fn malformed(what: &str) -> ProtoError {
    ProtoError::Malformed(format!("Produce v0-2: {what}"))
}

fn get_i16(b: &mut Bytes) -> Result<i16, ProtoError> {
    (b.remaining() >= 2)
        .then(|| b.get_i16())
        .ok_or_else(|| malformed("truncated"))
}

fn get_i32(b: &mut Bytes) -> Result<i32, ProtoError> {
    (b.remaining() >= 4)
        .then(|| b.get_i32())
        .ok_or_else(|| malformed("truncated"))
}

fn get_i64(b: &mut Bytes) -> Result<i64, ProtoError> {
    (b.remaining() >= 8)
        .then(|| b.get_i64())
        .ok_or_else(|| malformed("truncated"))
}

fn get_slice(b: &mut Bytes, len: usize) -> Result<Bytes, ProtoError> {
    (b.remaining() >= len)
        .then(|| b.split_to(len))
        .ok_or_else(|| malformed("truncated"))
}

/// A count read off the wire, bounded by what the bytes left could hold.
fn get_count(b: &mut Bytes, min_item: usize) -> Result<usize, ProtoError> {
    let n = get_i32(b)?;
    if n < 0 || n as usize > b.remaining() / min_item.max(1) {
        return Err(malformed("bad array length"));
    }
    Ok(n as usize)
}

/// Decodes a Produce v0-2 request body (the three versions share one layout).
pub fn decode_produce(body: &mut Bytes) -> Result<ProduceV0, ProtoError> {
    let acks = get_i16(body)?;
    let timeout_ms = get_i32(body)?;
    let n = get_count(body, 6)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        let len = get_i16(body)?;
        if len < 0 {
            return Err(malformed("null topic name"));
        }
        let name = get_slice(body, len as usize)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| malformed("topic name is not UTF-8"))?;
        let parts = get_count(body, 8)?;
        let mut partitions = Vec::with_capacity(parts);
        for _ in 0..parts {
            let index = get_i32(body)?;
            let size = get_i32(body)?;
            let set = if size < 0 {
                Bytes::new()
            } else {
                get_slice(body, size as usize)?
            };
            partitions.push((index, set));
        }
        topics.push((name, partitions));
    }
    if body.has_remaining() {
        return Err(malformed("trailing bytes"));
    }
    Ok(ProduceV0 {
        acks,
        timeout_ms,
        topics,
    })
}

/// Encodes a Produce v0-2 response body (after the correlation id).
pub fn encode_produce_response(version: i16, topics: &[(String, Vec<PartitionAnswer>)]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i32(topics.len() as i32);
    for (name, parts) in topics {
        b.put_i16(name.len() as i16);
        b.put_slice(name.as_bytes());
        b.put_i32(parts.len() as i32);
        for p in parts {
            b.put_i32(p.partition);
            b.put_i16(p.error_code);
            b.put_i64(p.base_offset);
            if version >= 2 {
                b.put_i64(p.log_append_time);
            }
        }
    }
    if version >= 1 {
        b.put_i32(0); // throttle_time_ms
    }
    b
}

/// One message of a legacy message set.
struct Message {
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

fn get_bytes(b: &mut Bytes) -> Result<Option<Bytes>, ProtoError> {
    let len = get_i32(b)?;
    if len < 0 {
        return Ok(None);
    }
    Ok(Some(get_slice(b, len as usize)?))
}

fn compression_of(attributes: i8) -> Result<Compression, ProtoError> {
    Ok(match attributes & 0x07 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        c => return Err(ProtoError::CorruptBatch(format!("unknown compression codec {c}"))),
    })
}

/// Reads the messages of a legacy message set, checking each one's CRC-32.
fn read_messages(mut set: Bytes, out: &mut Vec<Message>) -> Result<(), ProtoError> {
    while set.remaining() >= 12 {
        let _offset = set.get_i64();
        let size = set.get_i32();
        if size < 14 || size as usize > set.remaining() {
            // A partial message at the end of a set is legal (a fetch cut it); a producer
            // has no reason to send one, so it is refused.
            return Err(ProtoError::CorruptBatch(format!("message size {size}")));
        }
        let mut m = set.split_to(size as usize);
        let crc = m.get_u32();
        if crc32fast::hash(&m) != crc {
            return Err(ProtoError::CorruptBatch("message CRC mismatch".into()));
        }
        let magic = m.get_i8();
        let attributes = m.get_i8();
        let timestamp = match magic {
            0 => -1,
            1 => get_i64(&mut m)?,
            other => return Err(ProtoError::UnsupportedMagic(other)),
        };
        let key = get_bytes(&mut m)?;
        let value = get_bytes(&mut m)?;
        if out.len() >= MESSAGES_MAX {
            return Err(ProtoError::CorruptBatch("too many messages".into()));
        }
        out.push(Message {
            magic,
            attributes,
            timestamp,
            key,
            value,
        });
    }
    if set.has_remaining() {
        return Err(ProtoError::CorruptBatch("trailing bytes after the last message".into()));
    }
    Ok(())
}

/// Converts a legacy message set (magic 0 or 1, compressed or not) into one v2 record batch
/// of the same records, compressed with the same codec. Messages without a timestamp (magic
/// 0) get none (-1). Compressed wrappers inflate to at most `inflated_max` bytes.
pub fn upconvert(set: &Bytes, inflated_max: usize) -> Result<Bytes, ProtoError> {
    let mut outer = Vec::new();
    read_messages(set.clone(), &mut outer)?;
    let mut records = Vec::new();
    let mut codec = Compression::None;
    for m in outer {
        let c = compression_of(m.attributes)?;
        if c == Compression::None {
            records.push(m);
            continue;
        }
        if m.magic == 0 && c == Compression::Lz4 {
            // Magic 0 framed LZ4 with a broken header checksum (KAFKA-3160).
            return Err(ProtoError::CorruptBatch(
                "LZ4 in message format v0 is not accepted".into(),
            ));
        }
        codec = c;
        let inner = m
            .value
            .ok_or_else(|| ProtoError::CorruptBatch("compressed message without a value".into()))?;
        let inflated = inflate(inner, c, inflated_max).map_err(|e| ProtoError::CorruptBatch(format!("{e:#}")))?;
        let mut inner_messages = Vec::new();
        read_messages(inflated, &mut inner_messages)?;
        for mut im in inner_messages {
            if compression_of(im.attributes)? != Compression::None {
                return Err(ProtoError::CorruptBatch("nested compression".into()));
            }
            // Inner messages of a LogAppendTime wrapper take the wrapper's time.
            if m.magic == 1 && m.attributes & 0x08 != 0 {
                im.timestamp = m.timestamp;
            }
            records.push(im);
        }
        if records.len() > MESSAGES_MAX {
            return Err(ProtoError::CorruptBatch("too many messages".into()));
        }
    }
    if records.is_empty() {
        return Err(ProtoError::CorruptBatch("empty message set".into()));
    }
    let records: Vec<NewRecord> = records
        .into_iter()
        .map(|m| NewRecord {
            key: m.key,
            value: m.value,
            timestamp: m.timestamp,
        })
        .collect();
    encode_batch(&records, codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One legacy message (offset, size, crc, magic, attributes, [timestamp], key, value).
    fn message(offset: i64, magic: i8, attributes: i8, ts: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i8(magic);
        body.put_i8(attributes);
        if magic == 1 {
            body.put_i64(ts);
        }
        for field in [key, value] {
            match field {
                Some(b) => {
                    body.put_i32(b.len() as i32);
                    body.put_slice(b);
                }
                None => body.put_i32(-1),
            }
        }
        let mut m = BytesMut::new();
        m.put_i64(offset);
        m.put_i32(body.len() as i32 + 4);
        m.put_u32(crc32fast::hash(&body));
        m.put_slice(&body);
        m.to_vec()
    }

    fn decoded(batch: &Bytes) -> Vec<(Option<Bytes>, Option<Bytes>, i64)> {
        let mut b = batch.clone();
        kafka_protocol::records::RecordBatchDecoder::decode(&mut b)
            .unwrap()
            .records
            .into_iter()
            .map(|r| (r.key, r.value, r.timestamp))
            .collect()
    }

    #[test]
    fn plain_v0_and_v1_messages_become_one_v2_batch() {
        let mut set = message(0, 0, 0, 0, Some(b"k0"), Some(b"v0"));
        set.extend(message(1, 1, 0, 1234, None, Some(b"v1")));
        set.extend(message(2, 1, 0, 1235, Some(b"k2"), None));
        let batch = upconvert(&Bytes::from(set), 1 << 20).unwrap();
        crate::batch::validate_batch(&batch).unwrap();
        assert_eq!(
            decoded(&batch),
            vec![
                (Some(Bytes::from_static(b"k0")), Some(Bytes::from_static(b"v0")), -1),
                (None, Some(Bytes::from_static(b"v1")), 1234),
                (Some(Bytes::from_static(b"k2")), None, 1235),
            ]
        );
    }

    #[test]
    fn a_gzip_wrapper_is_unpacked_and_the_batch_stays_gzip() {
        use std::io::Write;
        let mut inner = message(0, 1, 0, 10, None, Some(b"a"));
        inner.extend(message(1, 1, 0, 11, None, Some(b"b")));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&inner).unwrap();
        let wrapper = message(1, 1, 1, 11, None, Some(&gz.finish().unwrap()));
        let batch = upconvert(&Bytes::from(wrapper.clone()), 1 << 20).unwrap();
        let header = crate::batch::validate_batch(&batch).unwrap();
        assert_eq!(header.compression(), 1);
        let values: Vec<_> = decoded(&batch).into_iter().map(|r| r.1.unwrap()).collect();
        assert_eq!(values, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(upconvert(&Bytes::from(wrapper), 10).is_err(), "inflated past the limit");
    }

    #[test]
    fn damaged_sets_are_refused() {
        let good = message(0, 1, 0, 5, None, Some(b"value"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let magic2 = message(0, 2, 0, 5, None, Some(b"value"));
        for (what, bad) in [
            ("crc", flipped),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("empty", Vec::new()),
            ("magic", magic2),
            ("codec", message(0, 1, 5, 0, None, Some(b"x"))),
        ] {
            assert!(upconvert(&Bytes::from(bad), 1 << 20).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn produce_v0_requests_decode_and_answers_encode() {
        let set = message(0, 0, 0, 0, None, Some(b"v"));
        let mut b = BytesMut::new();
        b.put_i16(-1);
        b.put_i32(5000);
        b.put_i32(1);
        b.put_i16(1);
        b.put_slice(b"t");
        b.put_i32(1);
        b.put_i32(3);
        b.put_i32(set.len() as i32);
        b.put_slice(&set);
        let req = decode_produce(&mut b.freeze()).unwrap();
        assert_eq!((req.acks, req.timeout_ms), (-1, 5000));
        assert_eq!(req.topics, vec![("t".to_string(), vec![(3, Bytes::from(set))])]);
        // Counts larger than the bytes could hold are refused before anything is reserved.
        let mut huge = BytesMut::new();
        huge.put_i16(1);
        huge.put_i32(0);
        huge.put_i32(i32::MAX);
        assert!(decode_produce(&mut huge.freeze()).is_err());

        let answer = PartitionAnswer {
            partition: 3,
            error_code: 0,
            base_offset: 42,
            log_append_time: -1,
        };
        let v0 = encode_produce_response(0, &[("t".into(), vec![answer.clone()])]);
        assert_eq!(v0.len(), 4 + 2 + 1 + 4 + 4 + 2 + 8);
        let v2 = encode_produce_response(2, &[("t".into(), vec![answer])]);
        assert_eq!(v2.len(), v0.len() + 8 + 4);
    }
}
