//! AMQP 1.0 for messaging clients: the server side of a client connection
//! (Qpid Proton, Qpid JMS, rhea, fe2o3-amqp, ...), so clients can send to
//! and receive from addresses through the router, as with Qpid Dispatch.
//!
//! [`ClientConnection`] is a sans-IO engine in the style of quinn-proto:
//! the driver feeds it received bytes and the time, and takes out bytes to
//! write, [`Event`]s and the next timer deadline. It owns the protocol
//! (headers, SASL, sessions, links, flow control, delivery bookkeeping)
//! and nothing else: routing messages between links, and the socket, are
//! the router's. Frames use `tether-protocol`'s engine: every transfer
//! takes its fast path, and payloads reach the router as zero-copy slices
//! of the receive buffer.
//!
//! A driver's loop, in outline:
//!
//! ```text
//! read socket into buf      -> conn.handle_input(now, &mut buf)?
//! while let Some(ev) = conn.poll_event()  -> route, call conn.accept_attach / send_transfer / ...
//! conn.poll_transmit(&mut wbuf)           -> write wbuf
//! sleep until conn.poll_timeout()         -> conn.handle_timeout(now)
//! if conn.is_closed()                     -> write what is left, drop the socket
//! ```

mod connection;
mod error;
mod sasl;

#[cfg(test)]
mod tests;

pub use connection::{
    ClientConnection, ConnectionConfig, Event, IncomingDeliveryId, LinkId, OutgoingDeliveryId,
    OutgoingTransfer, CAP_ANONYMOUS_RELAY, CHANNEL_MAX, HANDLE_MAX, INCOMING_WINDOW, MAX_LINKS,
};
pub use error::{
    ConnectionError, SendError, COND_DECODE_ERROR, COND_FRAMING_ERROR, COND_HANDLE_IN_USE,
    COND_INTERNAL_ERROR, COND_NOT_ALLOWED, COND_NOT_IMPLEMENTED, COND_RESOURCE_LIMIT,
    COND_TRANSFER_LIMIT, COND_UNATTACHED_HANDLE, COND_UNAUTHORIZED, COND_WINDOW_VIOLATION,
};
pub use sasl::SaslConfig;
/// Re-exported so callers need no direct fe2o3 dependency for events.
pub use tether_protocol::types::definitions::{ReceiverSettleMode, SenderSettleMode};
pub use tether_protocol::types::messaging::DeliveryState;
