//! One log entry and its on-disk envelope.
//!
//! ```text
//!  0 len u32            bytes after this field
//!  4 crc u32            CRC-32C of bytes 8 .. 4+len
//!  8 index u64         24 kind u8, 3 bytes zero     32 offset i64
//! 16 term u64          28 offset_count u32          40 max_timestamp i64
//! 48 payload
//! ```
//!
//! The CRC covers the whole entry, payload included, so a read that passes it has read
//! exactly what was written. Data payloads also carry the Kafka batch's own CRC, which the
//! broker checks before the entry is written.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ENTRY_BYTES_MAX;

/// Size of the envelope before the payload.
pub const HEADER_LEN: usize = 48;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A Kafka record batch covering `offset_count` offsets.
    Data,
    /// A Raft blank entry (a new leader's first entry); covers no offsets.
    Blank,
    /// A Raft membership change; the payload is the serialized membership.
    Membership,
}

impl EntryKind {
    fn to_u8(self) -> u8 {
        match self {
            EntryKind::Data => 1,
            EntryKind::Blank => 2,
            EntryKind::Membership => 3,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(EntryKind::Data),
            2 => Some(EntryKind::Blank),
            3 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log (the Raft index).
    pub index: u64,
    /// Raft term in which the entry was created (0 on a single node).
    pub term: u64,
    pub kind: EntryKind,
    /// First record offset covered; for non-data entries, the next offset at that point.
    pub offset: i64,
    /// Number of offsets covered (0 for non-data entries).
    pub offset_count: u32,
    /// Newest record timestamp in the entry, for time lookups and retention.
    pub max_timestamp: i64,
    pub payload: Bytes,
}

impl Entry {
    /// A data entry holding one record batch.
    pub fn data(index: u64, term: u64, offset: i64, offset_count: u32, max_timestamp: i64, payload: Bytes) -> Self {
        Entry {
            index,
            term,
            kind: EntryKind::Data,
            offset,
            offset_count,
            max_timestamp,
            payload,
        }
    }

    /// A non-data entry at `offset` (the log's next offset), covering none.
    pub fn control(index: u64, term: u64, kind: EntryKind, offset: i64, payload: Bytes) -> Self {
        Entry {
            index,
            term,
            kind,
            offset,
            offset_count: 0,
            max_timestamp: -1,
            payload,
        }
    }

    /// The offset after this entry.
    pub fn next_offset(&self) -> i64 {
        self.offset + self.offset_count as i64
    }

    /// Bytes this entry takes on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the envelope and payload to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.reserve(self.encoded_len());
        buf.put_u32((self.encoded_len() - 4) as u32);
        buf.put_u32(0);
        buf.put_u64(self.index);
        buf.put_u64(self.term);
        buf.put_u8(self.kind.to_u8());
        buf.put_bytes(0, 3);
        buf.put_u32(self.offset_count);
        buf.put_i64(self.offset);
        buf.put_i64(self.max_timestamp);
        buf.put_slice(&self.payload);
        let crc = crc32c::crc32c(buf.get(start + 8..).unwrap_or_default());
        if let Some(b) = buf.get_mut(start + 4..start + 8) {
            b.copy_from_slice(&crc.to_be_bytes());
        }
    }
}

/// Why bytes at a position are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the entry needs: a torn write at the tail, or a short read.
    Incomplete { needed: usize },
    /// The bytes are there and wrong.
    Invalid(String),
}

/// Reads the total entry length from the first four bytes, bounded.
pub fn peek_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let Some(mut b) = buf.get(..4) else {
        return Err(DecodeError::Incomplete { needed: 4 });
    };
    let len = b.get_u32() as usize;
    if !(HEADER_LEN - 4..=ENTRY_BYTES_MAX).contains(&len) {
        return Err(DecodeError::Invalid(format!("entry length {len} out of range")));
    }
    Ok(len + 4)
}

/// Decodes one entry at the start of `buf`, verifying its CRC. Returns the entry and its
/// encoded length. `payload` shares `buf`'s memory.
pub fn decode(buf: &Bytes) -> Result<(Entry, usize), DecodeError> {
    let total = peek_len(buf)?;
    let Some(whole) = buf.get(..total) else {
        return Err(DecodeError::Incomplete { needed: total });
    };
    let mut h = whole;
    let _len = h.get_u32();
    let stored = h.get_u32();
    let computed = crc32c::crc32c(h);
    if stored != computed {
        return Err(DecodeError::Invalid(format!(
            "entry crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let index = h.get_u64();
    let term = h.get_u64();
    let kind_byte = h.get_u8();
    let kind =
        EntryKind::from_u8(kind_byte).ok_or_else(|| DecodeError::Invalid(format!("unknown entry kind {kind_byte}")))?;
    h.advance(3);
    let offset_count = h.get_u32();
    let offset = h.get_i64();
    let max_timestamp = h.get_i64();
    let payload = buf.slice(HEADER_LEN..total);
    Ok((
        Entry {
            index,
            term,
            kind,
            offset,
            offset_count,
            max_timestamp,
            payload,
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry::data(7, 2, 100, 5, 1234, Bytes::from_static(b"payload bytes"))
    }

    /// An entry round-trips through its envelope.
    #[test]
    fn round_trip() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        let (e, n) = decode(&buf.freeze()).unwrap();
        assert_eq!(e, sample());
        assert_eq!(n, sample().encoded_len());
    }

    /// Every single-byte flip is detected; every truncation is reported as incomplete.
    #[test]
    fn flips_and_truncations_detected() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        let good = buf.freeze();
        for i in 0..good.len() {
            let mut v = good.to_vec();
            v[i] ^= 0x01;
            assert!(decode(&Bytes::from(v)).is_err(), "flip at {i} passed");
        }
        for cut in 0..good.len() {
            assert!(matches!(
                decode(&good.slice(..cut)),
                Err(DecodeError::Incomplete { .. })
            ));
        }
    }
}
