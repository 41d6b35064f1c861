//! `/metrics`: the router's counters in the Prometheus text format.
//!
//! Families (all prefixed `tether_`):
//! - per address (TCP flows whose socket is at this router): flows opened,
//!   active, failed; bytes in (read from local sockets) and out (written
//!   to them); flow duration histogram; AMQP deliveries in, out, transit;
//! - per inter-router link (label `peer`): up, cost, bytes and frames each
//!   way;
//! - router: routers reachable, addresses, connections, resident memory,
//!   messages dropped and refused, uptime.

use std::rc::Rc;

use crate::core::Router;
use crate::metrics::{process_rss_bytes, Exposition};

/// Renders every family for one scrape.
pub fn render(router: &Rc<Router>) -> String {
    let mut e = Exposition::new();
    let id = router.id.as_str();

    // Per address: TCP flows.
    for (address, f) in router.flow_stats.borrow().iter() {
        let l = [("router", id), ("address", address.as_str())];
        e.counter(
            "tether_address_flows_opened_total",
            "TCP flows opened for the address at this router",
            &l,
            f.opened.get() as f64,
        );
        e.gauge(
            "tether_address_flows_active",
            "TCP flows of the address open at this router",
            &l,
            f.active.get() as f64,
        );
        e.counter(
            "tether_address_flows_failed_total",
            "TCP flows of the address that ended in an error (refused, reset, link lost)",
            &l,
            f.failed.get() as f64,
        );
        for (dir, v) in [("in", f.bytes_in.get()), ("out", f.bytes_out.get())] {
            e.counter(
                "tether_address_bytes_total",
                "Bytes of the address's flows read from (in) and written to (out) sockets at this router",
                &[("router", id), ("address", address.as_str()), ("direction", dir)],
                v as f64,
            );
        }
        e.histogram(
            "tether_address_flow_duration_seconds",
            "How long the address's TCP flows lasted",
            &l,
            &f.duration,
        );
    }
    // Per address: AMQP deliveries.
    let mut counters: Vec<(String, crate::messages::AddressCounters)> = router
        .messages
        .counters
        .borrow()
        .iter()
        .map(|(a, c)| (a.clone(), *c))
        .collect();
    counters.sort_by(|a, b| a.0.cmp(&b.0));
    for (address, c) in &counters {
        for (kind, v) in [
            ("ingress", c.ingress),
            ("egress", c.egress),
            ("transit", c.transit),
        ] {
            e.counter(
                "tether_address_deliveries_total",
                "AMQP deliveries of the address: entering the network here (ingress), to consumers here (egress), passed on (transit)",
                &[("router", id), ("address", address.as_str()), ("kind", kind)],
                v as f64,
            );
        }
    }

    // Per link.
    let connector_of: std::collections::HashMap<u64, String> = router
        .connector_links
        .borrow()
        .iter()
        .map(|(n, l)| (*l, n.clone()))
        .collect();
    for link in router.links.borrow().values() {
        let link_id = link.id.to_string();
        let connector = connector_of.get(&link.id).cloned().unwrap_or_default();
        let l = [
            ("router", id),
            ("peer", link.peer_id.as_str()),
            ("link", link_id.as_str()),
            ("connector", connector.as_str()),
        ];
        e.gauge(
            "tether_link_up",
            "1 while the inter-router link is up (links that are down are not listed)",
            &l,
            if link.is_down() { 0.0 } else { 1.0 },
        );
        e.gauge(
            "tether_link_cost",
            "Routing cost of the inter-router link",
            &l,
            f64::from(router.link_cost(link)),
        );
        for (dir, bytes, frames) in [
            ("in", link.stats.bytes_in.get(), link.stats.frames_in.get()),
            (
                "out",
                link.stats.bytes_out.get(),
                link.stats.frames_out.get(),
            ),
        ] {
            let ld = [
                ("router", id),
                ("peer", link.peer_id.as_str()),
                ("link", link_id.as_str()),
                ("connector", connector.as_str()),
                ("direction", dir),
            ];
            e.counter(
                "tether_link_bytes_total",
                "Bytes on the inter-router link (TLS records included)",
                &ld,
                bytes as f64,
            );
            e.counter(
                "tether_link_frames_total",
                "AMQP frames on the inter-router link",
                &ld,
                frames as f64,
            );
        }
    }
    for (name, c) in router.live.connectors.borrow().iter() {
        e.gauge(
            "tether_connector_up",
            "1 while the connector's link is up",
            &[("router", id), ("connector", name.as_str())],
            if c.state.status.get() == "UP" {
                1.0
            } else {
                0.0
            },
        );
    }

    // Router.
    let l = [("router", id)];
    let routers = router.engine.borrow().routes().count();
    let addresses = router
        .engine
        .borrow()
        .addresses()
        .filter(|(_, o)| !o.is_empty())
        .count();
    e.gauge(
        "tether_routers_reachable",
        "Other routers reachable from this one",
        &l,
        routers as f64,
    );
    e.gauge(
        "tether_addresses",
        "Addresses (TCP services and AMQP addresses) reachable in the network",
        &l,
        addresses as f64,
    );
    e.gauge(
        "tether_connections",
        "Connections: inter-router links and AMQP clients",
        &l,
        (router.links.borrow().len() + router.clients.borrow().len()) as f64,
    );
    e.gauge(
        "tether_amqp_clients",
        "AMQP client connections",
        &l,
        router.clients.borrow().len() as f64,
    );
    if let Some(rss) = process_rss_bytes() {
        e.gauge(
            "tether_memory_resident_bytes",
            "Resident memory of the router process",
            &l,
            rss as f64,
        );
    }
    let stats = router.messages.stats.borrow().clone();
    e.counter(
        "tether_messages_received_total",
        "AMQP messages routed by this router",
        &l,
        stats.received as f64,
    );
    for (outcome, v) in [
        ("accepted", stats.accepted),
        ("rejected", stats.rejected),
        ("released", stats.released),
        ("modified", stats.modified),
    ] {
        e.counter(
            "tether_message_outcomes_total",
            "Outcomes of unsettled AMQP messages passed back through this router",
            &[("router", id), ("outcome", outcome)],
            v as f64,
        );
    }
    e.counter(
        "tether_messages_dropped_total",
        "Pre-settled AMQP messages nobody could take",
        &l,
        stats.dropped as f64,
    );
    e.counter(
        "tether_messages_refused_total",
        "Unsettled AMQP messages released or rejected because nobody could take them",
        &l,
        stats.refused as f64,
    );
    e.gauge(
        "tether_uptime_seconds",
        "Seconds since the router started",
        &l,
        router.started.elapsed().as_secs_f64(),
    );
    e.render()
}
