//! A deterministic network simulator for the link-state engine.
//!
//! `tether sim` in a library: [`run`] builds a network of
//! [`RoutingEngine`]s (one per router, the very code the router runs), joins
//! them by simulated links on a virtual clock, lets the network converge,
//! optionally fails links (and moves a few addresses) and converges again,
//! and after each phase checks every router's route to every other router,
//! and its offers for every address, against an independent all-pairs
//! least-cost computation (a plain Dijkstra per router over the network
//! description, with the tie rule applied afresh, sharing no code with
//! [`crate::topology`]).
//!
//! # Model
//!
//! - Virtual time in microseconds; nothing here sleeps or reads a clock
//!   except to report the wall time taken.
//! - Event-driven: a priority queue of message deliveries (ordered by time,
//!   then send order) and one of router timers ([`RoutingEngine::poll_timeout`]).
//!   At each instant all deliveries are handed over first, then due timers
//!   fire, so a router's SPF (which runs from `handle_timeout`) runs at most
//!   once per instant.
//! - Every message is encoded with [`RouterMessage::encode`] when sent and
//!   decoded at delivery, so byte counts are real and the codec is in the
//!   loop. Each link delivers in order after a fixed latency; a failed link
//!   is closed at both ends at once (as when the connection drops) and
//!   whatever was in flight on it is lost.
//! - A phase has converged when no router has work pending, every open link
//!   is a two-way adjacency, nothing but periodic HELLOs and digest-only RAs
//!   is in flight, and that has stayed so for three RA intervals (so the
//!   digest check had its chance to find a difference). A phase that does
//!   not get there within [`SimConfig::max_phase_time`] of virtual time has
//!   failed.
//!
//! # Topology files
//!
//! ```toml
//! # Routers named here exist even without links (optional).
//! routers = ["a", "b", "c", "d"]
//!
//! [[link]]
//! a = "a"
//! b = "b"
//! cost = 2          # both ends; default 1
//!
//! [[link]]
//! a = "b"
//! b = "c"
//! cost_a = 1        # the a end's setting ...
//! cost_b = 5        # ... and the b end's: the link costs 5
//!
//! [addresses]       # optional: addresses each router has consumers for
//! c = ["svc"]
//! ```
//!
//! Generated networks name routers `r0`, `r1`, ... (zero-padded, so names
//! sort like numbers). Ring and grid links cost 1 at both ends (many
//! equal-cost ties); random networks get a random spanning tree plus random
//! extra links up to the asked mean degree, each end's cost drawn from 1-4.
//! Router `i` offers address `svc-(i mod max(1, N/10))`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::linkstate::{EngineConfig, Event, LinkId, RoutingEngine, Timers};
use crate::message::{RouterMessage, MAX_ADDRESS_LEN};

/// Largest network the simulator accepts (the check keeps an N × N cost
/// matrix).
pub const MAX_ROUTERS: usize = 5000;

/// Routers, links and addresses of a simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub routers: Vec<String>,
    pub links: Vec<NetLink>,
    /// Per router (same order as `routers`): the addresses it offers.
    pub addresses: Vec<Vec<String>>,
}

/// A link between routers `a` and `b` (indices into [`Network::routers`])
/// with each end's cost setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLink {
    pub a: usize,
    pub b: usize,
    pub cost_a: u32,
    pub cost_b: u32,
}

impl NetLink {
    /// The cost the routing protocol uses: the larger end.
    pub fn cost(&self) -> u32 {
        self.cost_a.max(self.cost_b).max(1)
    }
}

/// What to simulate. Build with [`SimConfig::from_args`] (the `tether sim`
/// flags) or [`SimConfig::new`]; every field may be adjusted after.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub network: Network,
    /// How the network was made, for the report ("ring", "file x.toml").
    pub description: String,
    pub seed: u64,
    /// Links (indices into `network.links`) failed after the first phase.
    pub fail_links: Vec<usize>,
    /// Routers that move to a new address in the second phase.
    pub churn_routers: usize,
    pub latency: Duration,
    pub timers: Timers,
    /// Virtual-time bound per phase.
    pub max_phase_time: Duration,
}

/// Why a simulation could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// Flag values that do not fit together or are out of range.
    Usage(String),
    /// A topology file that cannot be read or is not valid.
    TopologyFile { path: PathBuf, reason: String },
    /// Topology text that is not valid.
    Topology(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Usage(m) => write!(f, "{m}"),
            SimError::TopologyFile { path, reason } => {
                write!(f, "topology file {}: {reason}", path.display())
            }
            SimError::Topology(m) => write!(f, "topology: {m}"),
        }
    }
}

impl std::error::Error for SimError {}

