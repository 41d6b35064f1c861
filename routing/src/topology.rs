//! The network graph one router believes in, and least-cost paths over it.
//!
//! [`Topology`] is built from link-state updates: each router's advertised
//! neighbours and costs ([`Topology::set_links`]). A link is used only when
//! *both* ends advertise it (the two-way check), and its cost is the larger
//! of the two advertised costs. Path computation is Dijkstra from one
//! router; among equal-cost paths the first hop is the lowest router id that
//! starts some least-cost path, so every router computes the same,
//! reproducible routes.
//!
//! The graph lives in a `petgraph` `StableUnGraph`, which stays private:
//! callers see router ids and costs only, so the algorithm or the graph
//! library can change without touching them. Owned by
//! [`crate::linkstate::RoutingEngine`]; usable alone (e.g. by tools that
//! want to show paths).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use petgraph::stable_graph::{NodeIndex, StableUnGraph};

use crate::message::LsLink;
use petgraph::visit::{EdgeRef, NodeIndexable};

/// A `HashMap` whose iteration order depends only on what was inserted
/// (a fixed, unkeyed hash), so runs are reproducible. Keys are router ids
/// and addresses from authenticated peers, so flooding attacks on the hash
/// are not a concern here.
pub(crate) type DetHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash of rustc (`FxHasher`), with a final mix: fast
/// on short keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // Multiplication only moves entropy upwards, and the table picks
        // buckets by the low bits: mix (murmur3's finaliser).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A least-cost path from the source of [`Topology::shortest_paths`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Sum of the link costs along the path.
    pub cost: u64,
    /// The neighbour of the source the path starts with.
    pub first_hop: String,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Topology {
    graph: StableUnGraph<Node, u32>,
    index: DetHashMap<String, NodeIndex>,
    /// Source of [`Node::serial`].
    serials: u64,
}

#[derive(Debug)]
struct Node {
    id: String,
    /// What this router advertises: neighbour node and cost (one-way).
    advertised: Vec<(NodeIndex, u32)>,
    /// Whether this router's own links are known (as opposed to the node
    /// only being named by others).
    has_links: bool,
    /// How many routers advertise a link to this one.
    mentions: u32,
    /// Unique for the life of the topology (node indices are reused).
    serial: u64,
}

/// Result of a least-cost computation, indexed by internal node index.
#[derive(Debug, Default)]
pub(crate) struct Spf {
    /// `u64::MAX`: not reachable.
    pub cost: Vec<u64>,
    /// Node index of the first hop; `u32::MAX` for the source and for
    /// unreachable nodes.
    pub first_hop: Vec<u32>,
}

