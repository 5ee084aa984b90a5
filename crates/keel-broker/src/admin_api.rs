//! The admin HTTP API (read-only, JSON) under `/api/v1/`, described by the OpenAPI
//! document it serves at `/api/v1/openapi.json` (`src/openapi.json`): the cluster and its
//! nodes, topics, a topic's partitions (leaders, replicas, in-sync replicas, offsets and
//! sizes where this node holds a replica), consumer groups with their lag and the moves
//! under way. Any node answers,
//! from its own view of the replicated metadata. `/console` is a web console over the same
//! calls: cluster overview, topics, a topic's partitions, consumer groups and lag, moves.
//!
//! With the authorizer on, every call needs HTTP Basic credentials of a user Keel knows
//! (`sasl_plain_users`, or SCRAM credentials checked against their salted form) whose
//! principal may DESCRIBE the cluster: a super user, or one an ACL allows. Without
//! credentials the answer is 401, with a principal not allowed 403; failures are counted
//! and audited as SASL failures and denials are.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::handlers::sasl::Session;
use crate::Broker;

/// The OpenAPI description of these routes.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(broker: Arc<Broker>) -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/topics", get(topics))
        .route("/api/v1/topics/{name}", get(topic))
        .route("/api/v1/topics/{name}/partitions/{partition}/records", get(records))
        .route("/api/v1/moves", get(moves))
        .route("/api/v1/chaos", get(chaos_runs))
        .route("/api/v1/chaos/{run}/report", get(chaos_report))
        .route(
            "/api/v1/nodes/{id}/maintenance",
            put(maintenance_on).delete(maintenance_off),
        )
        .route("/api/v1/groups", get(groups))
        .route("/console", get(console))
        .route_layer(axum::middleware::from_fn_with_state(broker, authenticate))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

/// Lets a request through when the authorizer is off, or when its Basic credentials name
/// a known user whose principal may DESCRIBE the cluster.
async fn authenticate(State(b): State<Arc<Broker>>, req: Request, next: Next) -> Response {
    if !b.config.authorizer {
        return next.run(req).await;
    }
    let challenge = || {
        let mut r = error(StatusCode::UNAUTHORIZED, "credentials required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"keel\""),
        );
        r
    };
    let Some((user, password)) = basic_credentials(&req) else {
        return challenge();
    };
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let known = {
        let b = b.clone();
        let user = user.clone();
        tokio::task::spawn_blocking(move || check_password(&b, &user, password.as_bytes()))
            .await
            .unwrap_or(false)
    };
    let who = Session::http(&user, peer);
    if !known {
        b.metrics.sasl_failures.inc();
        b.audit
            .authentication(&who, peer, "HTTP Basic", false, Some("admin API".into()));
        return challenge();
    }
    if !b.authorize_cluster(&who, crate::acl::op::DESCRIBE) {
        return error(StatusCode::FORBIDDEN, "not allowed to describe the cluster");
    }
    let mut req = req;
    req.extensions_mut().insert(who);
    next.run(req).await
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether `password` is `user`'s: a `sasl_plain_users` entry, or any of the user's SCRAM
/// credentials (its salted password derived again and compared by its stored key).
fn check_password(b: &Broker, user: &str, password: &[u8]) -> bool {
    let mut token = Vec::with_capacity(user.len() + password.len() + 2);
    token.push(0);
    token.extend_from_slice(user.as_bytes());
    token.push(0);
    token.extend_from_slice(password);
    if crate::handlers::sasl::verify_plain(&b.config.sasl_plain_users, &token).is_ok() {
        return true;
    }
    let meta = b.controller.meta();
    meta.scram
        .get(user)
        .into_iter()
        .flatten()
        .any(|(mechanism, credential)| credential.matches(*mechanism, password))
}

/// The web console: one page reading this API (nothing else is fetched).
pub const CONSOLE: &str = include_str!("console/index.html");

