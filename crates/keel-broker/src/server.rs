//! The Kafka TCP listeners: a reader and a writer task per connection; requests are
//! answered in order, and Produce requests are pipelined (see [`serve_connection`]).
//! Each listener has its name and security protocol (config `listeners`); on SSL and
//! SASL_SSL listeners a connection's TLS handshake must finish within
//! `AUTHENTICATION_TIMEOUT`, and a client certificate's subject becomes its principal.
//!
//! Limits: `connections_max` open connections and `connections_max_per_ip` from one
//! address (more are closed at accept), `unauthenticated_connections_max` connections on
//! SASL listeners not yet authenticated, each with `AUTHENTICATION_TIMEOUT` to do it,
//! `request_bytes_max` per frame, `inflight_bytes_max` of request bytes held at once
//! across all connections (a connection waits for room before reading a frame's body).
//! A slow client has `FRAME_READ_TIMEOUT` to finish sending a frame it started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use keel_proto::frame::check_frame_len;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::SecurityProtocol;
use crate::dispatch::{self, Outcome, Started};
use crate::handlers::sasl::Session;
use crate::Broker;

/// Time allowed to receive the rest of a frame once its length has arrived.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for a TLS handshake.
pub const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits shared by every listener of a broker.
#[derive(Clone)]
pub struct Shared {
    conns: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    /// Connections on SASL listeners that have not authenticated yet.
    unauthenticated: Arc<Semaphore>,
    /// Open connections per client IP address.
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// Open authenticated connections per principal.
    per_principal: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Shared {
    pub fn new(broker: &Broker) -> Shared {
        Shared {
            conns: Arc::new(Semaphore::new(broker.config.connections_max)),
            // Permits are counted in KiB so that any request_bytes_max fits a u32 permit count.
            inflight: Arc::new(Semaphore::new((broker.config.inflight_bytes_max / 1024).max(1))),
            unauthenticated: Arc::new(Semaphore::new(broker.config.unauthenticated_connections_max)),
            per_ip: Arc::default(),
            per_principal: Arc::default(),
        }
    }

    /// Counts a connection authenticated as `principal`, unless it has `max` open already.
    fn admit_principal(&self, principal: &str, max: usize) -> Option<PrincipalSlot> {
        let mut m = self.per_principal.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(principal.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PrincipalSlot {
            principal: principal.to_string(),
            per_principal: self.per_principal.clone(),
        })
    }

    /// Counts a connection from `ip`, unless it has `max` open already.
    fn admit_ip(&self, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

/// A connection's place in its principal's count, given back on drop.
struct PrincipalSlot {
    principal: String,
    per_principal: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut m = self.per_principal.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.principal);
            }
        }
    }
}

