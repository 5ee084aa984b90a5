//! Request and response headers.
//!
//! The first eight bytes of a request (api key, api version, correlation id) are read by
//! hand so that even a request Keel cannot decode gets an answer that the client can match
//! to its request: an UNSUPPORTED_VERSION response carries the right correlation id.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use crate::ProtoError;

/// The fixed prefix every request header version shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads the fixed prefix without consuming `frame`.
pub fn peek_prefix(frame: &[u8]) -> Result<RequestPrefix, ProtoError> {
    let mut b = frame;
    if b.len() < 8 {
        return Err(ProtoError::ShortHeader(frame.len()));
    }
    Ok(RequestPrefix {
        api_key: b.get_i16(),
        api_version: b.get_i16(),
        correlation_id: b.get_i32(),
    })
}

/// Decodes the full request header of a known API, leaving `frame` at the request body.
pub fn decode_header(frame: &mut Bytes, api_key: ApiKey, version: i16) -> Result<RequestHeader, ProtoError> {
    let header_version = api_key.request_header_version(version);
    RequestHeader::decode(frame, header_version).map_err(|e| ProtoError::Malformed(format!("request header: {e}")))
}

/// Writes a response header of `header_version` (0: correlation id; 1: plus empty tagged fields).
pub fn encode_response_header(buf: &mut BytesMut, correlation_id: i32, header_version: i16) {
    buf.put_i32(correlation_id);
    if header_version >= 1 {
        buf.put_u8(0); // no tagged fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request shorter than the fixed prefix is refused rather than read past its end.
    #[test]
    fn short_prefix_is_an_error() {
        assert_eq!(peek_prefix(&[0, 18, 0]), Err(ProtoError::ShortHeader(3)));
        let p = peek_prefix(&[0, 18, 0, 3, 0, 0, 0, 7, 99]).unwrap();
        assert_eq!((p.api_key, p.api_version, p.correlation_id), (18, 3, 7));
    }
}
