//! Sans-IO routing for Tether routers.
//!
//! This crate owns the router's view of *where addresses are*: which
//! routers are reachable and over which next-hop links, and which routers
//! offer which addresses (they hold a `tcp_connector`, later: an AMQP
//! consumer). It does no I/O and reads no clock: the router feeds the
//! link-state engine events ([`RoutingEngine::handle_link_up`],
//! [`RoutingEngine::handle_message`], ...) with the current time, and polls
//! it for the messages to send and the route and reachability changes to act
//! on, so every rule here is unit-testable and deterministic.
//!
//! [`linkstate`] is the engine (HELLO, router advertisements, link-state and
//! mobile-address flooding, least-cost next hops), [`message`] the routing
//! messages and their wire encoding, [`topology`] the graph and path
//! computation behind the engine, and [`sim`] a deterministic network
//! simulator that runs many engines on a virtual clock and checks every
//! route.

pub mod linkstate;
pub mod message;
pub mod sim;
pub mod topology;

pub use linkstate::{
    EngineConfig, EngineStats, Event, LinkId, Offer, Route, RoutingEngine, Timers, Transmit,
};
pub use message::{DecodeError, RouterMessage};
pub use topology::{PathInfo, Topology};
