//! Management: the AMQP Management agent (`$management`, the Qpid Dispatch
//! / skupper-router wire format) and the `[http]` metrics endpoint, against
//! real routers.
//!
//! Requests go through `tests/amqp/mgmt.py` (Proton, system Python): one
//! connection per run, a dynamic reply receiver, the requests sent one at
//! a time in order, one JSON line per response. Topologies (a link `a ->
//! b` is a connector on `a` dialling `b`):
//!
//! ```text
//!  solo:       solo                                   (one router)
//!  pair:       east ──► west ── echo
//!  line:       east ──► hub ──► west
//!  unlinked:   east      west ── echo                 (linked by CREATE)
//!  triangle:   east ──► hub ──► west ── echo
//!                └───(CREATE)───┘
//! ```
//!
//! What is covered, by test:
//! - QUERY: paging (`offset`/`count`) returns every row exactly once and
//!   the same rows as one unpaged QUERY; `attributeNames` order is
//!   honoured, an unknown attribute is null; without `attributeNames` the
//!   columns are the type's attributes (GET-ATTRIBUTES), `identity`,
//!   `name`, `type` first; every type GET-TYPES lists answers QUERY, and
//!   READ by identity agrees with the QUERY row;
//! - READ by name and by identity (under each accepted type prefix), 404
//!   for a missing entity, 400 without a name; the answer carries the
//!   request's correlation_id;
//! - live changes: CREATE of a tcpListener carries traffic, DELETE refuses
//!   new connections while open flows go on; CREATE/DELETE of a
//!   tcpConnector makes its address reachable/unreachable elsewhere;
//!   CREATE of an inter-router connector brings the link up on both
//!   routers and traffic flows, DELETE takes it down on both; UPDATE of a
//!   connector's cost moves new flows; CREATE/DELETE of
//!   `router.config.address` changes an address's distribution;
//! - errors (port in use, unknown type, missing attribute, unknown
//!   sslProfile, unknown operation, duplicate name, disallowed operation)
//!   with their status and a description naming the cause, and nothing
//!   changed;
//! - a remote router's agent at `_topo/0/<id>/$management` through a
//!   transit router: QUERY, GET-MGMT-NODES, 600 CREATEs, and an answer of
//!   several frames;
//! - `/metrics` parsed with `prometheus_client` (per-address flows, bytes
//!   and durations, links, reachable routers), `/healthz`, `/readyz`.
//!
//! Every program has a hard timeout, every wait here is bounded, and every
//! router and service is stopped by PID when its handle is dropped. The
//! tests skip themselves, with a message, when `/usr/bin/python3` cannot
//! import `proton` (`TETHER_REQUIRE_PROTON=1` makes that a failure) or, for
//! `/metrics`, `prometheus_client` (`TETHER_REQUIRE_PROMETHEUS_CLIENT=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Shutdown, TcpListener};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_tests::args;
use tether_tests::binary::run_bounded;
use tether_tests::flows::echo_transfer;
use tether_tests::net::{addr, connect, expect_closed, read_to_end_by, round_trip, Closed};
use tether_tests::proton::{self, Value};
use tether_tests::router::wait_connectable;
use tether_tests::{free_port, Network, NetworkSpec, Service, TestEnv};

/// The hard timeout of one `mgmt.py` run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a change made through management may take to show (a link
/// coming up or going down, a route, a listener closing).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of a condition.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Tether's entity type names.
const PREFIX: &str = "io.tether.router.";
/// The management node's own type (QUERY and GET-* requests name it in
/// `type` and the entity type in `entityType`, as skmanage does).
const NODE_TYPE: &str = "org.amqp.management";

fn ty(short: &str) -> String {
    format!("{PREFIX}{short}")
}

// ---------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------

/// QUERY of `entity` (short name) for `attrs` (empty: all), optionally one
/// page.
fn query(entity: &str, attrs: &[&str], page: Option<(i64, i64)>) -> Value {
    let mut r = json!({
        "operation": "QUERY",
        "type": NODE_TYPE,
        "entityType": ty(entity),
        "body": {"attributeNames": attrs},
    });
    if let Some((offset, count)) = page {
        r["offset"] = json!(offset);
        r["count"] = json!(count);
    }
    r
}

fn read_by_name(full_type: &str, name: &str) -> Value {
    json!({"operation": "READ", "type": full_type, "name": name})
}

fn read_by_identity(full_type: &str, identity: &str) -> Value {
    json!({"operation": "READ", "type": full_type, "identity": identity})
}

fn create(entity: &str, name: &str, body: Value) -> Value {
    json!({"operation": "CREATE", "type": ty(entity), "name": name, "body": body})
}

fn update(entity: &str, name: &str, body: Value) -> Value {
    json!({"operation": "UPDATE", "type": ty(entity), "name": name, "body": body})
}

fn delete(entity: &str, name: &str) -> Value {
    json!({"operation": "DELETE", "type": ty(entity), "name": name})
}

/// One response: `statusCode`, `statusDescription` and the body as JSON.
#[derive(Debug, Clone)]
struct Resp {
    status: i64,
    description: String,
    body: Value,
}

impl Resp {
    /// Panics (with `what`) unless the status is `status`.
    fn expect(&self, status: i64, what: &str) -> &Resp {
        assert_eq!(
            self.status, status,
            "{what}: expected status {status}, got {self:?}"
        );
        self
    }

    /// The QUERY answer: attribute names and rows.
    fn table(&self) -> (Vec<String>, Vec<Vec<Value>>) {
        let names = self.body["attributeNames"]
            .as_array()
            .unwrap_or_else(|| panic!("QUERY answer without attributeNames: {self:?}"))
            .iter()
            .map(|v| v.as_str().expect("attribute names are strings").to_string())
            .collect();
        let rows = self.body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("QUERY answer without results: {self:?}"))
            .iter()
            .map(|r| r.as_array().expect("a result row is a list").clone())
            .collect();
        (names, rows)
    }

    /// The QUERY rows as maps from attribute name to value.
    fn records(&self) -> Vec<BTreeMap<String, Value>> {
        let (names, rows) = self.table();
        rows.into_iter()
            .map(|r| {
                assert_eq!(r.len(), names.len(), "row length vs attributeNames");
                names.iter().cloned().zip(r).collect()
            })
            .collect()
    }
}

/// Sends `requests` to `address` through the router whose AMQP listener is
/// on `port`, in order over one connection, and returns one response per
/// request. `Err` if the program failed (no credit for the address, a
/// request rejected, a connection error, its timeout).
fn try_mgmt(port: u16, address: &str, requests: &[Value]) -> Result<Vec<Resp>, String> {
    let text = serde_json::to_string(requests).expect("requests as JSON");
    let url = format!("amqp://127.0.0.1:{port}");
    let report = proton::run(
        "mgmt.py",
        args!["--url", url, "--address", address, "--requests", text],
        SCRIPT_TIMEOUT,
    );
    if !report.success() {
        return Err(format!("mgmt.py failed: {}", report.describe()));
    }
    let lines = report.events("response");
    if lines.len() != requests.len() {
        return Err(format!(
            "{} responses to {} requests: {}",
            lines.len(),
            requests.len(),
            report.describe()
        ));
    }
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l["index"] != json!(i) || l["correlation_ok"] != json!(true) {
            return Err(format!(
                "response {i} does not answer request {i} (correlation_id): {}",
                report.describe()
            ));
        }
        out.push(Resp {
            status: l["statusCode"]
                .as_i64()
                .ok_or_else(|| format!("response {i} without an integer statusCode: {l}"))?,
            description: l["statusDescription"].as_str().unwrap_or("").to_string(),
            body: l["body"].clone(),
        });
    }
    Ok(out)
}

/// [`try_mgmt`] to `router`'s own `$management`; panics with the routers'
/// logs on failure.
fn mgmt(net: &Network, router: &str, requests: &[Value]) -> Vec<Resp> {
    let port = net.amqp_port(router);
    net.check(try_mgmt(port, "$management", requests))
}

/// One request to `router`'s `$management`.
fn mgmt1(net: &Network, router: &str, request: Value) -> Resp {
    mgmt(net, router, &[request]).remove(0)
}

