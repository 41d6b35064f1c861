//! The link-state routing engine: neighbours, the link-state database,
//! least-cost next hops, and where each address can be reached.
//!
//! # What it is
//!
//! [`RoutingEngine`] is a sans-IO state machine in the style of
//! `quinn-proto`: the router's link drivers feed it events through
//! `handle_*` methods, each with the current time `now` as an argument, and
//! pull what to do with `poll_*` methods. It never reads a clock, owns no
//! socket and spawns nothing, so the same code runs inside the router and
//! inside [`crate::sim`], which drives a thousand of them on a virtual clock.
//!
//! Inputs:
//! - [`RoutingEngine::handle_link_up`] / [`RoutingEngine::handle_link_down`]:
//!   an inter-router link (a [`LinkId`] chosen by the caller) opened with
//!   this end's cost setting, or closed.
//! - [`RoutingEngine::set_link_cost`]: this end's cost setting of an open
//!   link changed (e.g. a configuration reload). A HELLO carries the new
//!   setting to the peer at once; routes move on both sides.
//! - [`RoutingEngine::handle_message`]: a [`RouterMessage`] that arrived on
//!   a link.
//! - [`RoutingEngine::handle_timeout`]: the time in
//!   [`RoutingEngine::poll_timeout`] has come.
//! - [`RoutingEngine::set_local_addresses`]: the addresses this router has
//!   consumers for changed.
//!
//! Outputs:
//! - [`RoutingEngine::poll_transmit`]: a message to send on a link.
//! - [`RoutingEngine::poll_event`]: a neighbour came or went, the route to a
//!   router changed ([`Event::RouteChanged`]), or the set of routers offering
//!   an address changed ([`Event::AddressChanged`]; read the new list with
//!   [`RoutingEngine::destinations`]).
//!
//! Nothing received from the network can make it panic: unknown links,
//! strange ids, zero costs, our own id in someone else's message and stale
//! or future versions are all handled (mostly ignored).
//!
//! # Protocol
//!
//! In the spirit of Qpid Dispatch's router protocol, adapted to hop-by-hop
//! delivery: every message goes to a direct neighbour on one link, and the
//! messages that concern every router (LSU, MAU) are *flooded*: a router
//! that accepts a newer version forwards it on all its other adjacencies.
//! Links are reliable and ordered while up (AMQP over TLS), so flooding plus
//! a database exchange whenever an adjacency comes up keeps every database
//! equal; a periodic digest comparison repairs anything that slips through.
//! Wire layouts are on the message structs in [`crate::message`]; versions
//! are `(instance, seq)` pairs compared in that order, `instance` being
//! chosen by the router at start (e.g. its start time) so a restarted router
//! overrides what it said before.
//!
//! - **HELLO** (kind 2) `{router_id, instance, cost, seen}`: on each link at
//!   link-up, every HELLO interval, and at once when a new router is heard.
//!   `seen` holds the id heard on that link; when a router finds its own id
//!   there the link is *two-way* and the adjacency is up. An adjacency goes
//!   down when the link closes, when no HELLO arrived for the dead interval,
//!   when the peer's HELLO stops listing us, or when the peer's id or
//!   instance changes (a restart). The link's cost is the larger of the two
//!   ends' `cost` settings. Other messages are accepted only on two-way
//!   links.
//! - **LSU** (kind 4) `{origin, instance, seq, links}`: a router's two-way
//!   neighbours and link costs. Originated (seq + 1) when the set of
//!   adjacencies or their costs change; flooded. A router receiving an older
//!   version than it holds answers with its newer one; a router receiving
//!   its own LSU with a higher seq (it restarted with the same instance)
//!   jumps past it and re-originates. (A restart that reuses the instance
//!   and happens to reach the very same seq with different content is not
//!   detected: routers must pass a growing instance.)
//! - **LSR** (kind 5) `{router_id, wanted}`: "send me the LSU of these
//!   routers", sent to the neighbour whose RA announced a newer link state
//!   than we hold. Answered with one LSU per router known.
//! - **RA** (kind 3) `{router_id, instance, ls_seq, mobile_seq, digest,
//!   summary?}`: every RA interval to each neighbour, with the sender's own
//!   versions (a receiver that is behind sends LSR / MAR) and a digest of
//!   its database (the routers it can reach, with the versions held). With
//!   `summary`, the full list of `(router, ls version, mobile version)`:
//!   sent when an adjacency comes up (after the new LSU, so the LSU arrives
//!   first), and when the two digests were the same unequal pair for two
//!   RAs in a row (so ordinary flooding in progress does not trigger it).
//!   The receiver of a summary pushes back every LSU / full MAU it holds
//!   newer than the summary says; both ends send one, so both catch up.
//!   Summaries and pushes cover reachable routers only (the state of an
//!   unreachable one may be stale); what was held back is sent on that
//!   link as soon as the router becomes reachable again. Without that, a
//!   neighbour that came up during a partition would miss the far side's
//!   unchanged state when it heals (nothing new is flooded for it) until
//!   the digest check found the difference, seconds later.
//! - **MAU** (kind 6) `{origin, instance, seq, change}`: the addresses a
//!   router has consumers for. Incremental (`added`, `removed`) applies only
//!   on top of `seq - 1`; a router further behind sends a **MAR** (kind 7)
//!   `{router_id, wanted}` to the neighbour it came from, which answers with
//!   a full MAU. Full updates replace anything older. Flooded like LSUs. An
//!   LSU of a newer instance drops the addresses held for an older one (a
//!   restarted router offering nothing sends no MAU), and MAUs of an
//!   instance older than the link state held are ignored.
//!
//! # Routes
//!
//! The database feeds a [`Topology`]: a link counts only when both ends
//! advertise it, with the larger of the two costs. The route to each router
//! is its least-cost path; among equal-cost paths the first hop is the
//! neighbour with the lowest router id that starts one, so routes are
//! reproducible. With several links to that neighbour, the cheapest one
//! (then the lowest [`LinkId`]) is used.
//!
//! For each address, [`RoutingEngine::destinations`] lists every reachable
//! router offering it (this router itself with cost 0 and no link), with
//! path cost and next-hop link, cheapest first, ties by router id; the
//! router core picks closest or balanced from that list.
//!
//! # Timers and when SPF runs
//!
//! [`Timers`]: HELLO interval (1 s), dead interval (3 s), RA interval (4 s),
//! SPF delay (0) and how long an unreachable router's state is kept (60 s).
//! Handlers only record what changed. LSU origination, the least-cost
//! computation (SPF) and address recomputation run together in
//! [`RoutingEngine::handle_timeout`] once the SPF delay after the first
//! change has passed: SPF runs only if the usable graph actually changed,
//! and with a delay of 0 at most once per instant however many messages
//! arrived at it. A change of this router's own links that leaves the graph
//! as it was (one of several parallel links to a neighbour opened, closed
//! or re-costed) re-picks the next-hop links from the last SPF result
//! without running it again. Unreachable routers' state is dropped at RA
//! ticks once the keep time has passed (kept meanwhile so that messages
//! arriving in an unlucky order do not lose it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hasher;
use std::time::{Duration, Instant};

