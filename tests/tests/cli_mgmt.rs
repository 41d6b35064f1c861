//! The management CLI (`tether status`, `query`, `create`, `delete`)
//! against real routers: each command's table, JSON and YAML output, a
//! listener created and deleted live through it (traffic accepted, then
//! refused), `--target-router` reaching another router through the local
//! one, and the errors a user sees.
//!
//! Topology: `east ──► west`, both with an AMQP client listener; an echo
//! service behind west (`backend`), east listening for it.

use std::process::Command;
use std::time::Duration;

use tether_tests::binary::{run_bounded, Output, Tether};
use tether_tests::net::{echo_until_ok, free_port, refused_for};
use tether_tests::{Network, NetworkSpec, Service, TestEnv};

const CLI_TIMEOUT: Duration = Duration::from_secs(20);

fn pair(env: &TestEnv, svc: &Service) -> Network {
    Network::start(
        env,
        NetworkSpec::new(env, &["east", "west"])
            .link("east", "west", 4)
            .amqp_everywhere()
            .tcp_listener("east", "backend")
            .tcp_connector("west", "backend", svc.port())
            .wait_client("east", "backend"),
    )
}

/// Runs `tether ARGS --router amqp://127.0.0.1:PORT`.
fn cli(port: u16, args: &[&str]) -> Output {
    let mut cmd: Command = Tether::locate().command();
    cmd.args(args)
        .arg("--router")
        .arg(format!("amqp://127.0.0.1:{port}"));
    run_bounded(cmd, CLI_TIMEOUT)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.success(), "{what} failed:\n{}", out.describe());
    out.stdout.clone()
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    let text = ok(out, what);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{text}"))
}

/// Converts YAML to JSON with the system Python's yaml module (an
/// independent parser), or `None` when it is missing.
fn yaml_to_json(text: &str) -> Option<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'yaml'") {
            return None;
        }
        panic!("YAML output does not parse: {err}\n{text}");
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn status_shows_links_routers_and_addresses_with_flow_counts() {
    let env = TestEnv::new("cli-status");
    let svc = Service::echo();
    let net = pair(&env, &svc);
    let port = net.client_port("east", "backend");
    let amqp = net.amqp_port("east");
    // The harness probed the listener before the test: count from here.
    let before = json(&cli(amqp, &["status", "-o", "json"]), "status -o json");
    let counter = |status: &serde_json::Value, key: &str| {
        find_array(status, "addresses")
            .and_then(|a| a.iter().find(|x| x["address"] == "backend"))
            .and_then(|b| num(b, key))
            .unwrap_or(0)
    };
    for _ in 0..3 {
        echo_until_ok(port, &[7u8; 1000], Duration::from_secs(10)).expect("echo through east");
    }

    let table = ok(&cli(amqp, &["status"]), "tether status");
    for want in [
        "Router east",
        "Inter-router links",
        "Routers reachable",
        "Addresses",
        "backend",
        "west",
    ] {
        assert!(
            table.contains(want),
            "status table lacks {want:?}:\n{table}"
        );
    }

    let status = json(&cli(amqp, &["status", "-o", "json"]), "status -o json");
    let text = status.to_string();
    assert!(text.contains("\"east\""), "router id missing: {text}");
    // The link to west, with its cost.
    assert!(
        text.contains("\"west\""),
        "no link or route to west in status: {status:#}"
    );
    // The service address: one remote offer (west), three flows opened
    // at east, 3000 bytes each way.
    let addresses = find_array(&status, "addresses").expect("addresses section");
    let backend = addresses
        .iter()
        .find(|a| a.to_string().contains("backend"))
        .unwrap_or_else(|| panic!("backend not in addresses: {addresses:#?}"));
    assert_eq!(num(backend, "remoteCount"), Some(1), "{backend:#}");
    for (key, delta) in [("flowsOpened", 3), ("bytesIn", 3000), ("bytesOut", 3000)] {
        assert_eq!(
            counter(&status, key) - counter(&before, key),
            delta,
            "{key}: before {before:#}\nafter {backend:#}"
        );
    }

    let yaml = ok(&cli(amqp, &["status", "-o", "yaml"]), "status -o yaml");
    match yaml_to_json(&yaml) {
        // Each run has its own reply address and uptime: compare the rest.
        Some(v) => assert_eq!(
            comparable(v),
            comparable(status),
            "YAML and JSON status differ"
        ),
        None => println!("python3-yaml missing: YAML output not parsed"),
    }
}