/// Calls `f` every [`POLL_EVERY`] until it returns `Ok` or `timeout`
/// passes; panics with the last error and the routers' logs.
fn poll<T>(
    net: &Network,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut last = String::from("never tried");
    let max_rounds = timeout.as_millis() / POLL_EVERY.as_millis() + 2;
    for _ in 0..max_rounds {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(POLL_EVERY);
    }
    panic!(
        "{what}: not within {timeout:?}; last: {last}\n{}",
        net.describe()
    );
}

/// Inter-router connections in a QUERY `connection` answer: container
/// (the peer's router id) of each.
fn inter_router_peers(resp: &Resp) -> Vec<String> {
    resp.records()
        .iter()
        .filter(|r| r["role"] == json!("inter-router"))
        .map(|r| r["container"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn connection_query() -> Value {
    query(
        "connection",
        &["container", "role", "host", "bytesOut"],
        None,
    )
}

/// Skips the test (true) when Proton is missing, as the AMQP tests do.
fn skip(test: &str) -> bool {
    proton::skip_without_proton(test)
}

// ---------------------------------------------------------------------
// 1. QUERY with paging
// ---------------------------------------------------------------------

/// 25 tcpConnectors created through management, then QUERY in pages of
/// 10: every row exactly once, in the order of one unpaged QUERY, columns
/// in the order asked for (an unknown one null); the same for
/// `router.address`. Without `attributeNames` the columns are the type's
/// attributes as GET-ATTRIBUTES lists them, `identity`, `name`, `type`
/// first.
#[test]
fn query_pages_return_every_row_once_in_the_requested_attribute_order() {
    const N: usize = 25;
    let name = "mgmt-query-paging";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let net = Network::start(&env, NetworkSpec::new(&env, &["solo"]).amqp("solo"));
    let started = Instant::now();

    let svc = |i: usize| format!("svc-{i:02}");
    let address = |i: usize| format!("addr-{i:02}");
    let port_of = |i: usize| 20000 + i as u16;
    let mut reqs: Vec<Value> = (0..N)
        .map(|i| {
            create(
                "tcpConnector",
                &svc(i),
                json!({"address": address(i), "host": "127.0.0.1", "port": port_of(i)}),
            )
        })
        .collect();
    let attrs = ["port", "address", "nosuch", "name", "identity", "type"];
    reqs.push(query("tcpConnector", &attrs, None));
    let pages = [(0, 10), (10, 10), (20, 10), (30, 10)];
    for p in pages {
        reqs.push(query("tcpConnector", &attrs, Some(p)));
    }
    // All attributes: no attributeNames at all, and an empty list.
    reqs.push(json!({"operation": "QUERY", "type": NODE_TYPE,
                     "entityType": ty("tcpConnector")}));
    reqs.push(query("tcpConnector", &[], Some((5, 3))));
    reqs.push(json!({"operation": "GET-ATTRIBUTES", "type": NODE_TYPE,
                     "entityType": ty("tcpConnector")}));
    // router.address: the 25 addresses and the router's own.
    let addr_attrs = ["key", "subscriberCount", "name", "distribution"];
    reqs.push(query("router.address", &addr_attrs, None));
    let addr_pages: Vec<(i64, i64)> = (0..7).map(|k| (k * 10, 10)).collect();
    for p in &addr_pages {
        reqs.push(query("router.address", &addr_attrs, Some(*p)));
    }
    let resps = mgmt(&net, "solo", &reqs);
    let mut it = resps.into_iter();

    for i in 0..N {
        let r = it.next().expect("a response per request");
        r.expect(201, &format!("CREATE tcpConnector {}", svc(i)));
        assert_eq!(r.body["name"], json!(svc(i)), "CREATE answers the entity");
        assert_eq!(r.body["address"], json!(address(i)));
        assert_eq!(r.body["port"], json!(port_of(i).to_string()));
    }

    // The unpaged QUERY: 25 rows, by name, columns as asked.
    let full = it.next().expect("unpaged QUERY");
    full.expect(200, "QUERY tcpConnector");
    let (names, rows) = full.table();
    assert_eq!(names, attrs, "attributeNames echo the request's order");
    assert_eq!(rows.len(), N, "one row per tcpConnector: {full:?}");
    for row in &rows {
        let name = row[3].as_str().expect("name is a string");
        let i: usize = name
            .strip_prefix("svc-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected tcpConnector {name:?}"));
        assert_eq!(row[0], json!(port_of(i).to_string()), "port of {name}");
        assert_eq!(row[1], json!(address(i)), "address of {name}");
        assert_eq!(row[2], Value::Null, "an unknown attribute is null");
        assert_eq!(row[4], json!(name), "identity of {name}");
        assert_eq!(row[5], json!(ty("tcpConnector")), "type of {name}");
    }

    // The pages: 10 + 10 + 5 + 0 rows, together the unpaged answer.
    let mut paged = Vec::new();
    for (p, want) in pages.iter().zip([10, 10, 5, 0]) {
        let r = it.next().expect("page");
        r.expect(200, &format!("QUERY page {p:?}"));
        let (n, rows) = r.table();
        assert_eq!(n, attrs, "attributeNames of page {p:?}");
        assert_eq!(rows.len(), want, "rows in page {p:?}");
        paged.extend(rows);
    }
    assert_eq!(paged, rows, "the pages, in order, are the unpaged answer");
    let seen: BTreeSet<String> = paged
        .iter()
        .map(|r| r[3].as_str().unwrap_or("").to_string())
        .collect();
    let want: BTreeSet<String> = (0..N).map(svc).collect();
    assert_eq!(seen, want, "every tcpConnector exactly once over the pages");

    // No attributeNames / an empty list: every attribute, in schema order.
    let all = it.next().expect("QUERY without attributeNames");
    all.expect(200, "QUERY without attributeNames");
    let (all_names, all_rows) = all.table();
    assert_eq!(
        &all_names[..3],
        &["identity", "name", "type"],
        "identity, name, type come first"
    );
    assert_eq!(all_rows.len(), N);
    let page = it.next().expect("QUERY with an empty attribute list");
    page.expect(200, "QUERY attributeNames=[] offset 5 count 3");
    let (page_names, page_rows) = page.table();
    assert_eq!(page_names, all_names, "an empty list means every attribute");
    assert_eq!(page_rows, all_rows[5..8].to_vec(), "offset 5, count 3");
    let schema = it.next().expect("GET-ATTRIBUTES");
    schema.expect(200, "GET-ATTRIBUTES tcpConnector");
    assert_eq!(
        schema.body[ty("tcpConnector")],
        json!(all_names),
        "QUERY without attributeNames returns the GET-ATTRIBUTES list"
    );
    for rec in all.records() {
        let name = rec["name"].as_str().unwrap_or("?").to_string();
        assert_eq!(rec["identity"], json!(name));
        assert_eq!(rec["type"], json!(ty("tcpConnector")));
        assert_eq!(rec["host"], json!("127.0.0.1"), "host of {name}");
        assert_eq!(rec["siteId"], json!("solo"), "siteId of {name}");
        assert_eq!(rec["flowsOpened"], json!(0), "flowsOpened of {name}");
    }

    // router.address, paged the same way.
    let full = it.next().expect("unpaged router.address");
    full.expect(200, "QUERY router.address");
    let (names, addr_rows) = full.table();
    assert_eq!(names, addr_attrs);
    assert!(
        addr_rows.len() < addr_pages.len() * 10,
        "more addresses than the pages cover: {full:?}"
    );
    let mut paged = Vec::new();
    for p in &addr_pages {
        let r = it.next().expect("router.address page");
        r.expect(200, &format!("QUERY router.address page {p:?}"));
        let (_, rows) = r.table();
        assert!(rows.len() <= 10, "page {p:?} longer than its count");
        paged.extend(rows);
    }
    assert_eq!(paged, addr_rows, "address pages, in order, are the whole");
    let keys: Vec<String> = paged
        .iter()
        .map(|r| r[0].as_str().unwrap_or("?").to_string())
        .collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "an address twice: {keys:?}");
    for i in 0..N {
        let key = format!("M{}", address(i));
        let row = paged
            .iter()
            .find(|r| r[0] == json!(key))
            .unwrap_or_else(|| panic!("{key} missing from router.address: {keys:?}"));
        assert_eq!(
            row[1],
            json!(1),
            "{key}: its tcpConnector is a local subscriber"
        );
        assert_eq!(row[2], json!(key), "{key}: name");
        assert_eq!(row[3], json!("balanced"), "{key}: default distribution");
    }
    assert!(
        keys.iter().any(|k| k.ends_with("$management")),
        "the management address itself is listed: {keys:?}"
    );
    println!("25 CREATEs and 16 QUERYs in {:.2?}", started.elapsed());
}

/// CREATE of `router.config.address` changes the distribution the
/// addresses under its prefix report; DELETE restores the default.
#[test]
fn config_address_create_and_delete_change_the_distribution() {
    let name = "mgmt-config-address";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["solo"])
            .amqp("solo")
            .tcp_connector("solo", "db-main", 1)
            .tcp_connector("solo", "web", 2),
    );
    let dist = |resp: &Resp| -> BTreeMap<String, Value> {
        resp.table()
            .1
            .into_iter()
            .map(|r| (r[0].as_str().unwrap_or("?").to_string(), r[1].clone()))
            .collect()
    };
    let q = query("router.address", &["key", "distribution"], None);
    let r = mgmt(
        &net,
        "solo",
        &[
            q.clone(),
            create(
                "router.config.address",
                "db",
                json!({"prefix": "db", "distribution": "closest"}),
            ),
            q.clone(),
            query("router.config.address", &["prefix", "distribution"], None),
            delete("router.config.address", "db"),
            q,
            query("router.config.address", &["prefix"], None),
        ],
    );
    let before = dist(&r[0].expect(200, "QUERY before").clone());
    assert_eq!(
        before.get("Mdb-main"),
        Some(&json!("balanced")),
        "{before:?}"
    );
    r[1].expect(201, "CREATE router.config.address db closest");
    assert_eq!(r[1].body["prefix"], json!("db"));
    assert_eq!(r[1].body["distribution"], json!("closest"));
    let during = dist(&r[2]);
    assert_eq!(
        during.get("Mdb-main"),
        Some(&json!("closest")),
        "{during:?}"
    );
    assert_eq!(during.get("Mweb"), Some(&json!("balanced")), "{during:?}");
    assert_eq!(
        r[3].table().1,
        vec![vec![json!("db"), json!("closest")]],
        "the configured prefixes"
    );
    r[4].expect(204, "DELETE router.config.address db");
    assert_eq!(r[4].body, json!({}), "DELETE answers an empty map");
    let after = dist(&r[5]);
    assert_eq!(after.get("Mdb-main"), Some(&json!("balanced")), "{after:?}");
    assert!(r[6].table().1.is_empty(), "no prefix left: {:?}", r[6]);
}

