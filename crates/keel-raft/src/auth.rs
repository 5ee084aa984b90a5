//! Mutual authentication of node-to-node connections with the cluster secret.
//!
//! When a cluster secret is set, every connection opens with a challenge-response
//! handshake before any frame, in which each side proves it holds the secret without
//! sending it (HMAC-SHA256 over both sides' fresh nonces and node ids):
//!
//! ```text
//! dialer   -> acceptor: MAGIC, dialer id (u64), dialer nonce (32 bytes)
//! acceptor -> dialer:   acceptor id (u64), acceptor nonce (32), acceptor proof (32)
//! dialer   -> acceptor: dialer proof (32)
//! ```
//!
//! A proof is HMAC(secret, role || dialer nonce || acceptor nonce || prover id || other id),
//! the role telling the two proofs apart so neither can be replayed as the other. The
//! dialer checks the acceptor's proof and that it is the node it meant to reach; the
//! acceptor checks the dialer's proof and from then on takes frames only in that node's
//! name. A peer without the secret, or a plain TCP client, gets nothing past the first
//! message. This authenticates peers; it does not encrypt or sign the frames that follow
//! (TLS on the transport is for that).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::NodeId;

/// Opens every authenticated connection (and tells a plain frame apart from it).
pub const MAGIC: &[u8; 10] = b"KEEL-AUTH1";
const NONCE: usize = 32;
const PROOF: usize = 32;
/// How long either side waits for the other's part of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster secret (at least 16 bytes), kept as the HMAC key it is used as.
#[derive(Clone)]
pub struct ClusterSecret(Hmac<Sha256>);

impl ClusterSecret {
    pub fn new(secret: impl AsRef<[u8]>) -> Result<ClusterSecret, String> {
        let s = secret.as_ref();
        if s.len() < 16 {
            return Err("the cluster secret must be at least 16 bytes".into());
        }
        <Hmac<Sha256> as Mac>::new_from_slice(s)
            .map(ClusterSecret)
            .map_err(|e| format!("cluster secret: {e}"))
    }

    fn proof(
        &self,
        role: &[u8],
        dialer_nonce: &[u8],
        acceptor_nonce: &[u8],
        prover: NodeId,
        other: NodeId,
    ) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(role);
        m.update(dialer_nonce);
        m.update(acceptor_nonce);
        m.update(&prover.to_be_bytes());
        m.update(&other.to_be_bytes());
        m
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

const ACCEPTOR: &[u8] = b"keel transport acceptor";
const DIALER: &[u8] = b"keel transport dialer";

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::fill(&mut n);
    n
}

/// The dialer's side: proves itself to `expect` and checks it is `expect`.
pub async fn dial<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    secret: &ClusterSecret,
    me: NodeId,
    expect: NodeId,
) -> Result<(), String> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mine = nonce();
        let mut hello = Vec::with_capacity(MAGIC.len() + 8 + NONCE);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&me.to_be_bytes());
        hello.extend_from_slice(&mine);
        s.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut reply = [0u8; 8 + NONCE + PROOF];
        s.read_exact(&mut reply)
            .await
            .map_err(|e| format!("no handshake reply: {e}"))?;
        let (id, rest) = reply.split_at(8);
        let (theirs, proof) = rest.split_at(NONCE);
        let acceptor = NodeId::from_be_bytes(id.try_into().map_err(|_| "short id")?);
        if acceptor != expect {
            return Err(format!("reached node {acceptor}, not node {expect}"));
        }
        secret
            .proof(ACCEPTOR, &mine, theirs, acceptor, me)
            .verify_slice(proof)
            .map_err(|_| format!("node {acceptor} does not hold the cluster secret"))?;
        let answer = secret
            .proof(DIALER, &mine, theirs, me, acceptor)
            .finalize()
            .into_bytes();
        s.write_all(&answer).await.map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
    .map_err(|_| "handshake timed out".to_string())?
}

