//! SaslHandshake and SaslAuthenticate: SASL authentication of a connection on a
//! SASL_PLAINTEXT or SASL_SSL listener, with PLAIN (against `sasl_plain_users`) or
//! SCRAM-SHA-256/512 (against the SCRAM credentials the controller keeps, see
//! [`crate::scram`]). Until a connection authenticates, it may send only ApiVersions and
//! these two; anything else closes it (see `dispatch`). A failed authentication is answered
//! with SASL_AUTHENTICATION_FAILED and then the connection is closed, as Kafka does.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::ResponseError;

use super::s;
use crate::scram::{self, Credential, Mechanism as Scram};

/// The principal of a connection that has not authenticated (or needs not).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// A SASL mechanism a connection chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(Scram),
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// What authentication checks against.
pub struct Users<'a> {
    /// SASL/PLAIN users and passwords; PLAIN is offered only when there are some.
    pub plain: &'a BTreeMap<String, String>,
    /// SCRAM credentials by user and mechanism.
    pub scram: &'a BTreeMap<String, BTreeMap<Scram, Credential>>,
    /// The key that derives stand-in salts for unknown SCRAM users (per node, secret).
    pub unknown_key: &'a [u8],
}

impl Users<'_> {
    /// The mechanisms offered, as SaslHandshake lists them.
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        let mut out = Vec::new();
        if !self.plain.is_empty() {
            out.push(Mechanism::Plain);
        }
        out.extend(Scram::ALL.map(Mechanism::Scram));
        out
    }
}

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
    /// The client's IP address, as ACLs name hosts ("" when unknown).
    pub host: String,
    /// The client's address and port, for the audit log ("" when unknown).
    pub client: String,
    /// After SaslHandshake v0: the next frames are bare SASL tokens until authenticated.
    pub raw_sasl: bool,
    /// A client quota throttles the connection: nothing more is read from it until then.
    pub throttle_until: Option<std::time::Instant>,
    /// The listener authenticates with SASL.
    sasl: bool,
    /// The mechanism SaslHandshake chose; SaslAuthenticate comes next.
    mechanism: Option<Mechanism>,
    /// A SCRAM exchange between its first and final messages.
    scram: Option<scram::Exchange>,
}

impl Default for Session {
    fn default() -> Session {
        Session {
            authenticated: false,
            user: None,
            principal: ANONYMOUS.to_string(),
            listener: std::sync::Arc::from("PLAINTEXT"),
            host: String::new(),
            client: String::new(),
            throttle_until: None,
            raw_sasl: false,
            sasl: false,
            mechanism: None,
            scram: None,
        }
    }
}

impl Session {
    /// A caller of the HTTP admin API who proved to be `user` (HTTP Basic), from `peer`.
    pub fn http(user: &str, peer: Option<std::net::SocketAddr>) -> Session {
        Session {
            authenticated: true,
            user: Some(user.to_string()),
            principal: format!("User:{user}"),
            listener: std::sync::Arc::from("HTTP"),
            host: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            client: peer.map(|p| p.to_string()).unwrap_or_default(),
            ..Session::default()
        }
    }

    /// A new connection's state: authenticated from the start when no users are configured.
    pub fn new(users: &BTreeMap<String, String>) -> Session {
        Session {
            authenticated: users.is_empty(),
            sasl: !users.is_empty(),
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
            sasl: protocol.sasl(),
            principal: tls_principal.unwrap_or_else(|| ANONYMOUS.to_string()),
            listener,
            ..Session::default()
        }
    }

    /// The mechanism the connection authenticated or is authenticating with.
    pub fn mechanism(&self) -> Option<Mechanism> {
        self.mechanism
    }
}