pub(crate) const NO_HOP: u32 = u32::MAX;

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the links `router` advertises (neighbour id, cost). Costs
    /// below 1 count as 1; a router naming itself or a neighbour twice is
    /// tolerated (self-links dropped, the cheapest duplicate kept).
    ///
    /// Returns whether the usable (two-way) graph changed.
    pub fn set_links<'a, I>(&mut self, router: &str, links: I) -> bool
    where
        I: IntoIterator<Item = (&'a str, u32)>,
    {
        let me = self.ensure(router);
        let mut new: Vec<(NodeIndex, u32)> = Vec::new();
        for (id, cost) in links {
            if id != router {
                new.push((self.ensure(id), cost.max(1)));
            }
        }
        // Sorted by node, cheapest first, then one entry per node.
        new.sort_unstable_by_key(|&(n, c)| (n.index(), c));
        new.dedup_by_key(|(n, _)| *n);
        let old = match self.graph.node_weight_mut(me) {
            Some(node) => {
                node.has_links = true;
                std::mem::replace(&mut node.advertised, new.clone())
            }
            None => return false,
        };
        let listed = |list: &[(NodeIndex, u32)], n: NodeIndex| {
            list.binary_search_by_key(&n.index(), |(x, _)| x.index())
                .is_ok()
        };
        let mut changed = false;
        for &(n, _) in &old {
            if !listed(&new, n) {
                self.node_mut(n).mentions -= 1;
                if let Some(e) = self.graph.find_edge(me, n) {
                    self.graph.remove_edge(e);
                    changed = true;
                }
            }
        }
        for &(n, cost) in &new {
            if !listed(&old, n) {
                self.node_mut(n).mentions += 1;
            }
            let back = self.advertised_cost(n, me);
            let existing = self.graph.find_edge(me, n);
            match (back, existing) {
                (Some(back), Some(e)) => {
                    let eff = cost.max(back);
                    if let Some(w) = self.graph.edge_weight_mut(e) {
                        if *w != eff {
                            *w = eff;
                            changed = true;
                        }
                    }
                }
                (Some(back), None) => {
                    self.graph.add_edge(me, n, cost.max(back));
                    changed = true;
                }
                (None, Some(e)) => {
                    self.graph.remove_edge(e);
                    changed = true;
                }
                (None, None) => {}
            }
        }
        for (n, _) in old {
            self.collect(n);
        }
        changed
    }

    /// Forgets `router`'s links (and the router itself unless others still
    /// name it). Returns whether the usable graph changed.
    pub fn remove_router(&mut self, router: &str) -> bool {
        let Some(&me) = self.index.get(router) else {
            return false;
        };
        let changed = self.set_links(router, std::iter::empty());
        self.node_mut(me).has_links = false;
        self.collect(me);
        changed
    }

    /// Whether `router` is known (has links or is named by someone).
    pub fn contains(&self, router: &str) -> bool {
        self.index.contains_key(router)
    }

    /// Number of routers known.
    pub fn router_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of usable (two-way) links.
    pub fn link_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// The cost of the usable link between `a` and `b`, if there is one.
    pub fn link_cost(&self, a: &str, b: &str) -> Option<u32> {
        let (a, b) = (*self.index.get(a)?, *self.index.get(b)?);
        let e = self.graph.find_edge(a, b)?;
        self.graph.edge_weight(e).copied()
    }

    /// The routers `router` has usable links to, with their costs, sorted by
    /// router id.
    pub fn neighbours(&self, router: &str) -> Vec<(String, u32)> {
        let Some(&me) = self.index.get(router) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u32)> = self
            .graph
            .edges(me)
            .map(|e| {
                (
                    self.graph[other(e.source(), e.target(), me)].id.clone(),
                    *e.weight(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Least-cost paths from `source` to every router reachable from it
    /// (not including `source`), keyed by router id.
    pub fn shortest_paths(&self, source: &str) -> BTreeMap<String, PathInfo> {
        let mut out = BTreeMap::new();
        let Some(&s) = self.index.get(source) else {
            return out;
        };
        let mut spf = Spf::default();
        self.spf_into(s, &mut spf);
        for (i, (&cost, &hop)) in spf.cost.iter().zip(&spf.first_hop).enumerate() {
            if cost == u64::MAX || hop == NO_HOP {
                continue;
            }
            let (Some(node), Some(hop)) = (
                self.graph.node_weight(NodeIndex::new(i)),
                self.graph.node_weight(NodeIndex::new(hop as usize)),
            ) else {
                continue;
            };
            out.insert(
                node.id.clone(),
                PathInfo {
                    cost,
                    first_hop: hop.id.clone(),
                },
            );
        }
        out
    }

    // ---- crate-internal, index-based API for the engine's hot path ----

    pub(crate) fn index_of(&self, router: &str) -> Option<NodeIndex> {
        self.index.get(router).copied()
    }

    pub(crate) fn name(&self, ix: NodeIndex) -> Option<&str> {
        self.graph.node_weight(ix).map(|n| n.id.as_str())
    }

    /// What the router at `ix` advertises, sorted by router id.
    pub(crate) fn advertised_links(&self, ix: NodeIndex) -> Vec<LsLink> {
        let Some(node) = self.graph.node_weight(ix) else {
            return Vec::new();
        };
        let mut out: Vec<LsLink> = node
            .advertised
            .iter()
            .filter_map(|&(n, cost)| {
                Some(LsLink {
                    router_id: self.graph.node_weight(n)?.id.clone(),
                    cost,
                })
            })
            .collect();
        out.sort_by(|a, b| a.router_id.cmp(&b.router_id));
        out
    }

    /// A number that identifies the router at `ix` for the life of the
    /// topology (0: no router there).
    pub(crate) fn serial(&self, ix: NodeIndex) -> u64 {
        self.graph.node_weight(ix).map_or(0, |n| n.serial)
    }

    /// Dijkstra from `source` into `out` (buffers reused between runs).
    pub(crate) fn spf_into(&self, source: NodeIndex, out: &mut Spf) {
        let bound = self.graph.node_bound();
        out.cost.clear();
        out.cost.resize(bound, u64::MAX);
        out.first_hop.clear();
        out.first_hop.resize(bound, NO_HOP);
        if source.index() >= bound {
            return;
        }
        let mut heap = BinaryHeap::new();
        out.cost[source.index()] = 0;
        heap.push(Reverse((0u64, source.index() as u32)));
        while let Some(Reverse((c, u))) = heap.pop() {
            let u = u as usize;
            if c > out.cost[u] {
                continue;
            }
            let un = NodeIndex::new(u);
            for e in self.graph.edges(un) {
                let v = other(e.source(), e.target(), un).index();
                let nd = c.saturating_add(u64::from(*e.weight()));
                let cand = if un == source {
                    v as u32
                } else {
                    out.first_hop[u]
                };
                if nd < out.cost[v] {
                    out.cost[v] = nd;
                    out.first_hop[v] = cand;
                    heap.push(Reverse((nd, v as u32)));
                } else if nd == out.cost[v] && cand != out.first_hop[v] {
                    // Equal cost: keep the first hop with the lower router
                    // id. Every predecessor on a least-cost path is settled
                    // before `v` (costs are >= 1), so this sees them all.
                    let better = match (
                        self.name(NodeIndex::new(cand as usize)),
                        self.name(NodeIndex::new(out.first_hop[v] as usize)),
                    ) {
                        (Some(a), Some(b)) => a < b,
                        _ => false,
                    };
                    if better {
                        out.first_hop[v] = cand;
                    }
                }
            }
        }
    }

    fn ensure(&mut self, router: &str) -> NodeIndex {
        if let Some(&ix) = self.index.get(router) {
            return ix;
        }
        self.serials += 1;
        let ix = self.graph.add_node(Node {
            id: router.to_string(),
            advertised: Vec::new(),
            has_links: false,
            mentions: 0,
            serial: self.serials,
        });
        self.index.insert(router.to_string(), ix);
        ix
    }

    fn node_mut(&mut self, ix: NodeIndex) -> &mut Node {
        // Indices handed around here always come from `ensure` and are
        // removed only by `collect`, after their last use.
        &mut self.graph[ix]
    }

    fn advertised_cost(&self, from: NodeIndex, to: NodeIndex) -> Option<u32> {
        let adv = &self.graph.node_weight(from)?.advertised;
        let i = adv
            .binary_search_by_key(&to.index(), |(n, _)| n.index())
            .ok()?;
        Some(adv[i].1)
    }

    /// Drops a node nobody needs any more: no links of its own, not named.
    fn collect(&mut self, ix: NodeIndex) {
        let unused = self
            .graph
            .node_weight(ix)
            .is_some_and(|n| !n.has_links && n.mentions == 0);
        if unused {
            if let Some(node) = self.graph.remove_node(ix) {
                self.index.remove(&node.id);
            }
        }
    }
}

fn other(a: NodeIndex, b: NodeIndex, me: NodeIndex) -> NodeIndex {
    if a == me {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds (or re-costs) the link a-b, advertised by both ends.
    fn both(t: &mut Topology, a: &str, b: &str, ca: u32, cb: u32) {
        for (me, other, cost) in [(a, b, ca), (b, a, cb)] {
            let mut links: Vec<(String, u32)> = t
                .index
                .get(me)
                .map(|&ix| {
                    t.graph[ix]
                        .advertised
                        .iter()
                        .map(|(n, c)| (t.graph[*n].id.clone(), *c))
                        .filter(|(n, _)| n != other)
                        .collect()
                })
                .unwrap_or_default();
            links.push((other.to_string(), cost));
            t.set_links(me, links.iter().map(|(s, c)| (s.as_str(), *c)));
        }
    }

    #[test]
    fn one_way_links_are_not_used_and_cost_is_the_larger_end() {
        let mut t = Topology::new();
        assert!(!t.set_links("a", [("b", 3)]));
        assert_eq!(t.link_count(), 0);
        assert!(t.shortest_paths("a").is_empty());
        assert!(t.set_links("b", [("a", 7)]));
        assert_eq!(t.link_cost("a", "b"), Some(7));
        assert_eq!(t.shortest_paths("a")["b"].cost, 7);
        // Withdrawing one half removes the link.
        assert!(t.set_links("b", []));
        assert_eq!(t.link_count(), 0);
    }

    #[test]
    fn equal_cost_first_hop_is_lowest_router_id() {
        // s - zed - d and s - alpha - d, all cost 1: via alpha.
        let mut t = Topology::new();
        both(&mut t, "s", "zed", 1, 1);
        both(&mut t, "s", "alpha", 1, 1);
        both(&mut t, "zed", "d", 1, 1);
        both(&mut t, "alpha", "d", 1, 1);
        let p = t.shortest_paths("s");
        assert_eq!(
            p["d"],
            PathInfo {
                cost: 2,
                first_hop: "alpha".into()
            }
        );
        // Making the alpha side dearer moves it.
        both(&mut t, "alpha", "d", 5, 1);
        assert_eq!(t.shortest_paths("s")["d"].first_hop, "zed");
    }

    #[test]
    fn tie_break_holds_deep_in_the_graph() {
        // Two equal paths of length 3 whose first hops are b (via b-c) and
        // a (via a-x); the one through a must win even though b's branch
        // is discovered first.
        let mut t = Topology::new();
        both(&mut t, "s", "b", 1, 1);
        both(&mut t, "b", "c", 1, 1);
        both(&mut t, "c", "d", 1, 1);
        both(&mut t, "s", "a", 2, 2);
        both(&mut t, "a", "d", 1, 1);
        assert_eq!(t.shortest_paths("s")["d"].first_hop, "a");
        assert_eq!(t.shortest_paths("s")["d"].cost, 3);
    }

    #[test]
    fn removed_routers_disappear_when_nobody_names_them() {
        let mut t = Topology::new();
        both(&mut t, "a", "b", 1, 1);
        assert_eq!(t.router_count(), 2);
        t.set_links("a", []);
        assert!(t.contains("b"));
        t.remove_router("b");
        assert!(!t.contains("b"));
        assert!(t.contains("a"));
        assert_eq!(t.neighbours("a"), vec![]);
    }
}