use crate::message::{
    AddressChange, Hello, LinkStateRequest, LinkStateUpdate, LsLink, MobileAddressRequest,
    MobileAddressUpdate, RouterAdvertisement, RouterMessage, SummaryEntry,
};
use crate::topology::{DetHashMap, Spf, Topology, NO_HOP};
use petgraph::stable_graph::NodeIndex;

/// Identifies one inter-router link; chosen by the caller, unique among the
/// links open at a time.
pub type LinkId = u64;

/// Protocol timers. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// How often a HELLO goes out on each link.
    pub hello_interval: Duration,
    /// A neighbour not heard from for this long is gone.
    pub dead_interval: Duration,
    /// How often each neighbour gets an RA.
    pub ra_interval: Duration,
    /// How long after a change LSU origination and SPF wait (to batch
    /// changes); 0 = at the next `handle_timeout` at the same instant.
    pub spf_delay: Duration,
    /// How long the state of an unreachable router is kept.
    pub unreachable_ttl: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            hello_interval: Duration::from_secs(1),
            dead_interval: Duration::from_secs(3),
            ra_interval: Duration::from_secs(4),
            spf_delay: Duration::ZERO,
            unreachable_ttl: Duration::from_secs(60),
        }
    }
}

/// How to build a [`RoutingEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub router_id: String,
    /// Must grow from one start of the router to the next (a start time in
    /// milliseconds will do).
    pub instance: u64,
    pub timers: Timers,
}

impl EngineConfig {
    pub fn new(router_id: impl Into<String>, instance: u64) -> Self {
        EngineConfig {
            router_id: router_id.into(),
            instance,
            timers: Timers::default(),
        }
    }
}

/// A message to send on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub link: LinkId,
    pub message: RouterMessage,
}

/// How to reach one router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The link to send on.
    pub link: LinkId,
    /// The neighbour at the other end of that link.
    pub next_router: String,
    /// Total cost of the path.
    pub cost: u64,
}

/// One router offering an address, as seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub router: String,
    /// Path cost; 0 for this router itself.
    pub cost: u64,
    /// The next-hop link; `None` when the offer is this router's own.
    pub link: Option<LinkId>,
}

/// Something the router core may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The link is now a two-way adjacency with `router`.
    NeighbourUp { link: LinkId, router: String },
    /// The adjacency on `link` is gone.
    NeighbourDown { link: LinkId, router: String },
    /// The route to `router` changed; `None`: it is unreachable.
    RouteChanged {
        router: String,
        route: Option<Route>,
    },
    /// The offers for `address` changed; see [`RoutingEngine::destinations`].
    AddressChanged { address: String },
}

/// Counters, for tests, the simulator and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub spf_runs: u64,
    pub lsu_originated: u64,
    pub summaries_sent: u64,
    /// Messages dropped: unknown link, not two-way yet, our own id, ...
    pub messages_ignored: u64,
    /// Routers whose state was dropped after being unreachable.
    pub routers_pruned: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RoutingEngine {
    id: String,
    instance: u64,
    timers: Timers,
    links: BTreeMap<LinkId, Link>,
    /// Everything known per router, this one included.
    records: DetHashMap<String, Record>,
    /// Address -> routers (this one included) offering it.
    offered_by: BTreeMap<String, BTreeSet<String>>,
    topology: Topology,
    spf: Spf,
    /// Route per topology node index.
    routes: Vec<Option<RouteSlot>>,
    /// How many routes there are.
    reachable: usize,
    destinations: BTreeMap<String, Vec<Offer>>,
    dirty_addresses: BTreeSet<String>,
    ls_dirty: bool,
    /// Originate even if the links did not change (after a seq jump).
    ls_force: bool,
    spf_dirty: bool,
    /// This router's adjacencies or their costs changed: re-pick next-hop
    /// links even if SPF does not run.
    routes_dirty: bool,
    work_at: Option<Instant>,
    next_hello: Option<Instant>,
    next_ra: Option<Instant>,
    unreachable_since: DetHashMap<String, Instant>,
    digest: Option<u64>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: EngineStats,
}

#[derive(Debug)]
struct Link {
    cost: u32,
    peer: Option<Peer>,
    /// A database summary is owed on this link (adjacency just came up).
    summary_due: bool,
    /// Routers whose state we held newer than the peer's summary said but
    /// did not push because they were unreachable here: sent the moment
    /// they become reachable (the peer may never have seen them).
    owed: BTreeSet<String>,
}

