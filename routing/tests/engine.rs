//! Link-state engine tests through the public API: a few engines wired by
//! hand, stepped in 10 ms ticks, with every message encoded and decoded on
//! the way and the option to lose chosen messages.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tether_routing::message::{
    AddressChange, Hello, LinkStateRequest, LinkStateUpdate, LsLink, MobileAddressRequest,
    MobileAddressUpdate, RouterAdvertisement, SummaryEntry,
};
use tether_routing::{EngineConfig, Event, LinkId, RouterMessage, RoutingEngine, Timers};

const TICK: Duration = Duration::from_millis(10);

type DropRule = Box<dyn FnMut(&str, &RouterMessage) -> bool>;

struct Net {
    engines: BTreeMap<String, RoutingEngine>,
    links: BTreeMap<LinkId, (String, String)>,
    /// (to, link, encoded message)
    queue: VecDeque<(String, LinkId, Vec<u8>)>,
    events: Vec<(String, Event)>,
    now: Instant,
    drop_rule: Option<DropRule>,
}

impl Net {
    fn new() -> Net {
        Net {
            engines: BTreeMap::new(),
            links: BTreeMap::new(),
            queue: VecDeque::new(),
            events: Vec::new(),
            now: Instant::now(),
            drop_rule: None,
        }
    }

    fn add(&mut self, name: &str, instance: u64) {
        self.engines.insert(
            name.to_string(),
            RoutingEngine::new(EngineConfig::new(name, instance)),
        );
    }

    fn e(&self, name: &str) -> &RoutingEngine {
        &self.engines[name]
    }

    fn connect(&mut self, link: LinkId, a: &str, cost_a: u32, b: &str, cost_b: u32) {
        self.links.insert(link, (a.to_string(), b.to_string()));
        let now = self.now;
        self.engines
            .get_mut(a)
            .unwrap()
            .handle_link_up(now, link, cost_a);
        self.engines
            .get_mut(b)
            .unwrap()
            .handle_link_up(now, link, cost_b);
        self.collect();
    }

    fn disconnect(&mut self, link: LinkId) {
        let Some((a, b)) = self.links.remove(&link) else {
            return;
        };
        let now = self.now;
        for r in [a, b] {
            self.engines
                .get_mut(&r)
                .unwrap()
                .handle_link_down(now, link);
        }
        self.collect();
    }