/// Every type GET-TYPES lists answers QUERY (all attributes) with rows
/// whose `type` is that type, whose identities are unique strings, and
/// each row READ by its identity gives the same record; GET-OPERATIONS
/// lists READ for every type. On a linked pair after a flow, so links,
/// connections, nodes and addresses have rows.
#[test]
fn every_type_answers_query_and_read_consistently() {
    let name = "mgmt-every-type";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::echo();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "west"])
            .link("east", "west", 1)
            .amqp("east")
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port())
            .wait_client("east", "backend"),
    );
    let r = net.check(echo_transfer(
        net.client_port("east", "backend"),
        64 * 1024,
        0x4d47_0011,
        Duration::from_secs(10),
    ));
    assert!(r.exact(), "{r:?}");
    let meta = mgmt(
        &net,
        "east",
        &[
            json!({"operation": "GET-TYPES", "type": NODE_TYPE}),
            json!({"operation": "GET-OPERATIONS", "type": NODE_TYPE}),
        ],
    );
    let types: Vec<String> = meta[0]
        .expect(200, "GET-TYPES")
        .body
        .as_object()
        .unwrap_or_else(|| panic!("GET-TYPES body is not a map: {:?}", meta[0]))
        .keys()
        .cloned()
        .collect();
    for short in [
        "router",
        "connection",
        "router.address",
        "router.node",
        "tcpListener",
        "tcpConnector",
        "connector",
        "listener",
        "sslProfile",
    ] {
        assert!(
            types.contains(&ty(short)),
            "GET-TYPES lacks {short}: {types:?}"
        );
    }
    let ops = meta[1].expect(200, "GET-OPERATIONS").body.clone();
    let queries: Vec<Value> = types
        .iter()
        .map(|t| json!({"operation": "QUERY", "type": NODE_TYPE, "entityType": t, "body": {}}))
        .collect();
    let answers = mgmt(&net, "east", &queries);
    let mut reads = Vec::new();
    let mut expected = Vec::new();
    for (t, a) in types.iter().zip(&answers) {
        a.expect(200, &format!("QUERY {t}"));
        assert!(
            ops[t]
                .as_array()
                .is_some_and(|o| o.contains(&json!("READ"))),
            "GET-OPERATIONS for {t}: {}",
            ops[t]
        );
        let recs = a.records();
        let mut ids = BTreeSet::new();
        for rec in &recs {
            assert_eq!(rec["type"], json!(t), "type column of {t}: {rec:?}");
            let id = rec["identity"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}: identity is not a string: {rec:?}"));
            assert!(ids.insert(id.to_string()), "{t}: identity {id:?} twice");
            // Whole records are compared where nothing changes by itself;
            // where counters move (our own requests are deliveries), the
            // identity. Client connections, their links and their reply
            // addresses end with each mgmt.py run: not read.
            let short = t.strip_prefix(PREFIX).unwrap_or(t);
            let whole = match short {
                "connection" => continue,
                "router.link" if rec["linkType"] == json!("endpoint") => continue,
                "router" | "routerMetrics" | "router.link" => false,
                "router.address" if rec["key"] != json!("Mbackend") => continue,
                _ => true,
            };
            reads.push(read_by_identity(t, id));
            expected.push(if whole {
                serde_json::to_value(rec).expect("record")
            } else {
                json!({"identity": id})
            });
        }
        let min_rows = match t.strip_prefix(PREFIX).unwrap_or(t) {
            "router" | "connection" | "router.address" | "router.node" | "tcpListener"
            | "sslProfile" | "listener" | "network" => 1,
            _ => 0,
        };
        assert!(recs.len() >= min_rows, "{t}: {} rows: {a:?}", recs.len());
    }
    assert!(
        reads.iter().any(|r| r["identity"] == json!("Mbackend")),
        "the TCP address is among the entities read"
    );
    let read = mgmt(&net, "east", &reads);
    for ((req, want), got) in reads.iter().zip(&expected).zip(&read) {
        got.expect(200, &format!("READ {req}"));
        if want.as_object().is_some_and(|m| m.len() == 1) {
            assert_eq!(got.body["identity"], want["identity"], "READ {req}");
        } else {
            assert_eq!(&got.body, want, "READ {req} vs its QUERY row");
        }
    }
    println!(
        "{} types queried, {} entities read",
        types.len(),
        reads.len()
    );
}

// ---------------------------------------------------------------------
// 2. READ
// ---------------------------------------------------------------------

