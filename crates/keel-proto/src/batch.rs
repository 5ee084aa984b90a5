//! Record batches (magic 2), read and checked by hand.
//!
//! ```text
//!  0 base_offset i64        27 base_timestamp i64     53 base_sequence i32
//!  8 batch_length i32       35 max_timestamp i64      57 record_count i32
//! 12 leader_epoch i32       43 producer_id i64        61 records...
//! 16 magic i8               51 producer_epoch i16
//! 17 crc u32 (CRC-32C of bytes 21..end)
//! 21 attributes i16
//! 23 last_offset_delta i32
//! ```
//!
//! A broker never needs the records themselves on the produce path: it checks the header
//! against the bytes, checks the CRC, assigns offsets by rewriting `base_offset`, and stores
//! the batch as sent (compressed batches stay compressed). Uncompressed batches have their
//! record framing walked so that `record_count` is proven by the bytes; a compressed batch's
//! count is bounded instead.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::records::Compression;

use crate::ProtoError;

/// Size of the v2 batch header, up to and including `record_count`.
pub const HEADER_LEN: usize = 61;
/// Bytes counted by `batch_length` start after this offset.
pub const LENGTH_OFFSET: usize = 12;
/// The CRC covers everything from the attributes on.
const CRC_START: usize = 21;
/// Upper bound on the records claimed by one compressed batch (librdkafka's own
/// `batch.num.messages` maximum is one million).
pub const COMPRESSED_RECORDS_MAX: i32 = 1 << 24;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// The parsed fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`; checks only that the bytes are there and the
    /// magic is 2. Use [`validate_batch`] for a batch that came from outside.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, ProtoError> {
        if buf.len() < HEADER_LEN {
            return Err(ProtoError::CorruptBatch(format!(
                "{} bytes is shorter than a batch header",
                buf.len()
            )));
        }
        let mut b = buf;
        let h = BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            record_count: b.get_i32(),
        };
        if h.magic != 2 {
            return Err(ProtoError::UnsupportedMagic(h.magic));
        }
        Ok(h)
    }

    /// Total size of the batch on the wire, including the offset and length fields.
    pub fn total_len(&self) -> usize {
        LENGTH_OFFSET + self.batch_length.max(0) as usize
    }

    /// The compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Offsets the batch spans: `last_offset_delta + 1`. For a batch as a producer sends it
    /// this is its record count; a cleaned batch (compaction) keeps its span with fewer
    /// records, or none.
    pub fn offset_span(&self) -> i64 {
        i64::from(self.last_offset_delta.max(0)) + 1
    }

    /// The offset of the last record, once `base_offset` has been assigned.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(self.last_offset_delta as i64)
    }
}

/// CRC-32C of a batch's checksummed region.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(CRC_START..).unwrap_or_default())
}

/// Checks the stored CRC against the bytes.
pub fn verify_crc(batch: &[u8]) -> Result<(), ProtoError> {
    let h = BatchHeader::parse(batch)?;
    let computed = compute_crc(batch.get(..h.total_len()).unwrap_or(batch));
    if computed != h.crc {
        return Err(ProtoError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    Ok(())
}

/// Validates one batch that arrived from a client: length fields agree with the bytes,
/// CRC matches, counts are consistent. Returns its header.
pub fn validate_batch(batch: &[u8]) -> Result<BatchHeader, ProtoError> {
    let h = BatchHeader::parse(batch)?;
    if (h.batch_length as i64) < (HEADER_LEN - LENGTH_OFFSET) as i64 {
        return Err(ProtoError::CorruptBatch(format!(
            "batch_length {} too small",
            h.batch_length
        )));
    }
    if h.total_len() != batch.len() {
        return Err(ProtoError::CorruptBatch(format!(
            "batch_length {} disagrees with {} bytes",
            h.batch_length,
            batch.len()
        )));
    }
    verify_crc(batch)?;
    if h.record_count < 1 {
        return Err(ProtoError::CorruptBatch(format!("record_count {}", h.record_count)));
    }
    if h.last_offset_delta != h.record_count - 1 {
        return Err(ProtoError::CorruptBatch(format!(
            "last_offset_delta {} with record_count {}",
            h.last_offset_delta, h.record_count
        )));
    }
    let records = batch.get(HEADER_LEN..).unwrap_or_default();
    match h.compression() {
        0 => {
            let walked = count_records(records)?;
            if walked != h.record_count as usize {
                return Err(ProtoError::CorruptBatch(format!(
                    "record_count {} but {} records in the bytes",
                    h.record_count, walked
                )));
            }
        }
        1..=4 => {
            if h.record_count > COMPRESSED_RECORDS_MAX {
                return Err(ProtoError::CorruptBatch(format!(
                    "record_count {} exceeds {}",
                    h.record_count, COMPRESSED_RECORDS_MAX
                )));
            }
        }
        c => return Err(ProtoError::CorruptBatch(format!("unknown compression codec {c}"))),
    }
    Ok(h)
}

/// Counts length-prefixed records in an uncompressed records region, requiring that
/// they fill it exactly.
fn count_records(mut records: &[u8]) -> Result<usize, ProtoError> {
    let mut n = 0usize;
    while !records.is_empty() {
        let len = read_varint(&mut records)?;
        // Smallest record body: attributes, timestamp delta, offset delta, key length,
        // value length and header count, one byte each (null key and value, no headers).
        if len < RECORD_BODY_BYTES_MIN || len as usize > records.len() {
            return Err(ProtoError::CorruptBatch(format!("record length {len} out of range")));
        }
        records = records.get(len as usize..).unwrap_or_default();
        n += 1;
    }
    Ok(n)
}

const RECORD_BODY_BYTES_MIN: i64 = 6;

/// Reads a zigzag varint (as record lengths are written).
pub fn read_varint(buf: &mut &[u8]) -> Result<i64, ProtoError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(ProtoError::CorruptBatch("truncated varint".into()));
        };
        *buf = rest;
        value |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(ProtoError::CorruptBatch("varint too long".into()))
}