/// A connection's place in its IP address's count, given back on drop.
struct IpSlot {
    ip: std::net::IpAddr,
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves the main listener (`kafka_listen`) until `shutdown` turns true.
pub async fn run(broker: Arc<Broker>, listener: TcpListener, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let shared = Shared::new(&broker);
    let name = broker.main_listener.clone();
    run_listener(broker, &name, listener, shared, shutdown).await
}

/// Accepts connections on the listener named `name` until `shutdown` turns true, then
/// waits (up to the grace period) for connections to finish the request they are
/// handling.
pub async fn run_listener(
    broker: Arc<Broker>,
    name: &str,
    listener: TcpListener,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let protocol = broker
        .config
        .all_listeners()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .find(|l| l.name == name)
        .and_then(|l| l.protocol)
        .ok_or_else(|| anyhow::anyhow!("no listener named {name}"))?;
    if protocol.tls() && broker.tls.is_none() {
        anyhow::bail!(
            "listener {name} is {} but no TLS certificate is configured",
            protocol.as_str()
        );
    }
    let name: Arc<str> = Arc::from(name);
    let Shared {
        conns,
        inflight,
        unauthenticated,
        ..
    } = shared.clone();
    let mut tasks = JoinSet::new();
    info!(addr = %listener.local_addr()?, listener = %name, protocol = protocol.as_str(), "kafka listener ready");
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
                let Some(ip_slot) = shared.admit_ip(peer.ip(), broker.config.connections_max_per_ip) else {
                    broker.metrics.connections_refused.inc();
                    warn!(%peer, limit = broker.config.connections_max_per_ip, "connection limit per IP address reached; closing new connection");
                    drop(stream);
                    continue;
                };
                // A SASL listener's connection holds one of the unauthenticated places until it
                // authenticates.
                let unauth = if protocol.sasl() {
                    match unauthenticated.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            broker.metrics.connections_refused.inc();
                            warn!(%peer, limit = broker.config.unauthenticated_connections_max, "too many connections waiting to authenticate; closing new connection");
                            drop(stream);
                            continue;
                        }
                    }
                } else {
                    None
                };
                let _ = stream.set_nodelay(true);
                let (b, sd, inf, name, sh) =
                    (broker.clone(), shutdown.clone(), inflight.clone(), name.clone(), shared.clone());
                tasks.spawn(async move {
                    b.metrics.connections.inc();
                    let env = ConnEnv {
                        peer,
                        shutdown: sd,
                        inflight: inf,
                        unauth,
                        shared: sh,
                    };
                    accept_connection(&b, stream, name, protocol, env).await;
                    b.metrics.connections.dec();
                    drop(permit);
                    drop(ip_slot);
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

/// What a connection's task holds besides its stream and session.
struct ConnEnv {
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// The in-flight byte budget shared by every connection.
    inflight: Arc<Semaphore>,
    /// A place among the unauthenticated connections, until the connection authenticates.
    unauth: Option<OwnedSemaphorePermit>,
    shared: Shared,
}

/// Serves one accepted connection: its TLS handshake first on a TLS listener.
async fn accept_connection(
    b: &Arc<Broker>,
    stream: TcpStream,
    listener: Arc<str>,
    protocol: SecurityProtocol,
    env: ConnEnv,
) {
    let peer = env.peer;
    let Some(tls) = b.tls.as_ref().filter(|_| protocol.tls()) else {
        let mut session = Session::on_listener(listener, protocol, None);
        session.host = peer.ip().to_string();
        session.client = peer.to_string();
        let (rd, wr) = stream.into_split();
        serve_connection(b, rd, wr, session, env).await;
        return;
    };
    let stream = match tokio::time::timeout(AUTHENTICATION_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            b.metrics.tls_handshake_failures.inc();
            warn!(%peer, %listener, error = %e, "TLS handshake failed; closing connection");
            let who = Session::on_listener(listener, protocol, None);
            b.audit
                .authentication(&who, Some(peer), "TLS", false, Some(e.to_string()));
            return;
        }
        Err(_) => {
            b.metrics.tls_handshake_failures.inc();
            warn!(%peer, %listener, "TLS handshake not finished in time; closing connection");
            let who = Session::on_listener(listener, protocol, None);
            b.audit
                .authentication(&who, Some(peer), "TLS", false, Some("handshake timed out".into()));
            return;
        }
    };
    let principal = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(crate::tls::principal_of);
    debug!(%peer, principal = principal.as_deref().unwrap_or("-"), "TLS connection");
    let mut session = Session::on_listener(listener, protocol, principal.clone());
    session.host = peer.ip().to_string();
    session.client = peer.to_string();
    if principal.is_some() {
        // A client certificate authenticated the connection.
        b.audit.authentication(&session, Some(peer), "TLS", true, None);
    }
    let (rd, wr) = tokio::io::split(stream);
    serve_connection(b, rd, wr, session, env).await;
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
async fn serve_connection<R, W>(b: &Arc<Broker>, rd: R, wr: W, mut session: Session, env: ConnEnv)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let ConnEnv {
        peer,
        mut shutdown,
        inflight,
        mut unauth,
        shared,
    } = env;
    let mut principal_slot: Option<PrincipalSlot> = None;
    debug!(%peer, "connection opened");
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, rx) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
    let (answered_tx, mut answered) = watch::channel(0u64);
    let writer = tokio::spawn(write_responses(b.clone(), peer, wr, rx, answered_tx));
    let max = b.config.request_bytes_max;
    let mut started = 0u64;
    // A connection that must authenticate has AUTHENTICATION_TIMEOUT to do it.
    let auth_deadline = tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT;
    loop {
        if session.authenticated {
            unauth = None;
            // Every principal but ANONYMOUS (all of a PLAINTEXT listener's clients) has at
            // most connections_max_per_principal connections.
            if principal_slot.is_none() && session.principal != crate::handlers::sasl::ANONYMOUS {
                match shared.admit_principal(&session.principal, b.config.connections_max_per_principal) {
                    Some(slot) => principal_slot = Some(slot),
                    None => {
                        b.metrics.connections_refused.inc();
                        warn!(%peer, principal = %session.principal, limit = b.config.connections_max_per_principal, "connection limit per principal reached; closing connection");
                        b.audit.authentication(
                            &session,
                            Some(peer),
                            "connection limit",
                            false,
                            Some("too many connections for this principal".into()),
                        );
                        break;
                    }
                }
            }
        }
        // A throttled client's connection is muted until its quota allows it again.
        if let Some(until) = session.throttle_until.take() {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        let len = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tx.closed() => break, // the writer stopped: the connection is done
            _ = tokio::time::sleep_until(auth_deadline), if !session.authenticated => {
                b.metrics.sasl_failures.inc();
                warn!(%peer, "no SASL authentication within the time allowed; closing connection");
                b.audit.authentication(&session, Some(peer), "SASL", false, Some("not authenticated in time".into()));
                break;
            }
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
    drop(unauth);
    drop(principal_slot);
    let _ = writer.await;
    debug!(%peer, "connection closed");
}

/// Answers the connection's requests in the order they were started; stops at the first
/// outcome that closes the connection or at a failed write.
async fn write_responses<W: AsyncWrite + Unpin + Send + 'static>(
    b: Arc<Broker>,
    peer: SocketAddr,
    wr: W,
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
