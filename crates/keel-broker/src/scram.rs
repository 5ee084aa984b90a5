//! SASL/SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), the server's side, as a
//! pure core: the broker gives it the client's messages and a credential lookup, and sends
//! what it returns. Credentials are salted (KIP-554: clients send `Hi(password, salt, i)`,
//! the broker keeps only StoredKey and ServerKey), iteration counts as Kafka's (4096 to
//! 16384). No channel binding and no extensions, as Kafka.
//!
//! An unknown user gets a well-formed first reply (a salt derived from its name with a
//! per-node key) and fails at the proof like a wrong password, so replies do not tell
//! which users exist.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// Kafka's bounds on a SCRAM credential's iteration count.
pub const MIN_ITERATIONS: i32 = 4096;
pub const MAX_ITERATIONS: i32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mechanism's number in DescribeUserScramCredentials and AlterUserScramCredentials.
    pub fn kafka_type(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.kafka_type() == t)
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
                return Vec::new();
            };
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Mechanism::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Mechanism::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with this mechanism's HMAC (RFC 5802 2.2).
    /// What a client sends in AlterUserScramCredentials; the broker never sees a password.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec(),
            Mechanism::Sha512 => pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec(),
        }
    }
}

/// What the broker keeps of a user's SCRAM password for one mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: i32,
}