impl SimConfig {
    /// A configuration for `network` with the defaults: seed 0, no
    /// failures, 10 ms latency, default timers, 600 s virtual per phase.
    pub fn new(network: Network, description: impl Into<String>) -> Self {
        SimConfig {
            network,
            description: description.into(),
            seed: 0,
            fail_links: Vec::new(),
            churn_routers: 0,
            latency: Duration::from_millis(10),
            timers: Timers::default(),
            max_phase_time: Duration::from_secs(600),
        }
    }

    /// From the values of the `tether sim` flags:
    /// `--routers N --topology ring|grid|random|FILE --degree D --seed S
    /// [--fail-links K|a-b,c-d] [--latency-ms L]`.
    ///
    /// `topology` other than the three keywords is a topology file path
    /// (see the module documentation); `routers` is then optional and must
    /// match the file. `degree` (default 4) applies to `random` only.
    /// `fail_links` is a count of links chosen at random (seeded) or a
    /// comma-separated list of `router-router` pairs. Latency defaults to
    /// 10 ms and must be at least 1 ms.
    pub fn from_args(
        routers: Option<usize>,
        topology: &str,
        degree: Option<usize>,
        seed: u64,
        fail_links: Option<&str>,
        latency_ms: Option<u64>,
    ) -> Result<SimConfig, SimError> {
        let usage = |m: String| Err(SimError::Usage(m));
        let generated = matches!(topology, "ring" | "grid" | "random");
        if degree.is_some() && topology != "random" {
            return usage("--degree applies to --topology random only".into());
        }
        let (network, description) = if generated {
            let Some(n) = routers else {
                return usage(format!("--topology {topology} needs --routers N"));
            };
            if n == 0 || n > MAX_ROUTERS {
                return usage(format!("--routers must be 1..={MAX_ROUTERS}, not {n}"));
            }
            match topology {
                "ring" => (Network::ring(n), "ring".to_string()),
                "grid" => (Network::grid(n), "grid".to_string()),
                _ => {
                    let d = degree.unwrap_or(4);
                    if d == 0 || (n > 1 && d >= n) {
                        return usage(format!("--degree must be 1..{n}, not {d}"));
                    }
                    (
                        Network::random(n, d, seed),
                        format!("random, mean degree {d}"),
                    )
                }
            }
        } else {
            let net = parse_topology_file(Path::new(topology))?;
            if let Some(n) = routers {
                if n != net.routers.len() {
                    return usage(format!(
                        "--routers {n} but {topology} describes {} routers",
                        net.routers.len()
                    ));
                }
            }
            (net, format!("file {topology}"))
        };
        let latency_ms = latency_ms.unwrap_or(10);
        if latency_ms == 0 {
            return usage("--latency-ms must be at least 1".into());
        }
        let fail = match fail_links {
            None => Vec::new(),
            Some(spec) => network.parse_failures(spec, seed)?,
        };
        let mut config = SimConfig::new(network, description);
        config.seed = seed;
        config.latency = Duration::from_millis(latency_ms);
        if !fail.is_empty() {
            config.churn_routers = (config.network.routers.len() / 100).max(1);
        }
        config.fail_links = fail;
        Ok(config)
    }
}

impl Network {
    /// Routers `r0 .. r(n-1)` in a ring (one link for two routers).
    pub fn ring(n: usize) -> Network {
        let mut links = Vec::new();
        if n == 2 {
            links.push(unit(0, 1));
        } else if n > 2 {
            links.extend((0..n).map(|i| unit(i, (i + 1) % n)));
        }
        Network::generated(n, links)
    }

    /// Routers in rows of `ceil(sqrt(n))`, each linked right and down.
    pub fn grid(n: usize) -> Network {
        let cols = (1..=n).find(|c| c * c >= n).unwrap_or(1);
        let mut links = Vec::new();
        for i in 0..n {
            if (i + 1) % cols != 0 && i + 1 < n {
                links.push(unit(i, i + 1));
            }
            if i + cols < n {
                links.push(unit(i, i + cols));
            }
        }
        Network::generated(n, links)
    }

    /// A connected random network: a random spanning tree plus random links
    /// until the mean degree is `degree`; each end's cost is 1-4.
    pub fn random(n: usize, degree: usize, seed: u64) -> Network {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut seen = HashSet::new();
        let mut pairs = Vec::new();
        for k in 1..n {
            let (a, b) = (order[k], order[rng.random_range(0..k)]);
            seen.insert((a.min(b), a.max(b)));
            pairs.push((a, b));
        }
        let max_links = n * n.saturating_sub(1) / 2;
        let want = (n * degree / 2).min(max_links);
        let mut attempts = 0usize;
        while pairs.len() < want && attempts < want * 100 {
            attempts += 1;
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            if a != b && seen.insert((a.min(b), a.max(b))) {
                pairs.push((a, b));
            }
        }
        let links = pairs
            .into_iter()
            .map(|(a, b)| NetLink {
                a,
                b,
                cost_a: rng.random_range(1..=4),
                cost_b: rng.random_range(1..=4),
            })
            .collect();
        Network::generated(n, links)
    }