/// Splits a Produce request's `records` into validated batches.
pub fn split_batches(records: &Bytes) -> Result<Vec<(BatchHeader, Bytes)>, ProtoError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = records.get(pos..).unwrap_or_default();
        if rest.len() < HEADER_LEN {
            return Err(ProtoError::CorruptBatch(format!("{} trailing bytes", rest.len())));
        }
        let h = BatchHeader::parse(rest)?;
        let total = h.total_len();
        if h.batch_length < 0 || total > rest.len() {
            return Err(ProtoError::CorruptBatch(format!(
                "batch_length {} exceeds the {} bytes sent",
                h.batch_length,
                rest.len()
            )));
        }
        let bytes = records.slice(pos..pos + total);
        let h = validate_batch(&bytes)?;
        out.push((h, bytes));
        pos += total;
    }
    if out.is_empty() {
        return Err(ProtoError::CorruptBatch("no record batch".into()));
    }
    Ok(out)
}

/// The record batches of `payload`, back to back (a log entry carries one or more: the
/// batches of several Produce requests for a partition may share one entry), each with its
/// position. Stops with an error at bytes that are not a whole batch header and length.
pub fn batches(payload: &[u8]) -> impl Iterator<Item = Result<(usize, BatchHeader), ProtoError>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= payload.len() {
            return None;
        }
        let rest = payload.get(pos..).unwrap_or_default();
        let r = BatchHeader::parse(rest).and_then(|h| {
            if h.batch_length < 0 || h.total_len() > rest.len() || h.total_len() < HEADER_LEN {
                return Err(ProtoError::CorruptBatch(format!(
                    "batch_length {} does not fit the {} bytes left",
                    h.batch_length,
                    rest.len()
                )));
            }
            Ok((pos, h))
        });
        match &r {
            Ok((_, h)) => pos += h.total_len(),
            Err(_) => pos = payload.len(),
        }
        Some(r)
    })
}

/// Where in `payload` (a log entry of one or more placed batches) the first batch that
/// holds `offset` or a later one starts: a Fetch from the middle of an entry skips the
/// batches wholly before its offset. The entry's length when none does.
pub fn skip_before(payload: &[u8], offset: i64) -> usize {
    for b in batches(payload) {
        match b {
            Ok((pos, h)) if h.last_offset() >= offset => return pos,
            Ok(_) => {}
            Err(_) => return 0,
        }
    }
    payload.len()
}

/// Batches as a partition log stores them: each one's base offset (consecutive from
/// `base_offset`) and partition leader epoch written in (neither is covered by the CRC),
/// with the records they hold together and their largest timestamp. `payload` holds one
/// batch or several back to back; it is patched in place when it is the bytes' only
/// holder, else copied.
pub fn place(payload: Bytes, base_offset: i64, leader_epoch: i32) -> Result<(Bytes, u32, i64), ProtoError> {
    let mut layout = Vec::with_capacity(1);
    for b in batches(&payload) {
        let (pos, h) = b?;
        let count = u32::try_from(h.offset_span())
            .map_err(|_| ProtoError::CorruptBatch(format!("offset span {}", h.offset_span())))?;
        layout.push((pos, count, h.max_timestamp));
    }
    if layout.is_empty() {
        return Err(ProtoError::CorruptBatch("no record batch".into()));
    }
    let mut owned = payload
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let (mut next, mut total, mut max_ts) = (base_offset, 0u32, i64::MIN);
    for (pos, count, ts) in layout {
        if let Some(b) = owned.get_mut(pos..) {
            set_base_offset(b, next);
            set_leader_epoch(b, leader_epoch);
        }
        next = next.saturating_add(count as i64);
        total = total.saturating_add(count);
        max_ts = max_ts.max(ts);
    }
    Ok((owned.freeze(), total, max_ts))
}

