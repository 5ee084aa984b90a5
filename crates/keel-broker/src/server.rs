//! The Kafka TCP listener: a reader and a writer task per connection; requests are
//! answered in order, and Produce requests are pipelined (see [`serve_connection`]).
//!
//! Limits: `connections_max` open connections (more are closed at accept),
//! `request_bytes_max` per frame, `inflight_bytes_max` of request bytes held at once
//! across all connections (a connection waits for room before reading a frame's body).
//! A slow client has `FRAME_READ_TIMEOUT` to finish sending a frame it started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use keel_proto::frame::check_frame_len;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::dispatch::{self, Outcome, Started};
use crate::Broker;

/// Time allowed to receive the rest of a frame once its length has arrived.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` turns true, then waits (up to the grace period)
/// for connections to finish the request they are handling.
pub async fn run(
    broker: Arc<Broker>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let conns = Arc::new(Semaphore::new(broker.config.connections_max));
    // Permits are counted in KiB so that any request_bytes_max fits a u32 permit count.
    let inflight = Arc::new(Semaphore::new((broker.config.inflight_bytes_max / 1024).max(1)));
    let mut tasks = JoinSet::new();
    info!(addr = %listener.local_addr()?, "kafka listener ready");
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    broker.metrics.connections_refused.inc();
                    warn!(%peer, limit = broker.config.connections_max, "connection limit reached; closing new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (b, sd, inf) = (broker.clone(), shutdown.clone(), inflight.clone());
                tasks.spawn(async move {
                    b.metrics.connections.inc();
                    serve_connection(&b, stream, peer, sd, inf).await;
                    b.metrics.connections.dec();
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    let grace = Duration::from_millis(broker.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        warn!(
            open = tasks.len(),
            "connections still busy after the shutdown grace period; closing them"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Most requests one connection has in flight: Produce requests replicate side by side
/// (librdkafka and the Java client keep up to five in flight) and are answered in order.
const PIPELINE_DEPTH: usize = 8;

/// A request read and started, waiting its turn to be answered, with its share of the
/// in-flight byte budget.
struct InFlight {
    started: Started,
    _permit: OwnedSemaphorePermit,
}

/// Reads requests and starts them in order; a writer task answers them in the same
/// order. Produce requests are pipelined (the next is read and handed to the logs while
/// earlier ones replicate); any other request waits until everything before it is answered,
/// so it sees the connection as if requests were served one at a time.
async fn serve_connection(
    b: &Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    inflight: Arc<Semaphore>,
) {
    debug!(%peer, "connection opened");
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, rx) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
    let (answered_tx, mut answered) = watch::channel(0u64);
    let writer = tokio::spawn(write_responses(b.clone(), peer, wr, rx, answered_tx));
    let max = b.config.request_bytes_max;
    let mut session = crate::handlers::sasl::Session::new(&b.config.sasl_plain_users);
    let mut started = 0u64;
    loop {
        let len = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tx.closed() => break, // the writer stopped: the connection is done
            r = rd.read_i32() => match r {
                Ok(len) => len,
                Err(_) => break, // closed by the client
            },
        };
        let len = match check_frame_len(len, max) {
            Ok(len) => len,
            Err(e) => {
                b.metrics.malformed_requests.inc();
                warn!(%peer, error = %e, "bad frame; closing connection");
                break;
            }
        };
        let kib = len.div_ceil(1024).max(1) as u32;
        let Ok(permit) = inflight.clone().acquire_many_owned(kib).await else {
            break;
        };
        let mut buf = BytesMut::zeroed(len);
        match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "connection closed mid-frame");
                break;
            }
            Err(_) => {
                warn!(%peer, len, "frame not completed within the read timeout; closing connection");
                break;
            }
        }
        b.metrics.bytes_in.inc_by(len as u64 + 4);
        let frame = buf.freeze();
        if !(session.authenticated && dispatch::is_pipelined(&frame))
            && answered.wait_for(|n| *n >= started).await.is_err()
        {
            break;
        }
        let s = dispatch::start_from(b, frame, Some(peer), &mut session).await;
        let last = matches!(
            s,
            Started::Done(Outcome::Close(_)) | Started::Done(Outcome::RespondThenClose(..))
        );
        if tx
            .send(InFlight {
                started: s,
                _permit: permit,
            })
            .await
            .is_err()
        {
            break;
        }
        started += 1;
        if last {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    debug!(%peer, "connection closed");
}

/// Answers the connection's requests in the order they were started; stops at the first
/// outcome that closes the connection or at a failed write.
async fn write_responses(
    b: Arc<Broker>,
    peer: SocketAddr,
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<InFlight>,
    answered: watch::Sender<u64>,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut n = 0u64;
    while let Some(request) = rx.recv().await {
        let out = match request.started {
            Started::Done(out) => out,
            Started::Later(wait) => wait.await,
        };
        match out {
            Outcome::Respond(resp) => {
                b.metrics.bytes_out.inc_by(resp.len() as u64);
                if wr.write_all(&resp).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            Outcome::NoResponse => {}
            Outcome::RespondThenClose(resp, reason) => {
                warn!(%peer, %reason, "closing connection");
                let _ = wr.write_all(&resp).await;
                let _ = wr.flush().await;
                break;
            }
            Outcome::Close(reason) => {
                b.metrics.malformed_requests.inc();
                warn!(%peer, %reason, "closing connection");
                break;
            }
        }
        n += 1;
        answered.send_replace(n);
    }
    let _ = wr.flush().await;
}