    fn generated(n: usize, links: Vec<NetLink>) -> Network {
        let width = n.saturating_sub(1).to_string().len();
        let groups = (n / 10).max(1);
        let gwidth = groups.saturating_sub(1).to_string().len();
        Network {
            routers: (0..n).map(|i| format!("r{i:0width$}")).collect(),
            links,
            addresses: (0..n)
                .map(|i| vec![format!("svc-{:0gwidth$}", i % groups)])
                .collect(),
        }
    }

    /// Checks what [`Simulation::new`] relies on: link ends and address
    /// lists match the routers, no self-links, at most [`MAX_ROUTERS`].
    pub fn validate(&self) -> Result<(), SimError> {
        let n = self.routers.len();
        let bad = |m: String| Err(SimError::Topology(m));
        if n == 0 || n > MAX_ROUTERS {
            return bad(format!("{n} routers (1..={MAX_ROUTERS} allowed)"));
        }
        if self.addresses.len() != n {
            return bad(format!(
                "{} address lists for {n} routers",
                self.addresses.len()
            ));
        }
        if let Some(l) = self
            .links
            .iter()
            .find(|l| l.a >= n || l.b >= n || l.a == l.b)
        {
            return bad(format!("bad link {l:?}"));
        }
        Ok(())
    }

    /// The index of the link between routers `a` and `b`.
    pub fn find_link(&self, a: &str, b: &str) -> Option<usize> {
        let ia = self.routers.iter().position(|r| r == a)?;
        let ib = self.routers.iter().position(|r| r == b)?;
        self.links
            .iter()
            .position(|l| (l.a == ia && l.b == ib) || (l.a == ib && l.b == ia))
    }

    /// `"K"` (that many links, chosen with `seed`) or `"a-b,c-d"`.
    fn parse_failures(&self, spec: &str, seed: u64) -> Result<Vec<usize>, SimError> {
        let spec = spec.trim();
        if let Ok(k) = spec.parse::<usize>() {
            if k > self.links.len() {
                return Err(SimError::Usage(format!(
                    "--fail-links {k}: the network has only {} links",
                    self.links.len()
                )));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_696c);
            let mut all: Vec<usize> = (0..self.links.len()).collect();
            all.shuffle(&mut rng);
            all.truncate(k);
            all.sort_unstable();
            return Ok(all);
        }
        let mut out = Vec::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // Router names may contain '-': take the split whose both halves
            // name routers joined by a link.
            let found: Vec<usize> = pair
                .match_indices('-')
                .filter_map(|(i, _)| self.find_link(&pair[..i], &pair[i + 1..]))
                .collect();
            match found.as_slice() {
                [one] => {
                    if !out.contains(one) {
                        out.push(*one);
                    }
                }
                [] => {
                    return Err(SimError::Usage(format!(
                        "--fail-links: no link {pair:?} in the network"
                    )))
                }
                _ => {
                    return Err(SimError::Usage(format!(
                        "--fail-links: {pair:?} is ambiguous"
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(SimError::Usage(
                "--fail-links: expected a count or a-b,c-d".into(),
            ));
        }
        Ok(out)
    }
}

fn unit(a: usize, b: usize) -> NetLink {
    NetLink {
        a,
        b,
        cost_a: 1,
        cost_b: 1,
    }
}

/// Reads a topology file (format in the module documentation).
pub fn parse_topology_file(path: &Path) -> Result<Network, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::TopologyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_topology(&text).map_err(|e| match e {
        SimError::Topology(reason) => SimError::TopologyFile {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopology {
    #[serde(default)]
    routers: Vec<String>,
    #[serde(default, rename = "link")]
    links: Vec<FileLink>,
    #[serde(default)]
    addresses: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLink {
    a: String,
    b: String,
    cost: Option<u32>,
    cost_a: Option<u32>,
    cost_b: Option<u32>,
}

/// Parses topology text (format in the module documentation).
pub fn parse_topology(text: &str) -> Result<Network, SimError> {
    let bad = |m: String| Err(SimError::Topology(m));
    let file: FileTopology = toml::from_str(text).map_err(|e| SimError::Topology(e.to_string()))?;
    let mut routers: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |name: &str, routers: &mut Vec<String>| -> Result<usize, SimError> {
        if name.is_empty() || name.len() > MAX_ADDRESS_LEN {
            return Err(SimError::Topology(format!("bad router name {name:?}")));
        }
        if let Some(&i) = index.get(name) {
            return Ok(i);
        }
        routers.push(name.to_string());
        index.insert(name.to_string(), routers.len() - 1);
        Ok(routers.len() - 1)
    };
    for r in &file.routers {
        add(r, &mut routers)?;
    }
    let mut links = Vec::new();
    let mut seen = HashSet::new();
    for l in &file.links {
        let (a, b) = (add(&l.a, &mut routers)?, add(&l.b, &mut routers)?);
        if a == b {
            return bad(format!("link from {} to itself", l.a));
        }
        if !seen.insert((a.min(b), a.max(b))) {
            return bad(format!("more than one link between {} and {}", l.a, l.b));
        }
        let (cost_a, cost_b) = match (l.cost, l.cost_a, l.cost_b) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return bad(format!(
                    "link {}-{}: give cost or cost_a/cost_b, not both",
                    l.a, l.b
                ))
            }
            (c, ca, cb) => (ca.or(c).unwrap_or(1), cb.or(c).unwrap_or(1)),
        };
        if cost_a == 0 || cost_b == 0 {
            return bad(format!("link {}-{}: costs start at 1", l.a, l.b));
        }
        links.push(NetLink {
            a,
            b,
            cost_a,
            cost_b,
        });
    }
    if routers.is_empty() {
        return bad("no routers".into());
    }
    if routers.len() > MAX_ROUTERS {
        return bad(format!("more than {MAX_ROUTERS} routers"));
    }
    let mut addresses = vec![Vec::new(); routers.len()];
    for (r, list) in file.addresses {
        let Some(&i) = index.get(&r) else {
            return bad(format!("addresses for unknown router {r}"));
        };
        if let Some(a) = list
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_ADDRESS_LEN)
        {
            return bad(format!("bad address {a:?}"));
        }
        addresses[i] = list;
    }
    Ok(Network {
        routers,
        links,
        addresses,
    })
}

/// Messages of one kind sent during a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageCount {
    pub kind: &'static str,
    pub messages: u64,
    pub bytes: u64,
}

/// The result of checking every router against the independent computation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Ordered (router, destination) pairs checked.
    pub routes_checked: u64,
    /// Pairs whose route (presence, cost, next hop or link) was wrong.
    pub route_errors: u64,
    /// Pairs correctly without a route (unreachable destination).
    pub unreachable_pairs: u64,
    /// (router, address) lists checked.
    pub address_checks: u64,
    pub address_errors: u64,
    /// The first few errors, readable.
    pub examples: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.route_errors == 0 && self.address_errors == 0
    }
}

/// One converge-and-check phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    pub name: String,
    pub converged: bool,
    /// Virtual time from the phase start to the last route or address
    /// change.
    pub convergence_time: Duration,
    /// Virtual time from the phase start to the last protocol activity
    /// (after which only periodic HELLOs and RAs flowed).
    pub quiet_after: Duration,
    pub messages: Vec<MessageCount>,
    pub spf_runs: u64,
    pub verification: Verification,
}

impl PhaseReport {
    pub fn total_messages(&self) -> u64 {
        self.messages.iter().map(|m| m.messages).sum()
    }
    pub fn total_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.bytes).sum()
    }
    pub fn passed(&self) -> bool {
        self.converged && self.verification.passed()
    }
}