/// READ of a tcpListener by name and by identity, under every accepted
/// type prefix, agrees with its QUERY row; a missing one is 404, a READ
/// without a name 400.
#[test]
fn read_finds_a_tcp_listener_by_name_and_identity_and_404s_a_missing_one() {
    let name = "mgmt-read";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let spec = NetworkSpec::new(&env, &["solo"])
        .amqp("solo")
        .tcp_listener("solo", "backend");
    let port = spec.client_port("solo", "backend");
    let net = Network::start(&env, spec);
    let configured = format!("tcp_listener/backend/{port}");
    let made_port = free_port();
    let r = mgmt(
        &net,
        "solo",
        &[
            create(
                "tcpListener",
                "made",
                json!({"address": "other", "host": "127.0.0.1", "port": made_port}),
            ),
            query("tcpListener", &[], None),
            // The answer must carry the correlation_id, not the message_id.
            {
                let mut r = read_by_name(&ty("tcpListener"), &configured);
                r["id"] = json!("message-id-2");
                r["correlation_id"] = json!("correlation-id-2");
                r
            },
            read_by_identity("io.skupper.router.tcpListener", &configured),
            read_by_name("org.apache.qpid.dispatch.tcpListener", "made"),
            read_by_identity(&ty("tcpListener"), "made"),
            read_by_name(&ty("tcpListener"), "no-such-listener"),
            read_by_identity(&ty("tcpListener"), "no-such-identity"),
            json!({"operation": "READ", "type": ty("tcpListener")}),
        ],
    );
    r[0].expect(201, "CREATE tcpListener made");
    let rows = r[1].expect(200, "QUERY tcpListener").records();
    assert_eq!(rows.len(), 2, "the configured and the created: {:?}", r[1]);
    let row = |n: &str| -> Value {
        let rec = rows
            .iter()
            .find(|rec| rec["name"] == json!(n))
            .unwrap_or_else(|| panic!("{n} not in {:?}", r[1]));
        serde_json::to_value(rec).expect("record as JSON")
    };
    for (i, who, how) in [
        (2, configured.as_str(), "name"),
        (3, configured.as_str(), "identity (skupper prefix)"),
        (4, "made", "name (dispatch prefix)"),
        (5, "made", "identity"),
    ] {
        let resp = r[i].expect(200, &format!("READ {who} by {how}"));
        assert_eq!(resp.body, row(who), "READ {who} by {how} vs its QUERY row");
        assert_eq!(resp.body["identity"], json!(who));
        assert_eq!(resp.body["type"], json!(ty("tcpListener")));
        assert_eq!(resp.body["siteId"], json!("solo"));
        assert_eq!(resp.body["host"], json!("127.0.0.1"));
    }
    assert_eq!(r[2].body["address"], json!("backend"));
    assert_eq!(r[2].body["port"], json!(port.to_string()));
    assert_eq!(r[4].body["address"], json!("other"));
    assert_eq!(r[4].body["port"], json!(made_port.to_string()));
    for (i, missing) in [(6, "no-such-listener"), (7, "no-such-identity")] {
        r[i].expect(404, &format!("READ {missing}"));
        assert!(
            r[i].description.contains(missing),
            "the 404 names what is missing: {:?}",
            r[i]
        );
    }
    r[8].expect(400, "READ without name or identity");
}

// ---------------------------------------------------------------------
// 3. CREATE / DELETE of a tcpListener with traffic
// ---------------------------------------------------------------------

/// Connects to `port` until the connection is refused (bounded).
fn wait_refused(net: &Network, port: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    poll(net, &format!("127.0.0.1:{port} refusing"), timeout, || {
        match std::net::TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("connect failed otherwise: {e}")),
            Ok(_) => Err("still accepting".into()),
        }
    });
    start.elapsed()
}

/// East and west linked, an echo service behind west. A tcpListener
/// CREATEd on east carries a byte-exact flow to it; after its DELETE new
/// connections are refused while flows opened before (on it and on a
/// configured listener) keep working to a clean end.
#[test]
fn created_tcp_listener_carries_traffic_and_deleted_one_refuses_new_connections() {
    let name = "mgmt-tcp-listener-live";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::echo();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "west"])
            .link("east", "west", 1)
            .amqp("east")
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port())
            .wait_client("east", "backend"),
    );
    let started = Instant::now();
    let io = Duration::from_secs(5);

    // A flow on the configured listener, open across everything below.
    let mut configured_flow = connect(net.client_port("east", "backend")).expect("connect");
    net.check(round_trip(&mut configured_flow, b"configured before", io));

    let port = free_port();
    let made = mgmt1(
        &net,
        "east",
        create(
            "tcpListener",
            "dynamic",
            json!({"address": "backend", "host": "127.0.0.1", "port": port}),
        ),
    );
    made.expect(201, "CREATE tcpListener dynamic");
    assert_eq!(made.body["port"], json!(port.to_string()));
    assert_eq!(made.body["address"], json!("backend"));
    net.check(
        wait_connectable(port, CHANGE_TIMEOUT, &net.routers())
            .map_err(|e| format!("the created listener accepting: {e}")),
    );
    let status = mgmt1(&net, "east", read_by_name(&ty("tcpListener"), "dynamic"));
    assert_eq!(
        status.expect(200, "READ tcpListener dynamic").body["operStatus"],
        json!("up"),
        "a listener that accepts is up"
    );

    let r = net.check(echo_transfer(
        port,
        256 * 1024,
        0x4d47_0001,
        Duration::from_secs(10),
    ));
    assert!(
        r.exact(),
        "echo through the created listener differs: {r:?}"
    );
    assert_eq!(r.received, 256 * 1024);

    // A flow on the created listener, open across its DELETE.
    let mut dynamic_flow = connect(port).expect("connect to the created listener");
    net.check(round_trip(&mut dynamic_flow, b"dynamic before", io));

    let gone = mgmt(
        &net,
        "east",
        &[
            delete("tcpListener", "dynamic"),
            read_by_name(&ty("tcpListener"), "dynamic"),
            query("tcpListener", &["name"], None),
        ],
    );
    gone[0].expect(204, "DELETE tcpListener dynamic");
    gone[1].expect(404, "READ after DELETE");
    let configured_name = format!(
        "tcp_listener/backend/{}",
        net.client_port("east", "backend")
    );
    assert_eq!(
        gone[2].table().1,
        vec![vec![json!(configured_name)]],
        "only the configured listener is left"
    );
    let refused_after = wait_refused(&net, port, CHANGE_TIMEOUT);

    // The flows opened before go on, both ways, and end cleanly.
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    for (what, s) in [
        ("configured", &mut configured_flow),
        ("deleted listener's", &mut dynamic_flow),
    ] {
        net.check(
            round_trip(s, &payload, io).map_err(|e| format!("{what} flow after DELETE: {e}")),
        );
        s.shutdown(Shutdown::Write).expect("half-close");
        match expect_closed(s, io) {
            Ok(Closed::Eof(0)) => {}
            other => panic!(
                "{what} flow after DELETE: expected a clean EOF, got {other:?}\n{}",
                net.describe()
            ),
        }
    }
    // The configured listener still takes new flows.
    let r = net.check(echo_transfer(
        net.client_port("east", "backend"),
        64 * 1024,
        0x4d47_0002,
        io,
    ));
    assert!(r.exact(), "configured listener after the DELETE: {r:?}");
    println!(
        "created, carried, deleted (refused {refused_after:.2?} after the DELETE) in {:.2?}",
        started.elapsed()
    );
}

