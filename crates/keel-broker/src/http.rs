//! HTTP endpoints: Prometheus `/metrics`; `/health/live` (the process answers),
//! `/health/ready` (alias `/ready`: caught up and serving, for load balancers and
//! Kubernetes' readiness probe), `/health` (every partition accepts writes) and the admin
//! API under `/api/v1/` (see [`crate::admin_api`]); with
//! `fault_injection` on, `POST /fault/cut?peers=2,3`, `POST /fault/slow?peers=2,3&delay_ms=50&drop_per_mille=100`,
//! `POST /fault/disk-full` (every log write fails with ENOSPC), `POST /fault/power-loss[?tear=1]`
//! (unsynced data thrown away, then the process ends) and `POST /fault/heal` (undoes
//! them all) for chaos tests. The fault endpoints answer only loopback callers (403
//! otherwise).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::Broker;

pub fn router(broker: Arc<Broker>) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/ready", get(ready))
        .merge(crate::admin_api::router(broker.clone()));
    if broker.config.fault_injection {
        // Faults that can throw data away answer only callers on this machine.
        let faults = Router::new()
            .route("/fault/cut", post(cut))
            .route("/fault/slow", post(slow))
            .route("/fault/disk-full", post(disk_full))
            .route("/fault/power-loss", post(power_loss))
            .route("/fault/heal", post(heal))
            .route_layer(axum::middleware::from_fn(loopback_only));
        r = r.merge(faults);
    }
    r.with_state(broker)
}

/// Lets a request through only from a loopback address (the fault-injection endpoints).
async fn loopback_only(ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>, req: Request, next: Next) -> Response {
    if peer.ip().is_loopback() {
        return next.run(req).await;
    }
    tracing::warn!(%peer, path = %req.uri().path(), "fault injection refused to a caller off this machine");
    (StatusCode::FORBIDDEN, "fault injection answers only loopback callers\n").into_response()
}

fn query_u64(uri: &axum::http::Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

fn query_peers(uri: &axum::http::Uri) -> Vec<u64> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("peers="))
        .flat_map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect::<Vec<u64>>())
        .collect()
}

/// Delays (and drops some of) this node's requests to the listed nodes.
async fn slow(State(b): State<Arc<Broker>>, uri: axum::http::Uri) -> impl IntoResponse {
    let peers = query_peers(&uri);
    if peers.is_empty() {
        return (StatusCode::BAD_REQUEST, "peers=ID[,ID...] required\n".to_string());
    }
    let delay = std::time::Duration::from_millis(query_u64(&uri, "delay_ms").unwrap_or(0).min(10_000));
    let drop = query_u64(&uri, "drop_per_mille").unwrap_or(0).min(1000) as u32;
    for p in &peers {
        b.controller.transport.slow(*p, delay, drop);
    }
    tracing::warn!(?peers, ?delay, drop_per_mille = drop, "fault injection: links slowed");
    (StatusCode::OK, format!("slowed {peers:?}\n"))
}

/// Drops all traffic between this node and the listed nodes (both directions, as far as
/// this node is concerned; cut the other side too for a symmetric partition).
async fn cut(State(b): State<Arc<Broker>>, uri: axum::http::Uri) -> impl IntoResponse {
    let peers = query_peers(&uri);
    if peers.is_empty() {
        return (StatusCode::BAD_REQUEST, "peers=ID[,ID...] required\n".to_string());
    }
    for p in &peers {
        b.controller.transport.cut(*p, true);
    }
    tracing::warn!(?peers, "fault injection: links cut");
    (StatusCode::OK, format!("cut {peers:?}\n"))
}

/// Makes every log write on this node fail with ENOSPC, as a full disk does.
async fn disk_full() -> impl IntoResponse {
    keel_log::fault::set_write_fails(true);
    tracing::warn!("fault injection: disk full");
    (StatusCode::OK, "disk full\n".to_string())
}

