//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554): SCRAM users kept
//! in the controller, as Kafka keeps them in its metadata log. Clients send salted
//! passwords (`Hi(password, salt, iterations)`); the controller keeps StoredKey and
//! ServerKey only. Errors per user as Kafka's: UNSUPPORTED_SASL_MECHANISM,
//! UNACCEPTABLE_CREDENTIAL, RESOURCE_NOT_FOUND, DUPLICATE_RESOURCE; a user with any error
//! has none of its changes made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError as E;

use super::s;
use crate::cluster::meta::Command;
use crate::scram::{Credential, Mechanism, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::Broker;

pub async fn describe(
    b: &Arc<Broker>,
    req: DescribeUserScramCredentialsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeUserScramCredentialsResponse {
    let meta = b.controller.meta();
    let mut r = DescribeUserScramCredentialsResponse::default();
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        r.error_code = E::ClusterAuthorizationFailed.code();
        return r;
    }
    let entry = |user: &str| {
        let mut out = DescribeUserScramCredentialsResult::default();
        out.user = s(user);
        match meta.scram.get(user) {
            Some(creds) => {
                out.credential_infos = creds
                    .iter()
                    .map(|(m, c)| {
                        let mut info = CredentialInfo::default();
                        info.mechanism = m.kafka_type();
                        info.iterations = c.iterations;
                        info
                    })
                    .collect();
            }
            None => {
                out.error_code = E::ResourceNotFound.code();
                out.error_message = Some(s(format!(
                    "Attempt to describe a user credential that does not exist: {user}"
                )));
            }
        }
        out
    };
    match req.users {
        None => r.results = meta.scram.keys().map(|u| entry(u)).collect(),
        Some(users) if users.is_empty() => r.results = meta.scram.keys().map(|u| entry(u)).collect(),
        Some(users) => {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for u in &users {
                *counts.entry(u.name.as_str()).or_default() += 1;
            }
            for (user, n) in counts {
                if n > 1 {
                    let mut out = DescribeUserScramCredentialsResult::default();
                    out.user = s(user);
                    out.error_code = E::DuplicateResource.code();
                    out.error_message = Some(s(
                        "Cannot describe SCRAM credentials for the same user twice in a single request",
                    ));
                    r.results.push(out);
                } else {
                    r.results.push(entry(user));
                }
            }
        }
    }
    r
}

/// Records the first error of a user's changes.
fn fail(errors: &mut BTreeMap<String, (i16, String)>, user: &str, e: E, msg: String) {
    errors.entry(user.to_string()).or_insert((e.code(), msg));
}

/// The checks a deletion and an upsertion share: the user's change is counted, and its
/// mechanism is returned unless the entry repeats one, names an unknown mechanism or no user.
fn admit(
    errors: &mut BTreeMap<String, (i16, String)>,
    seen: &mut BTreeSet<(String, i8)>,
    users: &mut BTreeSet<String>,
    user: &str,
    mechanism: i8,
) -> Option<Mechanism> {
    users.insert(user.to_string());
    if !seen.insert((user.to_string(), mechanism)) {
        fail(
            errors,
            user,
            E::DuplicateResource,
            "A user credential cannot be altered twice in the same request".into(),
        );
        return None;
    }
    let Some(m) = Mechanism::from_kafka_type(mechanism) else {
        fail(
            errors,
            user,
            E::UnsupportedSaslMechanism,
            "Unknown SCRAM mechanism".into(),
        );
        return None;
    };
    if user.is_empty() {
        fail(
            errors,
            user,
            E::UnacceptableCredential,
            "Username must not be empty".into(),
        );
        return None;
    }
    Some(m)
}

pub async fn alter(
    b: &Arc<Broker>,
    req: AlterUserScramCredentialsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> AlterUserScramCredentialsResponse {
    let meta = b.controller.meta();
    if !b.authorize_cluster(who, crate::acl::op::ALTER) {
        let mut r = AlterUserScramCredentialsResponse::default();
        let users: BTreeSet<String> = req
            .deletions
            .iter()
            .map(|d| d.name.to_string())
            .chain(req.upsertions.iter().map(|u| u.name.to_string()))
            .collect();
        r.results = users
            .into_iter()
            .map(|u| {
                let mut out = AlterUserScramCredentialsResult::default();
                out.user = s(u);
                out.error_code = E::ClusterAuthorizationFailed.code();
                out
            })
            .collect();
        return r;
    }
    let mut errors: BTreeMap<String, (i16, String)> = BTreeMap::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let mut users: BTreeSet<String> = BTreeSet::new();
    let mut upsert = Vec::new();
    let mut delete = Vec::new();
    for d in &req.deletions {
        let user = d.name.to_string();
        let Some(m) = admit(&mut errors, &mut seen, &mut users, &user, d.mechanism) else {
            continue;
        };
        if !meta.scram.get(&user).is_some_and(|c| c.contains_key(&m)) {
            fail(
                &mut errors,
                &user,
                E::ResourceNotFound,
                "Attempt to delete a user credential that does not exist".into(),
            );
        } else {
            delete.push((user, m));
        }
    }
    for u in &req.upsertions {
        let user = u.name.to_string();
        let Some(m) = admit(&mut errors, &mut seen, &mut users, &user, u.mechanism) else {
            continue;
        };
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&u.iterations) {
            let msg = if u.iterations < MIN_ITERATIONS {
                format!("Too few iterations: the minimum is {MIN_ITERATIONS}")
            } else {
                format!("Too many iterations: the maximum is {MAX_ITERATIONS}")
            };
            fail(&mut errors, &user, E::UnacceptableCredential, msg);
        } else if u.salt.is_empty() || u.salted_password.is_empty() {
            fail(
                &mut errors,
                &user,
                E::UnacceptableCredential,
                "Salt and salted password must not be empty".into(),
            );
        } else {
            upsert.push((
                user,
                m,
                Credential::from_salted(m, &u.salted_password, &u.salt, u.iterations),
            ));
        }
    }
    upsert.retain(|(u, ..)| !errors.contains_key(u));
    delete.retain(|(u, _)| !errors.contains_key(u));
    let changed: BTreeSet<String> = upsert
        .iter()
        .map(|(u, ..)| u.clone())
        .chain(delete.iter().map(|(u, _)| u.clone()))
        .collect();
    if !changed.is_empty() {
        let cmd = Command::AlterScramCredentials { upsert, delete };
        if let Err(e) = b.controller.propose(&cmd, crate::cluster::topics::ADMIN_TIMEOUT).await {
            for u in &changed {
                errors.insert(u.clone(), (E::RequestTimedOut.code(), e.to_string()));
            }
        } else {
            tracing::info!(users = ?changed, "SCRAM credentials altered");
        }
    }
    let mut r = AlterUserScramCredentialsResponse::default();
    r.results = users
        .into_iter()
        .map(|user| {
            let mut out = AlterUserScramCredentialsResult::default();
            if let Some((code, msg)) = errors.get(&user) {
                out.error_code = *code;
                out.error_message = Some(s(msg.clone()));
            }
            out.user = s(user);
            out
        })
        .collect();
    for u in &r.results {
        b.audit
            .change(who, "AlterUserScramCredentials", "USER", u.user.as_str(), u.error_code);
    }
    r
}