/// East and west linked, a tcpListener for `backend` on east, an echo
/// service but no tcpConnector behind west. A tcpConnector CREATEd on west
/// makes east's listener accept and carry a byte-exact flow; after its
/// DELETE east's listener refuses again.
#[test]
fn created_tcp_connector_makes_its_address_reachable_and_deleted_one_unreachable() {
    let name = "mgmt-tcp-connector-live";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::echo();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "west"])
            .link("east", "west", 1)
            .amqp("west")
            .amqp("east")
            .tcp_listener("east", "backend"),
    );
    let started = Instant::now();
    let client = net.client_port("east", "backend");
    assert!(
        connect(client).is_err(),
        "east's tcpListener accepts before backend is reachable"
    );
    let status = query("tcpListener", &["address", "operStatus"], None);
    let down = mgmt1(&net, "east", status.clone());
    assert_eq!(
        down.table().1,
        vec![vec![json!("backend"), json!("down")]],
        "a listener whose address is unreachable is down"
    );
    let made = mgmt1(
        &net,
        "west",
        create(
            "tcpConnector",
            "echo",
            json!({"address": "backend", "host": "127.0.0.1", "port": svc.port()}),
        ),
    );
    made.expect(201, "CREATE tcpConnector echo");
    assert_eq!(made.body["port"], json!(svc.port().to_string()));
    net.check(
        net.wait_client("east", "backend", CHANGE_TIMEOUT)
            .map_err(|e| format!("backend reachable from east after the CREATE: {e}")),
    );
    let r = net.check(echo_transfer(
        client,
        256 * 1024,
        0x4d47_0031,
        Duration::from_secs(10),
    ));
    assert!(r.exact(), "echo through the created tcpConnector: {r:?}");
    assert_eq!(
        mgmt1(&net, "east", status).table().1,
        vec![vec![json!("backend"), json!("up")]],
        "east's listener is up while backend is reachable"
    );
    let gone = mgmt(
        &net,
        "west",
        &[
            delete("tcpConnector", "echo"),
            query("tcpConnector", &["name"], None),
        ],
    );
    gone[0].expect(204, "DELETE tcpConnector echo");
    assert!(gone[1].table().1.is_empty(), "left: {:?}", gone[1]);
    let refused = wait_refused(&net, client, CHANGE_TIMEOUT);
    println!(
        "reachable, carried, unreachable ({refused:.2?} after the DELETE) in {:.2?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------
// 4. Errors
// ---------------------------------------------------------------------

/// Invalid requests get their status and a description naming the cause,
/// and change nothing: a port in use (held by the test), an unknown type,
/// a missing attribute, an unknown sslProfile, an unknown operation, a
/// duplicate name, a disallowed operation.
#[test]
fn invalid_requests_are_refused_with_a_status_naming_the_cause_and_change_nothing() {
    let name = "mgmt-errors";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let spec = NetworkSpec::new(&env, &["solo"])
        .amqp("solo")
        .tcp_listener("solo", "backend")
        .tcp_connector("solo", "backend", 1);
    let configured = format!(
        "tcp_listener/backend/{}",
        spec.client_port("solo", "backend")
    );
    let net = Network::start(&env, spec);

    // A port this test holds open.
    let held = TcpListener::bind(addr(0)).expect("bind a port to hold");
    let held_port = held.local_addr().expect("local_addr").port();

    let listeners = query("tcpListener", &["name", "port", "address"], None);
    let connectors = query("connector", &["name"], None);
    let tcp_connectors = query("tcpConnector", &["name", "address"], None);
    let requests = [
        listeners.clone(),
        connectors.clone(),
        tcp_connectors.clone(),
        // 3: port in use, address reachable (a local tcpConnector) ...
        create(
            "tcpListener",
            "busy",
            json!({"address": "backend", "host": "127.0.0.1", "port": held_port}),
        ),
        // 4: ... and unreachable.
        create(
            "tcpListener",
            "busy-unreachable",
            json!({"address": "nowhere", "host": "127.0.0.1", "port": held_port}),
        ),
        // 5: unknown type.
        json!({"operation": "CREATE", "type": "io.tether.router.bogusThing",
               "name": "x", "body": {}}),
        // 6: missing attribute.
        create(
            "tcpListener",
            "no-port",
            json!({"address": "backend", "host": "127.0.0.1"}),
        ),
        // 7: missing attribute.
        create(
            "tcpConnector",
            "no-address",
            json!({"host": "127.0.0.1", "port": 9}),
        ),
        // 8: unknown sslProfile.
        create(
            "connector",
            "to-nowhere",
            json!({"host": "127.0.0.1", "port": free_port(), "sslProfile": "no-such-profile",
                   "role": "inter-router"}),
        ),
        // 9: unknown operation.
        json!({"operation": "FROBNICATE", "type": ty("tcpListener"), "name": "x"}),
        // 10: duplicate name.
        create(
            "tcpListener",
            &configured,
            json!({"address": "backend", "host": "127.0.0.1", "port": free_port()}),
        ),
        // 11: an operation the type does not allow.
        update("tcpListener", &configured, json!({"port": free_port()})),
        // 12: DELETE of something missing.
        delete("tcpListener", "busy"),
        // 13: READ of an unknown type.
        read_by_name("io.tether.router.bogusThing", "x"),
        listeners,
        connectors,
        tcp_connectors,
    ];
    let r = mgmt(&net, "solo", &requests);
    let before = (
        r[0].expect(200, "QUERY tcpListener").clone(),
        r[1].clone(),
        r[2].clone(),
    );
    assert_eq!(
        before.0.table().1.len(),
        1,
        "one tcpListener: {:?}",
        before.0
    );
    assert!(
        before.1.table().1.is_empty(),
        "no connector: {:?}",
        before.1
    );
    assert_eq!(
        before.2.table().1.len(),
        1,
        "one tcpConnector: {:?}",
        before.2
    );

    let expect_error = |i: usize, status: i64, what: &str, names: &[&str]| {
        r[i].expect(status, what);
        for n in names {
            assert!(
                r[i].description.to_lowercase().contains(&n.to_lowercase()),
                "{what}: the description should name {n:?}: {:?}",
                r[i]
            );
        }
        assert_eq!(
            r[i].body,
            json!({}),
            "{what}: an error has an empty map body"
        );
    };
    expect_error(3, 400, "tcpListener on a port in use", &["in use"]);
    expect_error(
        4,
        400,
        "tcpListener (unreachable address) on a port in use",
        &["in use"],
    );
    expect_error(5, 404, "CREATE of an unknown type", &["bogusThing"]);
    expect_error(6, 400, "tcpListener without port", &["port"]);
    expect_error(7, 400, "tcpConnector without address", &["address"]);
    expect_error(
        8,
        400,
        "connector with an unknown sslProfile",
        &["no-such-profile"],
    );
    expect_error(9, 501, "unknown operation", &["FROBNICATE"]);
    expect_error(10, 400, "CREATE with a name in use", &["already exists"]);
    expect_error(11, 400, "UPDATE of a tcpListener", &["UPDATE"]);
    expect_error(12, 404, "DELETE of a missing tcpListener", &["busy"]);
    expect_error(13, 404, "READ of an unknown type", &["bogusThing"]);

    // Nothing changed.
    assert_eq!(r[14].table(), before.0.table(), "tcpListeners changed");
    assert_eq!(r[15].table(), before.1.table(), "connectors changed");
    assert_eq!(r[16].table(), before.2.table(), "tcpConnectors changed");
    // The port is still the test's: a connection reaches our listener.
    held.set_nonblocking(false).expect("blocking");
    let c = connect(held_port).expect("connect to the held port");
    let (accepted, _) = held.accept().expect("the held port still accepts for us");
    drop((c, accepted));
}

/// A tcpListener whose address is unreachable is not bound yet, but its
/// port is taken: a CREATE of another tcpListener on the same host and
/// port must be refused like a port in use (the config file refuses two
/// listeners on one port), not accepted to fail to bind forever.
#[test]
fn create_tcp_listener_on_a_port_another_tcp_listener_claims_is_refused() {
    let name = "mgmt-listener-port-claimed";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let spec = NetworkSpec::new(&env, &["solo"])
        .amqp("solo")
        .tcp_listener("solo", "backend");
    let claimed = spec.client_port("solo", "backend");
    let net = Network::start(&env, spec);
    let fresh = free_port();
    let listeners = query("tcpListener", &["name", "port", "address"], None);
    let r = mgmt(
        &net,
        "solo",
        &[
            listeners.clone(),
            // The configured listener's port.
            create(
                "tcpListener",
                "twin",
                json!({"address": "other", "host": "127.0.0.1", "port": claimed}),
            ),
            // A port first claimed through management.
            create(
                "tcpListener",
                "first",
                json!({"address": "a", "host": "127.0.0.1", "port": fresh}),
            ),
            create(
                "tcpListener",
                "second",
                json!({"address": "b", "host": "127.0.0.1", "port": fresh}),
            ),
            listeners,
        ],
    );
    r[0].expect(200, "QUERY tcpListener");
    for (i, what) in [
        (1, "the configured listener's"),
        (3, "a created listener's"),
    ] {
        r[i].expect(400, &format!("CREATE tcpListener on {what} port"));
        assert!(
            r[i].description.contains("in use"),
            "the description says the port is in use: {:?}",
            r[i]
        );
    }
    r[2].expect(201, "CREATE tcpListener first");
    let mut want = r[0].table().1;
    want.push(vec![json!("first"), json!(fresh.to_string()), json!("a")]);
    want.sort_by_key(|row| row[0].to_string());
    assert_eq!(r[4].table().1, want, "only `first` was added");
}

// ---------------------------------------------------------------------
// 5. A remote router's agent through a transit router
// ---------------------------------------------------------------------

/// East, hub and west in a line; the client connects to east only. West's
/// agent at `_topo/0/west/$management` answers a QUERY of `router` (its id)
/// and of `connection` (its link to hub), hub's answers with its id, and
/// GET-MGMT-NODES lists the three routers' management nodes. 600 CREATEs
/// sent to west's agent from east make tcpConnectors at west (and none at
/// east), and a QUERY of them all (an answer of several frames) comes
/// back whole through hub.
#[test]
fn remote_router_agent_answers_through_a_transit_router() {
    let name = "mgmt-remote";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "hub", "west"])
            .link("east", "hub", 1)
            .link("hub", "west", 1)
            .amqp_everywhere(),
    );
    net.check(net.wait_route("east", "west", Some("hub"), 0, CHANGE_TIMEOUT));
    let started = Instant::now();
    let port = net.amqp_port("east");
    let nodes: Vec<String> = ["east", "hub", "west"]
        .iter()
        .map(|r| format!("amqp:/_topo/0/{r}/$management"))
        .collect();
    let mgmt_nodes = json!({"operation": "GET-MGMT-NODES", "type": NODE_TYPE});

    // West's agent, through hub (the sender waits for the address to be
    // reachable; the routers may still be exchanging addresses: retry).
    let r = poll(&net, "west's agent through hub", CHANGE_TIMEOUT, || {
        let r = try_mgmt(
            port,
            "_topo/0/west/$management",
            &[
                query("router", &["id", "name", "nodeCount"], None),
                connection_query(),
                mgmt_nodes.clone(),
            ],
        )?;
        if r[2].body != json!(nodes) {
            return Err(format!("GET-MGMT-NODES at west: {:?}", r[2]));
        }
        Ok(r)
    });
    let (_, rows) = r[0].expect(200, "QUERY router at west").table();
    assert_eq!(
        rows,
        vec![vec![json!("west"), json!(ty("router")), json!(2)]],
        "west answers with its own id and sees two other routers"
    );
    r[1].expect(200, "QUERY connection at west");
    assert_eq!(
        inter_router_peers(&r[1]),
        vec!["hub".to_string()],
        "west's view: one link, to hub: {:?}",
        r[1]
    );

    // Hub's agent, and east's own answering for the whole network.
    let hub = net.check(try_mgmt(
        port,
        "_topo/0/hub/$management",
        &[query("router", &["id"], None)],
    ));
    assert_eq!(
        hub[0].expect(200, "QUERY router at hub").table().1,
        vec![vec![json!("hub")]]
    );
    let east = poll(&net, "east's GET-MGMT-NODES", CHANGE_TIMEOUT, || {
        let r = try_mgmt(
            port,
            "$management",
            &[query("router", &["id"], None), mgmt_nodes.clone()],
        )?;
        if r[1].body != json!(nodes) {
            return Err(format!("GET-MGMT-NODES at east: {:?}", r[1]));
        }
        Ok(r)
    });
    assert_eq!(
        east[0].table().1,
        vec![vec![json!("east")]],
        "$management is east's own"
    );

    // Changes through the remote agent land at west, and an answer of
    // many frames (the agent sends 32 KiB frames) crosses hub whole.
    const MANY: usize = 600;
    let mut reqs: Vec<Value> = (0..MANY)
        .map(|i| {
            create(
                "tcpConnector",
                &format!("remote-{i:03}"),
                json!({"address": format!("remote-addr-{i:03}"), "host": "127.0.0.1",
                       "port": 30000 + i}),
            )
        })
        .collect();
    reqs.push(query("tcpConnector", &[], None));
    let r = net.check(try_mgmt(port, "_topo/0/west/$management", &reqs));
    for (i, c) in r[..MANY].iter().enumerate() {
        c.expect(201, &format!("remote CREATE tcpConnector remote-{i:03}"));
    }
    let all = r[MANY].expect(200, "remote QUERY of every tcpConnector");
    let size = all.body.to_string().len();
    assert!(size > 64 * 1024, "the answer is only {size} bytes as JSON");
    let recs = all.records();
    let names: Vec<String> = recs
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_string())
        .collect();
    let want: Vec<String> = (0..MANY).map(|i| format!("remote-{i:03}")).collect();
    assert_eq!(names, want, "every remote tcpConnector, in order");
    assert!(
        recs.iter().all(|r| r["siteId"] == json!("west")),
        "made at west"
    );
    let local = [query("tcpConnector", &["name"], Some((0, 1000)))];
    let at_west = net.check(try_mgmt(net.amqp_port("west"), "$management", &local));
    assert_eq!(
        at_west[0].table().1.len(),
        MANY,
        "west's own agent sees them"
    );
    let at_east = net.check(try_mgmt(port, "$management", &local));
    assert!(
        at_east[0].table().1.is_empty(),
        "none at east: {:?}",
        at_east[0]
    );
    println!(
        "remote queries and {MANY} remote CREATEs in {:.2?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------
// 6. A live inter-router link
// ---------------------------------------------------------------------

/// East and west start unlinked (each with an inter-router listener and
/// the TLS profile `site`). CREATE of a connector on east brings the link
/// up: both routers list the inter-router connection with the other, the
/// connector reads UP, and flows reach west's service. DELETE takes the
/// link down on both routers and east's tcpListener stops accepting.
#[test]
fn created_connector_brings_a_link_up_and_deleting_it_takes_it_down() {
    let name = "mgmt-connector-live";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::echo();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "west"])
            .amqp_everywhere()
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port()),
    );
    let started = Instant::now();
    let client = net.client_port("east", "backend");
    let west_listener = net.config("west").listeners[0].port;

    let none = mgmt(
        &net,
        "east",
        &[connection_query(), query("connector", &["name"], None)],
    );
    assert!(
        inter_router_peers(&none[0]).is_empty(),
        "linked before: {:?}",
        none[0]
    );
    assert!(
        none[1].table().1.is_empty(),
        "a connector before: {:?}",
        none[1]
    );
    assert!(
        connect(client).is_err(),
        "east's tcpListener accepts before backend is reachable"
    );

    let made = mgmt1(
        &net,
        "east",
        create(
            "connector",
            "to-west",
            json!({"host": "127.0.0.1", "port": west_listener, "sslProfile": "site",
                   "cost": 1, "role": "inter-router"}),
        ),
    );
    made.expect(201, "CREATE connector to-west");
    assert_eq!(made.body["port"], json!(west_listener.to_string()));
    assert_eq!(made.body["sslProfile"], json!("site"));

    for (at, peer) in [("east", "west"), ("west", "east")] {
        poll(
            &net,
            &format!("{at} listing its link to {peer}"),
            CHANGE_TIMEOUT,
            || {
                let r = try_mgmt(net.amqp_port(at), "$management", &[connection_query()])?;
                let peers = inter_router_peers(&r[0]);
                if peers == [peer.to_string()] {
                    Ok(())
                } else {
                    Err(format!("inter-router peers at {at}: {peers:?}"))
                }
            },
        );
    }
    let up = mgmt1(&net, "east", read_by_name(&ty("connector"), "to-west"));
    up.expect(200, "READ connector to-west");
    assert_eq!(up.body["connectionStatus"], json!("UP"), "{up:?}");
    assert_eq!(up.body["peerRouter"], json!("west"), "{up:?}");
    let linked = started.elapsed();

    net.check(
        net.wait_client("east", "backend", CHANGE_TIMEOUT)
            .map_err(|e| format!("backend reachable over the created link: {e}")),
    );
    let r = net.check(echo_transfer(
        client,
        256 * 1024,
        0x4d47_0006,
        Duration::from_secs(10),
    ));
    assert!(r.exact(), "echo over the created link differs: {r:?}");

    let gone = mgmt(
        &net,
        "east",
        &[
            delete("connector", "to-west"),
            query("connector", &["name"], None),
        ],
    );
    gone[0].expect(204, "DELETE connector to-west");
    assert!(
        gone[1].table().1.is_empty(),
        "connector left: {:?}",
        gone[1]
    );
    for at in ["east", "west"] {
        poll(
            &net,
            &format!("{at} without inter-router links"),
            CHANGE_TIMEOUT,
            || {
                let r = try_mgmt(net.amqp_port(at), "$management", &[connection_query()])?;
                let peers = inter_router_peers(&r[0]);
                if peers.is_empty() {
                    Ok(())
                } else {
                    Err(format!("inter-router peers at {at}: {peers:?}"))
                }
            },
        );
    }
    wait_refused(&net, client, CHANGE_TIMEOUT);
    println!(
        "link up {linked:.2?} after start; up, used and down in {:.2?}",
        started.elapsed()
    );
}