pub fn handshake(users: &Users<'_>, session: &mut Session, req: SaslHandshakeRequest) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    if !session.sasl {
        // SASL is not enabled on this listener.
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
        return r;
    }
    if session.authenticated || session.mechanism.is_some() {
        r.error_code = ResponseError::IllegalSaslState.code();
        return r;
    }
    let offered = users.mechanisms();
    r.mechanisms = offered.iter().map(|m| s(m.name())).collect();
    match offered.into_iter().find(|m| m.name() == req.mechanism.as_str()) {
        Some(m) => session.mechanism = Some(m),
        None => r.error_code = ResponseError::UnsupportedSaslMechanism.code(),
    }
    r
}

/// Answers SaslAuthenticate; the bool says whether the connection must close after it.
/// `server_nonce` is fresh random printable text for a SCRAM exchange's first reply.
pub fn authenticate(
    users: &Users<'_>,
    session: &mut Session,
    req: SaslAuthenticateRequest,
    server_nonce: &str,
) -> (SaslAuthenticateResponse, bool) {
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = Bytes::new();
    let failed = |mut r: SaslAuthenticateResponse, why: String| {
        r.error_code = ResponseError::SaslAuthenticationFailed.code();
        r.error_message = Some(s(why));
        (r, true)
    };
    let Some(mechanism) = session.mechanism.filter(|_| !session.authenticated) else {
        r.error_code = ResponseError::IllegalSaslState.code();
        r.error_message = Some(s("SaslAuthenticate before SaslHandshake"));
        return (r, true);
    };
    match mechanism {
        Mechanism::Plain => match verify_plain(users.plain, &req.auth_bytes) {
            Ok(user) => {
                session.succeed(user);
                (r, false)
            }
            Err(why) => failed(r, why.to_string()),
        },
        Mechanism::Scram(m) => match session.scram.take() {
            None => {
                let lookup = |u: &str| users.scram.get(u).and_then(|c| c.get(&m)).cloned();
                match scram::server_first(m, &req.auth_bytes, lookup, users.unknown_key, server_nonce) {
                    Ok((exchange, reply)) => {
                        session.scram = Some(exchange);
                        r.auth_bytes = Bytes::from(reply);
                        (r, false)
                    }
                    Err(e) => failed(r, e.to_string()),
                }
            }
            Some(exchange) => match scram::server_final(&exchange, &req.auth_bytes) {
                Ok(reply) => {
                    session.succeed(exchange.user);
                    r.auth_bytes = Bytes::from(reply);
                    (r, false)
                }
                Err(scram::ScramError::BadCredentials) => failed(
                    r,
                    format!(
                        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                        m.name()
                    ),
                ),
                Err(e) => failed(r, e.to_string()),
            },
        },
    }
}