/// What [`run`] found. `Display` is the human report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub description: String,
    pub routers: usize,
    pub links: usize,
    pub seed: u64,
    pub latency: Duration,
    pub phases: Vec<PhaseReport>,
    /// Something that stopped the run (e.g. a message failed to decode).
    pub error: Option<String>,
    /// Real time the run took (not deterministic, unlike the rest).
    pub wall_time: Duration,
}

impl SimReport {
    /// Every phase converged and every route and offer was right.
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.phases.is_empty() && self.phases.iter().all(|p| p.passed())
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "network: {} routers, {} links ({}), seed {}, latency {} ms",
            self.routers,
            self.links,
            self.description,
            self.seed,
            self.latency.as_millis()
        )?;
        for (i, p) in self.phases.iter().enumerate() {
            writeln!(f, "phase {}: {}", i + 1, p.name)?;
            if p.converged {
                writeln!(
                    f,
                    "  converged: routes settled {:.3} s (virtual) after the phase began, quiet after {:.3} s",
                    p.convergence_time.as_secs_f64(),
                    p.quiet_after.as_secs_f64()
                )?;
            } else {
                writeln!(
                    f,
                    "  DID NOT CONVERGE (still busy at the virtual-time limit)"
                )?;
            }
            writeln!(
                f,
                "  messages: {} ({} bytes); SPF runs: {}",
                p.total_messages(),
                p.total_bytes(),
                p.spf_runs
            )?;
            let kinds: Vec<String> = p
                .messages
                .iter()
                .filter(|m| m.messages > 0)
                .map(|m| format!("{} {} ({} B)", m.kind, m.messages, m.bytes))
                .collect();
            writeln!(f, "    {}", kinds.join(", "))?;
            let v = &p.verification;
            writeln!(
                f,
                "  routes: {} checked, {} wrong ({} pairs correctly unreachable); address lists: {} checked, {} wrong",
                v.routes_checked, v.route_errors, v.unreachable_pairs, v.address_checks, v.address_errors
            )?;
            for e in &v.examples {
                writeln!(f, "    {e}")?;
            }
        }
        if let Some(e) = &self.error {
            writeln!(f, "error: {e}")?;
        }
        write!(
            f,
            "result: {} (wall time {:.2} s)",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.wall_time.as_secs_f64()
        )
    }
}

