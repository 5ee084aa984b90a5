//! Bytes from the network never crash a node's transport: garbage, bad checksums,
//! oversized lengths and undecodable bodies close the offending connection, and the
//! transport keeps serving its peers.

use std::io::Write;
use std::time::Duration;

use keel_raft::Transport;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_and_the_node_carries_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Transport::new(1);
    tokio::spawn(node.clone().serve(listener));
    node.set_app_handler(std::sync::Arc::new(|_, _, body| Box::pin(async move { Ok(body) })));

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let len = (next() % 300) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            // A plausible length with a random body (bad checksum).
            0 => {
                let n = (frame.len() as u32).to_be_bytes();
                frame.splice(0..0, n);
            }
            // A length far past the limit.
            1 => {
                frame.splice(0..0, u32::MAX.to_be_bytes());
            }
            // A valid checksum over an undecodable vote request for an unknown group.
            2 => {
                let mut body = vec![2u8];
                body.extend_from_slice(&7u64.to_be_bytes());
                body.extend_from_slice(&9u64.to_be_bytes());
                body.extend_from_slice(&3u16.to_be_bytes());
                body.extend_from_slice(b"a/0");
                body.extend_from_slice(&frame);
                let crc = crc32c::crc32c(&body);
                let mut f = ((body.len() + 4) as u32).to_be_bytes().to_vec();
                f.extend_from_slice(&crc.to_be_bytes());
                f.extend_from_slice(&body);
                frame = f;
            }
            _ => {}
        }
        let _ = s.write_all(&frame);
    }

    // Give the node time to read (and reject) all of it, then a real peer still gets answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peer = Transport::new(2);
    peer.set_peer(1, addr.to_string());
    let answer = peer
        .call_app(1, "echo", b"still here", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"still here");
}