/// Loses power: every write and fsync stops at once, everything under the data directory
/// that was not fsynced is thrown away (with `tear=1`, part of each unsynced tail stays,
/// as a torn write), and the process ends without a word, as a machine whose power went
/// off. Restart it to see what the disk kept.
async fn power_loss(State(b): State<Arc<Broker>>, uri: axum::http::Uri) -> StatusCode {
    let tear = query_u64(&uri, "tear").unwrap_or(0) == 1;
    keel_log::fault::freeze(true);
    let root = b.config.data_dir.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(7)
            | 1;
        let mut torn = |unsynced: u64| {
            // xorshift: any part of the unsynced tail, none of it to all.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % (unsynced + 1)
        };
        keel_log::fault::power_loss(&root, if tear { Some(&mut torn) } else { None })
    })
    .await;
    match r {
        Ok(Ok(lost)) => tracing::error!(?lost, tear, "fault injection: power lost; the process ends now"),
        Ok(Err(e)) => tracing::error!(error = %e, "fault injection: power loss could not discard unsynced data"),
        Err(e) => tracing::error!(error = %e, "fault injection: power loss failed"),
    }
    std::process::abort()
}

/// Restores every link this node cut and frees the disk.
async fn heal(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    b.controller.transport.heal_all();
    keel_log::fault::set_write_fails(false);
    tracing::warn!("fault injection: links healed, disk freed");
    (StatusCode::OK, "healed\n".to_string())
}

async fn metrics(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let dir = b.config.data_dir.clone();
    if let Ok((total, available)) =
        tokio::task::spawn_blocking(move || crate::handlers::describe_log_dirs::space(&dir)).await
    {
        b.metrics.disk_total_bytes.set(total);
        b.metrics.disk_available_bytes.set(available);
    }
    let transport = &b.controller.transport;
    for peer in transport.peer_ids() {
        if peer != b.config.node_id as u64 {
            b.metrics
                .peer_up
                .get_or_create(&crate::metrics::NodeLabels { node: peer })
                .set(i64::from(transport.is_alive(peer)));
        }
    }
    let (why, leaderless) = readiness(&b);
    b.metrics.ready.set(i64::from(why.is_empty()));
    b.metrics.leaderless_partitions.set(leaderless as i64);
    let (leaders, followers) = b.controller.transport.liveness().quiet_counts();
    b.metrics.quiet_leaders.set(leaders as i64);
    b.metrics.sleeping_followers.set(followers as i64);
    let refused = b.controller.transport.auth_failures();
    let counted = b.metrics.transport_auth_failures.get();
    if refused > counted {
        b.metrics.transport_auth_failures.inc_by(refused - counted);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        b.metrics.encode(),
    )
}