    /// The link stays open but nothing crosses it any more (a silent
    /// failure only the dead interval notices).
    fn cut_silently(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    fn set_addresses(&mut self, router: &str, addrs: &[&str]) {
        let now = self.now;
        self.engines
            .get_mut(router)
            .unwrap()
            .set_local_addresses(now, addrs.iter().map(|s| s.to_string()));
        self.collect();
    }

    fn collect(&mut self) {
        for (name, e) in &mut self.engines {
            while let Some(tx) = e.poll_transmit() {
                let Some((a, b)) = self.links.get(&tx.link) else {
                    continue;
                };
                let to = if a == name { b.clone() } else { a.clone() };
                if let Some(rule) = self.drop_rule.as_mut() {
                    if rule(name, &tx.message) {
                        continue;
                    }
                }
                let mut bytes = Vec::new();
                tx.message.encode(&mut bytes);
                self.queue.push_back((to, tx.link, bytes));
            }
            while let Some(ev) = e.poll_event() {
                self.events.push((name.clone(), ev));
            }
        }
    }

    fn step(&mut self) {
        self.now += TICK;
        let now = self.now;
        for (to, link, bytes) in std::mem::take(&mut self.queue) {
            if !self.links.contains_key(&link) {
                continue;
            }
            let msg = RouterMessage::decode(&bytes).expect("engine sent something undecodable");
            self.engines
                .get_mut(&to)
                .unwrap()
                .handle_message(now, link, msg);
        }
        for e in self.engines.values_mut() {
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
        self.collect();
    }

    fn run(&mut self, d: Duration) {
        for _ in 0..(d.as_millis() / TICK.as_millis()) {
            self.step();
        }
    }

    fn next_hop(&self, from: &str, to: &str) -> Option<(String, u64)> {
        self.e(from)
            .route(to)
            .map(|r| (r.next_router.clone(), r.cost))
    }
}

fn hop(router: &str, cost: u64) -> Option<(String, u64)> {
    Some((router.to_string(), cost))
}

#[test]
fn two_routers_form_an_adjacency_with_the_larger_cost() {
    let mut net = Net::new();
    net.add("east", 1);
    net.add("west", 1);
    net.set_addresses("west", &["backend"]);
    net.connect(7, "east", 2, "west", 5);
    net.run(Duration::from_millis(200));
    assert!(net.e("east").is_adjacent(7));
    assert_eq!(net.e("east").neighbours(), vec![(7, "west")]);
    assert_eq!(net.next_hop("east", "west"), hop("west", 5));
    assert_eq!(net.next_hop("west", "east"), hop("east", 5));
    let offers = net.e("east").destinations("backend");
    assert_eq!(offers.len(), 1);
    assert_eq!(
        (offers[0].router.as_str(), offers[0].cost, offers[0].link),
        ("west", 5, Some(7))
    );
    // The offering router sees its own offer at cost 0, no link.
    let own = net.e("west").destinations("backend");
    assert_eq!((own[0].cost, own[0].link), (0, None));
    assert!(net.events.iter().any(|(r, e)| r == "east"
        && matches!(e, Event::NeighbourUp { link: 7, router } if router == "west")));
    assert!(net.events.iter().any(|(r, e)| r == "east"
        && matches!(e, Event::AddressChanged { address } if address == "backend")));
}

#[test]
fn addresses_are_withdrawn_and_moved_incrementally() {
    let mut net = line(&["a", "b", "c"]);
    net.set_addresses("c", &["x", "y"]);
    net.run(Duration::from_millis(200));
    assert_eq!(net.e("a").destinations("y")[0].router, "c");
    net.set_addresses("c", &["x"]);
    net.set_addresses("b", &["y"]);
    net.run(Duration::from_millis(200));
    let y: Vec<(&str, u64)> = net
        .e("a")
        .destinations("y")
        .iter()
        .map(|o| (o.router.as_str(), o.cost))
        .collect();
    assert_eq!(y, vec![("b", 1)]);
    assert_eq!(net.e("a").destinations("x")[0].cost, 2);
    assert_eq!(net.e("c").local_addresses(), vec!["x"]);
}

/// Routers joined in a line by links 1, 2, ... of cost 1.
fn line(names: &[&str]) -> Net {
    let mut net = Net::new();
    for n in names {
        net.add(n, 1);
    }
    for (i, w) in names.windows(2).enumerate() {
        net.connect(i as LinkId + 1, w[0], 1, w[1], 1);
    }
    net
}

#[test]
fn equal_cost_paths_go_via_the_lowest_router_id() {
    // s -> {zed, alpha, mid} -> d, all cost 1 except mid (2).
    let mut net = Net::new();
    for n in ["s", "zed", "alpha", "mid", "d"] {
        net.add(n, 1);
    }
    net.connect(1, "s", 1, "zed", 1);
    net.connect(2, "zed", 1, "d", 1);
    net.connect(3, "s", 1, "mid", 2);
    net.connect(4, "mid", 1, "d", 1);
    net.connect(5, "s", 1, "alpha", 1);
    net.connect(6, "alpha", 1, "d", 1);
    net.run(Duration::from_millis(300));
    let r = net.e("s").route("d").unwrap();
    assert_eq!((r.next_router.as_str(), r.cost, r.link), ("alpha", 2, 5));
    // And the other way round, d -> s also picks alpha.
    assert_eq!(net.next_hop("d", "s"), hop("alpha", 2));
    // Without alpha, zed (not mid, which is dearer).
    net.disconnect(5);
    net.run(Duration::from_millis(300));
    assert_eq!(net.next_hop("s", "d"), hop("zed", 2));
}

#[test]
fn parallel_links_use_the_cheaper_then_lower_id() {
    let mut net = Net::new();
    net.add("a", 1);
    net.add("b", 1);
    net.connect(9, "a", 3, "b", 1);
    net.connect(4, "a", 3, "b", 3);
    net.connect(6, "a", 1, "b", 2);
    net.run(Duration::from_millis(200));
    let r = net.e("a").route("b").unwrap();
    assert_eq!((r.link, r.cost), (6, 2));
    net.disconnect(6);
    net.run(Duration::from_millis(200));
    let r = net.e("a").route("b").unwrap();
    assert_eq!((r.link, r.cost), (4, 3));
}

#[test]
fn a_silent_neighbour_is_dropped_after_the_dead_interval() {
    let mut net = line(&["a", "b", "c"]);
    net.run(Duration::from_millis(200));
    assert_eq!(net.next_hop("a", "c"), hop("b", 2));
    net.cut_silently(2);
    net.run(Duration::from_millis(2500));
    assert!(net.e("b").route("c").is_some(), "too early");
    net.run(Duration::from_millis(1000));
    assert!(net.e("b").route("c").is_none());
    assert!(net.e("a").route("c").is_none());
    assert!(net
        .events
        .iter()
        .any(|(r, e)| r == "b" && matches!(e, Event::NeighbourDown { link: 2, .. })));
    assert!(net.events.iter().any(|(r, e)| r == "a"
        && matches!(e, Event::RouteChanged { router, route: None } if router == "c")));
}

#[test]
fn a_restarted_router_overrides_its_old_state() {
    for new_instance in [2, 1] {
        let mut net = line(&["a", "b", "c"]);
        net.set_addresses("c", &["older"]);
        net.set_addresses("c", &["old", "older"]);
        net.set_addresses("c", &["old"]);
        net.run(Duration::from_millis(300));
        assert_eq!(net.e("a").destinations("old").len(), 1);
        // c restarts: a fresh engine on the same links. With the same
        // instance its sequence numbers start below what the others hold,
        // so when shown a higher one it must jump past it.
        net.engines.insert(
            "c".into(),
            RoutingEngine::new(EngineConfig::new("c", new_instance)),
        );
        net.queue.retain(|(to, _, _)| to != "c");
        let now = net.now;
        net.engines.get_mut("c").unwrap().handle_link_up(now, 2, 1);
        net.set_addresses("c", &["new"]);
        net.run(Duration::from_secs(10));
        assert_eq!(
            net.next_hop("a", "c"),
            hop("b", 2),
            "instance {new_instance}"
        );
        assert!(
            net.e("a").destinations("old").is_empty(),
            "instance {new_instance}"
        );
        assert_eq!(
            net.e("a").destinations("new").len(),
            1,
            "instance {new_instance}"
        );
        assert_eq!(net.next_hop("c", "a"), hop("b", 2));
    }
}

#[test]
fn a_lost_link_state_update_is_repaired_by_the_digest_check() {
    let mut net = line(&["a", "b", "c"]);
    net.run(Duration::from_millis(300));
    // From now on b loses every LSU it forwards to c, once.
    let mut dropped = 0;
    net.drop_rule = Some(Box::new(move |from, m| {
        if from == "b" && dropped == 0 {
            if let RouterMessage::LinkStateUpdate(u) = m {
                if u.origin == "d" {
                    dropped += 1;
                    return true;
                }
            }
        }
        false
    }));
    net.add("d", 1);
    net.connect(3, "a", 1, "d", 1);
    net.run(Duration::from_millis(300));
    assert!(
        net.e("c").route("d").is_none(),
        "the LSU was meant to be lost"
    );
    assert_eq!(net.next_hop("b", "d"), hop("a", 2));
    // Digests differ for two RA intervals in a row: a summary goes out and
    // the missing LSU follows.
    net.run(Duration::from_secs(13));
    assert_eq!(net.next_hop("c", "d"), hop("b", 3));
    assert!(net.e("b").stats().summaries_sent + net.e("c").stats().summaries_sent > 2);
}

#[test]
fn a_gap_in_address_updates_asks_for_a_full_update() {
    let mut net = line(&["a", "b", "c"]);
    net.set_addresses("c", &["one"]);
    net.run(Duration::from_millis(300));
    // b loses c's next incremental update on its way to a.
    let mut dropped = false;
    net.drop_rule = Some(Box::new(move |from, m| {
        if from == "b" && !dropped && matches!(m, RouterMessage::MobileAddressUpdate(_)) {
            dropped = true;
            return true;
        }
        false
    }));
    net.set_addresses("c", &["one", "two"]);
    net.run(Duration::from_millis(100));
    assert!(net.e("a").destinations("two").is_empty());
    net.drop_rule = None;
    // The next incremental is seq + 2 for a: it asks b for the whole set.
    net.set_addresses("c", &["two", "three"]);
    net.run(Duration::from_millis(100));
    let names = |a: &str| -> Vec<String> {
        net.e("a")
            .destinations(a)
            .iter()
            .map(|o| o.router.clone())
            .collect()
    };
    assert_eq!(names("two"), vec!["c"]);
    assert_eq!(names("three"), vec!["c"]);
    assert!(names("one").is_empty());
}

#[test]
fn messages_before_two_way_or_with_our_own_id_are_ignored() {
    let mut e = RoutingEngine::new(EngineConfig::new("me", 1));
    let now = Instant::now();
    e.handle_link_up(now, 1, 1);
    // An LSU on a link with no adjacency yet.
    e.handle_message(
        now,
        1,
        RouterMessage::LinkStateUpdate(LinkStateUpdate {
            origin: "x".into(),
            instance: 1,
            seq: 5,
            links: vec![LsLink {
                router_id: "me".into(),
                cost: 1,
            }],
        }),
    );
    // A HELLO claiming to be us.
    e.handle_message(
        now,
        1,
        RouterMessage::Hello(Hello {
            router_id: "me".into(),
            instance: 1,
            cost: 1,
            seen: vec!["me".into()],
        }),
    );
    // A message on a link that does not exist.
    e.handle_message(
        now,
        99,
        RouterMessage::Hello(Hello {
            router_id: "x".into(),
            instance: 1,
            cost: 1,
            seen: vec![],
        }),
    );
    assert_eq!(e.stats().messages_ignored, 3);
    assert_eq!(e.known_routers(), 1);
    assert!(!e.is_adjacent(1));
}

/// Random and hostile messages on an adjacency: nothing panics, and the
/// engine still routes afterwards.
#[test]
fn hostile_input_does_not_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut net = line(&["a", "b"]);
    net.run(Duration::from_millis(100));
    // Forged state for routers that are not real (and for a itself); a
    // peer forging a real router's state with a higher version can of
    // course mislead: peers are authenticated, not distrusted.
    let names = ["a", "x", "y", "", "a", "zz"];
    let pick = |rng: &mut ChaCha8Rng| names[rng.random_range(0..names.len())].to_string();
    let list = |rng: &mut ChaCha8Rng| -> Vec<String> {
        (0..rng.random_range(0..4)).map(|_| pick(rng)).collect()
    };
    for i in 0..5000 {
        let seq = rng.random_range(0..4u64);
        let instance = rng.random_range(0..3u64);
        let msg = match rng.random_range(0..6) {
            0 => RouterMessage::Hello(Hello {
                router_id: pick(&mut rng),
                instance,
                cost: rng.random_range(0..3),
                seen: list(&mut rng),
            }),
            1 => RouterMessage::RouterAdvertisement(RouterAdvertisement {
                router_id: pick(&mut rng),
                instance,
                ls_seq: seq,
                mobile_seq: rng.random_range(0..4),
                digest: rng.random(),
                summary: rng.random_bool(0.5).then(|| {
                    (0..rng.random_range(0..4))
                        .map(|_| SummaryEntry {
                            router_id: pick(&mut rng),
                            ls_instance: rng.random_range(0..3),
                            ls_seq: rng.random_range(0..5),
                            mobile_instance: rng.random_range(0..3),
                            mobile_seq: rng.random_range(0..5),
                        })
                        .collect()
                }),
            }),
            2 => RouterMessage::LinkStateUpdate(LinkStateUpdate {
                origin: pick(&mut rng),
                instance,
                seq,
                links: list(&mut rng)
                    .into_iter()
                    .map(|router_id| LsLink {
                        router_id,
                        cost: rng.random_range(0..3),
                    })
                    .collect(),
            }),
            3 => RouterMessage::LinkStateRequest(LinkStateRequest {
                router_id: pick(&mut rng),
                wanted: list(&mut rng),
            }),
            4 => RouterMessage::MobileAddressUpdate(MobileAddressUpdate {
                origin: pick(&mut rng),
                instance,
                seq,
                change: if rng.random_bool(0.5) {
                    AddressChange::Full(list(&mut rng))
                } else {
                    AddressChange::Incremental {
                        added: list(&mut rng),
                        removed: list(&mut rng),
                    }
                },
            }),
            _ => RouterMessage::MobileAddressRequest(MobileAddressRequest {
                router_id: pick(&mut rng),
                wanted: list(&mut rng),
            }),
        };
        let now = net.now;
        net.engines
            .get_mut("a")
            .unwrap()
            .handle_message(now, 1, msg);
        if i % 50 == 0 {
            net.step();
        }
    }
    // Calm again: a real link and a real neighbour still work.
    net.add("c", 9);
    net.connect(2, "b", 1, "c", 1);
    net.run(Duration::from_secs(30));
    assert_eq!(net.next_hop("a", "c"), hop("b", 2));
}

#[test]
fn timers_are_configurable_and_reported() {
    let mut config = EngineConfig::new("a", 1);
    config.timers = Timers {
        hello_interval: Duration::from_millis(100),
        dead_interval: Duration::from_millis(300),
        ra_interval: Duration::from_millis(500),
        spf_delay: Duration::from_millis(20),
        unreachable_ttl: Duration::from_secs(1),
    };
    let mut e = RoutingEngine::new(config);
    let t0 = Instant::now();
    assert_eq!(e.poll_timeout(), None);
    e.handle_link_up(t0, 1, 1);
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(100)));
    let hello = e.poll_transmit().unwrap();
    assert!(matches!(hello.message, RouterMessage::Hello(_)));
    e.handle_message(
        t0,
        1,
        RouterMessage::Hello(Hello {
            router_id: "b".into(),
            instance: 1,
            cost: 1,
            seen: vec!["a".into()],
        }),
    );
    // Two-way: LSU origination waits for the SPF delay.
    assert!(e.has_pending_work());
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(20)));
    e.handle_timeout(t0 + Duration::from_millis(20));
    assert!(!e.has_pending_work());
    let kinds: Vec<&str> = std::iter::from_fn(|| e.poll_transmit())
        .map(|t| match t.message {
            RouterMessage::Hello(_) => "hello",
            RouterMessage::LinkStateUpdate(_) => "lsu",
            RouterMessage::RouterAdvertisement(_) => "ra",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["hello", "lsu", "ra"]);
    // Nothing heard for the dead interval: the adjacency goes.
    e.handle_timeout(t0 + Duration::from_millis(300));
    assert!(!e.is_adjacent(1));
}