/// Sets `base_offset` (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if let Some(b) = batch.get_mut(0..8) {
        b.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Sets `partition_leader_epoch` (not covered by the CRC).
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    if let Some(b) = batch.get_mut(12..16) {
        b.copy_from_slice(&epoch.to_be_bytes());
    }
}

/// Marks the batch as LogAppendTime with `now_ms` as its max timestamp, and re-seals the CRC.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = match batch.get(21..23) {
        Some(&[a, b]) => i16::from_be_bytes([a, b]),
        _ => 0,
    } | ATTR_LOG_APPEND_TIME;
    if let Some(b) = batch.get_mut(21..23) {
        b.copy_from_slice(&attrs.to_be_bytes());
    }
    if let Some(b) = batch.get_mut(35..43) {
        b.copy_from_slice(&now_ms.to_be_bytes());
    }
    let crc = compute_crc(batch);
    if let Some(b) = batch.get_mut(17..21) {
        b.copy_from_slice(&crc.to_be_bytes());
    }
}

/// One record for [`encode_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp: i64,
}

/// Encodes records as one v2 batch (relative offsets from 0, no producer id), as Keel's own
/// writers (the internal offsets topic, the command-line tools) need.
pub fn encode_batch(
    records: &[NewRecord],
    compression: kafka_protocol::records::Compression,
) -> Result<Bytes, ProtoError> {
    encode_batch_of(records, compression, None, None)
}

/// As [`encode_batch`], as a transactional batch of `producer` (id, epoch) without
/// sequence numbers, as a coordinator writes a transaction's offset commits.
pub fn encode_transactional_batch(records: &[NewRecord], producer: (i64, i16)) -> Result<Bytes, ProtoError> {
    encode_batch_of(
        records,
        kafka_protocol::records::Compression::None,
        Some(producer),
        None,
    )
}

/// As [`encode_batch`], as a transactional producer writes it: producer id and epoch,
/// sequence numbers from `base_sequence`.
pub fn encode_producer_batch(
    records: &[NewRecord],
    producer: (i64, i16),
    base_sequence: i32,
) -> Result<Bytes, ProtoError> {
    encode_batch_of(
        records,
        kafka_protocol::records::Compression::None,
        Some(producer),
        Some(base_sequence),
    )
}

fn encode_batch_of(
    records: &[NewRecord],
    compression: kafka_protocol::records::Compression,
    producer: Option<(i64, i16)>,
    base_sequence: Option<i32>,
) -> Result<Bytes, ProtoError> {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.map(|p| p.0).unwrap_or(-1),
            producer_epoch: producer.map(|p| p.1).unwrap_or(-1),
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: match (producer, base_sequence) {
                (Some(_), Some(base)) => base.wrapping_add(i as i32),
                (Some(_), None) => -1,
                (None, _) => i as i32,
            },
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| ProtoError::Malformed(format!("encoding a batch: {e:#}")))?;
    Ok(buf.freeze())
}

/// Decompresses `src` (compressed with `c`) to at most `inflated_max` bytes; larger output
/// is refused without being produced (Snappy, which cannot expand more than about 32
/// times, is checked after).
pub(crate) fn inflate(src: Bytes, c: Compression, inflated_max: usize) -> anyhow::Result<Bytes> {
    use bytes::Buf;
    use std::io::Read;
    let limit = inflated_max as u64 + 1;
    let mut out = Vec::new();
    match c {
        Compression::None => return Ok(src),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(src.reader())
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Lz4 => {
            lz4::Decoder::new(src.reader())?.take(limit).read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(src.reader())?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Snappy => {
            use kafka_protocol::compression::{Decompressor, Snappy};
            let mut src = src;
            out = Snappy::decompress(&mut src, |b: &mut Bytes| Ok(b.to_vec()))?;
        }
    }
    if out.len() > inflated_max {
        anyhow::bail!("batch inflates past {inflated_max} bytes");
    }
    Ok(Bytes::from(out))
}

/// Indexes (within the batch) of the records that have no key. A compacted topic keeps the
/// last record of each key, so it refuses keyless records. Compressed batches are inflated
/// to at most `inflated_max` bytes; a batch that inflates further is refused as corrupt.
pub fn keyless_records(batch: &Bytes, inflated_max: usize) -> Result<Vec<i32>, ProtoError> {
    use kafka_protocol::records::RecordBatchDecoder;
    let inflate = |src: &mut Bytes, c: Compression| inflate(std::mem::take(src), c, inflated_max);
    let mut buf = batch.clone();
    let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(inflate))
        .map_err(|e| ProtoError::CorruptBatch(format!("{e:#}")))?;
    Ok(set
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key.is_none())
        .map(|(i, _)| i as i32)
        .collect())
}