/// East, hub and west in a line, and a direct east -> west connector made
/// through management (cost 1, cheaper than 2 via hub): flows take it.
/// UPDATE of its cost to 10 moves new flows onto the path through hub.
/// Which link a flow crossed is read from east's `connection` bytesOut.
#[test]
fn connector_cost_update_moves_new_flows() {
    const FLOW: u64 = 256 * 1024;
    let name = "mgmt-connector-cost";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::echo();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "hub", "west"])
            .link("east", "hub", 1)
            .link("hub", "west", 1)
            .amqp("east")
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port())
            .wait_client("east", "backend"),
    );
    let started = Instant::now();
    let client = net.client_port("east", "backend");
    let west_listener = net.config("west").listeners[0].port;
    mgmt1(
        &net,
        "east",
        create(
            "connector",
            "direct",
            json!({"host": "127.0.0.1", "port": west_listener, "sslProfile": "site",
                   "cost": 1}),
        ),
    )
    .expect(201, "CREATE connector direct");

    // Bytes sent by east on each inter-router connection, by peer.
    let bytes_out = || -> Result<BTreeMap<String, u64>, String> {
        let r = try_mgmt(net.amqp_port("east"), "$management", &[connection_query()])?;
        Ok(r[0]
            .records()
            .iter()
            .filter(|rec| rec["role"] == json!("inter-router"))
            .map(|rec| {
                (
                    rec["container"].as_str().unwrap_or("?").to_string(),
                    rec["bytesOut"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    };
    // Runs one flow and names the peer whose link carried it.
    let mut seed = 0x4d47_0700u64;
    let mut flow_via = || -> Result<String, String> {
        seed += 1;
        let before = bytes_out()?;
        let r = echo_transfer(client, FLOW, seed, Duration::from_secs(10))?;
        if !r.exact() {
            return Err(format!("echo differs: {r:?}"));
        }
        let after = bytes_out()?;
        let carried: Vec<&String> = after
            .iter()
            .filter(|(p, b)| **b >= before.get(*p).copied().unwrap_or(0) + FLOW)
            .map(|(p, _)| p)
            .collect();
        match carried.as_slice() {
            [one] => Ok(one.to_string()),
            _ => Err(format!("unclear path: before {before:?}, after {after:?}")),
        }
    };
    poll(
        &net,
        "flows over the created direct link",
        CHANGE_TIMEOUT,
        || match flow_via()? {
            p if p == "west" => Ok(()),
            p => Err(format!("flow went via {p}")),
        },
    );
    let direct_at = started.elapsed();

    let updated = mgmt(
        &net,
        "east",
        &[
            update("connector", "direct", json!({"cost": 10})),
            read_by_name(&ty("connector"), "direct"),
        ],
    );
    updated[0].expect(200, "UPDATE connector direct cost 10");
    assert_eq!(updated[0].body["cost"], json!(10), "{:?}", updated[0]);
    assert_eq!(updated[1].body["cost"], json!(10), "{:?}", updated[1]);
    poll(
        &net,
        "flows via hub after the cost update",
        CHANGE_TIMEOUT,
        || match flow_via()? {
            p if p == "hub" => Ok(()),
            p => Err(format!("flow went via {p}")),
        },
    );
    // And they stay there.
    for _ in 0..3 {
        let p = net.check(flow_via());
        assert_eq!(p, "hub", "a flow after the cost update went via {p}");
    }
    println!(
        "direct after {direct_at:.2?}, moved to hub by UPDATE; {:.2?} in all",
        started.elapsed()
    );
}

/// After UPDATE of a connector's cost, the routing uses the new cost
/// (`router.node`), and the link's `connection` record must say so too.
#[test]
fn connector_cost_update_shows_on_the_links_connection() {
    let name = "mgmt-connector-cost-shown";
    if skip(name) {
        return;
    }
    let env = TestEnv::new(name);
    let net = Network::start(&env, NetworkSpec::new(&env, &["east", "west"]).amqp("east"));
    let west_listener = net.config("west").listeners[0].port;
    mgmt1(
        &net,
        "east",
        create(
            "connector",
            "to-west",
            json!({"host": "127.0.0.1", "port": west_listener, "sslProfile": "site",
                   "cost": 3}),
        ),
    )
    .expect(201, "CREATE connector to-west cost 3");
    let cost_of_link = || -> Result<Vec<Value>, String> {
        let r = try_mgmt(
            net.amqp_port("east"),
            "$management",
            &[query("connection", &["container", "role", "cost"], None)],
        )?;
        Ok(r[0]
            .records()
            .iter()
            .filter(|rec| rec["role"] == json!("inter-router"))
            .map(|rec| rec["cost"].clone())
            .collect())
    };
    poll(
        &net,
        "the link up with cost 3",
        CHANGE_TIMEOUT,
        || match cost_of_link()? {
            c if c == [json!(3)] => Ok(()),
            c => Err(format!("inter-router connection costs {c:?}")),
        },
    );
    mgmt1(
        &net,
        "east",
        update("connector", "to-west", json!({"cost": 7})),
    )
    .expect(200, "UPDATE connector to-west cost 7");
    poll(&net, "routing with cost 7", CHANGE_TIMEOUT, || {
        let r = try_mgmt(
            net.amqp_port("east"),
            "$management",
            &[query("router.node", &["id", "cost"], None)],
        )?;
        let rows = r[0].table().1;
        if rows.contains(&vec![json!("west"), json!(7)]) {
            Ok(())
        } else {
            Err(format!("router.node: {rows:?}"))
        }
    });
    let shown = net.check(cost_of_link());
    assert_eq!(
        shown,
        vec![json!(7)],
        "the link's connection cost after UPDATE"
    );
}

// ---------------------------------------------------------------------
// 7. /metrics, /healthz, /readyz
// ---------------------------------------------------------------------

/// `Ok` if [`proton::PYTHON`] can import `prometheus_client`'s parser
/// (checked once, bounded).
fn prometheus_client_available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let mut cmd = Command::new(proton::PYTHON);
            cmd.args(["-c", "import prometheus_client.parser"])
                .stdin(Stdio::null());
            let out = run_bounded(cmd, Duration::from_secs(30));
            if out.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} cannot import prometheus_client (install python3-prometheus-client): {}",
                    proton::PYTHON,
                    out.describe()
                ))
            }
        })
        .clone()
}