#[test]
fn query_prints_the_attributes_asked_for() {
    let env = TestEnv::new("cli-query");
    let svc = Service::echo();
    let net = pair(&env, &svc);
    let amqp = net.amqp_port("west");

    let table = ok(
        &cli(amqp, &["query", "tcpConnector", "name", "address", "port"]),
        "query tcpConnector",
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.len() >= 3,
        "header, rule and a row expected:\n{table}"
    );
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["name", "address", "port"], "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("backend") && l.contains(&svc.port().to_string())),
        "no row for the backend connector:\n{table}"
    );

    let rows = json(
        &cli(
            amqp,
            &["query", "io.tether.router.connection", "-o", "json"],
        ),
        "query connection -o json",
    );
    let rows = rows.as_array().expect("a list of objects");
    assert!(
        rows.iter()
            .any(|r| r["role"] == "inter-router" && r["container"] == "east"),
        "no inter-router connection from east: {rows:#?}"
    );
}

#[test]
fn create_and_delete_a_tcp_listener_live() {
    let env = TestEnv::new("cli-create-delete");
    let svc = Service::echo();
    let net = pair(&env, &svc);
    let amqp = net.amqp_port("east");
    let port = free_port();

    let created = json(
        &cli(
            amqp,
            &[
                "create",
                "tcpListener",
                "name=extra",
                "address=backend",
                "host=127.0.0.1",
                &format!("port={port}"),
                "-o",
                "json",
            ],
        ),
        "create tcpListener",
    );
    assert_eq!(created["name"], "extra", "{created:#}");
    echo_until_ok(port, b"through the new listener", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("new listener does not carry traffic: {e}"));

    ok(&cli(amqp, &["delete", "tcpListener", "extra"]), "delete");
    // The accept task stops at its next turn: allow it a moment, then
    // it must stay closed.
    let closed = (0..20).any(|_| {
        let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
        if !refused {
            std::thread::sleep(Duration::from_millis(100));
        }
        refused
    });
    assert!(closed, "deleted listener still accepts after 2 s");
    refused_for(port, Duration::from_millis(500))
        .unwrap_or_else(|e| panic!("deleted listener accepts again: {e}"));
    let left = ok(&cli(amqp, &["query", "tcpListener", "name"]), "query");
    assert!(!left.contains("extra"), "extra still listed:\n{left}");

    // Deleting it again: a management error, exit code 1, says what.
    let again = cli(amqp, &["delete", "tcpListener", "extra"]);
    assert_eq!(code(&again), Some(1), "{}", again.describe());
    assert!(
        again.stderr.contains("404") && again.stderr.contains("extra"),
        "unclear error: {}",
        again.describe()
    );
}

#[test]
fn target_router_reaches_another_router_through_this_one() {
    let env = TestEnv::new("cli-target-router");
    let svc = Service::echo();
    let net = pair(&env, &svc);
    let amqp = net.amqp_port("east");
    let rows = json(
        &cli(
            amqp,
            &[
                "query",
                "tcpConnector",
                "name",
                "siteId",
                "--target-router",
                "west",
                "-o",
                "json",
            ],
        ),
        "query --target-router west",
    );
    let rows = rows.as_array().expect("list");
    assert!(
        rows.iter().any(|r| r["siteId"] == "west"),
        "west's connectors not returned: {rows:#?}"
    );
    // A router that does not exist: no credit / no answer, bounded.
    let out = cli(
        amqp,
        &["status", "--target-router", "nowhere", "--timeout", "2"],
    );
    assert_ne!(code(&out), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("nowhere") || out.stderr.contains("unreachable"),
        "error does not say what failed: {}",
        out.describe()
    );
}

#[test]
fn a_router_that_is_not_there_is_a_clear_error() {
    let port = free_port();
    let out = cli(port, &["status", "--timeout", "2"]);
    assert_eq!(code(&out), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains(&port.to_string()),
        "error does not name the URL: {}",
        out.describe()
    );
}

/// The first array under `key` anywhere in `v`.
fn find_array<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a Vec<serde_json::Value>> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(a)) = m.get(key) {
                return Some(a);
            }
            m.values().find_map(|x| find_array(x, key))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_array(x, key)),
        _ => None,
    }
}

fn num(v: &serde_json::Value, key: &str) -> Option<i64> {
    v.get(key).and_then(|x| x.as_i64())
}

fn code(out: &Output) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

/// `v` without what differs between two runs of the CLI: its own dynamic
/// reply address (`_tether/...`) and uptimes.
fn comparable(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with("uptime"))
                .map(|(k, v)| (k, comparable(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(
            a.into_iter()
                .filter(|x| {
                    !x["address"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("_tether/"))
                })
                .map(comparable)
                .collect(),
        ),
        other => other,
    }
}
