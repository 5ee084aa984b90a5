//! From a request frame to a response frame: header, version check, decode, route.
//!
//! A request Keel cannot decode closes the connection (as Kafka does): the client's
//! request/response stream can no longer be trusted. The one exception is ApiVersions at
//! an unknown version, answered in v0 format with UNSUPPORTED_VERSION (KIP-511).

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use keel_proto::codec::{decode_body, encode_response};
use keel_proto::header::{decode_header, peek_prefix};
use keel_proto::versions::is_servable;

use crate::handlers;
use crate::metrics::ApiLabels;
use crate::Broker;

/// What the connection does after a request.
pub enum Outcome {
    Respond(BytesMut),
    /// acks=0 Produce: nothing is sent back.
    NoResponse,
    /// Close the connection, logging the reason.
    Close(String),
    /// Send this response, then close the connection (a failed authentication).
    RespondThenClose(BytesMut, String),
}

macro_rules! route {
    ($b:expr, $who:expr, $body:expr, $api:expr, $v:expr, $corr:expr, $req:ty, $handler:path) => {{
        let req: $req = match decode_body(&mut $body, $v) {
            Ok(r) => r,
            Err(e) => return Outcome::Close(format!("{:?} v{}: {e}", $api, $v)),
        };
        let resp = $handler($b, req, $v, $who).await;
        respond($api, $v, $corr, &resp)
    }};
}

fn respond<T: kafka_protocol::protocol::Encodable>(api: ApiKey, v: i16, corr: i32, resp: &T) -> Outcome {
    match encode_response(api, v, corr, resp) {
        Ok(buf) => Outcome::Respond(buf),
        Err(e) => Outcome::Close(format!("{api:?} v{v}: could not encode the response: {e}")),
    }
}

/// Handles one request frame from an unknown peer, on a connection of its own.
pub async fn handle(b: &Arc<Broker>, frame: Bytes) -> Outcome {
    let mut session =
        handlers::sasl::Session::on_listener(b.main_listener.as_str().into(), b.config.main_protocol(), None);
    handle_from(b, frame, None, &mut session).await
}

/// A request handled as far as it can be without waiting on replication.
pub enum Started {
    /// Handled whole.
    Done(Outcome),
    /// A Produce request whose batches are in the logs: the outcome comes once they are
    /// acknowledged as its acks asked.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>),
}

/// Whether `frame` is a Produce request that [`start_from`] can leave in flight.
pub fn is_pipelined(frame: &[u8]) -> bool {
    peek_prefix(frame).is_ok_and(|p| pipelined(&p))
}

fn pipelined(p: &keel_proto::header::RequestPrefix) -> bool {
    p.api_key == ApiKey::Produce as i16
        && p.api_version >= keel_proto::versions::PRODUCE_DECODE_MIN
        && is_servable(p.api_key, p.api_version)
}

/// As [`handle_from`], but a Produce request (see [`is_pipelined`]) returns as soon as
/// its batches are handed to the partitions' logs, so that the connection can read its
/// next request meanwhile; the outcomes must be sent in the order the requests came.
pub async fn start_from(
    b: &Arc<Broker>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
    session: &mut handlers::sasl::Session,
) -> Started {
    // The request quota meters the time the handler runs, not the time it waits.
    let client = if b.controller.meta().quotas.is_empty() {
        None
    } else {
        Some(request_client_id(&frame))
    };
    let mut busy = std::time::Duration::ZERO;
    let started = {
        let mut work = std::pin::pin!(start_inner(b, frame, peer, session));
        std::future::poll_fn(|cx| {
            let t = Instant::now();
            let r = std::future::Future::poll(work.as_mut(), cx);
            busy += t.elapsed();
            r
        })
        .await
    };
    if let Some(client) = client {
        b.throttle(
            session,
            &client,
            crate::quota::REQUEST_PERCENTAGE,
            busy.as_micros().min(usize::MAX as u128) as usize,
        );
    }
    started
}

/// The client id of a request frame's header (v1 and later headers carry it as a
/// nullable string after the correlation id), or "" when there is none.
fn request_client_id(frame: &[u8]) -> String {
    let Some(len) = frame.get(8..10).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return String::new();
    };
    usize::try_from(len)
        .ok()
        .and_then(|n| frame.get(10..10 + n))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

