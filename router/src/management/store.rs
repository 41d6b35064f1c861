//! The router's entities for the management protocol: reads its live
//! state into records and applies CREATE/UPDATE/DELETE through
//! [`crate::reconfig`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;

use serde_amqp::primitives::OrderedMap;
use serde_amqp::Value;

use super::encoding::{self, Record};
use super::protocol::{attr_string, Attributes, EntityStore, MgmtError};
use super::schema::{self, EntityType, Kind};
use crate::config::{
    distribution_for, AddressConfig, ClientListenerConfig, ConnectorConfig, Distribution,
    ListenerConfig, Role, TcpConnectorConfig, TcpListenerConfig, TlsProfile, DEFAULT_AMQP_PORT,
};
use crate::core::Router;

/// [`EntityStore`] over a running router.
pub struct RouterStore<'a> {
    router: &'a Rc<Router>,
}

impl<'a> RouterStore<'a> {
    pub fn new(router: &'a Rc<Router>) -> RouterStore<'a> {
        RouterStore { router }
    }
}

thread_local! {
    /// The attributes the QUERY being answered reads, by type: the others
    /// are not encoded (see [`RouterStore::list_attributes`]).
    static WANTED: std::cell::RefCell<Option<(Kind, Rc<[bool]>)>> =
        const { std::cell::RefCell::new(None) };
    /// Each type's full name, encoded, made once (every record carries it).
    static TYPE_NAMES: std::cell::RefCell<Vec<(Kind, Rc<[u8]>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn encoded_type_name(ty: &EntityType) -> Rc<[u8]> {
    TYPE_NAMES.with_borrow_mut(|names| {
        if let Some((_, n)) = names.iter().find(|(k, _)| *k == ty.kind) {
            return n.clone();
        }
        let mut n = Vec::new();
        encoding::string(&mut n, &ty.full_name());
        let n: Rc<[u8]> = n.into();
        names.push((ty.kind, n.clone()));
        n
    })
}

/// Builds a record in a type's attribute order from (name, value) pairs,
/// encoding each value as it is set; attributes not given are null.
struct RecordBuilder {
    ty: &'static EntityType,
    record: Record,
    /// Attributes to fill (all when `None`).
    wanted: Option<Rc<[bool]>>,
    /// Where the next attribute is looked for first: records are built
    /// in schema order, so the lookup is usually one comparison.
    cursor: usize,
}

impl RecordBuilder {
    fn new(ty: &'static EntityType, identity: &str, name: &str) -> RecordBuilder {
        let n = ty.attributes.len();
        let mut record = Record::new(n, 16 * n);
        let wanted = WANTED.with_borrow(|w| match w {
            Some((kind, mask)) if *kind == ty.kind => Some(mask.clone()),
            _ => None,
        });
        let want = |i: usize| wanted.as_ref().is_none_or(|w| w[i]);
        if want(0) {
            record.set_with(0, |o| encoding::string(o, identity));
        }
        if want(1) {
            record.set_with(1, |o| encoding::string(o, name));
        }
        if want(2) {
            record.set_with(2, |o| o.extend_from_slice(&encoded_type_name(ty)));
        }
        RecordBuilder {
            ty,
            record,
            wanted,
            cursor: 3,
        }
    }

    fn set(&mut self, attr: &str, v: impl AttrValue) -> &mut Self {
        // Look from the cursor on, then from the start: an attribute
        // skipped in schema order costs a few comparisons, not a scan.
        let attrs = self.ty.attributes;
        let from = self.cursor.min(attrs.len());
        let at = attrs[from..]
            .iter()
            .position(|a| same_name(a, attr))
            .map(|i| from + i)
            .or_else(|| attrs[..from].iter().position(|a| same_name(a, attr)));
        if let Some(i) = at {
            self.cursor = i + 1;
            if self.wanted.as_ref().is_some_and(|w| !w[i]) {
                return self;
            }
            self.record.set_with(i, |o| v.encode(o));
        } else {
            debug_assert!(false, "{} has no attribute {attr}", self.ty.short);
        }
        self
    }

    fn done(&mut self) -> Record {
        std::mem::take(&mut self.record)
    }
}

/// Attribute names are string literals, usually merged into one by the
/// compiler: the pointer comparison settles most lookups without a
/// `memcmp`.
fn same_name(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// A value an attribute can be set to, encoded as management shows it
/// (counters as `long`, texts as `string`).
trait AttrValue {
    fn encode(self, out: &mut Vec<u8>);
}

impl AttrValue for &str {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::string(out, self);
    }
}
impl AttrValue for String {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::string(out, &self);
    }
}
impl AttrValue for &String {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::string(out, self);
    }
}
impl AttrValue for u64 {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::long(out, i64::try_from(self).unwrap_or(i64::MAX));
    }
}
impl AttrValue for usize {
    fn encode(self, out: &mut Vec<u8>) {
        (self as u64).encode(out);
    }
}
impl AttrValue for u32 {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::long(out, i64::from(self));
    }
}
impl AttrValue for bool {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::boolean(out, self);
    }
}
impl<T: AttrValue> AttrValue for Option<T> {
    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.encode(out),
            None => encoding::null(out),
        }
    }
}
impl AttrValue for Vec<String> {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::string_list(out, self.iter().map(String::as_str));
    }
}
impl AttrValue for &[&str] {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::string_list(out, self.iter().copied());
    }
}
impl AttrValue for Value {
    fn encode(self, out: &mut Vec<u8>) {
        encoding::value(out, &self);
    }
}

/// Every address known here, sorted, each with the number of
/// tcp_connectors this router has for it.
pub type AddressIndex = Rc<Vec<(String, usize)>>;