/// Runs the whole simulation: converge, check; then, if links are to fail,
/// fail them (and move a few addresses), converge, check.
pub fn run(config: SimConfig) -> SimReport {
    let wall = Instant::now();
    let invalid = config.network.validate().err().or_else(|| {
        let links = config.network.links.len();
        config
            .fail_links
            .iter()
            .find(|&&i| i >= links)
            .map(|i| SimError::Usage(format!("no link {i} to fail")))
    });
    if let Some(e) = invalid {
        return SimReport {
            description: config.description,
            routers: config.network.routers.len(),
            links: config.network.links.len(),
            seed: config.seed,
            latency: config.latency,
            phases: Vec::new(),
            error: Some(e.to_string()),
            wall_time: wall.elapsed(),
        };
    }
    let mut sim = Simulation::new(config);
    let mut phases = vec![sim.converge("start: every router and link comes up")];
    let fail = sim.config.fail_links.clone();
    if !fail.is_empty() && sim.error.is_none() {
        let names: Vec<String> = fail
            .iter()
            .map(|&i| {
                let l = sim.config.network.links[i];
                let r = &sim.config.network.routers;
                format!("{}-{}", r[l.a], r[l.b])
            })
            .collect();
        sim.fail_links(&fail);
        let moved = sim.churn_addresses(sim.config.churn_routers);
        let mut name = format!(
            "after failing {} link(s): {}",
            fail.len(),
            abbreviate(&names)
        );
        if moved > 0 {
            name.push_str(&format!("; {moved} router(s) moved to a new address"));
        }
        phases.push(sim.converge(&name));
    }
    let cfg = &sim.config;
    SimReport {
        description: cfg.description.clone(),
        routers: cfg.network.routers.len(),
        links: cfg.network.links.len(),
        seed: cfg.seed,
        latency: cfg.latency,
        phases,
        error: sim.error.clone(),
        wall_time: wall.elapsed(),
    }
}

fn abbreviate(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ... ({} more)", names[..8].join(", "), names.len() - 8)
    }
}

const KINDS: [&str; 7] = ["HELLO", "RA", "RA+summary", "LSU", "LSR", "MAU", "MAR"];

fn kind_of(m: &RouterMessage) -> usize {
    match m {
        RouterMessage::Hello(_) => 0,
        RouterMessage::RouterAdvertisement(ra) if ra.summary.is_none() => 1,
        RouterMessage::RouterAdvertisement(_) => 2,
        RouterMessage::LinkStateUpdate(_) => 3,
        RouterMessage::LinkStateRequest(_) => 4,
        RouterMessage::MobileAddressUpdate(_) => 5,
        RouterMessage::MobileAddressRequest(_) => 6,
    }
}

/// A message on its way. Every link has the same latency, so deliveries
/// leave in the order they were sent: the queue is a FIFO.
struct Delivery {
    at: u64,
    to: usize,
    link: usize,
    epoch: u32,
    triggered: bool,
    bytes: Vec<u8>,
}

/// A running simulation, for tests that want to look inside between
/// phases; [`run`] is the usual entry point.
pub struct Simulation {
    config: SimConfig,
    engines: Vec<RoutingEngine>,
    index: HashMap<String, usize>,
    /// Current addresses per router.
    addresses: Vec<Vec<String>>,
    /// Every address ever offered (withdrawn ones must vanish everywhere).
    all_addresses: BTreeSet<String>,
    base: Instant,
    now: u64,
    up: Vec<bool>,
    epoch: Vec<u32>,
    adjacent: Vec<[bool; 2]>,
    queue: VecDeque<Delivery>,
    sent: u64,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    scheduled: Vec<Option<u64>>,
    busy: Vec<bool>,
    busy_count: usize,
    triggered_in_flight: u64,
    counts: [(u64, u64); KINDS.len()],
    last_change: u64,
    last_activity: u64,
    rng: ChaCha8Rng,
    error: Option<String>,
}

