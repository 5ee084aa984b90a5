//! A request frame handed to a running single-node broker, as a connection hands it:
//! decoding, authentication state, every handler. Nothing may panic; the broker must
//! answer or close, never crash.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use keel_broker::{Broker, BrokerConfig};
use libfuzzer_sys::fuzz_target;

struct Node {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: keel_broker::FsyncPolicy::Never,
            ..BrokerConfig::default()
        };
        let broker = rt.block_on(Broker::open(config, 9092)).expect("broker");
        Node { rt, broker, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let n = node();
    let frame = Bytes::copy_from_slice(data);
    let b = n.broker.clone();
    n.rt.block_on(async move {
        // Long polls and produce waits are bounded by the request; cap them here too.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), keel_broker::dispatch::handle(&b, frame)).await;
    });
});
