//! Management: the AMQP management agent (`$management`), the entity
//! types it serves, and the Prometheus metrics rendering.
//!
//! - [`protocol`]: the request/response wire format, sans-IO, against an
//!   [`protocol::EntityStore`];
//! - [`encoding`]: AMQP encoding of answers and records, straight to bytes;
//! - [`schema`]: entity types, attribute names, operations;
//! - [`store`]: the router's state as entities, and live changes;
//! - [`agent`]: the in-process consumer that receives requests and sends
//!   the answers through the messaging core;
//! - [`prometheus`]: the `/metrics` text.

pub mod agent;
pub mod encoding;
pub mod prometheus;
pub mod protocol;
pub mod schema;
pub mod store;

pub use agent::{topo_address, Agent, MANAGEMENT};