impl Session {
    fn succeed(&mut self, user: String) {
        self.authenticated = true;
        self.principal = format!("User:{user}");
        self.user = Some(user);
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

    fn plain() -> BTreeMap<String, String> {
        [("alice".to_string(), "s3cret".to_string())].into_iter().collect()
    }

    fn users<'a>(
        plain: &'a BTreeMap<String, String>,
        scram: &'a BTreeMap<String, BTreeMap<Scram, Credential>>,
    ) -> Users<'a> {
        Users {
            plain,
            scram,
            unknown_key: b"k",
        }
    }

    #[test]
    fn plain_tokens_are_checked() {
        let u = plain();
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

    fn auth(token: &[u8]) -> SaslAuthenticateRequest {
        SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token))
    }

    fn hs(m: &'static str) -> SaslHandshakeRequest {
        SaslHandshakeRequest::default().with_mechanism(s(m))
    }

    #[test]
    fn authentication_needs_a_handshake_first_and_a_failure_closes() {
        let (p, none) = (plain(), BTreeMap::new());
        let u = users(&p, &none);
        let mut session = Session::new(&p);
        assert!(!session.authenticated);
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0s3cret"), "n");
        assert_eq!((r.error_code, close), (ResponseError::IllegalSaslState.code(), true));

        assert_eq!(
            handshake(&u, &mut session, hs("GSSAPI")).error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        let r = handshake(&u, &mut session, hs("PLAIN"));
        assert_eq!(r.error_code, 0);
        let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(offered, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0nope"), "n");
        assert_eq!(
            (r.error_code, close),
            (ResponseError::SaslAuthenticationFailed.code(), true)
        );
        assert!(!session.authenticated);

        let mut session = Session::new(&p);
        assert_eq!(handshake(&u, &mut session, hs("PLAIN")).error_code, 0);
        let (r, close) = authenticate(&u, &mut session, auth(b"\0alice\0s3cret"), "n");
        assert_eq!((r.error_code, close), (0, false));
        assert!(session.authenticated);
        assert_eq!(session.user.as_deref(), Some("alice"));
        assert_eq!(session.principal, "User:alice");
        // Authenticated connections do not authenticate again.
        assert_eq!(
            handshake(&u, &mut session, hs("PLAIN")).error_code,
            ResponseError::IllegalSaslState.code()
        );
    }

    #[test]
    fn without_plain_users_only_scram_is_offered() {
        let (p, none) = (BTreeMap::new(), BTreeMap::new());
        let u = users(&p, &none);
        let mut session = Session::on_listener("SASL_SSL".into(), crate::config::SecurityProtocol::SaslSsl, None);
        assert!(!session.authenticated);
        let r = handshake(&u, &mut session, hs("PLAIN"));
        assert_eq!(r.error_code, ResponseError::UnsupportedSaslMechanism.code());
        let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(offered, ["SCRAM-SHA-256", "SCRAM-SHA-512"]);
    }

    #[test]
    fn a_scram_exchange_authenticates_the_user() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let m = Scram::Sha512;
        let salt = b"salt-salt-salt-1";
        let salted = m.salted_password(b"pw", salt, 4096);
        let cred = Credential::from_salted(m, &salted, salt, 4096);
        let scram: BTreeMap<String, BTreeMap<Scram, Credential>> =
            [("bob".to_string(), [(m, cred)].into_iter().collect())]
                .into_iter()
                .collect();
        let p = BTreeMap::new();
        let u = users(&p, &scram);
        let mut session = Session::on_listener("SASL".into(), crate::config::SecurityProtocol::SaslPlaintext, None);
        assert_eq!(handshake(&u, &mut session, hs("SCRAM-SHA-512")).error_code, 0);
        let (r, close) = authenticate(&u, &mut session, auth(b"n,,n=bob,r=cn"), "sn");
        assert_eq!((r.error_code, close), (0, false));
        assert!(!session.authenticated);
        let server_first = String::from_utf8(r.auth_bytes.to_vec()).unwrap();
        assert_eq!(server_first, format!("r=cnsn,s={},i=4096", b64.encode(salt)));
        // The client's proof, as RFC 5802 computes it.
        use hmac::{Hmac, Mac};
        use sha2::{Digest, Sha512};
        let mac = |k: &[u8], d: &[u8]| {
            let mut h = <Hmac<Sha512> as Mac>::new_from_slice(k).unwrap();
            h.update(d);
            h.finalize().into_bytes().to_vec()
        };
        let client_key = mac(&salted, b"Client Key");
        let stored = Sha512::digest(&client_key).to_vec();
        let auth_message = format!("n=bob,r=cn,{server_first},c=biws,r=cnsn");
        let sig = mac(&stored, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let last = format!("c=biws,r=cnsn,p={}", b64.encode(&proof));
        let (r, close) = authenticate(&u, &mut session, auth(last.as_bytes()), "unused");
        assert_eq!((r.error_code, close), (0, false), "{:?}", r.error_message);
        assert!(session.authenticated);
        assert_eq!(session.principal, "User:bob");
        assert!(r.auth_bytes.starts_with(b"v="));
    }

    #[test]
    fn on_a_listener_without_sasl_handshakes_are_refused() {
        let (p, none) = (BTreeMap::new(), BTreeMap::new());
        let mut session = Session::new(&p);
        assert!(session.authenticated);
        let r = handshake(&users(&p, &none), &mut session, hs("PLAIN"));
        assert_eq!(r.error_code, ResponseError::UnsupportedSaslMechanism.code());
    }
}
