//! The address table: which addresses are offered locally and by which
//! neighbouring routers, and the reachability changes that follow events.
//!
//! Owned by the router core; fed link up/down and received
//! [`RouterMessage`]s; answers "where can a new flow for this address go?".
//! Destinations are kept ordered by (cost, router id, link) so choices are
//! reproducible.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::RouterMessage;

/// Identifies one inter-router link (assigned by the router; unique for the
/// life of the process).
pub type NeighbourId = u64;

/// One place a flow for an address can be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub router_id: String,
    pub via: NeighbourId,
    pub cost: u32,
}

/// An address became reachable (from this router) or stopped being so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachabilityChange {
    Reachable(String),
    Unreachable(String),
}

#[derive(Debug)]
struct Neighbour {
    router_id: String,
    cost: u32,
    seq: Option<u64>,
    addresses: BTreeSet<String>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AddressTable {
    local: BTreeSet<String>,
    local_seq: u64,
    neighbours: BTreeMap<NeighbourId, Neighbour>,
    remote: BTreeMap<String, Vec<Destination>>,
}

impl AddressTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set of locally offered addresses. Returns the changes in
    /// reachability; call [`AddressTable::local_update`] afterwards to get the
    /// message for the neighbours.
    pub fn set_local_addresses<I: IntoIterator<Item = String>>(
        &mut self,
        addresses: I,
    ) -> Vec<ReachabilityChange> {
        let new: BTreeSet<String> = addresses.into_iter().collect();
        if new == self.local {
            return Vec::new();
        }
        let touched: BTreeSet<String> = self.local.symmetric_difference(&new).cloned().collect();
        let before = self.snapshot(&touched);
        self.local = new;
        self.local_seq += 1;
        self.diff(before)
    }

    /// The update announcing this router's local addresses.
    pub fn local_update(&self, router_id: &str) -> RouterMessage {
        RouterMessage::AddressUpdate {
            router_id: router_id.to_string(),
            seq: self.local_seq,
            addresses: self.local.iter().cloned().collect(),
        }
    }

    /// A link to `router_id` came up. Addresses it offers arrive later in
    /// a message.
    pub fn neighbour_up(&mut self, id: NeighbourId, router_id: &str, cost: u32) {
        self.neighbours.insert(
            id,
            Neighbour {
                router_id: router_id.to_string(),
                cost,
                seq: None,
                addresses: BTreeSet::new(),
            },
        );
    }

    /// A link went down: everything learnt over it is forgotten.
    pub fn neighbour_down(&mut self, id: NeighbourId) -> Vec<ReachabilityChange> {
        let Some(n) = self.neighbours.get(&id) else {
            return Vec::new();
        };
        let touched = n.addresses.clone();
        let before = self.snapshot(&touched);
        self.neighbours.remove(&id);
        for a in &touched {
            self.rebuild(a);
        }
        self.diff(before)
    }

    /// A routing message arrived on link `from`.
    pub fn handle_message(
        &mut self,
        from: NeighbourId,
        msg: RouterMessage,
    ) -> Vec<ReachabilityChange> {
        match msg {
            RouterMessage::AddressUpdate { seq, addresses, .. } => {
                let Some(n) = self.neighbours.get_mut(&from) else {
                    return Vec::new();
                };
                if n.seq.is_some_and(|s| s >= seq) {
                    return Vec::new();
                }
                n.seq = Some(seq);
                let new: BTreeSet<String> = addresses.into_iter().collect();
                let touched: BTreeSet<String> =
                    n.addresses.symmetric_difference(&new).cloned().collect();
                n.addresses = new;
                let before = self.snapshot(&touched);
                for a in &touched {
                    self.rebuild(a);
                }
                self.diff(before)
            }
            // Link-state messages belong to `crate::linkstate`.
            _ => Vec::new(),
        }
    }

    /// Whether a flow for `address` has anywhere to go.
    pub fn is_reachable(&self, address: &str) -> bool {
        self.local.contains(address) || self.remote.contains_key(address)
    }

    /// Whether this router offers `address` itself.
    pub fn has_local(&self, address: &str) -> bool {
        self.local.contains(address)
    }

