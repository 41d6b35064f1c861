//! The Tether router: configuration, inter-router links over mutual TLS,
//! TCP flows, and the `tether` command line.
//!
//! Module map: [`config`] (strict TOML), [`tls`] (rustls profiles and
//! certificate generation), [`link`] (one inter-router AMQP connection and
//! its driver), [`flow`] (one TCP flow over a link), [`core`] (the router
//! that ties them together), [`demo`] (the three-site demo).

pub mod amqp;
pub mod cli_mgmt;
pub mod client;
pub mod config;
pub mod core;
pub mod demo;
pub mod flow;
pub mod http;
pub mod link;
pub mod management;
pub mod messages;
pub mod metrics;
pub mod mgmt_client;
pub mod reconfig;
pub mod relay;
pub mod site;
pub mod tls;
