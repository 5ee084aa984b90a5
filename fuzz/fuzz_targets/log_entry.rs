//! Log entries as a segment file holds them (and as recovery reads a torn or flipped
//! tail): length peek and full decode with its checksum.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keel_log::entry::peek_len(data);
    let mut buf = Bytes::copy_from_slice(data);
    // Decode entries one after another, as a segment scan does.
    for _ in 0..64 {
        match keel_log::entry::decode(&buf) {
            Ok((_, used)) if used > 0 && used <= buf.len() => {
                let _ = buf.split_to(used);
            }
            _ => break,
        }
    }
});