impl Credential {
    /// The credential of a salted password (RFC 5802 3: StoredKey = H(HMAC(salted,
    /// "Client Key")), ServerKey = HMAC(salted, "Server Key")).
    pub fn from_salted(mechanism: Mechanism, salted: &[u8], salt: &[u8], iterations: i32) -> Credential {
        let client_key = mechanism.hmac(salted, &[b"Client Key"]);
        Credential {
            salt: salt.to_vec(),
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted, &[b"Server Key"]),
            iterations,
        }
    }

    /// Whether `password` is the one this credential was made from (its salted form
    /// derived again and compared by stored key, in time independent of where it differs).
    pub fn matches(&self, mechanism: Mechanism, password: &[u8]) -> bool {
        let Ok(iterations) = u32::try_from(self.iterations) else {
            return false;
        };
        let salted = mechanism.salted_password(password, &self.salt, iterations);
        let again = Credential::from_salted(mechanism, &salted, &self.salt, self.iterations);
        again.stored_key.len() == self.stored_key.len()
            && again
                .stored_key
                .iter()
                .zip(&self.stored_key)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("Authentication failed: Invalid SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("Authentication failed: Invalid user credentials")]
    BadCredentials,
}

/// The server's state between the client's first and final messages.
#[derive(Debug, Clone)]
pub struct Exchange {
    mechanism: Mechanism,
    /// The user, known or not.
    pub user: String,
    credential: Credential,
    known: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Reads `client-first-message` and answers `server-first-message`. `lookup` gives the
/// user's credential; `unknown_key` derives a stand-in salt for users without one;
/// `server_nonce` is fresh random printable text.
pub fn server_first(
    mechanism: Mechanism,
    message: &[u8],
    lookup: impl FnOnce(&str) -> Option<Credential>,
    unknown_key: &[u8],
    server_nonce: &str,
) -> Result<(Exchange, Vec<u8>), ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    // gs2-header: "n,," or "y,," (no channel binding; "p=" is refused), optional authzid.
    let mut parts = text.splitn(3, ',');
    let (Some(cb), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScramError::Malformed("no GS2 header"));
    };
    if cb != "n" && cb != "y" {
        return Err(ScramError::Malformed("channel binding is not supported"));
    }
    let mut user = None;
    let mut client_nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        match (i, attr.split_once('=')) {
            (0, Some(("n", v))) => user = Some(decode_saslname(v)?),
            (1, Some(("r", v))) => client_nonce = Some(v),
            (0, _) if attr.starts_with("m=") => return Err(ScramError::Malformed("mandatory extension")),
            (0 | 1, _) => return Err(ScramError::Malformed("expected n=user,r=nonce")),
            // Extensions after the nonce (Kafka's tokenauth) are not served.
            _ => return Err(ScramError::Malformed("extensions are not supported")),
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
        return Err(ScramError::Malformed("expected n=user,r=nonce"));
    };
    if user.is_empty()
        || client_nonce.is_empty()
        || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("empty user or bad nonce"));
    }
    if !authzid.is_empty() && authzid != format!("a={}", encode_saslname(&user)) {
        return Err(ScramError::Malformed("authorization id differs from the user"));
    }
    let (credential, known) = match lookup(&user) {
        Some(c) => (c, true),
        None => {
            let salt = mechanism.hmac(unknown_key, &[user.as_bytes()]);
            let credential = Credential {
                salt: salt[..16].to_vec(),
                stored_key: Vec::new(),
                server_key: Vec::new(),
                iterations: MIN_ITERATIONS,
            };
            (credential, false)
        }
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&credential.salt),
        credential.iterations
    );
    let reply = server_first.clone().into_bytes();
    Ok((
        Exchange {
            mechanism,
            user,
            credential,
            known,
            gs2_header: format!("{cb},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        },
        reply,
    ))
}

/// Reads `client-final-message`, checks the proof, and answers `server-final-message`.
pub fn server_final(ex: &Exchange, message: &[u8]) -> Result<Vec<u8>, ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
    let mut attrs = without_proof.split(',');
    let (Some(c), Some(r)) = (attrs.next(), attrs.next()) else {
        return Err(ScramError::Malformed("expected c=...,r=...,p=..."));
    };
    if attrs.next().is_some() {
        return Err(ScramError::Malformed("extensions are not supported"));
    }
    let binding = c.strip_prefix("c=").ok_or(ScramError::Malformed("expected c="))?;
    if B64.decode(binding).ok().as_deref() != Some(ex.gs2_header.as_bytes()) {
        return Err(ScramError::Malformed("channel binding differs from the GS2 header"));
    }
    // RFC 5802 wants the nonce itself; librdkafka before 2.2 sends the client nonce and then
    // the whole nonce, which Kafka accepts by checking only how it ends. The proof covers
    // the message as sent, so a replayed exchange still fails on the fresh server nonce.
    if !r.strip_prefix("r=").is_some_and(|n| n.ends_with(ex.nonce.as_str())) {
        return Err(ScramError::Malformed("nonce differs"));
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    let auth_message = format!("{},{},{}", ex.client_first_bare, ex.server_first, without_proof);
    if !ex.known {
        return Err(ScramError::BadCredentials);
    }
    let m = ex.mechanism;
    let client_signature = m.hmac(&ex.credential.stored_key, &[auth_message.as_bytes()]);
    if proof.len() != client_signature.len() {
        return Err(ScramError::BadCredentials);
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
    let computed = m.hash(&client_key);
    let same = computed.len() == ex.credential.stored_key.len()
        && computed
            .iter()
            .zip(&ex.credential.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(ScramError::BadCredentials);
    }
    let server_signature = m.hmac(&ex.credential.server_key, &[auth_message.as_bytes()]);
    Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
}

/// RFC 5802's saslname: "=2C" is ',' and "=3D" is '='; any other '=' is an error.
fn decode_saslname(v: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad saslname escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_saslname(v: &str) -> String {
    v.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector for SCRAM-SHA-256 (user "user", password "pencil").
    #[test]
    fn rfc7677_exchange_is_accepted_and_answered_with_its_server_signature() {
        let m = Mechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = m.salted_password(b"pencil", &salt, 4096);
        let cred = Credential::from_salted(m, &salted, &salt, 4096);
        let (ex, first) = server_first(
            m,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            |u| (u == "user").then(|| cred.clone()),
            b"k",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = server_final(
            &ex,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The same exchange with one bit of the proof flipped.
        assert_eq!(
            server_final(
                &ex,
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVE=",
            ),
            Err(ScramError::BadCredentials)
        );
    }

    /// A client's side, as RFC 5802 writes it, against the server's, for both mechanisms.
    fn client_final(m: Mechanism, password: &[u8], client_first_bare: &str, server_first: &str) -> String {
        client_final_with(m, password, client_first_bare, server_first, "")
    }

    /// As [`client_final`], with `prefix` before the nonce in the final message.
    fn client_final_with(
        m: Mechanism,
        password: &[u8],
        client_first_bare: &str,
        server_first: &str,
        prefix: &str,
    ) -> String {
        let mut salt = None;
        let mut iterations = 0;
        let mut nonce = "";
        for a in server_first.split(',') {
            match a.split_once('=').unwrap() {
                ("r", v) => nonce = v,
                ("s", v) => salt = Some(B64.decode(v).unwrap()),
                ("i", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let salted = m.salted_password(password, &salt.unwrap(), iterations);
        let client_key = m.hmac(&salted, &[b"Client Key"]);
        let stored = m.hash(&client_key);
        let without = format!("c=biws,r={prefix}{nonce}");
        let auth = format!("{client_first_bare},{server_first},{without}");
        let sig = m.hmac(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    #[test]
    fn both_mechanisms_accept_the_password_and_refuse_others_and_unknown_users() {
        for m in Mechanism::ALL {
            let salt = b"0123456789abcdef";
            let cred = Credential::from_salted(m, &m.salted_password(b"s3cret", salt, 4096), salt, 4096);
            let lookup = |u: &str| (u == "alice,=x").then(|| cred.clone());
            let first = "n,,n=alice=2C=3Dx,r=abc";
            let (ex, sf) = server_first(m, first.as_bytes(), lookup, b"k", "xyz").unwrap();
            assert_eq!(ex.user, "alice,=x");
            let sf = String::from_utf8(sf).unwrap();
            assert!(server_final(&ex, client_final(m, b"s3cret", "n=alice=2C=3Dx,r=abc", &sf).as_bytes()).is_ok());
            // Older librdkafka sends the client nonce and then the whole nonce; Kafka takes it.
            let last = client_final_with(m, b"s3cret", "n=alice=2C=3Dx,r=abc", &sf, "abc");
            assert!(last.contains(",r=abcabcxyz,"), "{last}");
            assert!(server_final(&ex, last.as_bytes()).is_ok());
            // Not a nonce that ends otherwise.
            let last = client_final_with(m, b"s3cret", "n=alice=2C=3Dx,r=abc", &sf, "").replace("xyz,p=", "xy,p=");
            assert!(server_final(&ex, last.as_bytes()).is_err());
            assert_eq!(
                server_final(&ex, client_final(m, b"s3creT", "n=alice=2C=3Dx,r=abc", &sf).as_bytes()),
                Err(ScramError::BadCredentials)
            );
            // An unknown user gets a first reply of the same shape, then fails like a wrong password.
            let (ex, sf) = server_first(m, b"n,,n=mallory,r=abc", lookup, b"k", "xyz").unwrap();
            let sf = String::from_utf8(sf).unwrap();
            assert!(sf.starts_with("r=abcxyz,s=") && sf.ends_with(",i=4096"), "{sf}");
            assert_eq!(
                server_final(&ex, client_final(m, b"s3cret", "n=mallory,r=abc", &sf).as_bytes()),
                Err(ScramError::BadCredentials)
            );
        }
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let m = Mechanism::Sha256;
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls-unique,,n=u,r=x",
            b"n,,r=x,n=u",
            b"n,,n=u",
            b"n,,n=u=,r=x",
            b"n,,n=,r=x",
            b"n,,n=u,r=x,tokenauth=true",
            b"n,a=v,n=u,r=x",
            b"n,,m=ext,n=u,r=x",
            b"\xff\xfe",
        ] {
            assert!(server_first(m, bad, |_| None, b"k", "s").is_err(), "{bad:?} accepted");
        }
        let (ex, _) = server_first(m, b"n,,n=u,r=x", |_| None, b"k", "s").unwrap();
        for bad in [
            &b""[..],
            b"c=biws",
            b"c=biws,r=xs,p=!!",
            b"c=eSws,r=xs,p=AA==",
            b"c=biws,r=other,p=AA==",
            b"\xff",
        ] {
            assert!(server_final(&ex, bad).is_err(), "{bad:?} accepted");
        }
    }
}