/// One `GET path` on 127.0.0.1:`port` (HTTP/1.1, `Connection: close`):
/// status and body. Bounded by `timeout`.
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(port).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send GET {path}: {e}"))?;
    let raw = read_to_end_by(&mut s, 16 << 20, deadline)
        .map_err(|e| format!("read the answer to GET {path}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("GET {path}: not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    if chunked {
        return Err(format!("GET {path}: chunked answer (expected a length)"));
    }
    Ok((status, body.to_string()))
}

/// One sample of a parsed exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Scrapes `router`'s `/metrics` and parses it with `metrics_parse.py`.
fn scrape(env: &TestEnv, net: &Network, router: &str) -> Vec<Sample> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let (status, body) = net.check(http_get(
        net.http_port(router),
        "/metrics",
        Duration::from_secs(5),
    ));
    assert_eq!(status, 200, "GET /metrics at {router}: {body}");
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = env.dir().join(format!("metrics-{router}-{n}.txt"));
    std::fs::write(&file, &body).expect("write the scrape");
    let report = proton::run(
        "metrics_parse.py",
        args!["--file", file.display()],
        Duration::from_secs(20),
    );
    assert!(
        report.success(),
        "prometheus_client refused {router}'s /metrics ({}): {}",
        file.display(),
        report.describe()
    );
    report
        .events("sample")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or("").to_string(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            value: match &s["value"] {
                Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                Value::String(t) if t == "inf" => f64::INFINITY,
                _ => f64::NAN,
            },
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.value),
        [] => Err(format!("no sample {name}{labels:?}")),
        many => Err(format!("{} samples {name}{labels:?}: {many:?}", many.len())),
    }
}

