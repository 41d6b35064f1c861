//! Configuration errors are reported as `FILE:LINE:COL: message`.
//!
//! Every case writes a config that is valid except for one defect, marks
//! the line(s) where the error may be reported with a TOML comment
//! (`# EXPECT` for one line, `# EXPECT-FROM` .. `# EXPECT-TO` for a range,
//! used where the contract does not say which line of a table an error
//! belongs to, e.g. a missing field), and checks that:
//! - `tether router --check FILE` exits non-zero and its stderr has
//!   `FILE:LINE:COL:` with LINE in the expected range (COL ≥ 1);
//! - `tether router --config FILE` also exits non-zero by itself (within
//!   5 s) and prints the same message.
//!
//! `--check` on a valid file prints `FILE: ok` and exits 0.

use std::ops::RangeInclusive;
use std::time::Duration;

use tether_tests::binary::Output;
use tether_tests::{free_port, TestEnv};

/// A valid config; cases below are this with one defect. Line numbers:
/// 1 [router], 2 id, 4 [[listener]], 5-8 its keys, 10 [[tcp_listener]],
/// 11-13 its keys, 15 [tls.site], 16-18 its keys.
const GOOD: &str = r#"[router]
id = "east"

[[listener]]
role = "inter-router"
host = "127.0.0.1"
port = {LINK}
tls = "site"

[[tcp_listener]]
address = "backend"
host = "127.0.0.1"
port = {CLIENT}

[tls.site]
ca = "ca.pem"
cert = "east.pem"
key = "east-key.pem"
"#;

fn expected_lines(text: &str) -> RangeInclusive<usize> {
    let mut from = None;
    let mut to = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.contains("# EXPECT-FROM") {
            from = Some(n);
        } else if line.contains("# EXPECT-TO") {
            to = Some(n);
        } else if line.contains("# EXPECT") {
            from = Some(n);
            to = Some(n);
        }
    }
    let from = from.expect("case has no # EXPECT marker");
    from..=to.unwrap_or(from)
}

/// All `(line, col)` from `NAME:LINE:COL:` occurrences in `out`.
fn locations(out: &str, file_name: &str) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    let pat = format!("{file_name}:");
    let mut from = 0;
    for _ in 0..1000 {
        let Some(i) = out[from..].find(&pat) else {
            break;
        };
        let start = from + i;
        let rest = &out[start + pat.len()..];
        from = start + 1;
        let digits = |s: &str| s.chars().take_while(|c| c.is_ascii_digit()).count();
        let n1 = digits(rest);
        if n1 == 0 || !rest[n1..].starts_with(':') {
            continue;
        }
        let rest2 = &rest[n1 + 1..];
        let n2 = digits(rest2);
        if n2 == 0 || !rest2[n2..].starts_with(':') {
            continue;
        }
        let line: usize = rest[..n1].parse().unwrap_or(0);
        let col: usize = rest2[..n2].parse().unwrap_or(0);
        let msg_line = out[start..].lines().next().unwrap_or("").to_string();
        found.push((line, col, msg_line));
    }
    found
}

