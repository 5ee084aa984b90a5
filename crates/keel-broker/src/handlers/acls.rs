//! CreateAcls, DescribeAcls and DeleteAcls: ACL bindings kept in the controller (see
//! [`crate::acl`] for what they mean). The dispatcher has checked ALTER (create, delete) or
//! DESCRIBE (describe) on the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse,
};
use kafka_protocol::ResponseError as E;

use super::s;
use crate::acl::{Binding, Filter};
use crate::cluster::meta::Command;
use crate::Broker;

pub async fn create(
    b: &Arc<Broker>,
    req: CreateAclsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> CreateAclsResponse {
    let mut results = Vec::new();
    let mut valid = Vec::new();
    let allowed = b.authorize_cluster(who, crate::acl::op::ALTER);
    let described: Vec<String> = req
        .creations
        .iter()
        .map(|c| {
            format!(
                "{} {}:{} {} {} {}",
                crate::acl::resource_name(c.resource_type),
                if c.resource_pattern_type == crate::acl::pattern::PREFIXED {
                    "PREFIXED"
                } else {
                    "LITERAL"
                },
                c.resource_name.as_str(),
                c.principal.as_str(),
                crate::acl::op_name(c.operation),
                if c.permission_type == crate::acl::permission::DENY {
                    "DENY"
                } else {
                    "ALLOW"
                },
            )
        })
        .collect();
    for c in req.creations {
        let binding = Binding {
            resource_type: c.resource_type,
            resource_name: c.resource_name.to_string(),
            pattern_type: c.resource_pattern_type,
            principal: c.principal.to_string(),
            host: c.host.to_string(),
            operation: c.operation,
            permission: c.permission_type,
        };
        let mut r = AclCreationResult::default();
        if !allowed {
            r.error_code = E::ClusterAuthorizationFailed.code();
            results.push(r);
            continue;
        }
        match binding.validate() {
            Ok(()) => valid.push((results.len(), binding)),
            Err(why) => {
                r.error_code = E::InvalidRequest.code();
                r.error_message = Some(s(why));
            }
        }
        results.push(r);
    }
    if !valid.is_empty() {
        let cmd = Command::CreateAcls {
            acls: valid.iter().map(|(_, b)| b.clone()).collect(),
        };
        match b.controller.propose(&cmd, crate::cluster::topics::ADMIN_TIMEOUT).await {
            Ok(_) => tracing::info!(acls = ?cmd, "ACLs created"),
            Err(e) => {
                for (i, _) in &valid {
                    results[*i].error_code = E::RequestTimedOut.code();
                    results[*i].error_message = Some(s(e.to_string()));
                }
            }
        }
    }
    let mut r = CreateAclsResponse::default();
    r.results = results;
    for (res, acl) in r.results.iter().zip(&described) {
        b.audit.change(who, "CreateAcls", "ACL", acl, res.error_code);
    }
    r
}

fn description(b: &Binding) -> AclDescription {
    let mut d = AclDescription::default();
    d.principal = s(b.principal.clone());
    d.host = s(b.host.clone());
    d.operation = b.operation;
    d.permission_type = b.permission;
    d
}

pub async fn describe(
    b: &Arc<Broker>,
    req: DescribeAclsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeAclsResponse {
    let mut r = DescribeAclsResponse::default();
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        r.error_code = E::ClusterAuthorizationFailed.code();
        return r;
    }
    let filter = Filter {
        resource_type: req.resource_type_filter,
        resource_name: req.resource_name_filter.map(|n| n.to_string()),
        pattern_type: req.pattern_type_filter,
        principal: req.principal_filter.map(|n| n.to_string()),
        host: req.host_filter.map(|n| n.to_string()),
        operation: req.operation,
        permission: req.permission_type,
    };
    if let Err(why) = filter.validate() {
        r.error_code = E::InvalidRequest.code();
        r.error_message = Some(s(why));
        return r;
    }
    let meta = b.controller.meta();
    let mut by_resource: BTreeMap<(i8, &str, i8), Vec<AclDescription>> = BTreeMap::new();
    for a in meta.acls.iter().filter(|a| filter.matches(a)) {
        by_resource
            .entry((a.resource_type, a.resource_name.as_str(), a.pattern_type))
            .or_default()
            .push(description(a));
    }
    r.resources = by_resource
        .into_iter()
        .map(|((t, name, p), acls)| {
            let mut res = DescribeAclsResource::default();
            res.resource_type = t;
            res.resource_name = s(name);
            res.pattern_type = p;
            res.acls = acls;
            res
        })
        .collect();
    r
}

pub async fn delete(
    b: &Arc<Broker>,
    req: DeleteAclsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DeleteAclsResponse {
    let meta = b.controller.meta();
    let mut results = Vec::new();
    let mut doomed: Vec<Binding> = Vec::new();
    let allowed = b.authorize_cluster(who, crate::acl::op::ALTER);
    for f in req.filters {
        let filter = Filter {
            resource_type: f.resource_type_filter,
            resource_name: f.resource_name_filter.map(|n| n.to_string()),
            pattern_type: f.pattern_type_filter,
            principal: f.principal_filter.map(|n| n.to_string()),
            host: f.host_filter.map(|n| n.to_string()),
            operation: f.operation,
            permission: f.permission_type,
        };
        let mut r = DeleteAclsFilterResult::default();
        if !allowed {
            r.error_code = E::ClusterAuthorizationFailed.code();
            results.push(r);
            continue;
        }
        if let Err(why) = filter.validate() {
            r.error_code = E::InvalidRequest.code();
            r.error_message = Some(s(why));
            results.push(r);
            continue;
        }
        for a in meta.acls.iter().filter(|a| filter.matches(a)) {
            let mut m = DeleteAclsMatchingAcl::default();
            m.resource_type = a.resource_type;
            m.resource_name = s(a.resource_name.clone());
            m.pattern_type = a.pattern_type;
            m.principal = s(a.principal.clone());
            m.host = s(a.host.clone());
            m.operation = a.operation;
            m.permission_type = a.permission;
            r.matching_acls.push(m);
            if !doomed.contains(a) {
                doomed.push(a.clone());
            }
        }
        results.push(r);
    }
    if !doomed.is_empty() {
        let cmd = Command::DeleteAcls { acls: doomed };
        match b.controller.propose(&cmd, crate::cluster::topics::ADMIN_TIMEOUT).await {
            Ok(_) => tracing::info!(acls = ?cmd, "ACLs deleted"),
            Err(e) => {
                for r in results.iter_mut().filter(|r| r.error_code == 0) {
                    r.error_code = E::RequestTimedOut.code();
                    r.error_message = Some(s(e.to_string()));
                    r.matching_acls.clear();
                }
            }
        }
    }
    let mut r = DeleteAclsResponse::default();
    r.filter_results = results;
    for f in &r.filter_results {
        for m in &f.matching_acls {
            let acl = format!(
                "{} {}:{} {} {} {}",
                crate::acl::resource_name(m.resource_type),
                if m.pattern_type == crate::acl::pattern::PREFIXED {
                    "PREFIXED"
                } else {
                    "LITERAL"
                },
                m.resource_name.as_str(),
                m.principal.as_str(),
                crate::acl::op_name(m.operation),
                if m.permission_type == crate::acl::permission::DENY {
                    "DENY"
                } else {
                    "ALLOW"
                },
            );
            b.audit.change(who, "DeleteAcls", "ACL", &acl, f.error_code);
        }
        if f.matching_acls.is_empty() && f.error_code != 0 {
            b.audit.change(who, "DeleteAcls", "ACL", "", f.error_code);
        }
    }
    r
}
