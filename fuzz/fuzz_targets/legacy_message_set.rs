//! Pre-0.11 message sets (Produce v0-2): the request body decoder and the conversion to
//! v2 record batches, which inflates compressed wrappers within a bound.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let set = Bytes::copy_from_slice(data);
    let _ = keel_proto::legacy::upconvert(&set, 4 * 1024 * 1024);
    let mut body = Bytes::copy_from_slice(data);
    if let Ok(req) = keel_proto::legacy::decode_produce(&mut body) {
        for (_, parts) in &req.topics {
            for (_, set) in parts {
                let _ = keel_proto::legacy::upconvert(set, 4 * 1024 * 1024);
            }
        }
    }
});
