//! Sans-IO routing for Tether routers.
//!
//! This crate owns the router's view of *where addresses are*: which
//! neighbouring routers are up, and which routers offer which addresses
//! (they hold a `tcp_connector`, later: an AMQP consumer). It does no I/O and
//! reads no clock: the router's link driver feeds it events
//! ([`AddressTable::neighbour_up`], [`AddressTable::handle_message`], ...)
//! and gets back the reachability changes to act on, so every rule here is
//! unit-testable and deterministic.
//!
//! The foundation protocol is a *mobile-address update* exchanged between
//! neighbours: a full snapshot of the sender's local addresses with a sequence
//! number. Multi-hop link-state routing (HELLO, router advertisements,
//! least-cost paths) builds on the same types: [`linkstate`] is the engine,
//! [`topology`] the graph and path computation behind it, and [`sim`] a
//! deterministic network simulator that runs many engines on a virtual
//! clock and checks every route.

pub mod linkstate;
pub mod message;
pub mod sim;
pub mod table;
pub mod topology;

pub use linkstate::{
    EngineConfig, EngineStats, Event, LinkId, Offer, Route, RoutingEngine, Timers, Transmit,
};
pub use message::{DecodeError, RouterMessage};
pub use table::{AddressTable, Destination, NeighbourId, ReachabilityChange};
pub use topology::{PathInfo, Topology};