fn check_location(
    what: &str,
    out: &Output,
    file_name: &str,
    expect: &RangeInclusive<usize>,
    text: &str,
) -> String {
    let locs = locations(&out.stderr, file_name);
    let hit = locs
        .iter()
        .find(|(l, c, _)| expect.contains(l) && *c >= 1)
        .map(|(_, _, m)| m.clone());
    match hit {
        Some(m) => m,
        None => panic!(
            "{what}: expected `{file_name}:LINE:COL:` with LINE in {expect:?} on stderr; found {:?}\n\
             --- config ---\n{}\n{}",
            locs.iter().map(|(l, c, _)| format!("{l}:{c}")).collect::<Vec<_>>(),
            numbered(text),
            out.describe()
        ),
    }
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>3} | {l}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` (with {LINK}/{CLIENT} filled in) as `<case>.toml` and runs
/// both `--check` and `--config` on it.
fn expect_error(case: &str, text: &str) {
    let env = TestEnv::new(&format!("cfg-{case}"));
    prepare_files(&env);
    let text = fill(text);
    let expect = expected_lines(&text);
    let file_name = format!("{case}.toml");
    let path = env.dir().join(&file_name);
    std::fs::write(&path, &text).unwrap();

    let out = env.bin.check_config(&path);
    assert!(
        !out.timed_out,
        "--check did not finish within 5 s ({case})\n{}",
        out.describe()
    );
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "--check accepted a bad config ({case})\n--- config ---\n{}\n{}",
        numbered(&text),
        out.describe()
    );
    let msg = check_location("--check", &out, &file_name, &expect, &text);
    println!("{case}: {msg}");

    let out2 = env
        .bin
        .run_config_expecting_failure(&path, Duration::from_secs(5));
    assert!(
        !out2.timed_out,
        "--config kept running on a bad config ({case}) instead of exiting\n--- config ---\n{}\n{}",
        numbered(&text),
        out2.describe()
    );
    assert!(
        out2.status.is_some_and(|s| !s.success()),
        "--config exited 0 on a bad config ({case})\n{}",
        out2.describe()
    );
    check_location("--config", &out2, &file_name, &expect, &text);
    assert!(
        out2.stderr.contains(msg.trim_end()),
        "--config printed a different message than --check ({case}):\n--check: {msg}\n{}",
        out2.describe()
    );
}

fn fill(text: &str) -> String {
    text.replace("{LINK}", &free_port().to_string())
        .replace("{CLIENT}", &free_port().to_string())
}

/// Certificates every case may name: east.pem/east-key.pem (valid) and
/// east-mismatch.pem/east-mismatch-key.pem (key of another leaf).
fn prepare_files(env: &TestEnv) {
    let _ = env.certs.leaf("east");
    let _ = env.certs.mismatched_key("east");
}

#[test]
fn check_accepts_a_good_config() {
    let env = TestEnv::new("cfg-good");
    prepare_files(&env);
    let text = fill(GOOD);
    let path = env.dir().join("good.toml");
    std::fs::write(&path, &text).unwrap();
    let out = env.bin.check_config(&path);
    assert!(
        out.success(),
        "--check rejected a good config\n{}\n{}",
        numbered(&text),
        out.describe()
    );
    let want = format!("{}: ok", path.display());
    assert!(
        out.stdout.contains(&want) || out.stderr.contains(&want),
        "--check did not print `{want}`\n{}",
        out.describe()
    );
}

#[test]
fn unknown_key() {
    expect_error(
        "unknown-key",
        &GOOD.replace("id = \"east\"\n", "id = \"east\"\nbogus = 1 # EXPECT\n"),
    );
}

#[test]
fn unknown_key_in_a_table_array() {
    expect_error(
        "unknown-key-tcp",
        &GOOD.replace(
            "address = \"backend\"\n",
            "address = \"backend\"\ncolour = \"red\" # EXPECT\n",
        ),
    );
}

#[test]
fn wrong_type() {
    expect_error(
        "wrong-type-port",
        &GOOD.replace("port = {CLIENT}", "port = \"nine thousand\" # EXPECT"),
    );
}

#[test]
fn wrong_type_in_router() {
    expect_error(
        "wrong-type-id",
        &GOOD.replace("id = \"east\"", "id = 42 # EXPECT"),
    );
}

#[test]
fn missing_required_field() {
    // The tcp_listener has no port: the error belongs to that table.
    expect_error(
        "missing-port",
        &GOOD
            .replace("[[tcp_listener]]", "[[tcp_listener]] # EXPECT-FROM")
            .replace("port = {CLIENT}\n", "")
            .replace(
                "host = \"127.0.0.1\"\n\n[tls",
                "host = \"127.0.0.1\" # EXPECT-TO\n\n[tls",
            ),
    );
}

#[test]
fn missing_router_id() {
    expect_error(
        "missing-id",
        &GOOD.replace(
            "[router]\nid = \"east\"\n",
            "[router] # EXPECT-FROM\nhello_interval_ms = 1000 # EXPECT-TO\n",
        ),
    );
}

#[test]
fn duplicate_listening_port() {
    // A second inter-router listener on the same port.
    let dup = GOOD.replace(
        "\n[[tcp_listener]]",
        "\n[[listener]] # EXPECT-FROM\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {LINK}\ntls = \"site\" # EXPECT-TO\n\n[[tcp_listener]]",
    );
    // {LINK} must be the same port twice: fill it once by hand.
    let port = free_port().to_string();
    expect_error("duplicate-port", &dup.replace("{LINK}", &port));
}

#[test]
fn duplicate_port_across_listener_kinds() {
    // The tcp_listener reuses the inter-router listener's port.
    let port = free_port().to_string();
    let text = GOOD
        .replace("{LINK}", &port)
        .replace("[[tcp_listener]]", "[[tcp_listener]] # EXPECT-FROM")
        .replace("port = {CLIENT}", &format!("port = {port} # EXPECT-TO"));
    expect_error("duplicate-port-kinds", &text);
}

#[test]
fn duplicate_name() {
    // A second [tls.site] profile: the duplicate table is the error.
    expect_error(
        "duplicate-tls-name",
        &format!("{GOOD}\n[tls.site] # EXPECT\nca = \"ca.pem\"\ncert = \"east.pem\"\nkey = \"east-key.pem\"\n"),
    );
}

#[test]
fn tls_names_a_missing_profile() {
    expect_error(
        "missing-profile",
        &GOOD.replace("tls = \"site\"", "tls = \"nosuchprofile\" # EXPECT"),
    );
}

#[test]
fn unreadable_cert_file() {
    expect_error(
        "unreadable-cert",
        &GOOD.replace(
            "cert = \"east.pem\"",
            "cert = \"does-not-exist.pem\" # EXPECT",
        ),
    );
}

#[test]
fn unreadable_key_file() {
    expect_error(
        "unreadable-key",
        &GOOD.replace(
            "key = \"east-key.pem\"",
            "key = \"does-not-exist-key.pem\" # EXPECT",
        ),
    );
}

#[test]
fn unreadable_ca_file() {
    expect_error(
        "unreadable-ca",
        &GOOD.replace("ca = \"ca.pem\"", "ca = \"no-such-ca.pem\" # EXPECT"),
    );
}

#[test]
fn key_not_matching_cert() {
    expect_error(
        "key-mismatch",
        &GOOD
            .replace("[tls.site]", "[tls.site] # EXPECT-FROM")
            .replace("cert = \"east.pem\"", "cert = \"east-mismatch.pem\"")
            .replace(
                "key = \"east-key.pem\"",
                "key = \"east-mismatch-key.pem\" # EXPECT-TO",
            ),
    );
}

#[test]
fn inter_router_listener_without_tls() {
    expect_error(
        "listener-no-tls",
        &GOOD
            .replace("[[listener]]", "[[listener]] # EXPECT-FROM")
            .replace(
                "port = {LINK}\ntls = \"site\"\n",
                "port = {LINK} # EXPECT-TO\n",
            ),
    );
}

#[test]
fn inter_router_connector_without_tls() {
    let text = GOOD.replace(
        "\n[[tcp_listener]]",
        "\n[[connector]] # EXPECT-FROM\nrole = \"inter-router\"\nhost = \"127.0.0.1\"\nport = {CLIENT}\ncost = 1 # EXPECT-TO\n\n[[tcp_listener]]",
    );
    // The connector gets its own target port ({CLIENT} is the tcp_listener's).
    let text = text.replacen(
        "port = {CLIENT}\ncost",
        &format!("port = {}\ncost", free_port()),
        1,
    );
    expect_error("connector-no-tls", &text);
}

#[test]
fn hello_interval_below_minimum() {
    expect_error(
        "hello-too-small",
        &GOOD.replace(
            "id = \"east\"\n",
            "id = \"east\"\nhello_interval_ms = 50 # EXPECT\n",
        ),
    );
}

#[test]
fn dead_interval_not_above_hello() {
    expect_error(
        "dead-not-above-hello",
        &GOOD.replace(
            "id = \"east\"\n",
            "id = \"east\"\nhello_interval_ms = 1000 # EXPECT-FROM\ndead_interval_ms = 1000 # EXPECT-TO\n",
        ),
    );
}
