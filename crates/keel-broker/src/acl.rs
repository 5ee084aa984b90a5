//! ACLs with Kafka's semantics, as a pure core: bindings (resource pattern, principal,
//! host, operation, allow or deny), the filters of DescribeAcls and DeleteAcls, and the
//! authorizer's decision. The bindings live in the controller (replicated, applied on
//! every node); handlers ask [`crate::Broker::authorize`], which calls [`authorize`].
//!
//! The decision, as Kafka's StandardAuthorizer makes it:
//! - super users may do anything;
//! - the bindings that concern a request are those of its resource type whose pattern
//!   matches the name: LITERAL equal, LITERAL `*`, or PREFIXED by a prefix of the name;
//! - none at all: denied (unless `allow_everyone_if_no_acl_found`);
//! - a DENY for the principal (or `User:*`), from the host (or `*`), for the operation
//!   (or ALL) wins;
//! - else an ALLOW likewise decides; DESCRIBE is implied by READ, WRITE, DELETE and ALTER,
//!   and DESCRIBE_CONFIGS by ALTER_CONFIGS.

use serde::{Deserialize, Serialize};

/// Kafka's resource type codes.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's pattern type codes.
pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's ACL operation codes.
pub mod op {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Kafka's permission type codes.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The one cluster resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name or principal that matches every one.
pub const WILDCARD: &str = "*";
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// One ACL: who may (or may not) do what to which resources, from where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Binding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

impl Binding {
    /// Whether this is a binding CreateAcls may store; the error message when not.
    pub fn validate(&self) -> Result<(), String> {
        if !(resource::TOPIC..=resource::USER).contains(&self.resource_type) {
            return Err(format!("invalid resource type {}", self.resource_type));
        }
        if self.pattern_type != pattern::LITERAL && self.pattern_type != pattern::PREFIXED {
            return Err(format!(
                "invalid pattern type {} (LITERAL or PREFIXED)",
                self.pattern_type
            ));
        }
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".into());
        }
        if self.resource_type == resource::CLUSTER && self.resource_name != CLUSTER_NAME {
            return Err(format!("the cluster resource is named {CLUSTER_NAME}"));
        }
        if !(op::ALL..=op::DESCRIBE_TOKENS).contains(&self.operation) {
            return Err(format!("invalid operation {}", self.operation));
        }
        if self.permission != permission::ALLOW && self.permission != permission::DENY {
            return Err(format!("invalid permission type {}", self.permission));
        }
        match self.principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => {
                return Err(format!(
                    "principal {:?} is not TYPE:NAME (e.g. User:alice)",
                    self.principal
                ))
            }
        }
        if self.host.is_empty() {
            return Err("the host is empty (use * for any)".into());
        }
        Ok(())
    }

    /// Whether the binding's resource pattern covers the resource `name` of its type.
    fn covers(&self, resource_type: i8, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                pattern::LITERAL => self.resource_name == name || self.resource_name == WILDCARD,
                pattern::PREFIXED => name.starts_with(&self.resource_name),
                _ => false,
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == WILDCARD_PRINCIPAL)
            && (self.host == WILDCARD || self.host == host)
    }
}

/// What DescribeAcls and DeleteAcls select (codes as on the wire; ANY and `None` match all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl Filter {
    /// Kafka refuses filters with UNKNOWN (0) codes.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type < resource::ANY || self.resource_type > resource::USER {
            return Err(format!("invalid resource type filter {}", self.resource_type));
        }
        if self.pattern_type < pattern::ANY || self.pattern_type > pattern::PREFIXED {
            return Err(format!("invalid pattern type filter {}", self.pattern_type));
        }
        if self.operation < op::ANY || self.operation > op::DESCRIBE_TOKENS {
            return Err(format!("invalid operation filter {}", self.operation));
        }
        if self.permission < permission::ANY || self.permission > permission::ALLOW {
            return Err(format!("invalid permission filter {}", self.permission));
        }
        Ok(())
    }

    pub fn matches(&self, b: &Binding) -> bool {
        let resource = (self.resource_type == resource::ANY || self.resource_type == b.resource_type)
            && match self.pattern_type {
                pattern::ANY => self.resource_name.as_ref().is_none_or(|n| *n == b.resource_name),
                pattern::MATCH => match &self.resource_name {
                    None => true,
                    // The bindings that would apply to a resource of this name.
                    Some(n) => b.covers(b.resource_type, n),
                },
                t => t == b.pattern_type && self.resource_name.as_ref().is_none_or(|n| *n == b.resource_name),
            };
        resource
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == op::ANY || self.operation == b.operation)
            && (self.permission == permission::ANY || self.permission == b.permission)
    }
}

