//! SaslHandshake and SaslAuthenticate: SASL/PLAIN authentication of a connection against
//! `sasl_plain_users`. Until a connection authenticates, it may send only ApiVersions and
//! these two; anything else closes it (see `dispatch`). A failed authentication is answered
//! with SASL_AUTHENTICATION_FAILED and then the connection is closed, as Kafka does.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::ResponseError;

use super::s;

/// The mechanisms Keel offers.
pub const MECHANISMS: &[&str] = &["PLAIN"];

/// The principal of a connection that has not authenticated (or needs not).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// One connection's authentication state.
#[derive(Debug, Clone)]
pub struct Session {
    /// May send any request.
    pub authenticated: bool,
    /// The user it authenticated as with SASL.
    pub user: Option<String>,
    /// Who the connection acts as: `User:<name>` after SASL, the client certificate's
    /// subject on a TLS listener (`User:CN=...`), else `User:ANONYMOUS`.
    pub principal: String,
    /// The listener it came in through.
    pub listener: std::sync::Arc<str>,
    /// SaslHandshake chose a mechanism; SaslAuthenticate comes next.
    handshaken: bool,
}

impl Default for Session {
    fn default() -> Session {
        Session {
            authenticated: false,
            user: None,
            principal: ANONYMOUS.to_string(),
            listener: std::sync::Arc::from("PLAINTEXT"),
            handshaken: false,
        }
    }
}

impl Session {
    /// A new connection's state: authenticated from the start when no users are configured.
    pub fn new(users: &BTreeMap<String, String>) -> Session {
        Session {
            authenticated: users.is_empty(),
            ..Session::default()
        }
    }

    /// A new connection on `listener`: it must authenticate with SASL first when its
    /// protocol says so. `tls_principal` is the client certificate's principal, if any.
    pub fn on_listener(
        listener: std::sync::Arc<str>,
        protocol: crate::config::SecurityProtocol,
        tls_principal: Option<String>,
    ) -> Session {
        Session {
            authenticated: !protocol.sasl(),
            principal: tls_principal.unwrap_or_else(|| ANONYMOUS.to_string()),
            listener,
            ..Session::default()
        }
    }
}

pub fn handshake(
    users: &BTreeMap<String, String>,
    session: &mut Session,
    req: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    if users.is_empty() {
        // SASL is not enabled on this listener.
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
        return r;
    }
    r.mechanisms = MECHANISMS.iter().map(|m| s(*m)).collect();
    if MECHANISMS.contains(&req.mechanism.as_str()) {
        session.handshaken = true;
    } else {
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
    }
    r
}

/// Answers SaslAuthenticate; the bool says whether the connection must close after it.
pub fn authenticate(
    users: &BTreeMap<String, String>,
    session: &mut Session,
    req: SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = Bytes::new();
    if !session.handshaken {
        r.error_code = ResponseError::IllegalSaslState.code();
        r.error_message = Some(s("SaslAuthenticate before SaslHandshake"));
        return (r, true);
    }
    session.handshaken = false;
    match verify_plain(users, &req.auth_bytes) {
        Ok(user) => {
            session.authenticated = true;
            session.principal = format!("User:{user}");
            session.user = Some(user);
            (r, false)
        }
        Err(why) => {
            r.error_code = ResponseError::SaslAuthenticationFailed.code();
            r.error_message = Some(s(why));
            (r, true)
        }
    }
}

/// Checks a SASL/PLAIN token (RFC 4616: `[authzid] NUL authcid NUL passwd`) against the
/// users; returns the user name, or what Kafka says when it refuses.
pub fn verify_plain(users: &BTreeMap<String, String>, token: &[u8]) -> Result<String, &'static str> {
    const INVALID: &str = "Authentication failed: Invalid username or password";
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Authentication failed: Invalid SASL/PLAIN response: expected 3 tokens");
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return Err(INVALID);
    };
    if user.is_empty() {
        return Err("Authentication failed: username not specified");
    }
    if !authzid.is_empty() && authzid != user {
        return Err("Authentication failed: Client requested an authorization id that is different from username");
    }
    match users.get(user) {
        Some(expected) if same_bytes(expected.as_bytes(), password) => Ok(user.to_string()),
        _ => Err(INVALID),
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> BTreeMap<String, String> {
        [("alice".to_string(), "s3cret".to_string())].into_iter().collect()
    }

    #[test]
    fn plain_tokens_are_checked() {
        let u = users();
        assert_eq!(verify_plain(&u, b"\0alice\0s3cret"), Ok("alice".to_string()));
        assert_eq!(verify_plain(&u, b"alice\0alice\0s3cret"), Ok("alice".to_string()));
        for bad in [
            &b"\0alice\0wrong"[..],
            b"\0alice\0s3cre",
            b"\0alice\0s3cret\0",
            b"\0bob\0s3cret",
            b"\0\0s3cret",
            b"mallory\0alice\0s3cret",
            b"alice s3cret",
            b"",
            b"\0\xff\0s3cret",
        ] {
            assert!(verify_plain(&u, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn authentication_needs_a_handshake_first_and_a_failure_closes() {
        let u = users();
        let mut session = Session::new(&u);
        assert!(!session.authenticated);
        let auth = |token: &'static [u8]| SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(token));
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0s3cret"));
        assert_eq!((r.error_code, close), (ResponseError::IllegalSaslState.code(), true));

        let hs = |m: &'static str| SaslHandshakeRequest::default().with_mechanism(s(m));
        assert_eq!(
            handshake(&u, &mut session, hs("SCRAM-SHA-256")).error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        assert_eq!(handshake(&u, &mut session, hs("PLAIN")).error_code, 0);
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0nope"));
        assert_eq!(
            (r.error_code, close),
            (ResponseError::SaslAuthenticationFailed.code(), true)
        );
        assert!(!session.authenticated);

        assert_eq!(handshake(&u, &mut session, hs("PLAIN")).error_code, 0);
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0s3cret"));
        assert_eq!((r.error_code, close), (0, false));
        assert!(session.authenticated);
        assert_eq!(session.user.as_deref(), Some("alice"));
    }

    #[test]
    fn without_users_every_connection_is_open_and_handshakes_are_refused() {
        let none = BTreeMap::new();
        let mut session = Session::new(&none);
        assert!(session.authenticated);
        let r = handshake(
            &none,
            &mut session,
            SaslHandshakeRequest::default().with_mechanism(s("PLAIN")),
        );
        assert_eq!(r.error_code, ResponseError::UnsupportedSaslMechanism.code());
    }
}
