//! The server side of SASL authentication for client connections:
//! which mechanisms we offer, and checking what the client answers.
//!
//! Only the pure parts live here (mechanism list, RFC 4616 PLAIN
//! parsing and the credential check); the exchange itself (frames,
//! states, outcome) is driven by the connection engine.

use std::collections::HashMap;
use std::sync::Arc;

/// SASL mechanism names we know.
pub(crate) const MECH_PLAIN: &str = "PLAIN";
pub(crate) const MECH_ANONYMOUS: &str = "ANONYMOUS";

/// How clients may authenticate.
#[derive(Debug, Clone, Default)]
pub struct SaslConfig {
    /// A client may skip SASL and send the AMQP protocol header directly
    /// (it is then anonymous).
    pub allow_no_sasl: bool,
    /// Offer the ANONYMOUS mechanism.
    pub anonymous: bool,
    /// Offer PLAIN, checked against these user -> password pairs.
    pub plain: Option<Arc<HashMap<String, String>>>,
}

impl SaslConfig {
    /// Mechanisms to offer, most preferred first (PLAIN before ANONYMOUS, so
    /// a client that has credentials uses them).
    pub(crate) fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = Vec::with_capacity(2);
        if self.plain.is_some() {
            m.push(MECH_PLAIN);
        }
        if self.anonymous {
            m.push(MECH_ANONYMOUS);
        }
        m
    }

    /// Whether a SASL exchange can succeed at all.
    pub(crate) fn offers_sasl(&self) -> bool {
        self.plain.is_some() || self.anonymous
    }
}

/// Checks a PLAIN response (RFC 4616: `[authzid] NUL authcid NUL passwd`)
/// against `users`, returning the authenticated user (authcid).
///
/// An authorization identity other than the user itself is refused: we
/// have no notion of acting on behalf of another user.
pub(crate) fn check_plain(
    users: &HashMap<String, String>,
    response: &[u8],
) -> Result<String, &'static str> {
    let mut parts = response.splitn(3, |b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN response is not authzid NUL authcid NUL passwd");
    };
    if passwd.contains(&0) {
        return Err("PLAIN response has more than two NUL separators");
    }
    let (Ok(authzid), Ok(authcid)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return Err("PLAIN identity is not UTF-8");
    };
    if authcid.is_empty() {
        return Err("PLAIN response without a user name");
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err("PLAIN authorization identity differs from the user");
    }
    match users.get(authcid) {
        Some(expected) if constant_time_eq(expected.as_bytes(), passwd) => Ok(authcid.to_owned()),
        // Same message for an unknown user and a wrong password: the
        // client must not learn which user names exist.
        _ => Err("invalid user name or password"),
    }
}

/// Compares without an early exit on the first differing byte, so the time
/// taken does not tell an attacker how much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> HashMap<String, String> {
        HashMap::from([("alice".to_owned(), "s3cret".to_owned())])
    }

    #[test]
    fn plain_responses() {
        let u = users();
        assert_eq!(check_plain(&u, b"\0alice\0s3cret"), Ok("alice".into()));
        assert_eq!(check_plain(&u, b"alice\0alice\0s3cret"), Ok("alice".into()));
        for bad in [
            &b"\0alice\0wrong"[..],
            b"\0bob\0s3cret",
            b"\0alice\0s3cret\0",
            b"bob\0alice\0s3cret",
            b"\0\0s3cret",
            b"alice s3cret",
            b"\0alice",
            b"",
            b"\0\xff\0s3cret",
        ] {
            assert!(check_plain(&u, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mechanism_order() {
        let mut c = SaslConfig {
            anonymous: true,
            ..Default::default()
        };
        assert_eq!(c.mechanisms(), ["ANONYMOUS"]);
        c.plain = Some(Arc::new(users()));
        assert_eq!(c.mechanisms(), ["PLAIN", "ANONYMOUS"]);
        assert!(c.offers_sasl());
        assert!(!SaslConfig::default().offers_sasl());
    }
}