/// The authorizer's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy<'a> {
    pub super_users: &'a [String],
    pub allow_if_no_acl: bool,
}

/// Whether `principal` connected from `host` may do `operation` to the resource.
pub fn authorize<'b>(
    bindings: impl IntoIterator<Item = &'b Binding>,
    policy: &Policy<'_>,
    principal: &str,
    host: &str,
    operation: i8,
    resource_type: i8,
    name: &str,
) -> bool {
    if policy.super_users.iter().any(|s| s == principal) {
        return true;
    }
    let mut any = false;
    let mut allowed = false;
    for b in bindings.into_iter().filter(|b| b.covers(resource_type, name)) {
        any = true;
        if !b.applies_to(principal, host) {
            continue;
        }
        let op_matches = b.operation == op::ALL || b.operation == operation;
        if b.permission == permission::DENY && op_matches {
            return false;
        }
        let implied = match operation {
            op::DESCRIBE => matches!(b.operation, op::READ | op::WRITE | op::DELETE | op::ALTER),
            op::DESCRIBE_CONFIGS => b.operation == op::ALTER_CONFIGS,
            _ => false,
        };
        if b.permission == permission::ALLOW && (op_matches || implied) {
            allowed = true;
        }
    }
    allowed || (!any && policy.allow_if_no_acl)
}

/// Whether `principal` may do `operation` to some resource of `resource_type` (Kafka's
/// authorizeByResourceType, as KIP-679 uses it: an idempotent producer may write if it
/// may write some topic): an ALLOW for it exists and no DENY of the same operation covers
/// every name (a LITERAL `*` or an empty PREFIXED pattern).
pub fn authorize_any<'b>(
    bindings: impl IntoIterator<Item = &'b Binding> + Clone,
    policy: &Policy<'_>,
    principal: &str,
    host: &str,
    operation: i8,
    resource_type: i8,
) -> bool {
    if policy.super_users.iter().any(|s| s == principal) {
        return true;
    }
    let relevant = |b: &&Binding| {
        b.resource_type == resource_type
            && b.applies_to(principal, host)
            && (b.operation == op::ALL || b.operation == operation)
    };
    let denied_everywhere = bindings.clone().into_iter().filter(relevant).any(|b| {
        b.permission == permission::DENY
            && ((b.pattern_type == pattern::LITERAL && b.resource_name == WILDCARD)
                || (b.pattern_type == pattern::PREFIXED && b.resource_name.is_empty()))
    });
    !denied_everywhere
        && bindings
            .into_iter()
            .filter(relevant)
            .any(|b| b.permission == permission::ALLOW)
}

/// Kafka's name of an operation code, for logs and the CLI.
pub fn op_name(code: i8) -> &'static str {
    match code {
        op::ANY => "ANY",
        op::ALL => "ALL",
        op::READ => "READ",
        op::WRITE => "WRITE",
        op::CREATE => "CREATE",
        op::DELETE => "DELETE",
        op::ALTER => "ALTER",
        op::DESCRIBE => "DESCRIBE",
        op::CLUSTER_ACTION => "CLUSTER_ACTION",
        op::DESCRIBE_CONFIGS => "DESCRIBE_CONFIGS",
        op::ALTER_CONFIGS => "ALTER_CONFIGS",
        op::IDEMPOTENT_WRITE => "IDEMPOTENT_WRITE",
        op::CREATE_TOKENS => "CREATE_TOKENS",
        op::DESCRIBE_TOKENS => "DESCRIBE_TOKENS",
        _ => "UNKNOWN",
    }
}

