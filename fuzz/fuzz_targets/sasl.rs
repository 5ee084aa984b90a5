//! SASL exchanges from a client: PLAIN tokens and the SCRAM messages of both mechanisms,
//! first and final, against a known user and an unknown one.
#![no_main]

use keel_broker::scram::{server_final, server_first, Credential, Mechanism};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let users = [("alice".to_string(), "secret".to_string())].into_iter().collect();
    let _ = keel_broker::handlers::sasl::verify_plain(&users, data);
    // Split the input: a first message, then a final one.
    let cut = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let (first, last) = (&data[..cut], data.get(cut + 1..).unwrap_or_default());
    for m in Mechanism::ALL {
        let cred = Credential::from_salted(m, b"salted-password", b"salt", 4096);
        let lookup = |u: &str| (u == "alice").then(|| cred.clone());
        if let Ok((ex, _)) = server_first(m, first, lookup, b"key", "servernonce") {
            let _ = server_final(&ex, last);
        }
    }
});
