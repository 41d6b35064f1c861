//! The entity types the management agent serves: their names, attributes
//! (in the order a QUERY without `attributeNames` returns them) and
//! operations.
//!
//! Attribute names and value types follow skupper-router's schema
//! (`skrouter.json`) so `skstat`/`skmanage` and `qdstat`/`qdmanage` read
//! them unmodified: identities are strings, counters are numbers (never
//! null), ports are strings. Tether's own concepts (TCP flows, link costs
//! on connections) are extra attributes, never changed meanings.

/// Our type-name prefix; the two below are accepted as aliases.
pub const PREFIX_TETHER: &str = "io.tether.router.";
pub const PREFIX_SKUPPER: &str = "io.skupper.router.";
pub const PREFIX_DISPATCH: &str = "org.apache.qpid.dispatch.";

/// Operations a request may name (GET-OPERATIONS lists them per type).
pub const OPERATIONS_GLOBAL: &[&str] = &[
    "QUERY",
    "READ",
    "CREATE",
    "UPDATE",
    "DELETE",
    "GET-TYPES",
    "GET-ATTRIBUTES",
    "GET-OPERATIONS",
    "GET-MGMT-NODES",
];

const READ_ONLY: &[&str] = &["READ"];
const CREATE_DELETE: &[&str] = &["CREATE", "READ", "DELETE"];
const CREATE_UPDATE_DELETE: &[&str] = &["CREATE", "READ", "UPDATE", "DELETE"];

/// Which entity type (so the store can match without comparing strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    Router,
    RouterMetrics,
    Network,
    Connection,
    Link,
    Address,
    Node,
    ConfigAddress,
    Listener,
    Connector,
    TcpListener,
    TcpConnector,
    SslProfile,
    Log,
    RevokedPeer,
}

/// One entity type.
#[derive(Debug)]
pub struct EntityType {
    pub kind: Kind,
    /// The name after the prefix, e.g. `router.address`.
    pub short: &'static str,
    pub attributes: &'static [&'static str],
    pub operations: &'static [&'static str],
}

impl EntityType {
    pub fn full_name(&self) -> String {
        format!("{PREFIX_TETHER}{}", self.short)
    }

    /// Position of `attr` in [`EntityType::attributes`].
    pub fn index(&self, attr: &str) -> Option<usize> {
        self.attributes.iter().position(|a| *a == attr)
    }
}

/// Finds a type by full name under any accepted prefix, or by short name.
pub fn lookup(name: &str) -> Option<&'static EntityType> {
    let short = name
        .strip_prefix(PREFIX_TETHER)
        .or_else(|| name.strip_prefix(PREFIX_SKUPPER))
        .or_else(|| name.strip_prefix(PREFIX_DISPATCH))
        .unwrap_or(name);
    TYPES.iter().find(|t| t.short == short)
}

pub fn of(kind: Kind) -> &'static EntityType {
    TYPES
        .iter()
        .find(|t| t.kind == kind)
        .expect("every kind has a type")
}

/// Attributes every entity has first: `identity`, `name`, `type`.
macro_rules! attrs {
    () => { &["identity", "name", "type"] };
    ($($a:literal),* $(,)?) => { &["identity", "name", "type", $($a),*] };
}

