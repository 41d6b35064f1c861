//! Criterion benchmarks of shortest-path recomputation in `tether-routing`:
//! what one router does after a topology change in a network of 1000
//! routers, random topology of mean degree 3 (the simulator's generator:
//! a random spanning tree plus random links, each end's cost 1-4), every
//! router offering one of 100 addresses.
//!
//! The router under test is a real [`RoutingEngine`] holding the whole
//! network's link state (fed as LSUs and MAUs from its neighbours), driven
//! through its public API at a fixed instant:
//!
//! - `remote_lsu`: an LSU arrives in which a router far away re-costs one
//!   of its links (alternately up by 10 and back); the engine stores it,
//!   floods it, runs SPF over the 1000 routers, diffs its 999 routes and
//!   recomputes the addresses whose offers moved.
//! - `own_link_cost`: this router re-costs one of its own links
//!   ([`RoutingEngine::set_link_cost`], alternately up by 20 and back):
//!   HELLO, a new LSU of its own, SPF, and a large share of the routes
//!   moving to other next hops.
//! - `topology_shortest_paths`: [`Topology::shortest_paths`] alone on the
//!   same graph (Dijkstra with the tie rule, plus building the map of 999
//!   paths keyed by router id).
//!
//! Goal: under 5 ms per recomputation.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use tether_routing::message::{AddressChange, Hello, LinkStateUpdate, LsLink, MobileAddressUpdate};
use tether_routing::sim::Network;
use tether_routing::{EngineConfig, LinkId, RouterMessage, RoutingEngine, Topology};

const ROUTERS: usize = 1000;
const DEGREE: usize = 3;
const SEED: u64 = 1;
/// The router whose recomputation is measured.
const ME: usize = 0;

/// Router `r`'s links: (link index, neighbour, cost).
fn links_of(net: &Network, r: usize) -> Vec<(usize, usize, u32)> {
    net.links
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match (l.a == r, l.b == r) {
            (true, _) => Some((i, l.b, l.cost())),
            (_, true) => Some((i, l.a, l.cost())),
            _ => None,
        })
        .collect()
}

/// Router `r`'s LSU with version `seq`, the cost towards `bump` (if any)
/// raised by `extra`.
fn lsu(net: &Network, r: usize, seq: u64, bump: Option<(usize, u32)>) -> RouterMessage {
    let mut links: Vec<LsLink> = links_of(net, r)
        .into_iter()
        .map(|(_, n, cost)| LsLink {
            router_id: net.routers[n].clone(),
            cost: match bump {
                Some((b, extra)) if b == n => cost + extra,
                _ => cost,
            },
        })
        .collect();
    links.sort_by(|a, b| a.router_id.cmp(&b.router_id));
    RouterMessage::LinkStateUpdate(LinkStateUpdate {
        origin: net.routers[r].clone(),
        instance: 1,
        seq,
        links,
    })
}

fn drain(e: &mut RoutingEngine) {
    while let Some(t) = e.poll_transmit() {
        black_box(t);
    }
    while let Some(ev) = e.poll_event() {
        black_box(ev);
    }
}

/// Router `ME` with two-way adjacencies to its neighbours and every other
/// router's link state and addresses, converged at `now`.
fn converged_engine(net: &Network, now: Instant) -> RoutingEngine {
    let me = &net.routers[ME];
    let mut e = RoutingEngine::new(EngineConfig::new(me.clone(), 1));
    e.set_local_addresses(now, net.addresses[ME].iter().cloned());
    let mine = links_of(net, ME);
    for &(i, n, _) in &mine {
        let l = net.links[i];
        let (my_cost, their_cost) = if l.a == ME {
            (l.cost_a, l.cost_b)
        } else {
            (l.cost_b, l.cost_a)
        };
        e.handle_link_up(now, i as LinkId, my_cost);
        e.handle_message(
            now,
            i as LinkId,
            RouterMessage::Hello(Hello {
                router_id: net.routers[n].clone(),
                instance: 1,
                cost: their_cost,
                seen: vec![me.clone()],
            }),
        );
    }
    let via = mine[0].0 as LinkId;
    for r in (0..net.routers.len()).filter(|&r| r != ME) {
        e.handle_message(now, via, lsu(net, r, 2, None));
        e.handle_message(
            now,
            via,
            RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
                origin: net.routers[r].clone(),
                instance: 1,
                seq: 1,
                change: AddressChange::Full(net.addresses[r].clone()),
            }),
        );
    }
    e.handle_timeout(now);
    drain(&mut e);
    assert_eq!(e.routes().count(), ROUTERS - 1, "every router reachable");
    // The engine's routes agree with the topology's own computation.
    let paths = e.topology().shortest_paths(me);
    for (router, route) in e.routes() {
        let p = &paths[router];
        assert_eq!(
            (route.cost, route.next_router.as_str()),
            (p.cost, p.first_hop.as_str())
        );
    }
    e
}

fn spf(c: &mut Criterion) {
    let net = Network::random(ROUTERS, DEGREE, SEED);
    let now = Instant::now();
    let mut g = c.benchmark_group("spf_1000_routers_degree_3");

    // A link between two routers that are neither this one nor its
    // neighbours: the last such in the list.
    let near: Vec<usize> = std::iter::once(ME)
        .chain(links_of(&net, ME).into_iter().map(|(_, n, _)| n))
        .collect();
    let far = net
        .links
        .iter()
        .rev()
        .find(|l| !near.contains(&l.a) && !near.contains(&l.b))
        .copied()
        .expect("a remote link");
    let via = links_of(&net, ME)[0].0 as LinkId;
    let mut e = converged_engine(&net, now);
    let before = e.stats().spf_runs;
    let mut seq = 2;
    g.bench_function("remote_lsu", |b| {
        b.iter(|| {
            seq += 1;
            let bump = (seq % 2 == 1).then_some((far.b, 10));
            e.handle_message(now, via, lsu(&net, far.a, seq, bump));
            e.handle_timeout(now);
            drain(&mut e);
        })
    });
    // Every iteration was a real change: one SPF each.
    assert_eq!(e.stats().spf_runs - before, seq - 2);

    let mut e = converged_engine(&net, now);
    let (link, _, _) = links_of(&net, ME)[0];
    let l = net.links[link];
    let base = if l.a == ME { l.cost_a } else { l.cost_b };
    let before = e.stats().spf_runs;
    let mut up = false;
    let mut changes = 0;
    g.bench_function("own_link_cost", |b| {
        b.iter(|| {
            changes += 1;
            up = !up;
            let cost = if up { base + 20 } else { base };
            e.set_link_cost(now, link as LinkId, black_box(cost));
            e.handle_timeout(now);
            drain(&mut e);
        })
    });

    assert_eq!(e.stats().spf_runs - before, changes);

    let e = converged_engine(&net, now);
    let topology: &Topology = e.topology();
    let me = net.routers[ME].clone();
    g.bench_function("topology_shortest_paths", |b| {
        b.iter(|| black_box(topology.shortest_paths(black_box(&me))))
    });
    g.finish();
}

criterion_group!(benches, spf);
criterion_main!(benches);