/// A route as router.node shows it: next hop, link, cost.
type NodeRoute = (String, u64, u64);

/// One address as management shows it: message consumers and TCP
/// services under the same mobile (`M`) key.
#[derive(Default)]
struct AddressView<'a> {
    local: usize,
    in_process: usize,
    /// Sorted, without repeats.
    remote_routers: Vec<&'a str>,
}

fn distribution_name(d: Distribution) -> &'static str {
    match d {
        Distribution::Balanced => "balanced",
        Distribution::Closest => "closest",
        Distribution::Multicast => "multicast",
    }
}

impl RouterStore<'_> {
    /// Every address known here, by plain address (no class letter),
    /// sorted: cached until the set of addresses changes (see
    /// [`Router::address_generation`]), so paging through 10,000
    /// addresses does not rebuild the list for every page, and the pages
    /// of one QUERY see one list.
    fn address_index(&self) -> AddressIndex {
        let r = self.router;
        let generation = r.address_generation.get();
        if let Some((g, index)) = &*r.address_index.borrow() {
            if *g == generation {
                return index.clone();
            }
        }
        // Each address with the number of tcp_connectors here for it.
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        {
            let engine = r.engine.borrow();
            for (key, _) in engine.addresses() {
                if crate::reconfig::is_expose_marker(key) {
                    continue;
                }
                if let Some(plain) = key.get(1..) {
                    all.entry(plain.to_string()).or_default();
                }
            }
        }
        for (a, _, _) in r.messages.local_consumers() {
            all.entry(a).or_default();
        }
        for c in r.tcp_connectors.borrow().iter() {
            *all.entry(c.address.clone()).or_default() += 1;
        }
        for g in r.gates.borrow().iter() {
            all.entry(g.cfg.address.clone()).or_default();
        }
        for a in r.flow_stats.borrow().keys() {
            all.entry(a.clone()).or_default();
        }
        let index = Rc::new(all.into_iter().collect::<Vec<_>>());
        tracing::debug!(addresses = index.len(), generation, "address index rebuilt");
        *r.address_index.borrow_mut() = Some((generation, index.clone()));
        index
    }

    /// Address records for `addresses` (one page).
    fn address_records(&self, addresses: &[(String, usize)]) -> Vec<Record> {
        let r = self.router;
        let engine = r.engine.borrow();
        addresses
            .iter()
            .map(|(a, connectors)| {
                let mut v = AddressView::default();
                for key in [
                    crate::messages::MessageCore::engine_address(a),
                    crate::core::tcp_address(a),
                ] {
                    for o in engine.destinations(&key) {
                        if o.link.is_some() {
                            v.remote_routers.push(&o.router);
                        }
                    }
                }
                v.remote_routers.sort_unstable();
                v.remote_routers.dedup();
                let (local, in_process) = r.messages.consumers_of(a);
                v.local = local + connectors;
                v.in_process = in_process;
                self.address_record(a, &v)
            })
            .collect()
    }

    fn address_record(&self, address: &str, v: &AddressView) -> Record {
        let r = self.router;
        let ty = schema::of(Kind::Address);
        let class = if crate::messages::is_local_only(address) {
            'L'
        } else {
            'M'
        };
        let mut key = String::with_capacity(1 + address.len());
        key.push(class);
        key.push_str(address);
        let counters = r
            .messages
            .counters
            .borrow()
            .get(address)
            .copied()
            .unwrap_or_default();
        let flows = r.flow_stats.borrow().get(address).cloned();
        let flow = |f: fn(&crate::reconfig::FlowStats) -> u64| flows.as_deref().map_or(0, f);
        let distribution = distribution_for(&r.addresses.borrow(), address);
        RecordBuilder::new(ty, &key, &key)
            .set("key", &key)
            .set("distribution", distribution_name(distribution))
            .set("inProcess", v.in_process)
            .set("subscriberCount", v.local)
            .set("remoteCount", v.remote_routers.len())
            .set("containerCount", 0u64)
            .set("remoteHostRouters", v.remote_routers.as_slice())
            .set("deliveriesIngress", counters.ingress)
            .set("deliveriesEgress", counters.egress)
            .set("deliveriesTransit", counters.transit)
            .set("deliveriesToContainer", 0u64)
            .set("deliveriesFromContainer", 0u64)
            .set("deliveriesEgressRouteContainer", 0u64)
            .set("deliveriesIngressRouteContainer", 0u64)
            .set("deliveriesRedirectedToFallback", 0u64)
            .set("transitOutstanding", Value::Null)
            .set("trackedDeliveries", 0u64)
            .set("priority", Value::Int(-1))
            .set("watch", false)
            .set("flowsOpened", flow(|f| f.opened.get()))
            .set("flowsActive", flow(|f| f.active.get()))
            .set("flowsFailed", flow(|f| f.failed.get()))
            .set("bytesIn", flow(|f| f.bytes_in.get()))
            .set("bytesOut", flow(|f| f.bytes_out.get()))
            .done()
    }

    fn router_records(&self, kind: Kind) -> Vec<Record> {
        let r = self.router;
        let ty = schema::of(kind);
        let stats = r.messages.stats.borrow().clone();
        let (opened, active, failed, bytes_in, bytes_out) = {
            let fs = r.flow_stats.borrow();
            fs.values().fold((0, 0, 0, 0, 0), |acc, f| {
                (
                    acc.0 + f.opened.get(),
                    acc.1 + f.active.get(),
                    acc.2 + f.failed.get(),
                    acc.3 + f.bytes_in.get(),
                    acc.4 + f.bytes_out.get(),
                )
            })
        };
        let totals = r
            .messages
            .counters
            .borrow()
            .values()
            .fold((0, 0, 0), |a, c| {
                (a.0 + c.ingress, a.1 + c.egress, a.2 + c.transit)
            });
        let routers = r.engine.borrow().routes().count();
        let rss = crate::metrics::process_rss_bytes();
        let settings = r.settings();
        let id = format!("{}{}", schema::PREFIX_TETHER, ty.short);
        let mut b = RecordBuilder::new(ty, &id, &id);
        b.set("id", &r.id)
            .set("version", env!("CARGO_PKG_VERSION"))
            .set("uptimeSeconds", r.started.elapsed().as_secs())
            .set("memoryUsage", rss)
            .set("residentMemoryUsage", rss)
            .set("addrCount", self.address_index().len())
            .set("linkCount", self.link_count())
            .set("nodeCount", routers)
            .set("connectionCount", self.connection_count())
            .set("autoLinkCount", 0u64)
            .set("linkRouteCount", 0u64)
            .set("presettledDeliveries", stats.presettled)
            .set("droppedPresettledDeliveries", stats.dropped)
            .set("acceptedDeliveries", stats.accepted)
            .set("rejectedDeliveries", stats.rejected)
            .set("releasedDeliveries", stats.released)
            .set("modifiedDeliveries", stats.modified)
            .set("deliveriesDelayed1Sec", 0u64)
            .set("deliveriesDelayed10Sec", 0u64)
            .set("deliveriesStuck", 0u64)
            .set("deliveriesIngress", totals.0)
            .set("deliveriesEgress", totals.1)
            .set("deliveriesTransit", totals.2)
            .set("deliveriesIngressRouteContainer", 0u64)
            .set("deliveriesEgressRouteContainer", 0u64)
            .set("deliveriesRedirectedToFallback", 0u64)
            .set("linksBlocked", 0u64)
            .set("flowsOpened", opened)
            .set("flowsActive", active)
            .set("flowsFailed", failed);
        match kind {
            Kind::Router => {
                b.set("mode", "interior")
                    .set("area", "0")
                    .set("hostName", hostname())
                    .set("metadata", Value::Null)
                    .set("vanId", Value::Null)
                    .set("defaultDistribution", "balanced")
                    .set("timestampsInUTC", true)
                    .set("timestampFormat", Value::Null)
                    .set("debugDumpFile", Value::Null)
                    .set("saslConfigDir", Value::Null)
                    .set("saslConfigName", Value::Null)
                    .set("dataConnectionCount", "0")
                    .set(
                        "helloIntervalSeconds",
                        settings.hello_interval.as_secs().max(1),
                    )
                    .set(
                        "helloMaxAgeSeconds",
                        settings.dead_interval.as_secs().max(1),
                    )
                    .set(
                        "deadIntervalSeconds",
                        settings.dead_interval.as_secs().max(1),
                    )
                    .set("raIntervalSeconds", 30u64)
                    .set("raIntervalFluxSeconds", 4u64)
                    .set("remoteLsMaxAgeSeconds", 60u64)
                    .set("workerThreads", 1u64);
            }
            _ => {
                let mut counters = OrderedMap::new();
                counters.insert(
                    Value::String("amqp".into()),
                    Value::Long(self.connection_count() as i64),
                );
                counters.insert(Value::String("tcp".into()), Value::Long(active as i64));
                b.set("connectionCounters", Value::Map(counters))
                    .set("routersReachable", routers)
                    .set("flowBytesIn", bytes_in)
                    .set("flowBytesOut", bytes_out)
                    .set("messagesDropped", stats.dropped)
                    .set("messagesRefused", stats.refused);
            }
        }
        vec![b.done()]
    }

    /// How many records [`Self::connections`] has, without building them.
    fn connection_count(&self) -> usize {
        self.router.links.borrow().len() + self.router.clients.borrow().len()
    }

    /// How many records [`Self::links`] has, without building them.
    fn link_count(&self) -> usize {
        let r = self.router;
        let client_links: usize = r
            .clients
            .borrow()
            .values()
            .map(|c| c.links.borrow().len())
            .sum();
        client_links + 2 * r.links.borrow().len()
    }

    /// Connections: inter-router links and AMQP clients, by id.
    fn connections(&self) -> Vec<Record> {
        let r = self.router;
        let ty = schema::of(Kind::Connection);
        let mut rows: Vec<(u64, Record)> = Vec::new();
        let connector_of: BTreeMap<u64, String> = r
            .connector_links
            .borrow()
            .iter()
            .map(|(n, id)| (*id, n.clone()))
            .collect();
        for link in r.links.borrow().values() {
            let id = link.id.to_string();
            let rec =
                RecordBuilder::new(ty, &id, &format!("connection/{}", link.peer_addr.borrow()))
                    .set("container", &link.peer_id)
                    .set("host", link.peer_addr.borrow().clone())
                    .set("role", "inter-router")
                    .set("protocol", "amqp")
                    .set("dir", link.dir.get())
                    .set("opened", true)
                    .set("active", true)
                    .set("adminStatus", "enabled")
                    .set("operStatus", "up")
                    .set("isEncrypted", true)
                    .set("sslProto", "TLS")
                    .set("sslCipher", Value::Null)
                    .set("sslSsf", 0u64)
                    .set("isAuthenticated", true)
                    .set("sasl", "EXTERNAL")
                    .set("user", &link.peer_id)
                    .set("tenant", Value::Null)
                    .set("uptimeSeconds", link.opened_at.elapsed().as_secs())
                    .set("lastDlvSeconds", Value::Null)
                    .set("enableProtocolTrace", false)
                    .set("properties", Value::Map(OrderedMap::new()))
                    .set("meshId", Value::Null)
                    .set("peerRouter", &link.peer_id)
                    .set("cost", r.link_cost(link))
                    .set("connector", connector_of.get(&link.id).cloned())
                    .set("bytesIn", link.stats.bytes_in.get())
                    .set("bytesOut", link.stats.bytes_out.get())
                    .done();
            rows.push((link.id, rec));
        }
        for c in r.clients.borrow().values() {
            let id = c.id.to_string();
            let sasl = c.sasl.borrow().clone();
            let rec = RecordBuilder::new(ty, &id, &format!("connection/{}", c.host))
                .set("container", c.container.borrow().clone())
                .set("host", &c.host)
                .set("role", "normal")
                .set("protocol", "amqp")
                .set("dir", "in")
                .set("opened", true)
                .set("active", true)
                .set("adminStatus", "enabled")
                .set("operStatus", "up")
                .set("isEncrypted", c.encrypted)
                .set("sslProto", c.encrypted.then_some("TLS"))
                .set("sslCipher", Value::Null)
                .set("sslSsf", 0u64)
                .set("isAuthenticated", sasl.is_some())
                .set("sasl", sasl)
                .set("user", c.user.borrow().clone())
                .set("tenant", Value::Null)
                .set("uptimeSeconds", c.opened_at.elapsed().as_secs())
                .set(
                    "lastDlvSeconds",
                    c.last_delivery.get().map(|t| t.elapsed().as_secs()),
                )
                .set("enableProtocolTrace", false)
                .set("properties", Value::Map(OrderedMap::new()))
                .set("meshId", Value::Null)
                .set("peerRouter", Value::Null)
                .set("peerCertificate", Value::Null)
                .set("cost", Value::Null)
                .set("connector", Value::Null)
                .set("bytesIn", 0u64)
                .set("bytesOut", 0u64)
                .done();
            rows.push((c.id, rec));
        }
        rows.sort_by_key(|(id, _)| *id);
        rows.into_iter().map(|(_, r)| r).collect()
    }

    /// Links: AMQP clients' links (`endpoint`), and the control link of
    /// each inter-router connection each way (`router-control`; Tether
    /// multiplexes flows and messages on that connection, so its
    /// `deliveryCount` counts every frame).
    fn links(&self) -> Vec<Record> {
        let r = self.router;
        let mut out = Vec::new();
        for c in r.clients.borrow().values() {
            for (id, l) in c.links.borrow().iter() {
                let identity = format!("{}.{id}", c.id);
                let owning = l.address.as_ref().map(|a| {
                    let class = if crate::messages::is_local_only(a) {
                        'L'
                    } else {
                        'M'
                    };
                    format!("{class}{a}")
                });
                out.push(link_record(
                    &identity,
                    "endpoint",
                    l.dir,
                    &l.name,
                    owning,
                    l.deliveries.get(),
                    c.id,
                ));
            }
        }
        for link in r.links.borrow().values() {
            for (dir, count) in [
                ("in", link.stats.frames_in.get()),
                ("out", link.stats.frames_out.get()),
            ] {
                let identity = format!("{}.{dir}", link.id);
                out.push(link_record(
                    &identity,
                    "router-control",
                    dir,
                    "$tether-routing",
                    None,
                    count,
                    link.id,
                ));
            }
        }
        out
    }

    fn nodes(&self) -> Vec<Record> {
        let r = self.router;
        let ty = schema::of(Kind::Node);
        let engine = r.engine.borrow();
        let topo = engine.topology();
        let mut routers: Vec<(String, Option<NodeRoute>)> = engine
            .routes()
            .map(|(id, route)| {
                (
                    id.to_string(),
                    Some((route.next_router.clone(), route.link, route.cost)),
                )
            })
            .collect();
        // This router too, as Dispatch lists it: next hop "(self)".
        routers.push((r.id.clone(), None));
        routers.sort();
        routers
            .into_iter()
            .enumerate()
            .map(|(index, (id, route))| {
                let neighbours: Vec<String> =
                    topo.neighbours(&id).into_iter().map(|(n, _)| n).collect();
                let (next_hop, link, cost) = match route {
                    Some((next, link, cost)) if next == id => (None, Some(link), Some(cost)),
                    Some((next, _, cost)) => (Some(next), None, Some(cost)),
                    None => (Some("(self)".to_string()), None, None),
                };
                let identity = format!("router.node/{id}");
                RecordBuilder::new(ty, &identity, &identity)
                    .set("id", &id)
                    .set("protocolVersion", 1u64)
                    .set("instance", 0u64)
                    .set("linkState", neighbours)
                    .set("nextHop", next_hop)
                    .set("validOrigins", Vec::<String>::new())
                    .set("address", format!("amqp:/_topo/0/{id}"))
                    .set("routerLink", link)
                    .set("cost", cost)
                    .set("index", index)
                    .set("lastTopoChange", Value::Null)
                    .done()
            })
            .collect()
    }

    fn network(&self) -> Vec<Record> {
        let r = self.router;
        let ty = schema::of(Kind::Network);
        let engine = r.engine.borrow();
        let topo = engine.topology();
        let mut offered: BTreeMap<String, usize> = BTreeMap::new();
        for (_, offers) in engine.addresses() {
            for o in offers {
                *offered.entry(o.router.clone()).or_default() += 1;
            }
        }
        let mut rows = vec![(r.id.clone(), Some((None, 0u64)))];
        for (id, route) in engine.routes() {
            let next = (route.next_router != id).then(|| route.next_router.clone());
            rows.push((id.to_string(), Some((next, route.cost))));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(id, route)| {
                let peers: Vec<String> = topo.neighbours(&id).into_iter().map(|(n, _)| n).collect();
                let (next, cost) = route.unwrap_or((None, 0));
                RecordBuilder::new(ty, &id, &id)
                    .set("routerId", &id)
                    .set("peers", peers)
                    .set("cost", cost)
                    .set("reachable", true)
                    .set("nextHop", next)
                    .set("addresses", offered.get(&id).copied().unwrap_or(0))
                    .done()
            })
            .collect()
    }

    fn config_addresses(&self) -> Vec<Record> {
        let ty = schema::of(Kind::ConfigAddress);
        let mut v: Vec<AddressConfig> = self.router.addresses.borrow().clone();
        v.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        v.iter()
            .map(|a| {
                RecordBuilder::new(ty, &a.prefix, &a.prefix)
                    .set("prefix", &a.prefix)
                    .set("pattern", Value::Null)
                    .set("distribution", distribution_name(a.distribution))
                    .set("waypoint", false)
                    .set("ingressPhase", Value::Null)
                    .set("egressPhase", Value::Null)
                    .set("priority", Value::Int(-1))
                    .set("enableFallback", false)
                    .done()
            })
            .collect()
    }

    fn listeners(&self) -> Vec<Record> {
        let ty = schema::of(Kind::Listener);
        let live = &self.router.live;
        let mut rows: Vec<(String, Record)> = Vec::new();
        for (name, l) in live.listeners.borrow().iter() {
            rows.push((
                name.clone(),
                RecordBuilder::new(ty, name, name)
                    .set("host", &l.cfg.host)
                    .set("port", l.bound.port().to_string())
                    .set("role", "inter-router")
                    .set("cost", 1u64)
                    .set("sslProfile", &l.cfg.tls)
                    .set("saslMechanisms", "EXTERNAL")
                    .set("authenticatePeer", true)
                    .set("requireSsl", true)
                    .set("maxFrameSize", u64::from(crate::link::MAX_FRAME_SIZE))
                    .set("idleTimeoutSeconds", Value::Null)
                    .set("operStatus", "up")
                    .done(),
            ));
        }
        for (name, l) in live.client_listeners.borrow().iter() {
            let mut mechs = Vec::new();
            if l.cfg.sasl_anonymous {
                mechs.push("ANONYMOUS");
            }
            if l.cfg.sasl_plain_users.is_some() {
                mechs.push("PLAIN");
            }
            if l.cfg.require_client_cert {
                mechs.push("EXTERNAL");
            }
            rows.push((
                name.clone(),
                RecordBuilder::new(ty, name, name)
                    .set("host", &l.cfg.host)
                    .set("port", l.bound.port().to_string())
                    .set("role", "normal")
                    .set("cost", Value::Null)
                    .set("sslProfile", l.cfg.tls.clone())
                    .set("saslMechanisms", mechs.join(" "))
                    .set("authenticatePeer", !l.cfg.sasl_anonymous)
                    .set("requireSsl", l.cfg.tls.is_some())
                    .set("maxFrameSize", Value::Null)
                    .set("idleTimeoutSeconds", Value::Null)
                    .set("operStatus", "up")
                    .done(),
            ));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, r)| r).collect()
    }

    fn connectors(&self) -> Vec<Record> {
        let ty = schema::of(Kind::Connector);
        let r = self.router;
        let links = r.links.borrow();
        let connector_links = r.connector_links.borrow();
        r.live
            .connectors
            .borrow()
            .iter()
            .map(|(name, c)| {
                let peer = connector_links
                    .get(name)
                    .and_then(|id| links.get(id))
                    .map(|l| l.peer_id.clone());
                RecordBuilder::new(ty, name, name)
                    .set("host", &c.cfg.host)
                    .set("port", c.cfg.port.to_string())
                    .set("role", "inter-router")
                    .set("cost", c.cfg.cost)
                    .set("sslProfile", &c.cfg.tls)
                    .set("verifyHostname", c.cfg.verify_hostname)
                    .set("maxFrameSize", u64::from(crate::link::MAX_FRAME_SIZE))
                    .set("idleTimeoutSeconds", Value::Null)
                    .set("connectionStatus", c.state.status.get())
                    .set("connectionMsg", c.state.message.borrow().clone())
                    .set("peerRouter", peer)
                    .done()
            })
            .collect()
    }

    fn tcp_listeners(&self) -> Vec<Record> {
        let ty = schema::of(Kind::TcpListener);
        let r = self.router;
        let mut rows: Vec<Record> = Vec::new();
        let mut gates: Vec<(String, String, String, u16, bool)> = r
            .gates
            .borrow()
            .iter()
            .map(|g| {
                (
                    g.cfg.name.clone(),
                    g.cfg.address.clone(),
                    g.cfg.host.clone(),
                    g.cfg.port,
                    g.accept_task.is_some(),
                )
            })
            .collect();
        gates.sort();
        for (name, address, host, port, up) in gates {
            let f = r.flow_stats.borrow().get(&address).cloned();
            rows.push(
                RecordBuilder::new(ty, &name, &name)
                    .set("host", host)
                    .set("port", port.to_string())
                    .set("address", &address)
                    .set("siteId", &r.id)
                    .set("operStatus", if up { "up" } else { "down" })
                    .set("flowsOpened", f.as_ref().map_or(0, |f| f.opened.get()))
                    .set("flowsActive", f.as_ref().map_or(0, |f| f.active.get()))
                    .set("bytesIn", f.as_ref().map_or(0, |f| f.bytes_in.get()))
                    .set("bytesOut", f.as_ref().map_or(0, |f| f.bytes_out.get()))
                    .done(),
            );
        }
        rows
    }

    fn tcp_connectors(&self) -> Vec<Record> {
        let ty = schema::of(Kind::TcpConnector);
        let r = self.router;
        let mut v = r.tcp_connectors.borrow().clone();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.iter()
            .map(|c| {
                let f = r.flow_stats.borrow().get(&c.address).cloned();
                RecordBuilder::new(ty, &c.name, &c.name)
                    .set("host", &c.host)
                    .set("port", c.port.to_string())
                    .set("address", &c.address)
                    .set("siteId", &r.id)
                    .set("expose", c.expose)
                    .set("flowsOpened", f.as_ref().map_or(0, |f| f.opened.get()))
                    .set("flowsActive", f.as_ref().map_or(0, |f| f.active.get()))
                    .set("flowsFailed", f.as_ref().map_or(0, |f| f.failed.get()))
                    .set("bytesIn", f.as_ref().map_or(0, |f| f.bytes_in.get()))
                    .set("bytesOut", f.as_ref().map_or(0, |f| f.bytes_out.get()))
                    .done()
            })
            .collect()
    }

    fn ssl_profiles(&self) -> Vec<Record> {
        let ty = schema::of(Kind::SslProfile);
        self.router
            .live
            .tls
            .borrow()
            .values()
            .map(|p| {
                RecordBuilder::new(ty, &p.name, &p.name)
                    .set("caCertFile", p.ca.display().to_string())
                    .set("certFile", p.cert.display().to_string())
                    .set("privateKeyFile", p.key.display().to_string())
                    .done()
            })
            .collect()
    }

    fn logs(&self) -> Vec<Record> {
        let ty = schema::of(Kind::Log);
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        ["DEFAULT", "ROUTER", "MANAGEMENT", "TCP_ADAPTOR"]
            .iter()
            .map(|m| {
                let id = format!("log/{m}");
                RecordBuilder::new(ty, &id, &id)
                    .set("module", *m)
                    .set("enable", format!("{level}+"))
                    .set("includeSource", false)
                    .set("includeTimestamp", true)
                    .set("outputFile", "stderr")
                    .done()
            })
            .collect()
    }

    fn all(&self, kind: Kind) -> Vec<Record> {
        match kind {
            Kind::Router | Kind::RouterMetrics => self.router_records(kind),
            Kind::Network => self.network(),
            Kind::Connection => self.connections(),
            Kind::Link => self.links(),
            Kind::Address => self.address_records(&self.address_index()),
            Kind::Node => self.nodes(),
            Kind::ConfigAddress => self.config_addresses(),
            Kind::Listener => self.listeners(),
            Kind::Connector => self.connectors(),
            Kind::TcpListener => self.tcp_listeners(),
            Kind::TcpConnector => self.tcp_connectors(),
            Kind::SslProfile => self.ssl_profiles(),
            Kind::Log => self.logs(),
            Kind::RevokedPeer => {
                let ty = schema::of(Kind::RevokedPeer);
                self.router
                    .revoked
                    .borrow()
                    .iter()
                    .map(|p| RecordBuilder::new(ty, p, p).done())
                    .collect()
            }
        }
    }
}