impl Simulation {
    /// Builds every router (each offering its addresses) and brings every
    /// link up at virtual time 0. Panics if [`Network::validate`] fails
    /// ([`run`] checks first and reports the error instead).
    pub fn new(config: SimConfig) -> Simulation {
        if let Err(e) = config.network.validate() {
            panic!("invalid network: {e}");
        }
        let n = config.network.routers.len();
        let mut engines: Vec<RoutingEngine> = config
            .network
            .routers
            .iter()
            .map(|name| {
                let mut c = EngineConfig::new(name.clone(), 1);
                c.timers = config.timers.clone();
                RoutingEngine::new(c)
            })
            .collect();
        let base = Instant::now();
        for (e, addrs) in engines.iter_mut().zip(&config.network.addresses) {
            e.set_local_addresses(base, addrs.iter().cloned());
        }
        let links = config.network.links.len();
        let mut sim = Simulation {
            index: config
                .network
                .routers
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), i))
                .collect(),
            addresses: config.network.addresses.clone(),
            all_addresses: config.network.addresses.iter().flatten().cloned().collect(),
            engines,
            base,
            now: 0,
            up: vec![true; links],
            epoch: vec![0; links],
            adjacent: vec![[false; 2]; links],
            queue: VecDeque::new(),
            sent: 0,
            timers: BinaryHeap::new(),
            scheduled: vec![None; n],
            busy: vec![false; n],
            busy_count: 0,
            triggered_in_flight: 0,
            counts: [(0, 0); KINDS.len()],
            last_change: 0,
            last_activity: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x0063_6875_726e),
            error: None,
            config,
        };
        let now = sim.instant();
        for (i, l) in sim.config.network.links.clone().iter().enumerate() {
            sim.engines[l.a].handle_link_up(now, i as LinkId, l.cost_a);
            sim.engines[l.b].handle_link_up(now, i as LinkId, l.cost_b);
        }
        for r in 0..n {
            sim.after(r);
        }
        sim
    }

    /// The engine of router `name`.
    pub fn engine(&self, name: &str) -> Option<&RoutingEngine> {
        self.index.get(name).map(|&i| &self.engines[i])
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    /// Runs until the network has converged (or the phase time limit), then
    /// checks every route and address list.
    pub fn converge(&mut self, name: &str) -> PhaseReport {
        let start = self.now;
        self.counts = [(0, 0); KINDS.len()];
        let spf_before: u64 = self.engines.iter().map(|e| e.stats().spf_runs).sum();
        self.last_activity = self.now;
        self.last_change = self.now;
        let converged = self.run_until_quiet(start);
        let spf_after: u64 = self.engines.iter().map(|e| e.stats().spf_runs).sum();
        PhaseReport {
            name: name.to_string(),
            converged,
            convergence_time: Duration::from_micros(self.last_change.saturating_sub(start)),
            quiet_after: Duration::from_micros(self.last_activity.saturating_sub(start)),
            messages: KINDS
                .iter()
                .zip(self.counts)
                .map(|(&kind, (messages, bytes))| MessageCount {
                    kind,
                    messages,
                    bytes,
                })
                .collect(),
            spf_runs: spf_after - spf_before,
            verification: self.verify(),
        }
    }

    /// Closes links (indices into the network's links) at both ends now.
    pub fn fail_links(&mut self, links: &[usize]) {
        let now = self.instant();
        for &i in links {
            if !self.up.get(i).copied().unwrap_or(false) {
                continue;
            }
            self.up[i] = false;
            self.epoch[i] += 1;
            let l = self.config.network.links[i];
            for r in [l.a, l.b] {
                self.engines[r].handle_link_down(now, i as LinkId);
                self.after(r);
            }
        }
        self.last_activity = self.now;
    }

    /// Replaces the addresses `router` offers.
    pub fn set_addresses(&mut self, router: &str, addresses: Vec<String>) {
        let Some(&r) = self.index.get(router) else {
            return;
        };
        let now = self.instant();
        self.all_addresses.extend(addresses.iter().cloned());
        self.engines[r].set_local_addresses(now, addresses.iter().cloned());
        self.addresses[r] = addresses;
        self.after(r);
    }

    /// Moves `count` routers (chosen with the seed) to a new address of
    /// their own. Returns how many moved.
    fn churn_addresses(&mut self, count: usize) -> usize {
        let n = self.engines.len();
        let mut chosen: Vec<usize> = (0..n).collect();
        chosen.shuffle(&mut self.rng);
        chosen.truncate(count.min(n));
        chosen.sort_unstable();
        for &r in &chosen {
            let name = self.config.network.routers[r].clone();
            self.set_addresses(&name, vec![format!("moved-{name}")]);
        }
        chosen.len()
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn soak(&self) -> u64 {
        (self.config.timers.ra_interval * 3).as_micros() as u64
    }

    fn run_until_quiet(&mut self, start: u64) -> bool {
        let deadline = start.saturating_add(self.config.max_phase_time.as_micros() as u64);
        let up_links = self.up.iter().filter(|u| **u).count();
        loop {
            if self.error.is_some() {
                return false;
            }
            let next = self.next_time();
            let adjacent = self
                .adjacent
                .iter()
                .zip(&self.up)
                .filter(|(a, up)| **up && a[0] && a[1])
                .count();
            let quiet =
                self.triggered_in_flight == 0 && self.busy_count == 0 && adjacent == up_links;
            let quiet_until = self.last_activity.saturating_add(self.soak());
            if quiet && next.is_none_or(|t| t >= quiet_until) {
                self.now = self.now.max(quiet_until.min(next.unwrap_or(quiet_until)));
                return true;
            }
            let Some(t) = next else {
                return false;
            };
            if t > deadline {
                return false;
            }
            self.now = t;
            self.deliver_due();
            self.fire_timers();
        }
    }

    fn next_time(&mut self) -> Option<u64> {
        while let Some(&Reverse((t, r))) = self.timers.peek() {
            if self.scheduled[r] == Some(t) {
                break;
            }
            self.timers.pop();
        }
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let delivery = self.queue.front().map(|d| d.at);
        match (timer, delivery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn deliver_due(&mut self) {
        let now = self.instant();
        while self.queue.front().is_some_and(|d| d.at <= self.now) {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            if d.triggered {
                self.triggered_in_flight -= 1;
                self.last_activity = self.now;
            }
            if !self.up[d.link] || self.epoch[d.link] != d.epoch {
                continue;
            }
            match RouterMessage::decode(&d.bytes) {
                Ok(msg) => {
                    self.engines[d.to].handle_message(now, d.link as LinkId, msg);
                    self.after(d.to);
                }
                Err(e) => {
                    self.error = Some(format!("a message failed to decode: {e}"));
                    return;
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.instant();
        while let Some(&Reverse((t, r))) = self.timers.peek() {
            if t > self.now {
                break;
            }
            self.timers.pop();
            if self.scheduled[r] != Some(t) {
                continue;
            }
            self.scheduled[r] = None;
            self.engines[r].handle_timeout(now);
            self.after(r);
        }
    }

    /// Collects what router `r` wants done after an input.
    fn after(&mut self, r: usize) {
        while let Some(tx) = self.engines[r].poll_transmit() {
            let li = tx.link as usize;
            if !self.up.get(li).copied().unwrap_or(false) {
                continue;
            }
            let l = self.config.network.links[li];
            let to = if l.a == r { l.b } else { l.a };
            let kind = kind_of(&tx.message);
            let mut bytes = Vec::new();
            tx.message.encode(&mut bytes);
            self.counts[kind].0 += 1;
            self.counts[kind].1 += bytes.len() as u64;
            let triggered = kind > 1;
            if triggered {
                self.triggered_in_flight += 1;
                self.last_activity = self.now;
            }
            self.sent += 1;
            self.queue.push_back(Delivery {
                at: self.now + self.config.latency.as_micros().max(1) as u64,
                to,
                link: li,
                epoch: self.epoch[li],
                triggered,
                bytes,
            });
        }
        while let Some(ev) = self.engines[r].poll_event() {
            match ev {
                Event::RouteChanged { .. } | Event::AddressChanged { .. } => {
                    self.last_change = self.now;
                    self.last_activity = self.now;
                }
                Event::NeighbourUp { link, .. } | Event::NeighbourDown { link, .. } => {
                    let up = matches!(ev, Event::NeighbourUp { .. });
                    if let Some(l) = self.config.network.links.get(link as usize) {
                        let end = usize::from(l.a != r);
                        self.adjacent[link as usize][end] = up;
                    }
                    self.last_activity = self.now;
                }
            }
        }
        let busy = self.engines[r].has_pending_work();
        if busy {
            self.last_activity = self.now;
        }
        if busy != self.busy[r] {
            self.busy[r] = busy;
            if busy {
                self.busy_count += 1;
            } else {
                self.busy_count -= 1;
            }
        }
        if let Some(t) = self.engines[r].poll_timeout() {
            let at = t.saturating_duration_since(self.base).as_micros() as u64;
            let at = at.max(self.now);
            if self.scheduled[r] != Some(at) {
                self.scheduled[r] = Some(at);
                self.timers.push(Reverse((at, r)));
            }
        }
    }

    /// Checks every router against [`Oracle`].
    fn verify(&self) -> Verification {
        let net = &self.config.network;
        let names = &net.routers;
        let n = names.len();
        let oracle = Oracle::new(net, &self.up);
        let mut v = Verification::default();
        let note = |v: &mut Verification, msg: String| {
            if v.examples.len() < 10 {
                v.examples.push(msg);
            }
        };
        // Which router offers what, now.
        let mut offered: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for a in &self.all_addresses {
            offered.insert(a.as_str(), Vec::new());
        }
        for (r, list) in self.addresses.iter().enumerate() {
            for a in list {
                if let Some(v) = offered.get_mut(a.as_str()) {
                    v.push(r);
                }
            }
        }
        let link_peer = |s: usize, link: LinkId| -> Option<usize> {
            let l = net.links.get(usize::try_from(link).ok()?)?;
            if !self.up[link as usize] {
                return None;
            }
            if l.a == s {
                Some(l.b)
            } else if l.b == s {
                Some(l.a)
            } else {
                None
            }
        };
        for s in 0..n {
            let engine = &self.engines[s];
            let hops = oracle.next_hops(s, names);
            for d in 0..n {
                if d == s {
                    continue;
                }
                v.routes_checked += 1;
                let expected = oracle.cost(s, d).map(|c| (c, hops[d]));
                let got = engine.route(&names[d]);
                let ok = match (expected, got) {
                    (None, None) => {
                        v.unreachable_pairs += 1;
                        true
                    }
                    (Some((cost, hop)), Some(route)) => {
                        route.cost == cost
                            && route.next_router == names[hop]
                            && link_peer(s, route.link) == Some(hop)
                    }
                    _ => false,
                };
                if !ok {
                    v.route_errors += 1;
                    let want = match expected {
                        Some((c, h)) => format!("cost {c} via {}", names[h]),
                        None => "unreachable".into(),
                    };
                    let got = match got {
                        Some(r) => {
                            format!("cost {} via {} (link {})", r.cost, r.next_router, r.link)
                        }
                        None => "no route".into(),
                    };
                    note(
                        &mut v,
                        format!("{} -> {}: want {want}, got {got}", names[s], names[d]),
                    );
                }
            }
            for (address, routers) in &offered {
                v.address_checks += 1;
                let mut want: Vec<(u64, &str, Option<usize>)> = routers
                    .iter()
                    .filter_map(|&r| {
                        if r == s {
                            Some((0, names[r].as_str(), None))
                        } else {
                            oracle
                                .cost(s, r)
                                .map(|c| (c, names[r].as_str(), Some(hops[r])))
                        }
                    })
                    .collect();
                want.sort();
                let got = engine.destinations(address);
                let ok = want.len() == got.len()
                    && want.iter().zip(got).all(|(&(cost, router, hop), o)| {
                        o.cost == cost
                            && o.router == router
                            && match (hop, o.link) {
                                (None, None) => true,
                                (Some(h), Some(link)) => link_peer(s, link) == Some(h),
                                _ => false,
                            }
                    });
                if !ok {
                    v.address_errors += 1;
                    let want: Vec<String> =
                        want.iter().map(|(c, r, _)| format!("{r}@{c}")).collect();
                    let got: Vec<String> = got
                        .iter()
                        .map(|o| format!("{}@{}", o.router, o.cost))
                        .collect();
                    note(
                        &mut v,
                        format!(
                            "{} address {address}: want [{}], got [{}]",
                            names[s],
                            want.join(" "),
                            got.join(" ")
                        ),
                    );
                }
            }
        }
        v
    }
}

/// The independent answer: all-pairs least costs by a plain Dijkstra per
/// router over the network description (open links only), and the expected
/// next hop = the lowest-named neighbour `m` of `s` with
/// `cost(s, m) + dist(m, d) == dist(s, d)`.
struct Oracle {
    n: usize,
    /// Row-major N × N, `u64::MAX` = unreachable.
    dist: Vec<u64>,
    /// Per router: (neighbour, link cost), cheapest link per neighbour.
    adj: Vec<Vec<(usize, u64)>>,
}

impl Oracle {
    fn new(net: &Network, up: &[bool]) -> Oracle {
        let n = net.routers.len();
        let mut best: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for (l, _) in net.links.iter().zip(up).filter(|(_, u)| **u) {
            for (x, y) in [(l.a, l.b), (l.b, l.a)] {
                let c = u64::from(l.cost());
                let e = best.entry((x, y)).or_insert(c);
                *e = (*e).min(c);
            }
        }
        let mut adj = vec![Vec::new(); n];
        for ((x, y), c) in best {
            adj[x].push((y, c));
        }
        let mut dist = vec![u64::MAX; n * n];
        for s in 0..n {
            let row = &mut dist[s * n..(s + 1) * n];
            row[s] = 0;
            let mut heap = BinaryHeap::new();
            heap.push(Reverse((0u64, s)));
            while let Some(Reverse((c, u))) = heap.pop() {
                if c > row[u] {
                    continue;
                }
                for &(v, w) in &adj[u] {
                    if c + w < row[v] {
                        row[v] = c + w;
                        heap.push(Reverse((c + w, v)));
                    }
                }
            }
        }
        Oracle { n, dist, adj }
    }

    fn cost(&self, s: usize, d: usize) -> Option<u64> {
        let c = self.dist[s * self.n + d];
        (c != u64::MAX).then_some(c)
    }

    /// Expected next hop from `s` to every router (meaningless where
    /// unreachable or for `s` itself).
    fn next_hops(&self, s: usize, names: &[String]) -> Vec<usize> {
        (0..self.n)
            .map(|d| {
                let Some(total) = self.cost(s, d) else {
                    return usize::MAX;
                };
                self.adj[s]
                    .iter()
                    .filter(|&&(m, w)| self.cost(m, d).is_some_and(|c| c + w == total))
                    .map(|&(m, _)| m)
                    .min_by(|&a, &b| names[a].cmp(&names[b]))
                    .unwrap_or(usize::MAX)
            })
            .collect()
    }
}