async fn start_inner(
    b: &Arc<Broker>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
    session: &mut handlers::sasl::Session,
) -> Started {
    let (v, corr) = match peek_prefix(&frame) {
        Ok(p) if session.authenticated && pipelined(&p) => (p.api_version, p.correlation_id),
        _ => return Started::Done(handle_from(b, frame, peer, session).await),
    };
    let started = Instant::now();
    let mut body = frame;
    let header = match decode_header(&mut body, ApiKey::Produce, v) {
        Ok(h) => h,
        Err(e) => return Started::Done(Outcome::Close(e.to_string())),
    };
    let req: ProduceRequest = match decode_body(&mut body, v) {
        Ok(r) => r,
        Err(e) => return Started::Done(Outcome::Close(format!("Produce v{v}: {e}"))),
    };
    let bytes: usize = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    let throttle = b.throttle(session, client_id(&header), crate::quota::PRODUCER_BYTE_RATE, bytes);
    let wait = handlers::produce::start(b, req, v, session).await;
    let b = b.clone();
    Started::Later(Box::pin(async move {
        let out = match wait.await {
            Some(mut resp) => {
                resp.throttle_time_ms = throttle;
                respond(ApiKey::Produce, v, corr, &resp)
            }
            None => Outcome::NoResponse,
        };
        count(&b, ApiKey::Produce, started);
        out
    }))
}

/// Runs one SaslAuthenticate step, with its log line, metric and audit record; the bool
/// says whether the connection must close.
fn sasl_authenticate(
    b: &Arc<Broker>,
    session: &mut handlers::sasl::Session,
    peer: Option<std::net::SocketAddr>,
    req: SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    let meta = b.controller.meta();
    let nonce = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let (resp, close) = handlers::sasl::authenticate(&b.sasl_users(&meta), session, req, &nonce);
    let mechanism = session.mechanism().map(|m| m.name()).unwrap_or("SASL");
    if resp.error_code != 0 {
        b.metrics.sasl_failures.inc();
        b.audit.authentication(
            session,
            peer,
            mechanism,
            false,
            resp.error_message.as_ref().map(|m| m.to_string()),
        );
    } else if session.authenticated {
        b.audit.authentication(session, peer, mechanism, true, None);
        tracing::info!(peer = ?peer, principal = %session.principal, mechanism, "SASL authenticated");
    }
    (resp, close)
}

/// A bare SASL token after SaslHandshake v0: answered with a bare token (length and
/// bytes); a failure closes the connection without an answer, as Kafka does for v0.
fn raw_sasl(
    b: &Arc<Broker>,
    session: &mut handlers::sasl::Session,
    peer: Option<std::net::SocketAddr>,
    token: Bytes,
) -> Outcome {
    let req = SaslAuthenticateRequest::default().with_auth_bytes(token);
    let (resp, close) = sasl_authenticate(b, session, peer, req);
    if resp.error_code != 0 || close {
        return Outcome::Close(
            resp.error_message
                .map(|m| m.to_string())
                .unwrap_or_else(|| "SASL authentication failed".into()),
        );
    }
    if session.authenticated {
        session.raw_sasl = false;
    }
    let mut buf = BytesMut::with_capacity(4 + resp.auth_bytes.len());
    buf.put_i32(resp.auth_bytes.len() as i32);
    buf.extend_from_slice(&resp.auth_bytes);
    Outcome::Respond(buf)
}

/// The request header's client id ("" when it has none).
fn client_id(header: &RequestHeader) -> &str {
    header.client_id.as_ref().map_or("", |c| c.as_str())
}

fn count(b: &Broker, api: ApiKey, started: Instant) {
    let labels = ApiLabels {
        api: format!("{api:?}"),
    };
    b.metrics.requests.get_or_create(&labels).inc();
    b.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
}