/// A router.link record.
fn link_record(
    identity: &str,
    link_type: &str,
    dir: &str,
    name: &str,
    owning_addr: Option<String>,
    deliveries: u64,
    connection: u64,
) -> Record {
    RecordBuilder::new(schema::of(Kind::Link), identity, identity)
        .set("linkType", link_type)
        .set("linkDir", dir)
        .set("linkName", name)
        .set("owningAddr", owning_addr)
        .set("capacity", u64::from(crate::messages::SENDER_WINDOW))
        .set("peer", Value::Null)
        .set("undeliveredCount", 0u64)
        .set("unsettledCount", 0u64)
        .set("deliveryCount", deliveries)
        .set("connectionId", connection.to_string())
        .set("adminStatus", "enabled")
        .set("operStatus", "up")
        .set("presettledCount", 0u64)
        .set("droppedPresettledCount", 0u64)
        .set("acceptedCount", 0u64)
        .set("rejectedCount", 0u64)
        .set("releasedCount", 0u64)
        .set("modifiedCount", 0u64)
        .set("deliveriesDelayed1Sec", 0u64)
        .set("deliveriesDelayed10Sec", 0u64)
        .set("deliveriesStuck", 0u64)
        .set("creditAvailable", u64::from(crate::messages::SENDER_WINDOW))
        .set("zeroCreditSeconds", 0u64)
        .set("settleRate", 0u64)
        .set("priority", 0u64)
        .done()
}

