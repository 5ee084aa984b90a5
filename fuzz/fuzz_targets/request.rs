//! A Kafka request frame (without its length prefix): the header, then the body of every
//! API and version Keel serves, decoded as the broker decodes them. Nothing may panic,
//! and no input may make the decoder reserve more memory than it holds.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(prefix) = keel_proto::header::peek_prefix(data) else { return };
    let Ok(api) = ApiKey::try_from(prefix.api_key) else { return };
    if !keel_proto::versions::is_servable(prefix.api_key, prefix.api_version) {
        return;
    }
    let mut body = Bytes::copy_from_slice(data);
    if keel_proto::header::decode_header(&mut body, api, prefix.api_version).is_err() {
        return;
    }
    if api == ApiKey::Produce && prefix.api_version < keel_proto::versions::PRODUCE_DECODE_MIN {
        let _ = keel_proto::legacy::decode_produce(&mut body);
        return;
    }
    let _ = RequestKind::decode(api, &mut body, prefix.api_version);
});
