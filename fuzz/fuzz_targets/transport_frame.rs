//! Node-to-node frames: the frame parser (length, checksum, header, group name) and the
//! bodies every frame kind carries, as a node decodes what a peer sends, and the
//! authentication handshake's messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_raft::transport::fuzzing::frame(data);
    keel_raft::auth::fuzzing::handshake(data);
});