/// Kafka's name of a resource type code.
pub fn resource_name(code: i8) -> &'static str {
    match code {
        resource::ANY => "ANY",
        resource::TOPIC => "TOPIC",
        resource::GROUP => "GROUP",
        resource::CLUSTER => "CLUSTER",
        resource::TRANSACTIONAL_ID => "TRANSACTIONAL_ID",
        resource::DELEGATION_TOKEN => "DELEGATION_TOKEN",
        resource::USER => "USER",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(rt: i8, name: &str, pt: i8, principal: &str, host: &str, operation: i8, perm: i8) -> Binding {
        Binding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: host.into(),
            operation,
            permission: perm,
        }
    }

    fn allow(rt: i8, name: &str, pt: i8, principal: &str, operation: i8) -> Binding {
        b(rt, name, pt, principal, "*", operation, permission::ALLOW)
    }

    const NONE: Policy<'static> = Policy {
        super_users: &[],
        allow_if_no_acl: false,
    };

    fn may(acls: &[Binding], principal: &str, operation: i8, rt: i8, name: &str) -> bool {
        authorize(acls, &NONE, principal, "10.0.0.1", operation, rt, name)
    }

    #[test]
    fn no_acl_means_no_access_unless_configured_and_super_users_pass() {
        assert!(!may(&[], "User:alice", op::READ, resource::TOPIC, "t"));
        let open = Policy {
            super_users: &[],
            allow_if_no_acl: true,
        };
        assert!(authorize(&[], &open, "User:alice", "h", op::READ, resource::TOPIC, "t"));
        // An ACL on the resource for someone else: no longer "no ACL found".
        let acls = [allow(resource::TOPIC, "t", pattern::LITERAL, "User:bob", op::READ)];
        assert!(!authorize(
            &acls,
            &open,
            "User:alice",
            "h",
            op::READ,
            resource::TOPIC,
            "t"
        ));
        let supers = ["User:admin".to_string()];
        let admin = Policy {
            super_users: &supers,
            allow_if_no_acl: false,
        };
        assert!(authorize(
            &acls,
            &admin,
            "User:admin",
            "h",
            op::DELETE,
            resource::TOPIC,
            "t"
        ));
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns_cover_names() {
        let acls = [
            allow(resource::TOPIC, "orders", pattern::LITERAL, "User:alice", op::READ),
            allow(resource::TOPIC, "logs-", pattern::PREFIXED, "User:alice", op::WRITE),
            allow(resource::GROUP, "*", pattern::LITERAL, "User:*", op::READ),
        ];
        assert!(may(&acls, "User:alice", op::READ, resource::TOPIC, "orders"));
        assert!(!may(&acls, "User:alice", op::READ, resource::TOPIC, "orders2"));
        assert!(may(&acls, "User:alice", op::WRITE, resource::TOPIC, "logs-app"));
        assert!(!may(&acls, "User:alice", op::WRITE, resource::TOPIC, "logs"));
        assert!(!may(&acls, "User:alice", op::READ, resource::TOPIC, "logs-app"));
        assert!(may(&acls, "User:anyone", op::READ, resource::GROUP, "g1"));
        // A topic ACL says nothing about a transactional id of the same name.
        assert!(!may(
            &acls,
            "User:alice",
            op::READ,
            resource::TRANSACTIONAL_ID,
            "orders"
        ));
    }

    #[test]
    fn deny_wins_over_allow_and_all() {
        let acls = [
            allow(resource::TOPIC, "*", pattern::LITERAL, "User:*", op::ALL),
            b(
                resource::TOPIC,
                "secret",
                pattern::LITERAL,
                "User:bob",
                "*",
                op::READ,
                permission::DENY,
            ),
            b(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                "User:*",
                "10.0.0.1",
                op::ALL,
                permission::DENY,
            ),
        ];
        assert!(may(&acls, "User:bob", op::WRITE, resource::TOPIC, "secret"));
        assert!(!may(&acls, "User:bob", op::READ, resource::TOPIC, "secret"));
        assert!(may(&acls, "User:alice", op::READ, resource::TOPIC, "secret"));
        // The deny is for one host.
        assert!(!may(&acls, "User:alice", op::READ, resource::TOPIC, "t"));
        assert!(authorize(
            &acls,
            &NONE,
            "User:alice",
            "10.0.0.2",
            op::READ,
            resource::TOPIC,
            "t"
        ));
    }

    #[test]
    fn describe_is_implied_by_read_write_delete_alter_and_describe_configs_by_alter_configs() {
        for granted in [op::READ, op::WRITE, op::DELETE, op::ALTER] {
            let acls = [allow(resource::TOPIC, "t", pattern::LITERAL, "User:a", granted)];
            assert!(may(&acls, "User:a", op::DESCRIBE, resource::TOPIC, "t"), "{granted}");
        }
        let acls = [allow(resource::TOPIC, "t", pattern::LITERAL, "User:a", op::CREATE)];
        assert!(!may(&acls, "User:a", op::DESCRIBE, resource::TOPIC, "t"));
        let acls = [allow(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            "User:a",
            op::ALTER_CONFIGS,
        )];
        assert!(may(&acls, "User:a", op::DESCRIBE_CONFIGS, resource::TOPIC, "t"));
        // READ does not imply WRITE, nor DESCRIBE imply READ.
        let acls = [allow(resource::TOPIC, "t", pattern::LITERAL, "User:a", op::DESCRIBE)];
        assert!(!may(&acls, "User:a", op::READ, resource::TOPIC, "t"));
    }

    #[test]
    fn filters_select_as_describe_and_delete_acls_do() {
        let acls = [
            allow(resource::TOPIC, "orders", pattern::LITERAL, "User:alice", op::READ),
            allow(resource::TOPIC, "ord", pattern::PREFIXED, "User:bob", op::WRITE),
            allow(resource::TOPIC, "*", pattern::LITERAL, "User:carol", op::READ),
            allow(resource::GROUP, "orders", pattern::LITERAL, "User:alice", op::READ),
        ];
        let f = |rt, name: Option<&str>, pt, principal: Option<&str>| Filter {
            resource_type: rt,
            resource_name: name.map(String::from),
            pattern_type: pt,
            principal: principal.map(String::from),
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        let count = |f: Filter| acls.iter().filter(|b| f.matches(b)).count();
        assert_eq!(count(f(resource::ANY, None, pattern::ANY, None)), 4);
        assert_eq!(count(f(resource::TOPIC, None, pattern::ANY, None)), 3);
        assert_eq!(count(f(resource::TOPIC, Some("orders"), pattern::ANY, None)), 1);
        assert_eq!(count(f(resource::TOPIC, Some("orders"), pattern::MATCH, None)), 3);
        assert_eq!(count(f(resource::TOPIC, Some("ord"), pattern::PREFIXED, None)), 1);
        assert_eq!(count(f(resource::ANY, None, pattern::ANY, Some("User:alice"))), 2);
        assert!(f(0, None, pattern::ANY, None).validate().is_err());
    }

    #[test]
    fn only_well_formed_bindings_are_stored() {
        let good = allow(resource::TOPIC, "t", pattern::LITERAL, "User:a", op::READ);
        assert_eq!(good.validate(), Ok(()));
        let mut bad = good.clone();
        bad.pattern_type = pattern::MATCH;
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.principal = "alice".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.operation = op::ANY;
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.resource_type = resource::CLUSTER;
        assert!(bad.validate().is_err());
        bad.resource_name = CLUSTER_NAME.into();
        assert_eq!(bad.validate(), Ok(()));
    }
}
