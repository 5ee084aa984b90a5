//! The 4-byte big-endian length prefix that precedes every Kafka request and response.

use crate::ProtoError;

/// Default cap on one request frame, as Kafka's `socket.request.max.bytes`.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

/// Validates a frame length read from the wire before any buffer is allocated for it.
pub fn check_frame_len(len: i32, max: usize) -> Result<usize, ProtoError> {
    if len <= 0 {
        return Err(ProtoError::BadFrameLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(ProtoError::FrameTooLarge { size: len as i64, max });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Negative, zero and over-limit lengths are refused; a length at the limit is accepted.
    #[test]
    fn frame_lengths_are_bounded() {
        assert_eq!(check_frame_len(-1, 10), Err(ProtoError::BadFrameLength(-1)));
        assert_eq!(check_frame_len(0, 10), Err(ProtoError::BadFrameLength(0)));
        assert!(matches!(check_frame_len(11, 10), Err(ProtoError::FrameTooLarge { .. })));
        assert_eq!(check_frame_len(10, 10), Ok(10));
    }
}
