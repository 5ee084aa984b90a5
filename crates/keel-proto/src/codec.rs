//! Typed request decoding and response encoding through the `kafka-protocol` crate.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::header::encode_response_header;
use crate::ProtoError;

/// Decodes a request body of a version the caller has already checked is servable.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, ProtoError> {
    T::decode(body, version).map_err(|e| ProtoError::Malformed(format!("{e:#}")))
}

/// Encodes a whole response frame: length prefix, header, body.
pub fn encode_response<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, ProtoError> {
    let header_version = api_key.response_header_version(version);
    let size = body
        .compute_size(version)
        .map_err(|e| ProtoError::Malformed(format!("response size: {e:#}")))?;
    let mut buf = BytesMut::with_capacity(size + 9);
    buf.put_i32(0);
    encode_response_header(&mut buf, correlation_id, header_version);
    body.encode(&mut buf, version)
        .map_err(|e| ProtoError::Malformed(format!("response encode: {e:#}")))?;
    patch_len(&mut buf);
    Ok(buf)
}

/// Writes the frame length into the first four bytes.
pub fn patch_len(buf: &mut BytesMut) {
    let len = (buf.len().saturating_sub(4)) as i32;
    if let Some(prefix) = buf.get_mut(..4) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
}