/// 200 with a JSON summary while every partition accepts writes; 503 if any is poisoned.
async fn health(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let parts = b.topics.all_partitions();
    let poisoned: Vec<String> = parts
        .iter()
        .filter(|p| p.committed().poisoned)
        .map(|p| format!("{}-{}", p.topic, p.index))
        .collect();
    let status = if poisoned.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if poisoned.is_empty() { "ok" } else { "degraded" },
        "node_id": b.config.node_id,
        "uptime_s": b.started.elapsed().as_secs(),
        "topics": b.topics.list().len(),
        "partitions": parts.len(),
        "poisoned_partitions": poisoned,
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// 200 while the process serves HTTP at all: restarting it would not help anything that
/// this cannot answer.
async fn live(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "live",
        "node_id": b.config.node_id,
        "uptime_s": b.started.elapsed().as_secs(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Why a node is not ready, if it is not: see [`ready`].
pub fn not_ready_reasons(b: &Broker) -> Vec<String> {
    readiness(b).0
}

/// The reasons a node is not ready (none when it is), and how many hosted partitions have
/// no leader this node knows alive: one pass over the partitions, for `/health/ready` and
/// each scrape.
fn readiness(b: &Broker) -> (Vec<String>, usize) {
    let mut why = Vec::new();
    if b.topics.is_draining() {
        why.push("stopping: leaderships handed over".to_string());
    }
    let transport = &b.controller.transport;
    match b.controller.group.leader().map(keel_raft::node_of) {
        Some(l) if transport.is_alive(l) => {}
        Some(l) => why.push(format!("controller leader {l} not reachable")),
        None => why.push("no controller leader".to_string()),
    }
    let applied = b.controller.meta().applied_index;
    let reconciled = b.topics.reconciled_index();
    if reconciled < applied {
        why.push(format!(
            "replicas match the metadata up to index {reconciled} of {applied}"
        ));
    }
    let (mut poisoned, mut holding, mut leaderless) = (0usize, 0usize, Vec::new());
    for p in b.topics.all_partitions() {
        if p.committed().poisoned {
            poisoned += 1;
        }
        // Just restarted, or repairing its log: it does not vote yet.
        if p.group().quiet.holds_votes() || p.group().hold_votes.load(std::sync::atomic::Ordering::Acquire) > 0 {
            holding += 1;
        }
        // As Metadata sees it: the local replica's leader, or for a replica that knows of
        // none (a follower of a group that went quiet before it heard a heartbeat) the
        // leader's own report.
        let local = p.group().leader().map(keel_raft::node_of);
        let led = local.is_some_and(|l| transport.is_alive(l))
            || transport
                .reported_leader(&crate::cluster::partition::group_name(&p.topic, p.index))
                .is_some_and(|(l, _)| transport.is_alive(l));
        if !led {
            leaderless.push(format!("{}-{}", p.topic, p.index));
        }
    }
    let unled = leaderless.len();
    if unled > 0 {
        leaderless.truncate(5);
        why.push(format!(
            "{unled} hosted partitions without a live leader ({}{})",
            leaderless.join(", "),
            if unled > 5 { ", ..." } else { "" }
        ));
    }
    if holding > 0 {
        why.push(format!(
            "{holding} replicas not voting yet (restarted moments ago, or repairing)"
        ));
    }
    if poisoned > 0 {
        why.push(format!("{poisoned} partitions poisoned"));
    }
    (why, unled)
}

/// 200 when the node is caught up and serving: a live controller leader, every replica
/// the metadata assigns here opened, every hosted partition led by a live node, none
/// poisoned, and the node not stopping; 503 with the reasons otherwise.
async fn ready(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let why = not_ready_reasons(&b);
    let status = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if why.is_empty() { "ready" } else { "not_ready" },
        "node_id": b.config.node_id,
        "reasons": why,
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// Serves the HTTP endpoints on `listener` until `shutdown` turns true: over TLS when
/// `http_tls` is set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::serve::ListenerExt;
    let app = router(broker.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let r = match broker.tls.clone().filter(|_| broker.config.http_tls) {
        Some(tls) => {
            let listener = TlsListener::start(listener, tls, broker.clone()).tap_io(|_| {});
            axum::serve(listener, app).with_graceful_shutdown(stop).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "http server stopped");
    }
}

/// HTTPS connections whose handshakes finished: a task accepts TCP connections and runs
/// each handshake in a task of its own (bounded in time), so a slow client holds up no other.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    fn start(listener: tokio::net::TcpListener, tls: Arc<crate::tls::Tls>, b: Arc<Broker>) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "http accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (tx, acceptor, b) = (tx.clone(), tls.http_acceptor(), b.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(crate::server::AUTHENTICATION_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            b.metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "https handshake failed");
                        }
                        Err(_) => {
                            b.metrics.tls_handshake_failures.inc();
                        }
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;

    /// The status of `method path` from `peer`, against a node with fault injection on.
    async fn status_from(peer: &str, method: &str, path: &str) -> StatusCode {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(
            crate::BrokerConfig {
                data_dir: dir.path().to_path_buf(),
                fault_injection: true,
                ..Default::default()
            },
            9092,
        )
        .await
        .unwrap();
        let app = router(broker).layer(MockConnectInfo(peer.parse::<std::net::SocketAddr>().unwrap()));
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap().status()
    }

    /// The fault-injection endpoints refuse callers off this machine and answer loopback
    /// ones; the other endpoints answer anyone.
    #[tokio::test]
    async fn faults_answer_only_loopback_callers() {
        assert_eq!(
            status_from("10.1.2.3:5000", "POST", "/fault/heal").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_from("[2001:db8::1]:5000", "POST", "/fault/disk-full").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_from("127.0.0.1:5000", "POST", "/fault/heal").await,
            StatusCode::OK
        );
        assert_eq!(status_from("[::1]:5000", "POST", "/fault/heal").await, StatusCode::OK);
        assert_eq!(status_from("10.1.2.3:5000", "GET", "/metrics").await, StatusCode::OK);
    }
}
