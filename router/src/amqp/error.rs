//! Errors of the client-connection engine, and the AMQP error conditions it
//! sends.
//!
//! [`ConnectionError`] is what [`super::ClientConnection::handle_input`]
//! returns when the client's bytes end the connection; by then the engine
//! has already queued whatever explains the end to the client (a `close`
//! with [`ConnectionError::condition`], a SASL outcome, or our protocol
//! header), so the driver only writes what is queued and drops the socket.
//! [`SendError`] is what a router action that cannot be carried out right
//! now returns; it never ends the connection.

use tether_protocol::DecodeError;

/// `amqp:not-allowed`: the peer tried something the protocol or we forbid.
pub const COND_NOT_ALLOWED: &str = "amqp:not-allowed";
/// `amqp:unauthorized-access`: authentication failed.
pub const COND_UNAUTHORIZED: &str = "amqp:unauthorized-access";
/// `amqp:connection:framing-error`: bytes that cannot be framed, or a
/// frame the spec answers with a framing error (handle or channel beyond
/// the announced maximum).
pub const COND_FRAMING_ERROR: &str = "amqp:connection:framing-error";
/// `amqp:decode-error`: a well-delimited frame with a bad body.
pub const COND_DECODE_ERROR: &str = "amqp:decode-error";
/// `amqp:resource-limit-exceeded`: the idle timeout, and too many links.
pub const COND_RESOURCE_LIMIT: &str = "amqp:resource-limit-exceeded";
/// `amqp:not-implemented`: e.g. a transaction coordinator link.
pub const COND_NOT_IMPLEMENTED: &str = "amqp:not-implemented";
/// `amqp:internal-error`: a bug on our side.
pub const COND_INTERNAL_ERROR: &str = "amqp:internal-error";
/// `amqp:session:unattached-handle`: a frame named a handle that is not attached.
pub const COND_UNATTACHED_HANDLE: &str = "amqp:session:unattached-handle";
/// `amqp:session:handle-in-use`: an attach reused an attached handle.
pub const COND_HANDLE_IN_USE: &str = "amqp:session:handle-in-use";
/// `amqp:session:window-violation`: a transfer beyond our incoming window.
pub const COND_WINDOW_VIOLATION: &str = "amqp:session:window-violation";
/// `amqp:link:transfer-limit-exceeded`: a transfer without link credit.
pub const COND_TRANSFER_LIMIT: &str = "amqp:link:transfer-limit-exceeded";

/// Why the client's input ended the connection. Every variant is fatal.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The client opened with a protocol header we do not accept at this
    /// point (wrong protocol, or SASL/no-SASL where the configuration does
    /// not allow it). We answered with the header we do accept.
    #[error("unacceptable protocol header {header:02x?}: {reason}")]
    ProtocolHeader {
        /// The 8 bytes the client sent.
        header: [u8; 8],
        /// What was wrong with them.
        reason: &'static str,
    },
    /// Authentication failed: bad credentials, or a mechanism we do not
    /// offer. We sent `sasl-outcome` with code `auth`.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The SASL exchange broke the protocol (unexpected or malformed SASL
    /// frame). We sent `sasl-outcome` with code `sys-perm`.
    #[error("SASL protocol error: {0}")]
    Sasl(String),
    /// The bytes could not be split into frames, or a frame's body is not
    /// valid AMQP.
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    /// A well-formed frame that breaks the protocol at connection level.
    #[error("{condition}: {description}")]
    Protocol {
        /// The AMQP condition we closed with.
        condition: &'static str,
        /// What the client did.
        description: String,
    },
}

impl ConnectionError {
    /// The AMQP error condition the connection was (or would have been)
    /// closed with.
    pub fn condition(&self) -> &'static str {
        match self {
            ConnectionError::ProtocolHeader { .. } => COND_FRAMING_ERROR,
            ConnectionError::Authentication(_) | ConnectionError::Sasl(_) => COND_UNAUTHORIZED,
            ConnectionError::Decode(e) => e.condition(),
            ConnectionError::Protocol { condition, .. } => condition,
        }
    }

    pub(crate) fn protocol(condition: &'static str, description: impl Into<String>) -> Self {
        ConnectionError::Protocol {
            condition,
            description: description.into(),
        }
    }
}

/// Why [`super::ClientConnection::send_transfer`] sent nothing. None of
/// these ends the connection or the link.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such link: never attached, already detached, or from another
    /// connection.
    #[error("unknown or detached link")]
    UnknownLink,
    /// The link is one the client sends on; we can only send on links
    /// where the client is the receiver.
    #[error("the client is the sender on this link")]
    WrongDirection,
    /// The attach has not been answered with `accept_attach` yet.
    #[error("the link's attach has not been accepted yet")]
    NotAttached,
    /// We are detaching the link.
    #[error("the link is being detached")]
    Detaching,
    /// A new delivery needs link credit and the client gave none (wait
    /// for [`super::Event::Credit`]).
    #[error("no link credit")]
    NoCredit,
    /// The client's session incoming-window is exhausted (wait for
    /// [`super::Event::Sendable`]).
    #[error("the client's session window is exhausted")]
    SessionWindow,
    /// A new delivery was started while the previous one on the link is
    /// still open (`more` was set on its last frame); finish or abort it.
    #[error("another delivery is in progress on this link")]
    DeliveryInProgress,
    /// `continuing` names a delivery that is not in progress on this link.
    #[error("the continued delivery is not in progress on this link")]
    UnknownDelivery,
    /// The delivery tag does not fit the client's max-frame-size (the spec
    /// limits tags to 32 bytes).
    #[error("delivery tag too large")]
    TagTooLarge,
    /// The connection is not open (not yet, or no longer).
    #[error("the connection is not open")]
    NotOpen,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let header = ConnectionError::ProtocolHeader {
            header: *b"GET / HT",
            reason: "not AMQP",
        };
        assert_eq!(header.condition(), COND_FRAMING_ERROR);
        assert_eq!(
            ConnectionError::Authentication("x".into()).condition(),
            COND_UNAUTHORIZED
        );
        assert_eq!(
            ConnectionError::Sasl("x".into()).condition(),
            COND_UNAUTHORIZED
        );
        assert_eq!(
            ConnectionError::Decode(DecodeError::MalformedTransfer("x")).condition(),
            COND_DECODE_ERROR
        );
        assert_eq!(
            ConnectionError::protocol(COND_NOT_ALLOWED, "second open").to_string(),
            "amqp:not-allowed: second open"
        );
    }
}