fn hostname() -> Option<String> {
    static HOSTNAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .clone()
}

impl EntityStore for RouterStore<'_> {
    fn count(&self, ty: &EntityType) -> usize {
        match ty.kind {
            Kind::Router | Kind::RouterMetrics => 1,
            Kind::Address => self.address_index().len(),
            Kind::Connection => self.connection_count(),
            Kind::Link => self.link_count(),
            k => self.all(k).len(),
        }
    }

    fn list(&self, ty: &EntityType, range: Range<usize>) -> Vec<Record> {
        match ty.kind {
            // Only the page asked for is built: a QUERY of 10,000
            // addresses in pages costs one page of records each.
            Kind::Address => {
                let index = self.address_index();
                let end = range.end.min(index.len());
                let start = range.start.min(end);
                self.address_records(&index[start..end])
            }
            k => {
                let all = self.all(k);
                let end = range.end.min(all.len());
                let start = range.start.min(end);
                all.into_iter().skip(start).take(end - start).collect()
            }
        }
    }

    fn list_attributes(
        &self,
        ty: &EntityType,
        range: Range<usize>,
        wanted: &[usize],
    ) -> Vec<Record> {
        let mut mask = vec![false; ty.attributes.len()];
        for &i in wanted {
            if let Some(m) = mask.get_mut(i) {
                *m = true;
            }
        }
        WANTED.with_borrow_mut(|w| *w = Some((ty.kind, mask.into())));
        let rows = self.list(ty, range);
        WANTED.with_borrow_mut(|w| *w = None);
        rows
    }

    fn read(&self, ty: &EntityType, name: &str) -> Option<Record> {
        self.all(ty.kind)
            .into_iter()
            .find(|r| r.string(0) == Some(name) || r.string(1) == Some(name))
    }

    fn create(&self, ty: &EntityType, name: &str, attrs: &Attributes) -> Result<Record, MgmtError> {
        let r = self.router;
        let a = Attrs { ty, attrs };
        match ty.kind {
            Kind::TcpListener => {
                let cfg = TcpListenerConfig {
                    name: name.to_string(),
                    address: a.required_str("address")?,
                    host: a.str_or("host", "0.0.0.0")?,
                    port: a.required_port("port")?,
                };
                r.add_tcp_listener(cfg).map_err(MgmtError::bad_request)?;
            }
            Kind::TcpConnector => {
                let cfg = TcpConnectorConfig {
                    name: name.to_string(),
                    address: a.required_str("address")?,
                    host: a.str_or("host", "127.0.0.1")?,
                    port: a.required_port("port")?,
                    expose: a.bool_or("expose", false)?,
                };
                r.add_tcp_connector(cfg);
            }
            Kind::Connector => {
                let role = a.str_or("role", "inter-router")?;
                if role != "inter-router" {
                    return Err(MgmtError::bad_request(format!(
                        "connector.role: only \"inter-router\" connectors are supported, got {role:?}"
                    )));
                }
                let cfg = ConnectorConfig {
                    name: name.to_string(),
                    role: Role::InterRouter,
                    host: a.required_str("host")?,
                    port: a.required_port("port")?,
                    cost: a.cost()?.unwrap_or(1),
                    tls: a.required_str("sslProfile")?,
                    verify_hostname: a.bool_or("verifyHostname", true)?,
                };
                r.start_connector(cfg).map_err(MgmtError::bad_request)?;
            }
            Kind::Listener => {
                let role = a.str_or("role", "normal")?;
                let host = a.str_or("host", "0.0.0.0")?;
                match role.as_str() {
                    "inter-router" => {
                        let cfg = ListenerConfig {
                            name: name.to_string(),
                            role: Role::InterRouter,
                            host,
                            port: a.required_port("port")?,
                            tls: a.required_str("sslProfile")?,
                        };
                        r.start_listener(cfg).map_err(MgmtError::bad_request)?;
                    }
                    "normal" => {
                        let tls = a.optional_str("sslProfile")?;
                        let mechs = a.str_or("saslMechanisms", "ANONYMOUS")?;
                        if mechs.split_whitespace().any(|m| m != "ANONYMOUS") {
                            return Err(MgmtError::bad_request(format!(
                                "listener.saslMechanisms: only ANONYMOUS can be set through management (PLAIN needs a users file in the config), got {mechs:?}"
                            )));
                        }
                        let cfg = ClientListenerConfig {
                            name: name.to_string(),
                            host,
                            port: a.port_or("port", DEFAULT_AMQP_PORT)?,
                            require_client_cert: tls.is_some()
                                && a.bool_or("authenticatePeer", false)?,
                            tls,
                            sasl_anonymous: true,
                            sasl_plain_users: None,
                            allow_no_sasl: true,
                        };
                        r.start_client_listener(cfg)
                            .map_err(MgmtError::bad_request)?;
                    }
                    other => {
                        return Err(MgmtError::bad_request(format!(
                            "listener.role: expected \"normal\" or \"inter-router\", got {other:?}"
                        )))
                    }
                }
            }
            Kind::RevokedPeer => r.revoke_peer(name),
            Kind::SslProfile => {
                let ca = PathBuf::from(a.required_str("caCertFile")?);
                let cert = PathBuf::from(a.required_str("certFile")?);
                let key = PathBuf::from(a.required_str("privateKeyFile")?);
                let material = crate::tls::load_material(&ca, &cert, &key)
                    .map_err(|e| MgmtError::bad_request(format!("sslProfile {name}: {e}")))?;
                r.add_tls_profile(TlsProfile {
                    name: name.to_string(),
                    ca,
                    cert,
                    key,
                    material: std::sync::Arc::new(material),
                });
            }
            Kind::ConfigAddress => {
                let prefix = match a.optional_str("prefix")? {
                    Some(p) => p,
                    None => match a.optional_str("pattern")? {
                        Some(_) => {
                            return Err(MgmtError::bad_request(
                                "router.config.address: patterns are not supported; use prefix",
                            ))
                        }
                        None => {
                            return Err(MgmtError::bad_request(
                                "router.config.address: missing attribute \"prefix\"",
                            ))
                        }
                    },
                };
                let distribution = match a.str_or("distribution", "balanced")?.as_str() {
                    "balanced" => Distribution::Balanced,
                    "closest" => Distribution::Closest,
                    "multicast" => Distribution::Multicast,
                    other => {
                        return Err(MgmtError::bad_request(format!(
                            "router.config.address.distribution: expected balanced, closest or multicast, got {other:?}"
                        )))
                    }
                };
                if prefix != name && self.read(ty, &prefix).is_some() {
                    return Err(MgmtError::bad_request(format!(
                        "prefix {prefix:?} is already configured"
                    )));
                }
                r.add_address_config(AddressConfig {
                    prefix: prefix.clone(),
                    distribution,
                })
                .map_err(MgmtError::bad_request)?;
                return self
                    .read(ty, &prefix)
                    .ok_or_else(|| MgmtError::internal("created address not found"));
            }
            _ => {
                return Err(MgmtError::bad_request(format!(
                    "CREATE is not allowed on {}",
                    ty.short
                )))
            }
        }
        self.read(ty, name)
            .ok_or_else(|| MgmtError::internal(format!("created {} {name} not found", ty.short)))
    }

    fn update(&self, ty: &EntityType, name: &str, attrs: &Attributes) -> Result<Record, MgmtError> {
        let a = Attrs { ty, attrs };
        match ty.kind {
            Kind::Connector => {
                for k in attrs.keys() {
                    if !matches!(k.as_str(), "cost" | "name" | "identity" | "type") {
                        return Err(MgmtError::bad_request(format!(
                            "connector: only cost can be updated (got {k:?}); delete and create it to change anything else"
                        )));
                    }
                }
                let cost = a
                    .cost()?
                    .ok_or_else(|| MgmtError::bad_request("connector: UPDATE needs cost"))?;
                self.router.set_connector_cost(name, cost);
            }
            _ => {
                return Err(MgmtError::bad_request(format!(
                    "UPDATE is not allowed on {}",
                    ty.short
                )))
            }
        }
        self.read(ty, name)
            .ok_or_else(|| MgmtError::internal(format!("updated {} {name} not found", ty.short)))
    }

    fn delete(&self, ty: &EntityType, name: &str) -> Result<(), MgmtError> {
        let r = self.router;
        let found = match ty.kind {
            Kind::TcpListener => r.remove_tcp_listener(name),
            Kind::TcpConnector => r.remove_tcp_connector(name),
            Kind::Connector => r.stop_connector(name),
            Kind::Listener => r.stop_listener(name),
            Kind::SslProfile => r.remove_tls_profile(name).map_err(MgmtError::bad_request)?,
            Kind::ConfigAddress => r.remove_address_config(name),
            Kind::RevokedPeer => r.revoked.borrow_mut().remove(name),
            _ => {
                return Err(MgmtError::bad_request(format!(
                    "DELETE is not allowed on {}",
                    ty.short
                )))
            }
        };
        if found {
            Ok(())
        } else {
            Err(MgmtError::not_found(format!(
                "no {} named {name:?}",
                ty.short
            )))
        }
    }

    fn mgmt_nodes(&self) -> Vec<String> {
        let engine = self.router.engine.borrow();
        let mut v: Vec<String> = engine
            .routes()
            .map(|(id, _)| id.to_string())
            .chain(std::iter::once(self.router.id.clone()))
            .map(|id| format!("amqp:/_topo/0/{id}/$management"))
            .collect();
        v.sort();
        v
    }
}