    /// Remote routers offering `address`, cheapest first, ties by router id.
    pub fn remote_destinations(&self, address: &str) -> &[Destination] {
        self.remote.get(address).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every address reachable from here, local or remote.
    pub fn reachable_addresses(&self) -> BTreeSet<String> {
        self.local
            .iter()
            .chain(self.remote.keys())
            .cloned()
            .collect()
    }

    fn rebuild(&mut self, address: &str) {
        let mut dests: Vec<Destination> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.addresses.contains(address))
            .map(|(id, n)| Destination {
                router_id: n.router_id.clone(),
                via: *id,
                cost: n.cost,
            })
            .collect();
        dests.sort_by(|a, b| (a.cost, &a.router_id, a.via).cmp(&(b.cost, &b.router_id, b.via)));
        if dests.is_empty() {
            self.remote.remove(address);
        } else {
            self.remote.insert(address.to_string(), dests);
        }
    }

    fn snapshot(&self, touched: &BTreeSet<String>) -> Vec<(String, bool)> {
        touched
            .iter()
            .map(|a| (a.clone(), self.is_reachable(a)))
            .collect()
    }

    fn diff(&self, before: Vec<(String, bool)>) -> Vec<ReachabilityChange> {
        before
            .into_iter()
            .filter_map(|(a, was)| match (was, self.is_reachable(&a)) {
                (false, true) => Some(ReachabilityChange::Reachable(a)),
                (true, false) => Some(ReachabilityChange::Unreachable(a)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(router: &str, seq: u64, addrs: &[&str]) -> RouterMessage {
        RouterMessage::AddressUpdate {
            router_id: router.into(),
            seq,
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn remote_address_becomes_reachable_then_unreachable_on_link_down() {
        let mut t = AddressTable::new();
        t.neighbour_up(1, "west", 1);
        assert!(!t.is_reachable("backend"));
        let ch = t.handle_message(1, update("west", 1, &["backend"]));
        assert_eq!(ch, vec![ReachabilityChange::Reachable("backend".into())]);
        assert_eq!(t.remote_destinations("backend")[0].router_id, "west");
        let ch = t.neighbour_down(1);
        assert_eq!(ch, vec![ReachabilityChange::Unreachable("backend".into())]);
        assert!(t.remote_destinations("backend").is_empty());
    }

    #[test]
    fn stale_updates_are_ignored_and_withdrawals_apply() {
        let mut t = AddressTable::new();
        t.neighbour_up(1, "west", 1);
        t.handle_message(1, update("west", 5, &["a", "b"]));
        assert!(t.handle_message(1, update("west", 4, &[])).is_empty());
        assert!(t.is_reachable("a"));
        let ch = t.handle_message(1, update("west", 6, &["b"]));
        assert_eq!(ch, vec![ReachabilityChange::Unreachable("a".into())]);
    }

    #[test]
    fn destinations_ordered_by_cost_then_router_id() {
        let mut t = AddressTable::new();
        t.neighbour_up(1, "zeta", 1);
        t.neighbour_up(2, "alpha", 5);
        t.neighbour_up(3, "beta", 1);
        for (id, r) in [(1, "zeta"), (2, "alpha"), (3, "beta")] {
            t.handle_message(id, update(r, 1, &["svc"]));
        }
        let order: Vec<&str> = t
            .remote_destinations("svc")
            .iter()
            .map(|d| d.router_id.as_str())
            .collect();
        assert_eq!(order, vec!["beta", "zeta", "alpha"]);
        // Losing one of several offers changes nothing about reachability.
        assert!(t.neighbour_down(3).is_empty());
    }

    #[test]
    fn local_addresses_count_as_reachable() {
        let mut t = AddressTable::new();
        let ch = t.set_local_addresses(vec!["svc".to_string()]);
        assert_eq!(ch, vec![ReachabilityChange::Reachable("svc".into())]);
        assert!(t.has_local("svc"));
        match t.local_update("east") {
            RouterMessage::AddressUpdate { seq, addresses, .. } => {
                assert_eq!(seq, 1);
                assert_eq!(addresses, vec!["svc".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