/// Handles one request frame from `peer` on a connection in state `session`.
pub async fn handle_from(
    b: &Arc<Broker>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
    session: &mut handlers::sasl::Session,
) -> Outcome {
    if session.raw_sasl {
        return raw_sasl(b, session, peer, frame);
    }
    let prefix = match peek_prefix(&frame) {
        Ok(p) => p,
        Err(e) => return Outcome::Close(e.to_string()),
    };
    let corr = prefix.correlation_id;
    let v = prefix.api_version;
    if prefix.api_key == ApiKey::ApiVersions as i16 && !is_servable(prefix.api_key, v) {
        return respond(ApiKey::ApiVersions, 0, corr, &handlers::api_versions::unsupported());
    }
    let api = match ApiKey::try_from(prefix.api_key) {
        Ok(api) if is_servable(prefix.api_key, v) => api,
        _ => {
            return Outcome::Close(format!(
                "api key {} version {} is not supported (correlation id {corr})",
                prefix.api_key, v
            ))
        }
    };
    let mut body = frame;
    let header = match decode_header(&mut body, api, v) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(e.to_string()),
    };
    if !session.authenticated
        && !matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        return Outcome::Close(format!("{api:?} request before SASL authentication"));
    }
    let started = Instant::now();
    let out = match api {
        ApiKey::SaslHandshake => {
            let req: SaslHandshakeRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("SaslHandshake v{v}: {e}")),
            };
            let meta = b.controller.meta();
            let resp = handlers::sasl::handshake(&b.sasl_users(&meta), session, req);
            // v0: the SASL tokens that follow come as bare frames, not SaslAuthenticate.
            session.raw_sasl = v == 0 && resp.error_code == 0;
            respond(api, v, corr, &resp)
        }
        ApiKey::SaslAuthenticate => {
            let req: SaslAuthenticateRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("SaslAuthenticate v{v}: {e}")),
            };
            let (resp, close) = sasl_authenticate(b, session, peer, req);
            match (respond(api, v, corr, &resp), close) {
                (Outcome::Respond(buf), true) => {
                    Outcome::RespondThenClose(buf, resp.error_message.map(|m| m.to_string()).unwrap_or_default())
                }
                (out, _) => out,
            }
        }
        ApiKey::ApiVersions => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ApiVersionsRequest,
            handlers::api_versions::handle
        ),
        ApiKey::Metadata => {
            let req: MetadataRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("Metadata v{v}: {e}")),
            };
            respond(api, v, corr, &handlers::metadata::handle(b, req, v, session).await)
        }
        ApiKey::Produce if v < keel_proto::versions::PRODUCE_DECODE_MIN => {
            let req = match keel_proto::legacy::decode_produce(&mut body) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("Produce v{v}: {e}")),
            };
            match handlers::produce::handle_legacy(b, req, session).await {
                Some(answers) => {
                    let mut buf = BytesMut::new();
                    buf.put_i32(0);
                    buf.put_i32(corr);
                    buf.extend_from_slice(&keel_proto::legacy::encode_produce_response(v, &answers));
                    keel_proto::codec::patch_len(&mut buf);
                    Outcome::Respond(buf)
                }
                None => Outcome::NoResponse,
            }
        }
        ApiKey::Produce => {
            let req: ProduceRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("Produce v{v}: {e}")),
            };
            match handlers::produce::handle(b, req, v, session).await {
                Some(resp) => respond(api, v, corr, &resp),
                None => Outcome::NoResponse,
            }
        }
        ApiKey::Fetch => {
            let req: FetchRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("Fetch v{v}: {e}")),
            };
            let mut resp = handlers::fetch::handle(b, req, v, session).await;
            let bytes: usize = resp
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
                .sum();
            resp.throttle_time_ms = b.throttle(session, client_id(&header), crate::quota::CONSUMER_BYTE_RATE, bytes);
            respond(api, v, corr, &resp)
        }
        ApiKey::ListOffsets => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ListOffsetsRequest,
            handlers::list_offsets::handle
        ),
        ApiKey::CreateTopics => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            CreateTopicsRequest,
            handlers::create_topics::handle
        ),
        ApiKey::DeleteTopics => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DeleteTopicsRequest,
            handlers::delete_topics::handle
        ),
        ApiKey::CreatePartitions => {
            route!(
                b,
                session,
                body,
                api,
                v,
                corr,
                CreatePartitionsRequest,
                handlers::create_partitions::handle
            )
        }
        ApiKey::DescribeConfigs => {
            route!(
                b,
                session,
                body,
                api,
                v,
                corr,
                DescribeConfigsRequest,
                handlers::describe_configs::handle
            )
        }
        ApiKey::AlterPartitionReassignments => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AlterPartitionReassignmentsRequest,
            handlers::alter_partition_reassignments::handle
        ),
        ApiKey::ListPartitionReassignments => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ListPartitionReassignmentsRequest,
            handlers::list_partition_reassignments::handle
        ),
        ApiKey::UnregisterBroker => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            UnregisterBrokerRequest,
            handlers::unregister_broker::handle
        ),
        ApiKey::OffsetForLeaderEpoch => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            OffsetForLeaderEpochRequest,
            handlers::offset_for_leader_epoch::handle
        ),
        ApiKey::DescribeLogDirs => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeLogDirsRequest,
            handlers::describe_log_dirs::handle
        ),
        ApiKey::ElectLeaders => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ElectLeadersRequest,
            handlers::elect_leaders::handle
        ),
        ApiKey::DescribeProducers => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeProducersRequest,
            handlers::describe_producers::handle
        ),
        ApiKey::AddRaftVoter => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AddRaftVoterRequest,
            handlers::raft_voters::handle_add
        ),
        ApiKey::RemoveRaftVoter => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            RemoveRaftVoterRequest,
            handlers::raft_voters::handle_remove
        ),
        ApiKey::DescribeQuorum => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeQuorumRequest,
            handlers::describe_quorum::handle
        ),
        ApiKey::DescribeClientQuotas => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeClientQuotasRequest,
            handlers::client_quotas::describe
        ),
        ApiKey::AlterClientQuotas => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AlterClientQuotasRequest,
            handlers::client_quotas::alter
        ),
        ApiKey::CreateAcls => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            CreateAclsRequest,
            handlers::acls::create
        ),
        ApiKey::DescribeAcls => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeAclsRequest,
            handlers::acls::describe
        ),
        ApiKey::DeleteAcls => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DeleteAclsRequest,
            handlers::acls::delete
        ),
        ApiKey::DescribeUserScramCredentials => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeUserScramCredentialsRequest,
            handlers::scram_credentials::describe
        ),
        ApiKey::AlterUserScramCredentials => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AlterUserScramCredentialsRequest,
            handlers::scram_credentials::alter
        ),
        ApiKey::DescribeTopicPartitions => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeTopicPartitionsRequest,
            handlers::describe_topic_partitions::handle
        ),
        ApiKey::DescribeCluster => {
            let req: DescribeClusterRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("DescribeCluster v{v}: {e}")),
            };
            respond(
                api,
                v,
                corr,
                &handlers::describe_cluster::handle(b, req, v, session).await,
            )
        }
        ApiKey::InitProducerId => {
            route!(
                b,
                session,
                body,
                api,
                v,
                corr,
                InitProducerIdRequest,
                handlers::init_producer_id::handle
            )
        }
        ApiKey::AddPartitionsToTxn => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AddPartitionsToTxnRequest,
            handlers::add_partitions_to_txn::handle
        ),
        ApiKey::AddOffsetsToTxn => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AddOffsetsToTxnRequest,
            handlers::add_offsets_to_txn::handle
        ),
        ApiKey::DeleteRecords => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DeleteRecordsRequest,
            handlers::delete_records::handle
        ),
        ApiKey::EndTxn => route!(b, session, body, api, v, corr, EndTxnRequest, handlers::end_txn::handle),
        ApiKey::TxnOffsetCommit => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            TxnOffsetCommitRequest,
            handlers::txn_offset_commit::handle
        ),
        ApiKey::DescribeTransactions => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeTransactionsRequest,
            handlers::describe_transactions::handle
        ),
        ApiKey::ListTransactions => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ListTransactionsRequest,
            handlers::list_transactions::handle
        ),
        ApiKey::FindCoordinator => {
            let req: FindCoordinatorRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("FindCoordinator v{v}: {e}")),
            };
            respond(
                api,
                v,
                corr,
                &handlers::find_coordinator::handle(b, req, v, session).await,
            )
        }
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = match decode_body(&mut body, v) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("JoinGroup v{v}: {e}")),
            };
            let client = handlers::join_group::Client {
                id: header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                host: peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
            };
            respond(
                api,
                v,
                corr,
                &handlers::join_group::handle(b, req, v, client, session).await,
            )
        }
        ApiKey::SyncGroup => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            SyncGroupRequest,
            handlers::sync_group::handle
        ),
        ApiKey::Heartbeat => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            HeartbeatRequest,
            handlers::heartbeat::handle
        ),
        ApiKey::LeaveGroup => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            LeaveGroupRequest,
            handlers::leave_group::handle
        ),
        ApiKey::OffsetCommit => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            OffsetCommitRequest,
            handlers::offset_commit::handle
        ),
        ApiKey::OffsetFetch => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            OffsetFetchRequest,
            handlers::offset_fetch::handle
        ),
        ApiKey::ListGroups => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            ListGroupsRequest,
            handlers::list_groups::handle
        ),
        ApiKey::DescribeGroups => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DescribeGroupsRequest,
            handlers::describe_groups::handle
        ),
        ApiKey::DeleteGroups => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            DeleteGroupsRequest,
            handlers::delete_groups::handle
        ),
        ApiKey::OffsetDelete => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            OffsetDeleteRequest,
            handlers::offset_delete::handle
        ),
        ApiKey::AlterConfigs => route!(
            b,
            session,
            body,
            api,
            v,
            corr,
            AlterConfigsRequest,
            handlers::alter_configs::handle
        ),
        ApiKey::IncrementalAlterConfigs => {
            route!(
                b,
                session,
                body,
                api,
                v,
                corr,
                IncrementalAlterConfigsRequest,
                handlers::alter_configs::handle_incremental
            )
        }
        other => Outcome::Close(format!("{other:?} is advertised but has no handler")),
    };
    count(b, api, started);
    out
}