#[derive(Debug)]
struct Peer {
    router_id: String,
    instance: u64,
    cost: u32,
    two_way: bool,
    last_heard: Instant,
    /// (their digest, ours) at the last RA without summary.
    ra_seen: Option<(u64, u64)>,
    resync_sent: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Record {
    ls: Option<LsState>,
    mobile: Option<MobileState>,
}

/// The version of a router's link state; the links themselves live in the
/// topology (and are read back from there to answer requests).
#[derive(Debug)]
struct LsState {
    instance: u64,
    seq: u64,
    /// The router's node in the topology: it exists as long as the record
    /// has link state (set_links keeps it; only pruning removes it).
    node: NodeIndex,
}

#[derive(Debug)]
struct MobileState {
    instance: u64,
    seq: u64,
    /// Sorted, no duplicates.
    addresses: Vec<String>,
}

#[derive(Debug, Clone)]
struct RouteSlot {
    router: String,
    /// Topology serials of the router and of the first hop: node indices
    /// are reused, serials are not.
    serial: u64,
    hop_serial: u64,
    route: Route,
}

type Version = (u64, u64);

impl Record {
    fn ls_version(&self) -> Version {
        self.ls.as_ref().map_or((0, 0), |l| (l.instance, l.seq))
    }
    fn mobile_version(&self) -> Version {
        self.mobile.as_ref().map_or((0, 0), |m| (m.instance, m.seq))
    }
}

impl RoutingEngine {
    pub fn new(config: EngineConfig) -> Self {
        let EngineConfig {
            router_id,
            instance,
            timers,
        } = config;
        let mut topology = Topology::new();
        topology.set_links(&router_id, std::iter::empty());
        let node = topology.index_of(&router_id).unwrap_or_default();
        let mut records = DetHashMap::default();
        records.insert(
            router_id.clone(),
            Record {
                ls: Some(LsState {
                    instance,
                    seq: 1,
                    node,
                }),
                mobile: None,
            },
        );
        RoutingEngine {
            id: router_id,
            instance,
            timers,
            links: BTreeMap::new(),
            records,
            offered_by: BTreeMap::new(),
            topology,
            spf: Spf::default(),
            routes: Vec::new(),
            reachable: 0,
            destinations: BTreeMap::new(),
            dirty_addresses: BTreeSet::new(),
            ls_dirty: false,
            ls_force: false,
            spf_dirty: false,
            routes_dirty: false,
            work_at: None,
            next_hello: None,
            next_ra: None,
            unreachable_since: DetHashMap::default(),
            digest: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
        }
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// A link opened; `cost` is this end's setting for it. A HELLO goes out
    /// on it at once. Re-using the id of an open link resets that link.
    pub fn handle_link_up(&mut self, now: Instant, link: LinkId, cost: u32) {
        self.start_timers(now);
        if self.links.contains_key(&link) {
            self.handle_link_down(now, link);
        }
        self.links.insert(
            link,
            Link {
                cost: cost.max(1),
                peer: None,
                summary_due: false,
                owed: BTreeSet::new(),
            },
        );
        self.send_hello(link);
    }

    /// A link closed.
    pub fn handle_link_down(&mut self, now: Instant, link: LinkId) {
        self.start_timers(now);
        if let Some(Link {
            peer: Some(peer), ..
        }) = self.links.remove(&link)
        {
            if peer.two_way {
                self.adjacency_down(now, link, peer.router_id);
            }
        }
    }

    /// This end's cost setting of the open `link` changed to `cost`
    /// (below 1 counts as 1). A HELLO with the new setting goes out on the
    /// link at once, and if the link is a two-way adjacency this router's
    /// link state is re-originated and routes recomputed, as for any other
    /// change; the peer does the same when the HELLO arrives. The link's
    /// cost stays the larger of the two ends' settings. An unknown link, or
    /// the setting it already has, changes nothing.
    pub fn set_link_cost(&mut self, now: Instant, link: LinkId, cost: u32) {
        self.start_timers(now);
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let cost = cost.max(1);
        if l.cost == cost {
            return;
        }
        l.cost = cost;
        let two_way = l.peer.as_ref().is_some_and(|p| p.two_way);
        self.send_hello(link);
        if two_way {
            self.own_links_changed(now);
        }
    }

    /// A routing message arrived on `link`.
    pub fn handle_message(&mut self, now: Instant, link: LinkId, message: RouterMessage) {
        self.start_timers(now);
        if let RouterMessage::Hello(hello) = message {
            self.on_hello(now, link, hello);
            return;
        }
        let two_way = self
            .links
            .get(&link)
            .and_then(|l| l.peer.as_ref())
            .is_some_and(|p| p.two_way);
        if !two_way {
            self.stats.messages_ignored += 1;
            return;
        }
        match message {
            RouterMessage::LinkStateUpdate(lsu) => self.on_lsu(now, link, lsu),
            RouterMessage::LinkStateRequest(lsr) => self.on_lsr(link, lsr),
            RouterMessage::RouterAdvertisement(ra) => self.on_ra(now, link, ra),
            RouterMessage::MobileAddressUpdate(mau) => self.on_mau(now, link, mau),
            RouterMessage::MobileAddressRequest(mar) => self.on_mar(link, mar),
            _ => self.stats.messages_ignored += 1,
        }
    }

    /// Timers: HELLOs, dead neighbours, RAs, and the batched LSU / SPF /
    /// address work. Call when [`RoutingEngine::poll_timeout`] says.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_timers(now);
        let dead: Vec<(LinkId, String)> = self
            .links
            .iter()
            .filter_map(|(&id, l)| {
                let p = l.peer.as_ref()?;
                (p.last_heard + self.timers.dead_interval <= now).then(|| (id, p.router_id.clone()))
            })
            .collect();
        for (id, router) in dead {
            let was_two_way = self
                .links
                .get_mut(&id)
                .and_then(|l| {
                    l.owed.clear();
                    l.peer.take()
                })
                .is_some_and(|p| p.two_way);
            if was_two_way {
                self.adjacency_down(now, id, router);
            }
        }
        if self.next_hello.is_some_and(|t| t <= now) {
            let ids: Vec<LinkId> = self.links.keys().copied().collect();
            for id in ids {
                self.send_hello(id);
            }
            self.next_hello = Some(now + self.timers.hello_interval);
        }
        let ra_due = self.next_ra.is_some_and(|t| t <= now);
        if ra_due {
            self.prune(now);
        }
        if self.work_at.is_some_and(|t| t <= now) {
            self.do_work();
        }
        if ra_due {
            self.send_periodic_ras();
            self.next_ra = Some(now + self.timers.ra_interval);
        }
    }

