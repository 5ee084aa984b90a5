//! With a cluster secret, the node-to-node transport serves only peers that prove they hold
//! it: a node with the secret gets answers; a node without it, one with another secret, and
//! a plain TCP client writing a well-formed frame (the request a forwarded proposal would
//! be) get nothing handled, and each refusal is counted.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_raft::auth::ClusterSecret;
use keel_raft::Transport;
use tokio::net::TcpListener;

const SECRET: &str = "the cluster's shared secret";

/// A node serving an "echo" application route that counts the requests it handles.
async fn node(secret: Option<&str>) -> (Arc<Transport>, String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = Transport::new(1);
    if let Some(s) = secret {
        t.require_secret(ClusterSecret::new(s).unwrap());
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    t.set_app_handler(Arc::new(move |_, _, body| {
        h.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(body) })
    }));
    tokio::spawn(t.clone().serve(listener));
    (t, addr, handled)
}

fn peer(id: u64, addr: &str, secret: Option<&str>) -> Arc<Transport> {
    let p = Transport::new(id);
    if let Some(s) = secret {
        p.require_secret(ClusterSecret::new(s).unwrap());
    }
    p.set_peer(1, addr.to_string());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_holding_the_cluster_secret_are_served() {
    let (node, addr, handled) = node(Some(SECRET)).await;

    let good = peer(2, &addr, Some(SECRET));
    let answer = good
        .call_app(1, "echo", b"member", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"member");
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    let wrong = peer(3, &addr, Some("somebody else's secret"));
    let err = wrong
        .call_app(1, "echo", b"intruder", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("authentication"), "{err}");

    let open = peer(4, &addr, None);
    assert!(open
        .call_app(1, "echo", b"no secret", Duration::from_secs(2))
        .await
        .is_err());

    // A plain TCP client writing a well-formed application frame as node 2.
    let mut body = vec![4u8];
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&2u64.to_be_bytes());
    body.extend_from_slice(&4u16.to_be_bytes());
    body.extend_from_slice(b"echo");
    body.extend_from_slice(b"forged proposal: delete every topic");
    let crc = crc32c::crc32c(&body);
    let mut frame = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc.to_be_bytes());
    frame.extend_from_slice(&body);
    let a = addr.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&frame);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .unwrap();
    assert!(read.is_empty(), "the forged frame got an answer: {read:?}");

    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "a request from a peer without the secret was handled"
    );
    // Counted at once: the wrong secret and the forged frame (the peer without a secret
    // sent a frame shorter than a handshake, refused when the handshake times out).
    assert!(node.auth_failures() >= 2, "refusals counted: {}", node.auth_failures());
    // The member is still served after the refusals.
    let again = good
        .call_app(1, "echo", b"still", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&again[..], b"still");
}
