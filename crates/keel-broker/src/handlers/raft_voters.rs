//! AddRaftVoter and RemoveRaftVoter (KIP-853): change the controller's voters on a running
//! cluster, as Kafka 4's `kafka-metadata-quorum add-controller` / `remove-controller` and
//! `Admin.addRaftVoter` / `removeRaftVoter` do. Keel's controller is a Raft group every
//! node is a member of: adding a voter makes a node that joined (a learner) vote, removing
//! one makes it a learner again, and either goes through a joint configuration committed
//! by a quorum of the old voters and one of the new (see [`crate::cluster::controller`]).
//!
//! Keel's nodes have no log directory ids: DescribeQuorum reports each replica's as the
//! zero id, and a request naming another id is answered VOTER_NOT_FOUND, as Kafka answers a
//! voter key that does not match.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use super::s;
use crate::cluster::controller::ControllerError;
use crate::Broker;

/// Checks common to both requests: the principal may alter the cluster, the cluster id (if
/// given) is this cluster's, the node id is one, and the directory id is the zero id.
fn check(
    b: &Broker,
    who: &crate::handlers::sasl::Session,
    cluster: Option<&StrBytes>,
    id: i32,
    dir: &uuid::Uuid,
) -> Result<u64, (E, String)> {
    if !b.authorize_cluster(who, crate::acl::op::ALTER) {
        return Err((
            E::ClusterAuthorizationFailed,
            "not authorized to alter the cluster".into(),
        ));
    }
    let ours = &b.config.cluster_id;
    if let Some(c) = cluster.filter(|c| !c.is_empty()) {
        if c.as_str() != ours {
            return Err((E::InconsistentClusterId, format!("this is cluster {ours}, not {c}")));
        }
    }
    if id < 0 {
        return Err((E::InvalidRequest, format!("{id} is not a node id")));
    }
    if !dir.is_nil() {
        return Err((
            E::VoterNotFound,
            format!("node {id} has directory id {}, not {dir}", uuid::Uuid::nil()),
        ));
    }
    Ok(id as u64)
}

/// The Kafka error for a refused or failed change.
fn error_of(e: &ControllerError, add: bool) -> E {
    match e {
        ControllerError::NoQuorum(_) => E::RequestTimedOut,
        ControllerError::Failed(m) if m.contains("is a voter already") => E::DuplicateVoter,
        ControllerError::Failed(m) if m.contains("is not a voter") => E::VoterNotFound,
        ControllerError::Failed(m) if m.contains("has not joined") && add => E::VoterNotFound,
        ControllerError::Failed(m) if m.contains("behind") || m.contains("caught up") => E::RequestTimedOut,
        ControllerError::Failed(_) => E::InvalidRequest,
    }
}

pub async fn handle_add(
    b: &Arc<Broker>,
    req: AddRaftVoterRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> AddRaftVoterResponse {
    let mut r = AddRaftVoterResponse::default();
    let timeout = Duration::from_millis(req.timeout_ms.clamp(1_000, 120_000) as u64);
    let outcome = match check(b, who, req.cluster_id.as_ref(), req.voter_id, &req.voter_directory_id) {
        Ok(id) => b
            .controller
            .change_voter(id, true, timeout)
            .await
            .map_err(|e| (error_of(&e, true), e.to_string())),
        Err(e) => Err(e),
    };
    if let Err((code, message)) = outcome {
        r.error_code = code.code();
        r.error_message = Some(s(message));
    }
    b.audit
        .change(who, "AddRaftVoter", "NODE", &req.voter_id.to_string(), r.error_code);
    r
}

pub async fn handle_remove(
    b: &Arc<Broker>,
    req: RemoveRaftVoterRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> RemoveRaftVoterResponse {
    let mut r = RemoveRaftVoterResponse::default();
    let outcome = match check(b, who, req.cluster_id.as_ref(), req.voter_id, &req.voter_directory_id) {
        Ok(id) => b
            .controller
            .change_voter(id, false, Duration::from_secs(30))
            .await
            .map_err(|e| (error_of(&e, false), e.to_string())),
        Err(e) => Err(e),
    };
    if let Err((code, message)) = outcome {
        r.error_code = code.code();
        r.error_message = Some(s(message));
    }
    b.audit
        .change(who, "RemoveRaftVoter", "NODE", &req.voter_id.to_string(), r.error_code);
    r
}