/// Typed access to CREATE/UPDATE attributes with precise errors.
struct Attrs<'a> {
    ty: &'a EntityType,
    attrs: &'a Attributes,
}

impl Attrs<'_> {
    fn optional_str(&self, key: &str) -> Result<Option<String>, MgmtError> {
        match self.attrs.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => match attr_string(self.attrs, key) {
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(MgmtError::bad_request(format!(
                    "{}.{key}: expected a string, got {:?}",
                    self.ty.short,
                    self.attrs.get(key)
                ))),
            },
        }
    }

    fn required_str(&self, key: &str) -> Result<String, MgmtError> {
        self.optional_str(key)?.ok_or_else(|| {
            MgmtError::bad_request(format!("{}: missing attribute {key:?}", self.ty.short))
        })
    }

    fn str_or(&self, key: &str, default: &str) -> Result<String, MgmtError> {
        Ok(self
            .optional_str(key)?
            .unwrap_or_else(|| default.to_string()))
    }

    fn optional_int(&self, key: &str) -> Result<Option<i64>, MgmtError> {
        let bad = || {
            MgmtError::bad_request(format!(
                "{}.{key}: expected a number, got {:?}",
                self.ty.short,
                self.attrs.get(key)
            ))
        };
        Ok(Some(match self.attrs.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| bad())?,
            Some(Value::Ubyte(n)) => i64::from(*n),
            Some(Value::Ushort(n)) => i64::from(*n),
            Some(Value::Uint(n)) => i64::from(*n),
            Some(Value::Ulong(n)) => i64::try_from(*n).map_err(|_| bad())?,
            Some(Value::Byte(n)) => i64::from(*n),
            Some(Value::Short(n)) => i64::from(*n),
            Some(Value::Int(n)) => i64::from(*n),
            Some(Value::Long(n)) => *n,
            Some(_) => return Err(bad()),
        }))
    }

    fn port_or(&self, key: &str, default: u16) -> Result<u16, MgmtError> {
        match self.optional_int(key)? {
            None => Ok(default),
            Some(p) => u16::try_from(p).map_err(|_| {
                MgmtError::bad_request(format!(
                    "{}.{key}: {p} is not a port number (0-65535)",
                    self.ty.short
                ))
            }),
        }
    }

    fn required_port(&self, key: &str) -> Result<u16, MgmtError> {
        if self.optional_int(key)?.is_none() {
            return Err(MgmtError::bad_request(format!(
                "{}: missing attribute {key:?}",
                self.ty.short
            )));
        }
        self.port_or(key, 0)
    }

    fn cost(&self) -> Result<Option<u32>, MgmtError> {
        match self.optional_int("cost")? {
            None => Ok(None),
            Some(c) if (1..=1_000_000).contains(&c) => Ok(Some(c as u32)),
            Some(c) => Err(MgmtError::bad_request(format!(
                "{}.cost: {c} is out of range (1-1000000)",
                self.ty.short
            ))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, MgmtError> {
        match self.attrs.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "yes" => Ok(true),
            Some(Value::String(s)) if s == "false" || s == "no" => Ok(false),
            Some(other) => Err(MgmtError::bad_request(format!(
                "{}.{key}: expected true or false, got {other:?}",
                self.ty.short
            ))),
        }
    }
}