async fn console() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CONSOLE,
    )
        .into_response()
}

async fn openapi() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn cluster(State(b): State<Arc<Broker>>) -> Response {
    let meta = b.controller.meta();
    let transport = &b.controller.transport;
    let controller = b.controller.group.leader().map(keel_raft::node_of);
    // Replicas per node (every topic's, internal ones too) and leaders per node.
    let mut replicas: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for record in meta.topics.values() {
        for n in record.replicas.iter().flatten() {
            *replicas.entry(*n).or_default() += 1;
        }
    }
    let mut leaders: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    let (mut partitions, mut leaderless, mut under_replicated) = (0usize, 0usize, 0usize);
    for t in b.topics.list() {
        for p in super::handlers::metadata::topic_entry(&b, &t, false).partitions {
            partitions += 1;
            if p.leader_id.0 < 0 {
                leaderless += 1;
            } else {
                *leaders.entry(p.leader_id.0 as u64).or_default() += 1;
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                under_replicated += 1;
            }
        }
    }
    let voters = b.controller.voters();
    let nodes: Vec<Value> = b
        .topics
        .node_ids()
        .into_iter()
        .map(|id| {
            let info = meta.nodes.get(&id);
            json!({
                "id": id,
                "host": info.map(|i| i.kafka_host.clone()),
                "port": info.map(|i| i.kafka_port),
                "alive": transport.is_alive(id),
                "controller_voter": voters.contains(&id),
                "controller_leader": controller == Some(id),
                "maintenance": meta.maintenance.contains(&id),
                "rack": info.and_then(|i| i.rack.clone()),
                "replicas": replicas.get(&id).copied().unwrap_or(0),
                "leaders": leaders.get(&id).copied().unwrap_or(0),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "cluster_id": b.config.cluster_id,
            "node_id": b.config.node_id,
            "controller": controller,
            "nodes": nodes,
            "topics": meta.topics.len(),
            "partitions": partitions,
            "leaderless_partitions": leaderless,
            "under_replicated_partitions": under_replicated,
            "moves_in_progress": crate::cluster::moves::in_progress(&b.topics).len(),
            "ready": crate::http::not_ready_reasons(&b).is_empty(),
        }),
    )
}

async fn topics(State(b): State<Arc<Broker>>) -> Response {
    let meta = b.controller.meta();
    let list: Vec<Value> = meta
        .topics
        .iter()
        .map(|(name, record)| {
            let local: u64 = b
                .topics
                .get(name)
                .map(|t| t.partition_list().iter().map(|p| p.size_bytes()).sum())
                .unwrap_or(0);
            json!({
                "name": name,
                "id": record.id.to_string(),
                "internal": crate::is_internal_topic(name),
                "partitions": record.replicas.len(),
                "replication_factor": record.replicas.first().map(|r| r.len()).unwrap_or(0),
                "local_size_bytes": local,
                "configs": record.configs,
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "topics": list }))
}

async fn topic(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    let Some(t) = b.topics.get(&name) else {
        return error(StatusCode::NOT_FOUND, "no such topic");
    };
    let entry = super::handlers::metadata::topic_entry(&b, &t, false);
    let partitions: Vec<Value> = entry
        .partitions
        .iter()
        .map(|p| {
            let local = t.partition(p.partition_index);
            json!({
                "partition": p.partition_index,
                "leader": (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                "leader_epoch": p.leader_epoch,
                "replicas": p.replica_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
                "in_sync_replicas": p.isr_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
                "under_replicated": p.isr_nodes.len() < p.replica_nodes.len(),
                "high_watermark": local.as_ref().map(|l| l.high_watermark()),
                "log_start_offset": local.as_ref().map(|l| l.log_start_offset()),
                "local_size_bytes": local.as_ref().map(|l| l.size_bytes()),
            })
        })
        .collect();
    let meta = t.meta();
    json_response(
        StatusCode::OK,
        json!({
            "name": name,
            "id": meta.id.to_string(),
            "internal": crate::is_internal_topic(&name),
            "partitions": partitions,
        }),
    )
}

/// Most chaos runs listed (the newest).
const CHAOS_RUNS_MAX: usize = 200;
/// Largest verdict.json read (a run with many anomalies lists them all).
const VERDICT_BYTES_MAX: u64 = 16 << 20;
/// Largest report.html served.
const REPORT_BYTES_MAX: u64 = 64 << 20;

/// The `keel chaos run` outputs under `chaos_reports_dir`, newest first: each run's seed,
/// nodes, duration, faults and verdict summary (from its verdict.json).
async fn chaos_runs(State(b): State<Arc<Broker>>) -> Response {
    let Some(dir) = b.config.chaos_reports_dir.clone() else {
        return json_response(StatusCode::OK, json!({ "dir": null, "runs": [] }));
    };
    let runs = tokio::task::spawn_blocking(move || read_chaos_runs(std::path::Path::new(&dir))).await;
    match runs {
        Ok(runs) => json_response(
            StatusCode::OK,
            json!({ "dir": b.config.chaos_reports_dir, "runs": runs }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn read_chaos_runs(dir: &std::path::Path) -> Vec<Value> {
    use std::io::Read;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(std::time::SystemTime, Value)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path().join("verdict.json");
        let Ok(f) = std::fs::File::open(&path) else { continue };
        let modified = f.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        let mut text = String::new();
        if f.take(VERDICT_BYTES_MAX).read_to_string(&mut text).is_err() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let verdict = &v["verdict"];
        let at = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        runs.push((
            modified,
            json!({
                "name": name,
                "finished_ms": at,
                "seed": v["seed"],
                "nodes": v["nodes"],
                "duration_s": v["duration_s"],
                "faults": v["faults"],
                "valid": verdict["valid"],
                "acknowledged": verdict["acknowledged"],
                "anomalies": verdict["anomalies"].as_array().map(|a| a.len()),
                "transactions_committed": verdict["transactions_committed"],
                "longest_unavailable_ms": verdict["longest_unavailable_ms"],
                "report": e.path().join("report.html").is_file(),
            }),
        ));
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    runs.into_iter().take(CHAOS_RUNS_MAX).map(|(_, v)| v).collect()
}

/// A chaos run's report.html, as `keel chaos run` wrote it.
async fn chaos_report(State(b): State<Arc<Broker>>, Path(run): Path<String>) -> Response {
    let Some(dir) = b.config.chaos_reports_dir.clone() else {
        return error(StatusCode::NOT_FOUND, "no chaos_reports_dir is configured");
    };
    let plain =
        !run.is_empty() && !run.starts_with('.') && run.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !plain {
        return error(StatusCode::NOT_FOUND, "no such run");
    }
    let path = std::path::Path::new(&dir).join(&run).join("report.html");
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        std::fs::File::open(path)?
            .take(REPORT_BYTES_MAX)
            .read_to_end(&mut out)?;
        Ok(out)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            bytes,
        )
            .into_response(),
        _ => error(StatusCode::NOT_FOUND, "no such run"),
    }
}

async fn maintenance_on(
    State(b): State<Arc<Broker>>,
    Path(id): Path<u64>,
    who: Option<axum::Extension<Session>>,
) -> Response {
    set_maintenance(&b, id, true, who.map(|w| w.0)).await
}

async fn maintenance_off(
    State(b): State<Arc<Broker>>,
    Path(id): Path<u64>,
    who: Option<axum::Extension<Session>>,
) -> Response {
    set_maintenance(&b, id, false, who.map(|w| w.0)).await
}

/// Puts a node in maintenance or takes it out (`keel cluster maintenance`). With the
/// authorizer on, the user needs ALTER on the cluster.
async fn set_maintenance(b: &Arc<Broker>, id: u64, on: bool, who: Option<Session>) -> Response {
    if let Some(who) = &who {
        if !b.authorize_cluster(who, crate::acl::op::ALTER) {
            return error(StatusCode::FORBIDDEN, "not allowed to alter the cluster");
        }
    }
    let result = crate::cluster::moves::set_maintenance(&b.topics, id, on).await;
    let code = result.as_ref().err().map(|e| e.code).unwrap_or(0);
    if let Some(who) = &who {
        let what = if on { "maintenance on" } else { "maintenance off" };
        b.audit
            .change(who, "SetMaintenance", "NODE", &format!("{id} {what}"), code);
    }
    match result {
        Ok(()) => json_response(StatusCode::OK, json!({ "node": id, "maintenance": on })),
        Err(e) if e.code == kafka_protocol::ResponseError::InvalidRequest.code() => {
            error(StatusCode::NOT_FOUND, &e.message)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    }
}

#[derive(serde::Deserialize)]
struct RecordsQuery {
    offset: Option<i64>,
    timestamp: Option<i64>,
    limit: Option<usize>,
}

/// A page of a partition's records (see [`crate::browse`]). With the authorizer on, the
/// user needs READ on the topic, as a consumer would.
async fn records(
    State(b): State<Arc<Broker>>,
    Path((name, partition)): Path<(String, i32)>,
    axum::extract::Query(q): axum::extract::Query<RecordsQuery>,
    who: Option<axum::Extension<Session>>,
) -> Response {
    if let Some(axum::Extension(who)) = &who {
        if !b.authorize(who, crate::acl::op::READ, crate::acl::resource::TOPIC, &name) {
            return error(StatusCode::FORBIDDEN, "not allowed to read the topic");
        }
    }
    let req = crate::browse::Request {
        topic: name,
        partition,
        offset: q.offset,
        timestamp: q.timestamp,
        limit: q.limit.unwrap_or(50),
    };
    match crate::browse::browse(&b, req).await {
        Ok(page) => match serde_json::to_value(&page) {
            Ok(v) => json_response(StatusCode::OK, v),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(r) => error(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &r.message,
        ),
    }
}

/// Consumer groups and their lag, from the node coordinating groups (the leader of
/// `__consumer_offsets`); another node answers with the coordinator's id and no groups.
async fn groups(State(b): State<Arc<Broker>>) -> Response {
    let coordinator = b.coordinator_node(&b.main_listener).map(|(id, _, _)| id);
    if b.coordinator_error().is_some() {
        return json_response(
            StatusCode::OK,
            json!({ "coordinator": coordinator, "coordinating": false, "groups": [] }),
        );
    }
    let lag = b.groups.lag(&b.topics);
    let list: Vec<Value> = b
        .groups
        .list()
        .await
        .into_iter()
        .map(|(id, protocol_type, state)| {
            let offsets: Vec<Value> = lag
                .iter()
                .filter(|l| l.group == id)
                .map(|l| {
                    json!({
                        "topic": l.topic,
                        "partition": l.partition,
                        "committed": l.committed,
                        "high_watermark": l.high_watermark,
                        "lag": l.high_watermark.map(|hw| (hw - l.committed).max(0)),
                    })
                })
                .collect();
            let total: i64 = offsets.iter().filter_map(|o| o["lag"].as_i64()).sum();
            json!({ "group": id, "protocol_type": protocol_type, "state": state, "lag": total, "offsets": offsets })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "coordinator": coordinator, "coordinating": true, "groups": list }),
    )
}

async fn moves(State(b): State<Arc<Broker>>) -> Response {
    let list: Vec<Value> = crate::cluster::moves::in_progress(&b.topics)
        .into_iter()
        .map(|m| {
            json!({
                "topic": m.topic,
                "partition": m.partition,
                "replicas": m.replicas,
                "adding": m.adding,
                "removing": m.removing,
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "moves": list }))
}