/// The acceptor's side: returns the node the dialer proved to be.
pub async fn accept<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    secret: &ClusterSecret,
    me: NodeId,
) -> Result<NodeId, String> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut hello = [0u8; MAGIC.len() + 8 + NONCE];
        s.read_exact(&mut hello)
            .await
            .map_err(|e| format!("no handshake: {e}"))?;
        let (magic, rest) = hello.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err("the peer did not open with the authentication handshake".to_string());
        }
        let (id, theirs) = rest.split_at(8);
        let dialer = NodeId::from_be_bytes(id.try_into().map_err(|_| "short id")?);
        let mine = nonce();
        let proof = secret
            .proof(ACCEPTOR, theirs, &mine, me, dialer)
            .finalize()
            .into_bytes();
        let mut reply = Vec::with_capacity(8 + NONCE + PROOF);
        reply.extend_from_slice(&me.to_be_bytes());
        reply.extend_from_slice(&mine);
        reply.extend_from_slice(&proof);
        s.write_all(&reply).await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; PROOF];
        s.read_exact(&mut answer)
            .await
            .map_err(|e| format!("no proof from node {dialer}: {e}"))?;
        secret
            .proof(DIALER, theirs, &mine, dialer, me)
            .verify_slice(&answer)
            .map_err(|_| format!("a peer claiming to be node {dialer} does not hold the cluster secret"))?;
        Ok(dialer)
    })
    .await
    .map_err(|_| "handshake timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s).unwrap()
    }

    /// Two nodes holding the same secret authenticate each other, each learning who the
    /// other is.
    #[tokio::test]
    async fn nodes_with_the_secret_authenticate_each_other() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let s = secret("correct horse battery staple");
        let s2 = s.clone();
        let acceptor = tokio::spawn(async move { accept(&mut b, &s2, 2).await });
        assert_eq!(dial(&mut a, &s, 1, 2).await, Ok(()));
        assert_eq!(acceptor.await.unwrap(), Ok(1));
    }

    /// A dialer with another secret is refused by the acceptor, and finds the acceptor's
    /// proof wrong itself.
    #[tokio::test]
    async fn a_peer_without_the_secret_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor = tokio::spawn(async move { accept(&mut b, &secret("the real cluster secret"), 2).await });
        let dialed = dial(&mut a, &secret("a guessed secret value"), 1, 2).await;
        assert!(dialed.unwrap_err().contains("does not hold the cluster secret"));
        drop(a);
        assert!(acceptor.await.unwrap().is_err());
    }

    /// A plain frame (no handshake) is refused at once; the dialer refuses an acceptor
    /// that is not the node it meant to reach.
    #[tokio::test]
    async fn plain_frames_and_the_wrong_node_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor = tokio::spawn(async move { accept(&mut b, &secret("the real cluster secret"), 2).await });
        a.write_all(&[0u8; MAGIC.len() + 8 + NONCE]).await.unwrap();
        assert!(acceptor.await.unwrap().unwrap_err().contains("did not open with"));

        let (mut a, mut b) = tokio::io::duplex(1024);
        let s = secret("the real cluster secret");
        let s2 = s.clone();
        tokio::spawn(async move { accept(&mut b, &s2, 3).await });
        assert!(dial(&mut a, &s, 1, 2)
            .await
            .unwrap_err()
            .contains("reached node 3, not node 2"));
    }

    /// A proof replayed from another handshake (other nonces) fails.
    #[test]
    fn proofs_bind_both_nonces_and_roles() {
        let s = secret("the real cluster secret");
        let p = s.proof(DIALER, &[1; 32], &[2; 32], 1, 2).finalize().into_bytes();
        assert!(s.proof(DIALER, &[1; 32], &[2; 32], 1, 2).verify_slice(&p).is_ok());
        assert!(s.proof(DIALER, &[1; 32], &[3; 32], 1, 2).verify_slice(&p).is_err());
        assert!(s.proof(ACCEPTOR, &[1; 32], &[2; 32], 1, 2).verify_slice(&p).is_err());
        assert!(s.proof(DIALER, &[1; 32], &[2; 32], 3, 2).verify_slice(&p).is_err());
        assert!(ClusterSecret::new(b"short").is_err());
    }
}

/// Entry points for `fuzz/` (cargo-fuzz).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// `data` as a peer's side of the handshake, to an acceptor and to a dialer.
    pub fn handshake(data: &[u8]) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().build() else {
            return;
        };
        let Ok(secret) = ClusterSecret::new("fuzzing cluster secret") else {
            return;
        };
        // The peer's bytes fit the pipe, so writing them never waits on the reader.
        let data = data.get(..4096).unwrap_or(data);
        rt.block_on(async {
            for dialing in [false, true] {
                let (mut mine, mut theirs) = tokio::io::duplex(4096);
                let _ = theirs.write_all(data).await;
                drop(theirs.shutdown().await);
                let _ = if dialing {
                    dial(&mut mine, &secret, 1, 2).await
                } else {
                    accept(&mut mine, &secret, 1).await.map(|_| ())
                };
            }
        });
    }
}
