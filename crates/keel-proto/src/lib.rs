//! Keel's Kafka wire layer, with no sockets and no storage.
//!
//! Bytes come in from a connection as length-prefixed frames. This crate turns them into
//! typed requests and typed responses back into frames:
//!
//! - [`frame`]: the 4-byte length prefix, bounded by a configured maximum request size.
//! - [`header`]: the request header, read defensively (api key, version, correlation id)
//!   before anything else is trusted, and the response header.
//! - [`versions`]: the API versions Keel advertises, exactly the ones its handlers serve,
//!   and the KIP-511 fallback for an ApiVersions request of an unknown version.
//! - [`batch`]: the 61-byte record-batch header (magic 2), parsed and bound-checked by
//!   hand, CRC-32C verification, and the in-place rewrites a broker does when it assigns
//!   offsets or LogAppendTime. Record payloads are never decompressed on the produce path.
//! - [`codec`]: request body decoding and response encoding through the `kafka-protocol`
//!   crate's message types, with every decoder error turned into a [`ProtoError`].
//!
//! Nothing here panics on external bytes: every length is checked before it is used.
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

pub mod batch;
pub mod codec;
pub mod frame;
pub mod header;
pub mod legacy;
pub mod versions;

pub use kafka_protocol;

/// Errors decoding or validating wire data. Each maps to one Kafka error code or to
/// closing the connection (see [`ProtoError::error_code`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {size} bytes exceeds the maximum request size of {max} bytes")]
    FrameTooLarge { size: i64, max: usize },
    #[error("negative or empty frame length {0}")]
    BadFrameLength(i32),
    #[error("request header truncated ({0} bytes)")]
    ShortHeader(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("api key {api_key} version {version} is not supported")]
    UnsupportedVersion { api_key: i16, version: i16 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported record batch magic {0} (only v2 batches are accepted)")]
    UnsupportedMagic(i8),
}

impl ProtoError {
    /// The Kafka error code a response carries for this error.
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            ProtoError::FrameTooLarge { .. } => E::MessageTooLarge.code(),
            ProtoError::BadFrameLength(_) | ProtoError::ShortHeader(_) | ProtoError::Malformed(_) => {
                E::InvalidRequest.code()
            }
            ProtoError::UnknownApiKey(_) | ProtoError::UnsupportedVersion { .. } => E::UnsupportedVersion.code(),
            ProtoError::CorruptBatch(_) | ProtoError::CrcMismatch { .. } => E::CorruptMessage.code(),
            ProtoError::UnsupportedMagic(_) => E::UnsupportedForMessageFormat.code(),
        }
    }
}