pub static TYPES: &[EntityType] = &[
    EntityType {
        kind: Kind::Router,
        short: "router",
        attributes: attrs![
            "id",
            "mode",
            "area",
            "version",
            "hostName",
            "metadata",
            "vanId",
            "defaultDistribution",
            "timestampsInUTC",
            "timestampFormat",
            "debugDumpFile",
            "saslConfigDir",
            "saslConfigName",
            "dataConnectionCount",
            "helloIntervalSeconds",
            "helloMaxAgeSeconds",
            "raIntervalSeconds",
            "raIntervalFluxSeconds",
            "remoteLsMaxAgeSeconds",
            "workerThreads",
            "uptimeSeconds",
            "addrCount",
            "linkCount",
            "nodeCount",
            "connectionCount",
            "autoLinkCount",
            "linkRouteCount",
            "presettledDeliveries",
            "droppedPresettledDeliveries",
            "acceptedDeliveries",
            "rejectedDeliveries",
            "releasedDeliveries",
            "modifiedDeliveries",
            "deliveriesDelayed1Sec",
            "deliveriesDelayed10Sec",
            "deliveriesStuck",
            "deliveriesIngress",
            "deliveriesEgress",
            "deliveriesTransit",
            "deliveriesIngressRouteContainer",
            "deliveriesEgressRouteContainer",
            "deliveriesRedirectedToFallback",
            "linksBlocked",
            "memoryUsage",
            "residentMemoryUsage",
            "flowsOpened",
            "flowsActive",
            "flowsFailed",
            "deadIntervalSeconds",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::RouterMetrics,
        short: "routerMetrics",
        attributes: attrs![
            "id",
            "version",
            "uptimeSeconds",
            "memoryUsage",
            "residentMemoryUsage",
            "addrCount",
            "linkCount",
            "nodeCount",
            "connectionCount",
            "autoLinkCount",
            "linkRouteCount",
            "presettledDeliveries",
            "droppedPresettledDeliveries",
            "acceptedDeliveries",
            "rejectedDeliveries",
            "releasedDeliveries",
            "modifiedDeliveries",
            "deliveriesDelayed1Sec",
            "deliveriesDelayed10Sec",
            "deliveriesStuck",
            "deliveriesIngress",
            "deliveriesEgress",
            "deliveriesTransit",
            "deliveriesIngressRouteContainer",
            "deliveriesEgressRouteContainer",
            "deliveriesRedirectedToFallback",
            "linksBlocked",
            "connectionCounters",
            "routersReachable",
            "flowsOpened",
            "flowsActive",
            "flowsFailed",
            "flowBytesIn",
            "flowBytesOut",
            "messagesDropped",
            "messagesRefused",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::Network,
        short: "network",
        attributes: attrs![
            "routerId",
            "peers",
            "cost",
            "reachable",
            "nextHop",
            "addresses"
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::Connection,
        short: "connection",
        attributes: attrs![
            "container",
            "host",
            "role",
            "protocol",
            "dir",
            "opened",
            "active",
            "adminStatus",
            "operStatus",
            "isEncrypted",
            "sslProto",
            "sslCipher",
            "sslSsf",
            "isAuthenticated",
            "sasl",
            "user",
            "tenant",
            "uptimeSeconds",
            "lastDlvSeconds",
            "enableProtocolTrace",
            "properties",
            "meshId",
            "peerRouter",
            "peerCertificate",
            "cost",
            "connector",
            "bytesIn",
            "bytesOut",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::Link,
        short: "router.link",
        attributes: attrs![
            "linkType",
            "linkDir",
            "linkName",
            "owningAddr",
            "capacity",
            "peer",
            "undeliveredCount",
            "unsettledCount",
            "deliveryCount",
            "connectionId",
            "adminStatus",
            "operStatus",
            "presettledCount",
            "droppedPresettledCount",
            "acceptedCount",
            "rejectedCount",
            "releasedCount",
            "modifiedCount",
            "deliveriesDelayed1Sec",
            "deliveriesDelayed10Sec",
            "deliveriesStuck",
            "creditAvailable",
            "zeroCreditSeconds",
            "settleRate",
            "ingressHistogram",
            "priority",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::Address,
        short: "router.address",
        attributes: attrs![
            "key",
            "distribution",
            "inProcess",
            "subscriberCount",
            "remoteCount",
            "containerCount",
            "remoteHostRouters",
            "deliveriesIngress",
            "deliveriesEgress",
            "deliveriesTransit",
            "deliveriesToContainer",
            "deliveriesFromContainer",
            "deliveriesEgressRouteContainer",
            "deliveriesIngressRouteContainer",
            "deliveriesRedirectedToFallback",
            "transitOutstanding",
            "trackedDeliveries",
            "priority",
            "watch",
            "flowsOpened",
            "flowsActive",
            "flowsFailed",
            "bytesIn",
            "bytesOut",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::Node,
        short: "router.node",
        attributes: attrs![
            "id",
            "protocolVersion",
            "instance",
            "linkState",
            "nextHop",
            "validOrigins",
            "address",
            "routerLink",
            "cost",
            "index",
            "lastTopoChange",
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::ConfigAddress,
        short: "router.config.address",
        attributes: attrs![
            "prefix",
            "pattern",
            "distribution",
            "waypoint",
            "ingressPhase",
            "egressPhase",
            "priority",
            "enableFallback",
        ],
        operations: CREATE_DELETE,
    },
    EntityType {
        kind: Kind::Listener,
        short: "listener",
        attributes: attrs![
            "host",
            "port",
            "role",
            "cost",
            "sslProfile",
            "saslMechanisms",
            "authenticatePeer",
            "requireSsl",
            "maxFrameSize",
            "idleTimeoutSeconds",
            "operStatus",
        ],
        operations: CREATE_DELETE,
    },
    EntityType {
        kind: Kind::Connector,
        short: "connector",
        attributes: attrs![
            "host",
            "port",
            "role",
            "cost",
            "sslProfile",
            "verifyHostname",
            "maxFrameSize",
            "idleTimeoutSeconds",
            "connectionStatus",
            "connectionMsg",
            "peerRouter",
        ],
        operations: CREATE_UPDATE_DELETE,
    },
    EntityType {
        kind: Kind::TcpListener,
        short: "tcpListener",
        attributes: attrs![
            "host",
            "port",
            "address",
            "siteId",
            "operStatus",
            "flowsOpened",
            "flowsActive",
            "bytesIn",
            "bytesOut",
        ],
        operations: CREATE_DELETE,
    },
    EntityType {
        kind: Kind::TcpConnector,
        short: "tcpConnector",
        attributes: attrs![
            "host",
            "port",
            "address",
            "siteId",
            "expose",
            "flowsOpened",
            "flowsActive",
            "flowsFailed",
            "bytesIn",
            "bytesOut",
        ],
        operations: CREATE_DELETE,
    },
    EntityType {
        kind: Kind::SslProfile,
        short: "sslProfile",
        attributes: attrs!["caCertFile", "certFile", "privateKeyFile"],
        operations: CREATE_DELETE,
    },
    EntityType {
        kind: Kind::Log,
        short: "log",
        attributes: attrs![
            "module",
            "enable",
            "includeSource",
            "includeTimestamp",
            "outputFile"
        ],
        operations: READ_ONLY,
    },
    EntityType {
        kind: Kind::RevokedPeer,
        short: "revokedPeer",
        attributes: attrs![],
        operations: CREATE_DELETE,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_finds_the_same_type() {
        for name in [
            "io.tether.router.router.address",
            "io.skupper.router.router.address",
            "org.apache.qpid.dispatch.router.address",
            "router.address",
        ] {
            assert_eq!(lookup(name).map(|t| t.kind), Some(Kind::Address), "{name}");
        }
        assert!(lookup("io.tether.router.nonsense").is_none());
    }

    #[test]
    fn attributes_start_with_identity_name_type_and_are_unique() {
        for t in TYPES {
            assert_eq!(
                &t.attributes[..3],
                &["identity", "name", "type"],
                "{}",
                t.short
            );
            let mut seen = std::collections::HashSet::new();
            for a in t.attributes {
                assert!(seen.insert(a), "{}: {a} twice", t.short);
            }
        }
    }
}