    /// Replaces the set of addresses this router has consumers for; the
    /// change is flooded as an incremental MAU.
    pub fn set_local_addresses<I: IntoIterator<Item = String>>(
        &mut self,
        now: Instant,
        addresses: I,
    ) {
        self.start_timers(now);
        let new: BTreeSet<String> = addresses.into_iter().collect();
        let me = self.id.clone();
        let (old, seq): (BTreeSet<String>, u64) =
            match self.records.get(&me).and_then(|r| r.mobile.as_ref()) {
                Some(m) => (m.addresses.iter().cloned().collect(), m.seq),
                None => (BTreeSet::new(), 0),
            };
        if old == new {
            return;
        }
        let added: Vec<String> = new.difference(&old).cloned().collect();
        let removed: Vec<String> = old.difference(&new).cloned().collect();
        let seq = seq.saturating_add(1);
        self.store_mobile(&me, self.instance, seq, new, now);
        let msg = RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
            origin: me,
            instance: self.instance,
            seq,
            change: AddressChange::Incremental { added, removed },
        });
        self.flood(msg, None);
    }

    // ------------------------------------------------------------------
    // Outputs
    // ------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the router core.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`RoutingEngine::handle_timeout`] must next be called. `None`
    /// before the first input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dead = self
            .links
            .values()
            .filter_map(|l| {
                l.peer
                    .as_ref()
                    .map(|p| p.last_heard + self.timers.dead_interval)
            })
            .min();
        [self.next_hello, self.next_ra, self.work_at, dead]
            .into_iter()
            .flatten()
            .min()
    }

    // ------------------------------------------------------------------
    // Queries
    // ------------------------------------------------------------------

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The route to `router`, if it is reachable (never for this router).
    pub fn route(&self, router: &str) -> Option<&Route> {
        let ix = self.topology.index_of(router)?;
        match self.routes.get(ix.index()) {
            Some(Some(slot)) if slot.serial == self.topology.serial(ix) => Some(&slot.route),
            _ => None,
        }
    }

    /// Every reachable router and its route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.routes
            .iter()
            .flatten()
            .map(|s| (s.router.as_str(), &s.route))
    }

    /// Routers offering `address` (this one included), cheapest first,
    /// ties by router id. Empty when nobody reachable offers it.
    pub fn destinations(&self, address: &str) -> &[Offer] {
        self.destinations
            .get(address)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every address offered by a reachable router, with its offers.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, &[Offer])> {
        self.destinations
            .iter()
            .map(|(a, o)| (a.as_str(), o.as_slice()))
    }

    /// This router's own addresses.
    pub fn local_addresses(&self) -> Vec<&str> {
        self.records
            .get(&self.id)
            .and_then(|r| r.mobile.as_ref())
            .map(|m| m.addresses.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The two-way adjacencies: link and neighbour id.
    pub fn neighbours(&self) -> Vec<(LinkId, &str)> {
        self.links
            .iter()
            .filter_map(|(&id, l)| {
                let p = l.peer.as_ref()?;
                p.two_way.then_some((id, p.router_id.as_str()))
            })
            .collect()
    }

    /// Whether `link` is a two-way adjacency.
    pub fn is_adjacent(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .and_then(|l| l.peer.as_ref())
            .is_some_and(|p| p.two_way)
    }

    /// Whether changes are waiting for [`RoutingEngine::handle_timeout`]
    /// (LSU origination, SPF, address recomputation).
    pub fn has_pending_work(&self) -> bool {
        self.work_at.is_some()
    }

    /// The graph this router currently believes in.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Number of routers with state held here (this one included).
    pub fn known_routers(&self) -> usize {
        self.records.len()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    // ------------------------------------------------------------------
    // Message handlers
    // ------------------------------------------------------------------

    fn on_hello(&mut self, now: Instant, link: LinkId, hello: Hello) {
        if hello.router_id == self.id || !self.links.contains_key(&link) {
            self.stats.messages_ignored += 1;
            return;
        }
        // A different router or a restart on this link: start over.
        let restarted = self
            .links
            .get(&link)
            .and_then(|l| l.peer.as_ref())
            .and_then(|p| {
                (p.router_id != hello.router_id || p.instance != hello.instance)
                    .then(|| (p.two_way, p.router_id.clone()))
            });
        if let Some((was_two_way, old_id)) = restarted {
            if let Some(l) = self.links.get_mut(&link) {
                l.peer = None;
                l.owed.clear();
            }
            if was_two_way {
                self.adjacency_down(now, link, old_id);
            }
        }
        let sees_us = hello.seen.contains(&self.id);
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let is_new = l.peer.is_none();
        let peer = l.peer.get_or_insert_with(|| Peer {
            router_id: hello.router_id.clone(),
            instance: hello.instance,
            cost: hello.cost.max(1),
            two_way: false,
            last_heard: now,
            ra_seen: None,
            resync_sent: None,
        });
        peer.last_heard = now;
        let cost_changed = peer.cost != hello.cost.max(1);
        peer.cost = hello.cost.max(1);
        let was_two_way = peer.two_way;
        peer.two_way = sees_us;
        if sees_us && !was_two_way {
            l.summary_due = true;
        }
        if is_new {
            // Let the peer know at once that we hear it.
            self.send_hello(link);
        }
        match (was_two_way, sees_us) {
            (false, true) => {
                self.events.push_back(Event::NeighbourUp {
                    link,
                    router: hello.router_id,
                });
                self.own_links_changed(now);
            }
            (true, false) => self.adjacency_down(now, link, hello.router_id),
            (true, true) if cost_changed => self.own_links_changed(now),
            _ => {}
        }
    }

    fn on_lsu(&mut self, now: Instant, link: LinkId, lsu: LinkStateUpdate) {
        let version = (lsu.instance, lsu.seq);
        if lsu.origin == self.id {
            let ours = self.own_record().ls_version();
            if lsu.instance == self.instance && lsu.seq > ours.1 {
                // Our own state from before a restart: jump past it.
                if let Some(ls) = self.own_record_mut().ls.as_mut() {
                    ls.seq = lsu.seq;
                }
                self.ls_force = true;
                self.ls_dirty = true;
                self.schedule(now);
            } else if version < ours {
                self.send_lsu(link, &self.id.clone());
            }
            return;
        }
        let held = self
            .records
            .get(&lsu.origin)
            .map_or((0, 0), Record::ls_version);
        if version == held {
            return;
        }
        if version < held {
            self.send_lsu(link, &lsu.origin);
            return;
        }
        let changed = self.topology.set_links(
            &lsu.origin,
            lsu.links.iter().map(|l| (l.router_id.as_str(), l.cost)),
        );
        if changed {
            self.spf_dirty = true;
            self.schedule(now);
        }
        let Some(node) = self.topology.index_of(&lsu.origin) else {
            return;
        };
        self.digest = None;
        let record = self.records.entry(lsu.origin.clone()).or_default();
        record.ls = Some(LsState {
            instance: lsu.instance,
            seq: lsu.seq,
            node,
        });
        // The addresses of an earlier instance went with it. A restarted
        // router that offers nothing sends no MAU to replace them, so they
        // would otherwise stay offered for good.
        let stale = record
            .mobile
            .as_ref()
            .is_some_and(|m| m.instance < lsu.instance);
        if stale {
            self.forget_mobile(now, &lsu.origin);
        }
        self.flood(RouterMessage::LinkStateUpdate(lsu), Some(link));
    }

    fn on_lsr(&mut self, link: LinkId, lsr: LinkStateRequest) {
        for id in &lsr.wanted {
            self.send_lsu(link, id);
        }
    }

    fn on_mar(&mut self, link: LinkId, mar: MobileAddressRequest) {
        for id in &mar.wanted {
            self.send_full_mau(link, id);
        }
    }

    fn on_ra(&mut self, now: Instant, link: LinkId, ra: RouterAdvertisement) {
        if ra.router_id == self.id {
            self.stats.messages_ignored += 1;
            return;
        }
        if let Some(entries) = ra.summary {
            // The summary exchange covers the sender's own state too.
            self.push_newer(now, link, &entries);
            return;
        }
        let (held_ls, held_mobile) = self
            .records
            .get(&ra.router_id)
            .map_or(((0, 0), (0, 0)), |r| (r.ls_version(), r.mobile_version()));
        if ra.ls_seq > 0 && (ra.instance, ra.ls_seq) > held_ls {
            self.transmits.push_back(Transmit {
                link,
                message: RouterMessage::LinkStateRequest(LinkStateRequest {
                    router_id: self.id.clone(),
                    wanted: vec![ra.router_id.clone()],
                }),
            });
        }
        if ra.mobile_seq > 0 && (ra.instance, ra.mobile_seq) > held_mobile {
            self.transmits.push_back(Transmit {
                link,
                message: RouterMessage::MobileAddressRequest(MobileAddressRequest {
                    router_id: self.id.clone(),
                    wanted: vec![ra.router_id.clone()],
                }),
            });
        }
        let ours = self.digest();
        let pair = (ra.digest, ours);
        let Some(peer) = self.links.get_mut(&link).and_then(|l| l.peer.as_mut()) else {
            return;
        };
        let stable = peer.ra_seen == Some(pair);
        peer.ra_seen = Some(pair);
        if ra.digest != ours && stable && peer.resync_sent != Some(pair) {
            peer.resync_sent = Some(pair);
            self.send_summary(link);
        }
    }

    /// After a neighbour's summary: send it everything we hold newer.
    fn push_newer(&mut self, now: Instant, link: LinkId, entries: &[SummaryEntry]) {
        let theirs: DetHashMap<&str, &SummaryEntry> =
            entries.iter().map(|e| (e.router_id.as_str(), e)).collect();
        // Our own entry as they see it may be ahead of us (a restart with
        // the same instance): jump past it.
        if let Some(e) = theirs.get(self.id.as_str()) {
            let ours = self.own_record().ls_version();
            if e.ls_instance == self.instance && e.ls_seq > ours.1 {
                if let Some(ls) = self.own_record_mut().ls.as_mut() {
                    ls.seq = e.ls_seq;
                }
                self.ls_force = true;
                self.ls_dirty = true;
                self.schedule(now);
            }
            let ours = self.own_record().mobile_version();
            if e.mobile_instance == self.instance && e.mobile_seq > ours.1 {
                self.jump_mobile(now, e.mobile_seq);
            }
        }
        let mut send_ls = Vec::new();
        let mut send_mobile = Vec::new();
        let mut owed = Vec::new();
        for (id, record) in &self.records {
            let (their_ls, their_mobile) = match theirs.get(id.as_str()) {
                Some(e) => ((e.ls_instance, e.ls_seq), (e.mobile_instance, e.mobile_seq)),
                None => ((0, 0), (0, 0)),
            };
            let newer_ls = record.ls.is_some() && record.ls_version() > their_ls;
            let newer_mobile = record.mobile.as_ref().is_some_and(|m| m.seq > 0)
                && record.mobile_version() > their_mobile;
            if !self.record_reachable(id, record) {
                // Unreachable state may be stale: keep it to ourselves
                // unless it comes back (a partition healing), then send it
                // (see `update_routes`): if it does not change meanwhile
                // nothing else would bring it to this peer.
                if newer_ls || newer_mobile {
                    owed.push(id.clone());
                }
                continue;
            }
            if newer_ls {
                send_ls.push(id.clone());
            }
            if newer_mobile {
                send_mobile.push(id.clone());
            }
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.owed.extend(owed);
        }
        send_ls.sort();
        send_mobile.sort();
        for id in send_ls {
            self.send_lsu(link, &id);
        }
        for id in send_mobile {
            self.send_full_mau(link, &id);
        }
    }

    fn on_mau(&mut self, now: Instant, link: LinkId, mau: MobileAddressUpdate) {
        let version = (mau.instance, mau.seq);
        if mau.origin == self.id {
            let ours = self.own_record().mobile_version();
            if mau.instance == self.instance && mau.seq > ours.1 {
                self.jump_mobile(now, mau.seq);
            } else if version < ours {
                self.send_full_mau(link, &self.id.clone());
            }
            return;
        }
        let (held, ls_instance) = self
            .records
            .get(&mau.origin)
            .map_or(((0, 0), 0), |r| (r.mobile_version(), r.ls_version().0));
        if mau.instance < ls_instance {
            // From before the router restarted (a neighbour that was cut
            // off may still hold it): those addresses went with it.
            self.stats.messages_ignored += 1;
            return;
        }
        if version <= held {
            if version < held {
                self.send_full_mau(link, &mau.origin);
            }
            return;
        }
        let new_set = match &mau.change {
            AddressChange::Full(list) => list.iter().cloned().collect(),
            AddressChange::Incremental { added, removed } => {
                let base = if mau.instance == held.0 && mau.seq == held.1.saturating_add(1) {
                    self.records
                        .get(&mau.origin)
                        .and_then(|r| r.mobile.as_ref())
                        .map(|m| m.addresses.iter().cloned().collect())
                        .unwrap_or_default()
                } else if mau.seq == 1 {
                    BTreeSet::new()
                } else {
                    // A gap: ask the neighbour for the whole set.
                    self.transmits.push_back(Transmit {
                        link,
                        message: RouterMessage::MobileAddressRequest(MobileAddressRequest {
                            router_id: self.id.clone(),
                            wanted: vec![mau.origin.clone()],
                        }),
                    });
                    return;
                };
                let mut set = base;
                for a in removed {
                    set.remove(a);
                }
                set.extend(added.iter().cloned());
                set
            }
        };
        self.store_mobile(&mau.origin, mau.instance, mau.seq, new_set, now);
        self.flood(RouterMessage::MobileAddressUpdate(mau), Some(link));
    }

    /// Someone holds our addresses at a higher seq than ours (from before a
    /// restart with the same instance): move past it and tell everyone the
    /// current set in full.
    fn jump_mobile(&mut self, now: Instant, seen: u64) {
        let me = self.id.clone();
        let addresses: BTreeSet<String> = self
            .own_record()
            .mobile
            .as_ref()
            .map(|m| m.addresses.iter().cloned().collect())
            .unwrap_or_default();
        let seq = seen.saturating_add(1);
        self.store_mobile(&me, self.instance, seq, addresses.clone(), now);
        let msg = RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
            origin: me,
            instance: self.instance,
            seq,
            change: AddressChange::Full(addresses.into_iter().collect()),
        });
        self.flood(msg, None);
    }

    // ------------------------------------------------------------------
    // Work done at timeouts
    // ------------------------------------------------------------------

    fn do_work(&mut self) {
        self.work_at = None;
        if self.ls_dirty {
            self.originate();
        }
        let owed: Vec<LinkId> = self
            .links
            .iter_mut()
            .filter_map(|(&id, l)| {
                let two_way = l.peer.as_ref().is_some_and(|p| p.two_way);
                let owed = l.summary_due && two_way;
                l.summary_due = false;
                owed.then_some(id)
            })
            .collect();
        if self.spf_dirty {
            self.run_spf();
        } else if self.routes_dirty {
            self.update_routes();
        }
        // Summaries after SPF: they list the routers reachable now.
        for id in owed {
            self.send_summary(id);
        }
        let dirty = std::mem::take(&mut self.dirty_addresses);
        for address in dirty {
            self.recompute_address(address);
        }
    }

    fn originate(&mut self) {
        self.ls_dirty = false;
        let mut best: BTreeMap<&str, u32> = BTreeMap::new();
        for l in self.links.values() {
            if let Some(p) = l.peer.as_ref().filter(|p| p.two_way) {
                let cost = l.cost.max(p.cost);
                let e = best.entry(p.router_id.as_str()).or_insert(cost);
                *e = (*e).min(cost);
            }
        }
        let links: Vec<LsLink> = best
            .into_iter()
            .map(|(id, cost)| LsLink {
                router_id: id.to_string(),
                cost,
            })
            .collect();
        let force = std::mem::take(&mut self.ls_force);
        let instance = self.instance;
        let Some(node) = self.own_record().ls.as_ref().map(|l| l.node) else {
            return;
        };
        if self.topology.advertised_links(node) == links && !force {
            return;
        }
        let origin = self.id.clone();
        let Some(ls) = self.own_record_mut().ls.as_mut() else {
            return;
        };
        ls.seq = ls.seq.saturating_add(1);
        ls.instance = instance;
        let msg = LinkStateUpdate {
            origin,
            instance,
            seq: ls.seq,
            links,
        };
        self.stats.lsu_originated += 1;
        self.digest = None;
        if self.topology.set_links(
            &self.id,
            msg.links.iter().map(|l| (l.router_id.as_str(), l.cost)),
        ) {
            self.spf_dirty = true;
        }
        self.flood(RouterMessage::LinkStateUpdate(msg), None);
    }

    fn run_spf(&mut self) {
        self.spf_dirty = false;
        self.stats.spf_runs += 1;
        self.digest = None;
        let Some(me) = self.topology.index_of(&self.id) else {
            return;
        };
        self.topology.spf_into(me, &mut self.spf);
        self.update_routes();
    }

    /// Routes from the last SPF result and the current adjacencies; emits
    /// what changed.
    fn update_routes(&mut self) {
        self.routes_dirty = false;
        self.digest = None;
        // Next-hop link per neighbour node: cheapest, then lowest id.
        let mut hop_links: Vec<(u32, u32, LinkId)> = Vec::new();
        for (&id, l) in &self.links {
            let Some(p) = l.peer.as_ref().filter(|p| p.two_way) else {
                continue;
            };
            if let Some(ix) = self.topology.index_of(&p.router_id) {
                hop_links.push((ix.index() as u32, l.cost.max(p.cost), id));
            }
        }
        hop_links.sort_unstable();
        let owing = self.links.values().any(|l| !l.owed.is_empty());
        let mut back: Vec<String> = Vec::new();
        let bound = self.routes.len().max(self.spf.cost.len());
        self.routes.resize(bound, None);
        for i in 0..bound {
            let cost = self.spf.cost.get(i).copied().unwrap_or(u64::MAX);
            let hop = self.spf.first_hop.get(i).copied().unwrap_or(NO_HOP);
            let ix = NodeIndex::new(i);
            let hop_ix = NodeIndex::new(hop as usize);
            let new = if cost == u64::MAX || hop == NO_HOP {
                None
            } else {
                hop_links
                    .iter()
                    .find(|(n, _, _)| *n == hop)
                    .map(|&(_, _, link)| {
                        (
                            self.topology.serial(ix),
                            self.topology.serial(hop_ix),
                            link,
                            cost,
                        )
                    })
            };
            let same = match (self.routes[i].as_ref(), new) {
                (None, None) => true,
                (Some(o), Some((serial, hop_serial, link, cost))) => {
                    o.serial == serial
                        && o.hop_serial == hop_serial
                        && o.route.link == link
                        && o.route.cost == cost
                }
                _ => false,
            };
            if same {
                continue;
            }
            let new = new.and_then(|(serial, hop_serial, link, cost)| {
                Some(RouteSlot {
                    router: self.topology.name(ix)?.to_string(),
                    serial,
                    hop_serial,
                    route: Route {
                        link,
                        next_router: self.topology.name(hop_ix)?.to_string(),
                        cost,
                    },
                })
            });
            let old = std::mem::replace(&mut self.routes[i], new.clone());
            let old_serial = old.as_ref().map(|o| o.serial);
            if old.is_some() {
                self.reachable -= 1;
            }
            if new.is_some() {
                self.reachable += 1;
            }
            if let Some(old) = old {
                if new.as_ref().is_none_or(|n| n.serial != old.serial) {
                    self.mark_router_addresses(&old.router);
                    self.events.push_back(Event::RouteChanged {
                        router: old.router,
                        route: None,
                    });
                }
            }
            if let Some(new) = new {
                self.mark_router_addresses(&new.router);
                if owing && old_serial != Some(new.serial) {
                    back.push(new.router.clone());
                }
                self.events.push_back(Event::RouteChanged {
                    router: new.router,
                    route: Some(new.route),
                });
            }
        }
        if !back.is_empty() {
            self.send_owed(&back);
        }
    }

    /// `routers` just became reachable: send their state on the links it
    /// is owed on.
    fn send_owed(&mut self, routers: &[String]) {
        let mut sends: Vec<(LinkId, String)> = Vec::new();
        for (&id, l) in self.links.iter_mut() {
            for r in routers {
                if l.owed.remove(r) {
                    sends.push((id, r.clone()));
                }
            }
        }
        for (link, router) in sends {
            self.send_lsu(link, &router);
            self.send_full_mau(link, &router);
        }
    }

    fn recompute_address(&mut self, address: String) {
        let mut offers: Vec<Offer> = Vec::new();
        if let Some(routers) = self.offered_by.get(&address) {
            for r in routers {
                if *r == self.id {
                    offers.push(Offer {
                        router: r.clone(),
                        cost: 0,
                        link: None,
                    });
                } else if let Some(route) = self.route(r) {
                    offers.push(Offer {
                        router: r.clone(),
                        cost: route.cost,
                        link: Some(route.link),
                    });
                }
            }
        }
        offers.sort_by(|a, b| (a.cost, &a.router).cmp(&(b.cost, &b.router)));
        let changed = self.destinations(&address) != offers.as_slice();
        if !changed {
            return;
        }
        if offers.is_empty() {
            self.destinations.remove(&address);
        } else {
            self.destinations.insert(address.clone(), offers);
        }
        self.events.push_back(Event::AddressChanged { address });
    }

    /// At RA ticks: drop the state of routers unreachable for too long.
    fn prune(&mut self, now: Instant) {
        if self.records.len() == self.reachable + 1 && self.unreachable_since.is_empty() {
            return;
        }
        let mut ids: Vec<(&String, &Record)> = self
            .records
            .iter()
            .filter(|(id, _)| **id != self.id)
            .collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        let mut gone = Vec::new();
        let mut reachable = Vec::new();
        for (id, record) in ids {
            if self.record_reachable(id, record) {
                reachable.push(id.clone());
            } else {
                let since = *self.unreachable_since.entry(id.clone()).or_insert(now);
                if now.saturating_duration_since(since) >= self.timers.unreachable_ttl {
                    gone.push(id.clone());
                }
            }
        }
        for id in reachable {
            self.unreachable_since.remove(&id);
        }
        for id in gone {
            self.unreachable_since.remove(&id);
            self.stats.routers_pruned += 1;
            for l in self.links.values_mut() {
                l.owed.remove(&id);
            }
            if let Some(record) = self.records.remove(&id) {
                if record.ls.is_some() && self.topology.remove_router(&id) {
                    self.spf_dirty = true;
                }
                if let Some(m) = record.mobile {
                    for a in m.addresses {
                        self.unoffer(&a, &id);
                    }
                }
            }
            self.digest = None;
            self.schedule(now);
        }
    }

    fn send_periodic_ras(&mut self) {
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.as_ref().is_some_and(|p| p.two_way))
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let ra = self.advertisement(None);
        for id in ids {
            self.transmits.push_back(Transmit {
                link: id,
                message: RouterMessage::RouterAdvertisement(ra.clone()),
            });
        }
    }

    // ------------------------------------------------------------------
    // Helpers
    // ------------------------------------------------------------------

    fn start_timers(&mut self, now: Instant) {
        if self.next_hello.is_none() {
            self.next_hello = Some(now + self.timers.hello_interval);
            self.next_ra = Some(now + self.timers.ra_interval);
        }
    }

    fn schedule(&mut self, now: Instant) {
        let at = now + self.timers.spf_delay;
        self.work_at = Some(self.work_at.map_or(at, |t| t.min(at)));
    }

    fn adjacency_down(&mut self, now: Instant, link: LinkId, router: String) {
        self.events.push_back(Event::NeighbourDown { link, router });
        self.own_links_changed(now);
    }

    /// An adjacency came, went or changed cost: re-originate, and re-pick
    /// next-hop links (with parallel links to a neighbour the graph, and so
    /// SPF, may not notice: the link in use may be the one that closed).
    fn own_links_changed(&mut self, now: Instant) {
        self.ls_dirty = true;
        self.routes_dirty = true;
        self.schedule(now);
    }

    fn own_record(&self) -> &Record {
        // Inserted in `new` and never removed (prune skips our own id).
        &self.records[&self.id]
    }

    fn own_record_mut(&mut self) -> &mut Record {
        self.records.entry(self.id.clone()).or_default()
    }

    /// Whether the router of `record` is this one or has a route.
    fn record_reachable(&self, id: &str, record: &Record) -> bool {
        match &record.ls {
            Some(ls) => {
                id == self.id
                    || self
                        .routes
                        .get(ls.node.index())
                        .is_some_and(|slot| slot.is_some())
            }
            None => false,
        }
    }

    fn send_hello(&mut self, link: LinkId) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let seen = l
            .peer
            .as_ref()
            .map(|p| vec![p.router_id.clone()])
            .unwrap_or_default();
        let hello = Hello {
            router_id: self.id.clone(),
            instance: self.instance,
            cost: l.cost,
            seen,
        };
        self.transmits.push_back(Transmit {
            link,
            message: RouterMessage::Hello(hello),
        });
    }

    fn send_lsu(&mut self, link: LinkId, router: &str) {
        let Some(ls) = self.records.get(router).and_then(|r| r.ls.as_ref()) else {
            return;
        };
        let msg = LinkStateUpdate {
            origin: router.to_string(),
            instance: ls.instance,
            seq: ls.seq,
            links: self.topology.advertised_links(ls.node),
        };
        self.transmits.push_back(Transmit {
            link,
            message: RouterMessage::LinkStateUpdate(msg),
        });
    }

    fn send_full_mau(&mut self, link: LinkId, router: &str) {
        let Some(m) = self.records.get(router).and_then(|r| r.mobile.as_ref()) else {
            return;
        };
        if m.seq == 0 {
            return;
        }
        let msg = MobileAddressUpdate {
            origin: router.to_string(),
            instance: m.instance,
            seq: m.seq,
            change: AddressChange::Full(m.addresses.to_vec()),
        };
        self.transmits.push_back(Transmit {
            link,
            message: RouterMessage::MobileAddressUpdate(msg),
        });
    }

    fn send_summary(&mut self, link: LinkId) {
        let mut entries: Vec<SummaryEntry> = self
            .records
            .iter()
            .filter(|(id, r)| r.ls.is_some() && self.record_reachable(id, r))
            .map(|(id, r)| {
                let (ls_instance, ls_seq) = r.ls_version();
                let (mobile_instance, mobile_seq) = r.mobile_version();
                SummaryEntry {
                    router_id: id.clone(),
                    ls_instance,
                    ls_seq,
                    mobile_instance,
                    mobile_seq,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.router_id.cmp(&b.router_id));
        self.stats.summaries_sent += 1;
        let ra = self.advertisement(Some(entries));
        self.transmits.push_back(Transmit {
            link,
            message: RouterMessage::RouterAdvertisement(ra),
        });
    }

    fn advertisement(&mut self, summary: Option<Vec<SummaryEntry>>) -> RouterAdvertisement {
        let digest = self.digest();
        let own = self.own_record();
        RouterAdvertisement {
            router_id: self.id.clone(),
            instance: self.instance,
            ls_seq: own.ls_version().1,
            mobile_seq: own.mobile_version().1,
            digest,
            summary,
        }
    }

    /// Order-independent hash of what we hold for every router we reach.
    fn digest(&mut self) -> u64 {
        if let Some(d) = self.digest {
            return d;
        }
        let mut sum = 0u64;
        for (id, r) in &self.records {
            if r.ls.is_none() || !self.record_reachable(id, r) {
                continue;
            }
            let (li, ls) = r.ls_version();
            let (mi, ms) = r.mobile_version();
            let mut h = Fnv1a::default();
            h.write(id.as_bytes());
            h.write(&[0xff]);
            for v in [li, ls, mi, ms] {
                h.write(&v.to_be_bytes());
            }
            sum = sum.wrapping_add(h.finish());
        }
        self.digest = Some(sum);
        sum
    }

    fn flood(&mut self, message: RouterMessage, except: Option<LinkId>) {
        let targets: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(&id, l)| Some(id) != except && l.peer.as_ref().is_some_and(|p| p.two_way))
            .map(|(&id, _)| id)
            .collect();
        if let Some((&last, rest)) = targets.split_last() {
            for &id in rest {
                self.transmits.push_back(Transmit {
                    link: id,
                    message: message.clone(),
                });
            }
            self.transmits.push_back(Transmit {
                link: last,
                message,
            });
        }
    }

    fn store_mobile(
        &mut self,
        router: &str,
        instance: u64,
        seq: u64,
        addresses: BTreeSet<String>,
        now: Instant,
    ) {
        let addresses: Vec<String> = addresses.into_iter().collect();
        let record = self.records.entry(router.to_string()).or_default();
        let old = record
            .mobile
            .take()
            .map(|m| m.addresses)
            .unwrap_or_default();
        let removed = sorted_minus(&old, &addresses);
        let added = sorted_minus(&addresses, &old);
        record.mobile = Some(MobileState {
            instance,
            seq,
            addresses,
        });
        self.digest = None;
        for a in removed {
            self.unoffer(&a, router);
        }
        for a in added {
            self.offered_by
                .entry(a.clone())
                .or_default()
                .insert(router.to_string());
            self.dirty_addresses.insert(a);
        }
        if !self.dirty_addresses.is_empty() {
            self.schedule(now);
        }
    }

    /// Drops what `router` offered (its mobile state, version and all).
    fn forget_mobile(&mut self, now: Instant, router: &str) {
        let Some(m) = self.records.get_mut(router).and_then(|r| r.mobile.take()) else {
            return;
        };
        self.digest = None;
        for a in m.addresses {
            self.unoffer(&a, router);
        }
        self.schedule(now);
    }

    fn unoffer(&mut self, address: &str, router: &str) {
        if let Some(set) = self.offered_by.get_mut(address) {
            set.remove(router);
            if set.is_empty() {
                self.offered_by.remove(address);
            }
        }
        self.dirty_addresses.insert(address.to_string());
    }

    fn mark_router_addresses(&mut self, router: &str) {
        if let Some(m) = self.records.get(router).and_then(|r| r.mobile.as_ref()) {
            for a in &m.addresses {
                if !self.dirty_addresses.contains(a) {
                    self.dirty_addresses.insert(a.clone());
                }
            }
        }
    }
}

/// The items of sorted `a` that are not in sorted `b`.
fn sorted_minus(a: &[String], b: &[String]) -> Vec<String> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .cloned()
        .collect()
}

/// 64-bit FNV-1a: a fixed, portable hash for digests (every router must
/// compute the same value for the same state).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