/// Where in `payload` (placed batches back to back) the batches wholly before `offset` end:
/// a read that must stop at `offset` (the last stable offset) keeps `payload[..end]`.
/// Batches never straddle the offsets a reader stops at, which are batch starts.
pub fn take_before(payload: &[u8], offset: i64) -> usize {
    let mut end = 0;
    for b in batches(payload) {
        match b {
            Ok((pos, h)) if h.base_offset < offset => end = pos + h.total_len(),
            _ => return end,
        }
    }
    end
}

/// One record kept by the log cleaner, for [`rewrite_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

fn put_varint(buf: &mut bytes::BytesMut, v: i64) {
    use bytes::BufMut;
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn put_varbytes(buf: &mut bytes::BytesMut, b: Option<&[u8]>) {
    use bytes::BufMut;
    match b {
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
        None => put_varint(buf, -1),
    }
}

fn get_varbytes(buf: &mut &[u8], whole: &Bytes) -> Result<Option<Bytes>, ProtoError> {
    let len = read_varint(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    let b = buf
        .get(..len)
        .ok_or_else(|| ProtoError::CorruptBatch("record field runs past its record".into()))?;
    // A slice of `whole`, not a copy.
    let start = b.as_ptr() as usize - whole.as_ptr() as usize;
    *buf = buf.get(len..).unwrap_or_default();
    Ok(Some(whole.slice(start..start + len)))
}

/// Every record of the batch at the start of `batch`, with its absolute offset and
/// timestamp and its headers as written (duplicates kept), inflating a compressed batch to
/// at most `inflated_max` bytes.
pub fn decode_records(batch: &Bytes, inflated_max: usize) -> Result<Vec<KeptRecord>, ProtoError> {
    let h = BatchHeader::parse(batch)?;
    let region = batch
        .get(HEADER_LEN..h.total_len())
        .ok_or_else(|| ProtoError::CorruptBatch("batch shorter than its length".into()))?;
    let region = batch.slice_ref(region);
    let region = match h.compression() {
        0 => region,
        c => inflate(region, codec_of(c)?, inflated_max).map_err(|e| ProtoError::CorruptBatch(format!("{e:#}")))?,
    };
    let mut out = Vec::with_capacity(h.record_count.clamp(0, 1 << 16) as usize);
    let mut buf: &[u8] = &region;
    for _ in 0..h.record_count.max(0) {
        let len = read_varint(&mut buf)?;
        if len < 0 || len as usize > buf.len() {
            return Err(ProtoError::CorruptBatch(format!("record length {len} out of range")));
        }
        let (mut rec, rest) = buf.split_at(len as usize);
        buf = rest;
        let (_attributes, r) = rec
            .split_first()
            .ok_or_else(|| ProtoError::CorruptBatch("empty record".into()))?;
        rec = r;
        let ts_delta = read_varint(&mut rec)?;
        let offset_delta = read_varint(&mut rec)?;
        let key = get_varbytes(&mut rec, &region)?;
        let value = get_varbytes(&mut rec, &region)?;
        let n = read_varint(&mut rec)?;
        if n < 0 || n as usize > rec.len() {
            return Err(ProtoError::CorruptBatch(format!("header count {n}")));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = get_varbytes(&mut rec, &region)?.unwrap_or_default();
            let v = get_varbytes(&mut rec, &region)?;
            headers.push((k, v));
        }
        out.push(KeptRecord {
            offset: h.base_offset.saturating_add(offset_delta),
            timestamp: h.base_timestamp.saturating_add(ts_delta),
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// A cleaned copy of the batch `h` holding only `kept` (uncompressed): the same base
/// offset, offset span (`lastOffsetDelta`), leader epoch, producer id, epoch and base
/// sequence, timestamps and attributes other than compression, so readers, replicas and
/// producer state see the offsets and sequences it spans as before. With nothing kept it
/// is an empty batch, which readers step over by its span (as Kafka's cleaner leaves them).
pub fn rewrite_batch(h: &BatchHeader, kept: &[KeptRecord]) -> Bytes {
    use bytes::BufMut;
    let mut records = bytes::BytesMut::new();
    let mut body = bytes::BytesMut::new();
    for r in kept {
        body.clear();
        body.put_i8(0);
        put_varint(&mut body, r.timestamp.saturating_sub(h.base_timestamp));
        put_varint(&mut body, r.offset.saturating_sub(h.base_offset));
        put_varbytes(&mut body, r.key.as_deref());
        put_varbytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_varbytes(&mut body, Some(k));
            put_varbytes(&mut body, v.as_deref());
        }
        put_varint(&mut records, body.len() as i64);
        records.put_slice(&body);
    }
    let mut b = bytes::BytesMut::with_capacity(HEADER_LEN + records.len());
    b.put_i64(h.base_offset);
    b.put_i32((HEADER_LEN - LENGTH_OFFSET + records.len()) as i32);
    b.put_i32(h.partition_leader_epoch);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(h.attributes & !ATTR_COMPRESSION_MASK);
    b.put_i32(h.last_offset_delta);
    b.put_i64(h.base_timestamp);
    b.put_i64(h.max_timestamp);
    b.put_i64(h.producer_id);
    b.put_i16(h.producer_epoch);
    b.put_i32(h.base_sequence);
    b.put_i32(kept.len() as i32);
    b.put_slice(&records);
    let crc = compute_crc(&b);
    if let Some(c) = b.get_mut(17..21) {
        c.copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// The batch at the start of `batch` with its records region recompressed with `codec`
/// (Kafka's codec ids, 0 for none), for a topic whose compression.type names a codec:
/// every other field, and every record's bytes, as sent. A batch already in `codec` is
/// returned as it is. A compressed batch inflates to at most `inflated_max` bytes.
pub fn recompress(batch: &Bytes, codec: i16, inflated_max: usize) -> Result<Bytes, ProtoError> {
    use bytes::BufMut;
    use kafka_protocol::compression::Compressor;
    let h = BatchHeader::parse(batch)?;
    if h.compression() == codec {
        return Ok(batch.clone());
    }
    let region = batch
        .get(HEADER_LEN..h.total_len())
        .ok_or_else(|| ProtoError::CorruptBatch("batch shorter than its length".into()))?;
    let region = batch.slice_ref(region);
    let region = match codec_of(h.compression())? {
        Compression::None => region,
        c => inflate(region, c, inflated_max).map_err(|e| ProtoError::CorruptBatch(format!("{e:#}")))?,
    };
    fn put(out: &mut bytes::BytesMut, region: &[u8]) -> anyhow::Result<()> {
        out.put_slice(region);
        Ok(())
    }
    let mut packed = bytes::BytesMut::with_capacity(region.len() / 2 + 64);
    let done = match codec_of(codec)? {
        Compression::None => put(&mut packed, &region),
        Compression::Gzip => kafka_protocol::compression::Gzip::compress(&mut packed, |b| put(b, &region)),
        Compression::Snappy => kafka_protocol::compression::Snappy::compress(&mut packed, |b| put(b, &region)),
        Compression::Lz4 => kafka_protocol::compression::Lz4::compress(&mut packed, |b| put(b, &region)),
        Compression::Zstd => kafka_protocol::compression::Zstd::compress(&mut packed, |b| put(b, &region)),
    };
    done.map_err(|e| ProtoError::Malformed(format!("compressing a batch: {e:#}")))?;
    let mut b = bytes::BytesMut::with_capacity(HEADER_LEN + packed.len());
    b.put_slice(
        batch
            .get(..HEADER_LEN)
            .ok_or_else(|| ProtoError::CorruptBatch("batch shorter than its header".into()))?,
    );
    b.put_slice(&packed);
    let length = (b.len() - LENGTH_OFFSET) as i32;
    if let Some(x) = b.get_mut(8..12) {
        x.copy_from_slice(&length.to_be_bytes());
    }
    let attributes = (h.attributes & !ATTR_COMPRESSION_MASK) | codec;
    if let Some(x) = b.get_mut(21..23) {
        x.copy_from_slice(&attributes.to_be_bytes());
    }
    let crc = compute_crc(&b);
    if let Some(x) = b.get_mut(17..21) {
        x.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(b.freeze())
}

fn codec_of(id: i16) -> Result<Compression, ProtoError> {
    Ok(match id {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => return Err(ProtoError::CorruptBatch(format!("unknown compression codec {other}"))),
    })
}

/// An empty batch spanning `span` offsets from `base_offset`, with no producer: what the
/// cleaner leaves for a run of batches none of whose records remain.
pub fn empty_batch(base_offset: i64, span: i64, leader_epoch: i32, timestamp: i64) -> Bytes {
    let h = BatchHeader {
        base_offset,
        batch_length: 0,
        partition_leader_epoch: leader_epoch,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: (span.max(1) - 1).min(i64::from(i32::MAX)) as i32,
        base_timestamp: timestamp,
        max_timestamp: timestamp,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: 0,
    };
    rewrite_batch(&h, &[])
}

/// The two kinds of control record a transaction coordinator writes.
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

/// Keel's own control record: the partition's records before the offset in its value are
/// deleted (DeleteRecords). Clients skip control records of a type they do not know.
pub const CONTROL_LOG_START: i16 = 100;

/// The control batch DeleteRecords appends: records before `offset` are deleted.
pub fn encode_log_start_batch(offset: i64, timestamp: i64) -> Result<Bytes, ProtoError> {
    let mut value = Vec::with_capacity(10);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&offset.to_be_bytes());
    encode_control(CONTROL_LOG_START, value, None, timestamp)
}

/// One control batch of one record: key = version 0 and `kind`, then `value`; with
/// `producer` (id, epoch) a transactional one.
fn encode_control(
    kind: i16,
    value: Vec<u8>,
    producer: Option<(i64, i16)>,
    timestamp: i64,
) -> Result<Bytes, ProtoError> {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let record = Record {
        transactional: producer.is_some(),
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: producer.map(|p| p.0).unwrap_or(-1),
        producer_epoch: producer.map(|p| p.1).unwrap_or(-1),
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: kafka_protocol::records::Compression::None,
        },
    )
    .map_err(|e| ProtoError::Malformed(format!("encoding a control batch: {e:#}")))?;
    Ok(buf.freeze())
}

/// The offset a [`CONTROL_LOG_START`] batch at the start of `batch` deletes records before.
pub fn log_start_of(batch: &[u8]) -> Option<i64> {
    let (kind, _) = control_record(batch)?;
    if kind != CONTROL_LOG_START {
        return None;
    }
    let h = BatchHeader::parse(batch).ok()?;
    let mut rec = batch.get(HEADER_LEN..h.total_len())?;
    let _len = read_varint(&mut rec).ok()?;
    rec = rec.get(1..)?;
    let _timestamp_delta = read_varint(&mut rec).ok()?;
    let _offset_delta = read_varint(&mut rec).ok()?;
    let key_len = read_varint(&mut rec).ok()?;
    rec = rec.get(usize::try_from(key_len).ok()?..)?;
    let value_len = read_varint(&mut rec).ok()?;
    if value_len < 10 {
        return None;
    }
    Some(i64::from_be_bytes(rec.get(2..10)?.try_into().ok()?))
}

/// A transaction marker: a control batch of one record ending `producer_id`'s transaction
/// in a partition (commit or abort), as Kafka writes it.
pub fn encode_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Result<Bytes, ProtoError> {
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let kind = if commit { CONTROL_COMMIT } else { CONTROL_ABORT };
    encode_control(kind, value, Some((producer_id, producer_epoch)), timestamp)
}

/// The control record type (commit or abort) of a control batch at the start of `batch`:
/// `None` when it is not a control batch or its first record is not a readable control
/// record (control batches are written uncompressed).
pub fn control_type(batch: &[u8]) -> Option<i16> {
    control_record(batch).map(|(kind, _)| kind)
}

/// A control batch's record type and the coordinator epoch its value carries (-1 when the
/// value is absent).
pub fn control_record(batch: &[u8]) -> Option<(i16, i32)> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_control() || h.compression() != 0 || h.record_count < 1 {
        return None;
    }
    let mut rec = batch.get(HEADER_LEN..h.total_len())?;
    let _len = read_varint(&mut rec).ok()?;
    let (_attributes, rest) = rec.split_first()?;
    rec = rest;
    let _timestamp_delta = read_varint(&mut rec).ok()?;
    let _offset_delta = read_varint(&mut rec).ok()?;
    let key_len = read_varint(&mut rec).ok()?;
    if !(4..=1024).contains(&key_len) {
        return None;
    }
    let kind = i16::from_be_bytes(rec.get(2..4)?.try_into().ok()?);
    rec = rec.get(key_len as usize..)?;
    let value_len = read_varint(&mut rec).ok()?;
    let epoch = match rec.get(2..6) {
        Some(v) if value_len >= 6 => i32::from_be_bytes(v.try_into().ok()?),
        _ => -1,
    };
    Some((kind, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;

    pub(crate) fn encode(n: usize, compression: Compression) -> Bytes {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value-{i}"))),
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect();
        encode_batch(&records, compression).unwrap()
    }

    /// A well-formed batch from the reference encoder validates, with every codec.
    #[test]
    fn encoder_batches_validate() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encode(10, c);
            let batches = split_batches(&b).unwrap();
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].0.record_count, 10);
            assert_eq!(batches[0].0.compression(), c as i16);
        }
    }

    /// Recompressing from and to every codec keeps every record, the header's other
    /// fields and a valid CRC; a batch already in the codec comes back unchanged.
    #[test]
    fn recompressed_batches_keep_their_records() {
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for from in codecs {
            let sent = encode(50, from);
            let original = decode_records(&sent, 1 << 20).unwrap();
            let h0 = BatchHeader::parse(&sent).unwrap();
            for to in codecs {
                let out = recompress(&sent, to as i16, 1 << 20).unwrap();
                let h = validate_batch(&out).unwrap();
                assert_eq!(h.compression(), to as i16, "{from:?} -> {to:?}");
                assert_eq!(decode_records(&out, 1 << 20).unwrap(), original, "{from:?} -> {to:?}");
                assert_eq!(
                    (
                        h.base_timestamp,
                        h.max_timestamp,
                        h.last_offset_delta,
                        h.record_count,
                        h.producer_id
                    ),
                    (
                        h0.base_timestamp,
                        h0.max_timestamp,
                        h0.last_offset_delta,
                        h0.record_count,
                        h0.producer_id
                    ),
                );
                assert_eq!(
                    h.attributes & !ATTR_COMPRESSION_MASK,
                    h0.attributes & !ATTR_COMPRESSION_MASK
                );
                if from == to {
                    assert_eq!(out, sent);
                }
            }
        }
        // A batch that would inflate past the bound is refused, not inflated.
        let big = encode(2000, Compression::Gzip);
        assert!(recompress(&big, 3, 1024).is_err());
    }

    /// Several batches in one payload get consecutive base offsets and the leader epoch,
    /// keep valid CRCs, and a read from the middle skips the batches before its offset.
    #[test]
    fn several_batches_are_placed_back_to_back() {
        let (a, b, c) = (
            encode(3, Compression::None),
            encode(1, Compression::Lz4),
            encode(5, Compression::None),
        );
        let mut joined = BytesMut::new();
        for x in [&a, &b, &c] {
            joined.extend_from_slice(x);
        }
        let (placed, count, max_ts) = place(joined.freeze(), 100, 7).unwrap();
        assert_eq!(count, 9);
        assert_eq!(max_ts, 1_700_000_000_004);
        let hs: Vec<BatchHeader> = batches(&placed).map(|r| r.unwrap().1).collect();
        assert_eq!(
            hs.iter()
                .map(|h| (h.base_offset, h.partition_leader_epoch))
                .collect::<Vec<_>>(),
            vec![(100, 7), (103, 7), (104, 7)]
        );
        assert_eq!(split_batches(&placed).unwrap().len(), 3, "every batch still validates");
        assert_eq!(skip_before(&placed, 100), 0);
        assert_eq!(skip_before(&placed, 102), 0);
        assert_eq!(skip_before(&placed, 103), a.len());
        assert_eq!(skip_before(&placed, 104), a.len() + b.len());
        assert_eq!(skip_before(&placed, 109), placed.len());
        // Bytes that are not whole batches are refused, not placed.
        let torn = placed.slice(..placed.len() - 1);
        assert!(place(torn, 0, 0).is_err());
        assert!(place(Bytes::new(), 0, 0).is_err());
    }

    /// A flipped byte anywhere in the CRC-covered region is caught.
    #[test]
    fn flipped_byte_fails_crc() {
        let b = encode(3, Compression::None);
        for i in CRC_START..b.len() {
            let mut v = b.to_vec();
            v[i] ^= 0x40;
            assert!(split_batches(&Bytes::from(v)).is_err(), "flip at {i} not caught");
        }
    }

    /// A batch whose header claims two billion records is refused without allocating.
    #[test]
    fn huge_record_count_refused() {
        let b = encode(1, Compression::None);
        let mut v = b.to_vec();
        v[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        v[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        let crc = compute_crc(&v);
        v[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            split_batches(&Bytes::from(v)),
            Err(ProtoError::CorruptBatch(_))
        ));
    }

    /// Lengths that point past the bytes, or truncated batches, are refused.
    #[test]
    fn truncated_and_overlong_refused() {
        let b = encode(5, Compression::None);
        assert!(split_batches(&b.slice(..b.len() - 1)).is_err());
        assert!(split_batches(&b.slice(..30)).is_err());
        let mut v = b.to_vec();
        v[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(split_batches(&Bytes::from(v)).is_err());
        assert!(split_batches(&Bytes::new()).is_err());
    }

    /// A record with a null key and a null value (six bytes) is valid.
    #[test]
    fn null_key_and_value_record_validates() {
        let rec = NewRecord {
            key: None,
            value: None,
            timestamp: 1,
        };
        let batch = encode_batch(&[rec.clone(), rec], Compression::None).unwrap();
        let batches = split_batches(&batch).unwrap();
        assert_eq!(batches[0].0.record_count, 2);
    }

    /// LogAppendTime rewrites keep the batch valid and carry the new timestamp.
    #[test]
    fn log_append_time_reseals_crc() {
        let b = encode(4, Compression::Lz4);
        let mut v = b.to_vec();
        set_base_offset(&mut v, 1000);
        set_log_append_time(&mut v, 42);
        let h = validate_batch(&v).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!((h.base_offset, h.max_timestamp, h.last_offset()), (1000, 42, 1003));
    }

    /// Keyless records are found by index in plain and compressed batches; a compressed
    /// batch that inflates past the limit is refused rather than inflated.
    #[test]
    fn keyless_records_are_found_and_inflation_is_bounded() {
        let records: Vec<NewRecord> = (0..4)
            .map(|i| NewRecord {
                key: (i % 2 == 1).then(|| Bytes::from_static(b"k")),
                value: Some(Bytes::from(vec![0u8; 100_000])),
                timestamp: 1,
            })
            .collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Lz4,
            Compression::Snappy,
        ] {
            let b = encode_batch(&records, c).unwrap();
            assert_eq!(keyless_records(&b, 1 << 20).unwrap(), vec![0, 2], "{c:?}");
            if c != Compression::None {
                assert!(b.len() < 50_000, "{c:?} did not compress");
                assert!(keyless_records(&b, 200_000).is_err(), "{c:?} inflated past the limit");
            }
        }
    }

    /// A marker encodes as a valid control batch whose type reads back; data batches and
    /// garbage have no control type; `take_before` keeps whole batches below an offset.
    #[test]
    fn control_batches_and_cutting_at_an_offset() {
        for commit in [true, false] {
            let b = encode_control_batch(77, 3, commit, 5, 1_000).unwrap();
            let h = validate_batch(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (77, 3, -1));
            assert_eq!(
                control_record(&b),
                Some((if commit { CONTROL_COMMIT } else { CONTROL_ABORT }, 5))
            );
        }
        let data = encode_batch(
            &[NewRecord {
                key: Some(Bytes::from_static(b"k")),
                value: None,
                timestamp: 1,
            }],
            kafka_protocol::records::Compression::None,
        )
        .unwrap();
        assert_eq!(control_type(&data), None);
        assert_eq!(control_type(b"\x00\x01"), None);
        let (placed, _, _) = place(Bytes::from([data.clone(), data.clone(), data.clone()].concat()), 10, 1).unwrap();
        assert_eq!(take_before(&placed, 10), 0);
        assert_eq!(take_before(&placed, 11), data.len());
        assert_eq!(take_before(&placed, 12), 2 * data.len());
        assert_eq!(take_before(&placed, 99), placed.len());
    }

    /// A batch's records decode with their offsets, keys, values and headers (duplicates
    /// kept), compressed or not; a cleaned copy keeps base offset, span, producer fields and
    /// a valid CRC, and decodes to what was kept; an empty batch spans its offsets.
    #[test]
    fn cleaned_batches_keep_their_span() {
        use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        for compression in [Compression::None, Compression::Lz4, Compression::Gzip] {
            let records: Vec<Record> = (0..4)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: 9,
                    producer_epoch: 2,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    sequence: 7 + i as i32,
                    timestamp: 1_000 + i,
                    key: Some(Bytes::from(format!("k{i}"))),
                    value: (i != 2).then(|| Bytes::from(format!("v{i}"))),
                    headers: [(
                        kafka_protocol::protocol::StrBytes::from_static_str("h"),
                        Some(Bytes::from_static(b"x")),
                    )]
                    .into_iter()
                    .collect(),
                })
                .collect();
            let mut buf = bytes::BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression,
                },
            )
            .unwrap();
            let (placed, span, _) = place(buf.freeze(), 100, 3).unwrap();
            assert_eq!(span, 4);
            let decoded = decode_records(&placed, 1 << 20).unwrap();
            assert_eq!(decoded.len(), 4);
            assert_eq!(decoded[1].offset, 101);
            assert_eq!(decoded[1].timestamp, 1_001);
            assert_eq!(decoded[2].value, None);
            assert_eq!(
                decoded[3].headers,
                vec![(Bytes::from_static(b"h"), Some(Bytes::from_static(b"x")))]
            );
            let h = BatchHeader::parse(&placed).unwrap();
            // Keep the middle two: the first and last offsets of the span go.
            let kept = vec![decoded[1].clone(), decoded[2].clone()];
            let cleaned = rewrite_batch(&h, &kept);
            verify_crc(&cleaned).unwrap();
            let ch = BatchHeader::parse(&cleaned).unwrap();
            assert_eq!((ch.base_offset, ch.offset_span(), ch.record_count), (100, 4, 2));
            assert_eq!((ch.producer_id, ch.producer_epoch, ch.base_sequence), (9, 2, 7));
            assert_eq!(ch.compression(), 0);
            assert_eq!(decode_records(&cleaned, 1 << 20).unwrap(), kept);
            // A follower placing the cleaned batch gives it the same offsets.
            let (again, span, _) = place(cleaned.clone(), 100, 3).unwrap();
            assert_eq!((span, again), (4, cleaned));
        }
        let e = empty_batch(50, 7, 1, 5);
        verify_crc(&e).unwrap();
        let eh = BatchHeader::parse(&e).unwrap();
        assert_eq!(
            (eh.base_offset, eh.offset_span(), eh.record_count, eh.producer_id),
            (50, 7, 0, -1)
        );
        assert!(decode_records(&e, 1024).unwrap().is_empty());
    }

    /// DeleteRecords' control batch says the offset it deletes before; others say nothing.
    #[test]
    fn log_start_batches_round_trip() {
        let b = encode_log_start_batch(12_345, 7).unwrap();
        let h = validate_batch(&b).unwrap();
        assert!(h.is_control() && !h.is_transactional());
        assert_eq!(log_start_of(&b), Some(12_345));
        assert_eq!(control_type(&b), Some(CONTROL_LOG_START));
        assert_eq!(log_start_of(&encode_control_batch(1, 0, true, 3, 7).unwrap()), None);
    }
}