/// One flow to the source/sink service in `K` mode: sends `K` and `n`
/// bytes, half-closes, and reads the service's 8-byte count of them, then
/// EOF. Bounded by `timeout`.
fn sink_flow(port: u16, n: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(port).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    let mut data = vec![0x5au8; n as usize + 1];
    data[0] = b'K';
    tether_tests::flows::write_all_by(&mut s, &data, deadline)
        .map_err(|e| format!("send {n} bytes: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    let back = read_to_end_by(&mut s, 64, deadline).map_err(|e| format!("read the count: {e}"))?;
    if back != n.to_be_bytes() {
        return Err(format!("the service counted {back:?}, expected {n}"));
    }
    Ok(())
}

/// East and west linked, both with `[http]`; N flows from east's
/// tcpListener to west's source/sink service, each sending 1 + B bytes and
/// getting 8 back (so the two directions differ), and no other flow
/// (readiness is read from east's log, not probed). The scrape, parsed
/// with `prometheus_client`, shows at each router N flows opened for the
/// address and none failed or active, the bytes read from and written to
/// sockets there (east: in N x (1 + B), out N x 8; west the other way
/// round), N flow durations in a consistent histogram, the link up and its
/// byte counters grown by at least the flows' bytes, one other router
/// reachable; `/healthz` and `/readyz` answer 200, an unknown path 404.
#[test]
fn metrics_count_flows_bytes_and_durations_per_address() {
    const N: u64 = 5;
    const B: u64 = 10_000;
    /// Bytes the client sends per flow: the mode byte and B.
    const UP: u64 = 1 + B;
    /// Bytes the service answers per flow: the count.
    const DOWN: u64 = 8;
    let name = "mgmt-metrics";
    if let Err(why) = prometheus_client_available() {
        if std::env::var("TETHER_REQUIRE_PROMETHEUS_CLIENT").is_ok_and(|v| v == "1") {
            panic!("{name}: TETHER_REQUIRE_PROMETHEUS_CLIENT=1 but {why}");
        }
        eprintln!("SKIPPED {name}: {why}");
        println!("SKIPPED {name}: prometheus_client for Python is not installed");
        return;
    }
    let env = TestEnv::new(name);
    let svc = Service::source_sink();
    let net = Network::start(
        &env,
        NetworkSpec::new(&env, &["east", "west"])
            .link("east", "west", 1)
            .http("east")
            .http("west")
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port()),
    );
    // No probe connection (it would be a flow): east logs when its
    // tcpListener starts accepting (backend became reachable).
    net.check(
        net.router("east")
            .wait_for_line(0, CHANGE_TIMEOUT, "tcp_listener accepting", |l| {
                l.contains("tcp_listener accepting on")
            }),
    );
    let started = Instant::now();
    let io = Duration::from_secs(5);
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/no-such-page", 404)] {
        for router in ["east", "west"] {
            let (status, body) = net.check(http_get(net.http_port(router), path, io));
            assert_eq!(status, want, "GET {path} at {router}: {body:?}");
        }
    }

    let backend = [("address", "backend")];
    let opened = "tether_address_flows_opened_total";
    let active = "tether_address_flows_active";
    let bytes = "tether_address_bytes_total";
    let duration_count = "tether_address_flow_duration_seconds_count";
    // Before any flow: none counted for the address (a missing sample is
    // none).
    let before: Vec<Vec<Sample>> = ["east", "west"]
        .into_iter()
        .map(|r| {
            let s = scrape(&env, &net, r);
            for name in [opened, duration_count] {
                let v = sample(&s, name, &backend).unwrap_or(0.0);
                assert_eq!(v, 0.0, "{r}: {name} before any flow");
            }
            s
        })
        .collect();

    for i in 0..N {
        net.check(
            sink_flow(net.client_port("east", "backend"), B, io)
                .map_err(|e| format!("flow {i}: {e}")),
        );
    }
    // A flow is counted in the histogram when it has ended at that router
    // (both directions closed), which may come just after the client's EOF.
    let after: Vec<Vec<Sample>> = ["east", "west"]
        .into_iter()
        .map(|r| {
            poll(
                &net,
                &format!("{r} ending {N} flows"),
                CHANGE_TIMEOUT,
                || {
                    let s = scrape(&env, &net, r);
                    let ended = sample(&s, duration_count, &backend)?;
                    let open = sample(&s, active, &backend)?;
                    if ended < N as f64 || open > 0.0 {
                        return Err(format!("{r}: {ended} flows ended, {open} active"));
                    }
                    Ok(s)
                },
            )
        })
        .collect();

    for (i, router) in ["east", "west"].into_iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        let value =
            |name: &str, labels: &[(&str, &str)]| -> f64 { net.check(sample(a, name, labels)) };
        let delta = |name: &str, labels: &[(&str, &str)]| -> f64 {
            value(name, labels) - sample(b, name, labels).unwrap_or(0.0)
        };
        let l = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &str)> {
            let mut v: Vec<(&str, &str)> = vec![("router", router), ("address", "backend")];
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(value(opened, &l(&[])), N as f64, "{router}: flows opened");
        assert_eq!(value(active, &l(&[])), 0.0, "{router}: flows active");
        assert_eq!(
            value("tether_address_flows_failed_total", &l(&[])),
            0.0,
            "{router}: flows failed"
        );
        // In: read from this router's sockets (east: the client's; west:
        // the service's); out: written to them.
        let (bytes_in, bytes_out) = if router == "east" {
            (UP, DOWN)
        } else {
            (DOWN, UP)
        };
        for (dir, per_flow) in [("in", bytes_in), ("out", bytes_out)] {
            assert_eq!(
                value(bytes, &l(&[("direction", dir)])),
                (N * per_flow) as f64,
                "{router}: bytes {dir}"
            );
        }
        // The histogram: N observations, buckets cumulative, +Inf =
        // count, a positive sum.
        let count = value(duration_count, &l(&[]));
        assert_eq!(count, N as f64, "{router}: flow durations");
        let mut buckets: Vec<(f64, f64)> = a
            .iter()
            .filter(|s| {
                s.name == "tether_address_flow_duration_seconds_bucket"
                    && s.labels.get("address").map(String::as_str) == Some("backend")
            })
            .map(|s| {
                let le = s.labels.get("le").map(String::as_str).unwrap_or("?");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                (le, s.value)
            })
            .collect();
        buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!(
            buckets.len() >= 2,
            "{router}: histogram buckets {buckets:?}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{router}: buckets not cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            Some((f64::INFINITY, count)),
            "{router}: the +Inf bucket is the count"
        );
        let sum = value("tether_address_flow_duration_seconds_sum", &l(&[]));
        assert!(sum > 0.0 && sum.is_finite(), "{router}: duration sum {sum}");

        // The link and the network.
        let peer = if router == "east" { "west" } else { "east" };
        let link = [("router", router), ("peer", peer)];
        assert_eq!(value("tether_link_up", &link), 1.0, "{router}: link up");
        // East sends the flows' bytes to west over the link, west the
        // counts back (TLS and framing add to both).
        let (link_in, link_out) = if router == "east" {
            (DOWN, UP)
        } else {
            (UP, DOWN)
        };
        for (dir, per_flow) in [("in", link_in), ("out", link_out)] {
            let lb = [("router", router), ("peer", peer), ("direction", dir)];
            let d = delta("tether_link_bytes_total", &lb);
            assert!(
                d >= (N * per_flow) as f64,
                "{router}: link bytes {dir} grew by {d}, less than the flows' {}",
                N * per_flow
            );
        }
        assert_eq!(
            value("tether_routers_reachable", &[("router", router)]),
            1.0,
            "{router}: routers reachable"
        );
    }
    println!(
        "{N} flows counted at both routers in {:.2?}",
        started.elapsed()
    );
}
