//! End-to-end checks of `tether_router::config::load`: real files on disk,
//! certificates generated with `tls::generate_site_certs`, and the exact
//! `FILE:LINE:COL: message` text an operator sees.

use std::fs;
use std::path::{Path, PathBuf};

use tether_router::config::{self, Role};
use tether_router::tls;

const GOOD: &str = r#"# east.toml
[router]
id = "east"

[[listener]]
role = "inter-router"
host = "127.0.0.1"
port = 55671
tls = "site"

[[connector]]
role = "inter-router"
host = "127.0.0.1"
port = 55672
tls = "site"

[[tcp_listener]]
address = "backend"
port = 9000

[[tcp_connector]]
address = "backend"
host = "127.0.0.1"
port = 8080

[tls.site]
ca = "certs/ca.pem"
cert = "certs/east.pem"
key = "certs/east-key.pem"
"#;

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        tls::generate_site_certs(&dir.path().join("certs"), &["east", "west"]).expect("certs");
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("east.toml")
    }

    /// Writes `text` as east.toml and returns load()'s error as displayed.
    fn error(&self, text: &str) -> String {
        fs::write(self.config(), text).expect("write config");
        match config::load(&self.config()) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => {
                let shown = e.to_string();
                let prefix = format!("{}:", self.config().display());
                shown
                    .strip_prefix(&prefix)
                    .map(|rest| format!("east.toml:{rest}"))
                    .unwrap_or(shown)
            }
        }
    }
}

#[test]
fn good_config_loads() {
    let site = Site::new();
    fs::write(site.config(), GOOD).expect("write");
    let cfg = config::load(&site.config()).expect("valid config");
    assert_eq!(cfg.router.id, "east");
    assert_eq!(cfg.listeners[0].role, Role::InterRouter);
    assert_eq!(cfg.listeners[0].name, "listener/127.0.0.1:55671");
    assert_eq!(cfg.connectors[0].name, "connector/127.0.0.1:55672");
    assert_eq!(cfg.tcp_listeners[0].name, "tcp_listener/backend/9000");
    assert_eq!(
        cfg.tcp_connectors[0].name,
        "tcp_connector/backend/127.0.0.1:8080"
    );
    let site_profile = &cfg.tls["site"];
    assert_eq!(site_profile.cert, site.dir.path().join("certs/east.pem"));
    let alpn = &site_profile.material.server.alpn_protocols;
    assert_eq!(alpn, &vec![tls::ALPN_PROTOCOL.to_vec()]);
}

#[test]
fn missing_config_file() {
    let err = config::load(Path::new("/nonexistent/east.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/east.toml:1:1: cannot read config: No such file or directory"
    );
}

#[test]
fn errors_point_at_the_offending_key() {
    let site = Site::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "tls = \"site\"\n\n[[connector]]",
            "tls = \"stie\"\n\n[[connector]]",
            "east.toml:9:7: listener[0].tls: no TLS profile named \"stie\" (defined: site); did you mean \"site\"?",
        ),
        (
            "id = \"east\"",
            "idd = \"east\"",
            "east.toml:3:1: unknown key \"idd\" in [router], expected one of: id, hello_interval_ms, dead_interval_ms, advertisement_interval_ms, flow_window, auto_listeners, revoked_peers (did you mean \"id\"?)",
        ),
        (
            "port = 55672\n",
            "port = \"55672\"\n",
            "east.toml:14:8: connector[0].port: expected an integer, found string \"55672\"",
        ),
        (
            "port = 9000",
            "port = 55671",
            "east.toml:19:8: tcp_listener[0].port: 127.0.0.1:55671 is already used by listener[0] (127.0.0.1:55671, line 8)",
        ),
        (
            "tls = \"site\"\n\n[[tcp_listener]]",
            "\n\n[[tcp_listener]]",
            "east.toml:11:1: connector[0]: missing required key \"tls\": plain-text inter-router links are not configurable; name a TLS profile, e.g. tls = \"site\" with a [tls.site] section",
        ),
        (
            "role = \"inter-router\"\nhost = \"127.0.0.1\"\nport = 55671",
            "role = \"edge\"\nhost = \"127.0.0.1\"\nport = 55671",
            "east.toml:6:8: listener[0].role: unknown role \"edge\", expected \"inter-router\" or \"normal\"",
        ),
        (
            "key = \"certs/east-key.pem\"",
            "key = \"certs/west-key.pem\"",
            "does not match certificate",
        ),
        (
            "cert = \"certs/east.pem\"",
            "cert = \"certs/east-key.pem\"",
            "east.toml:28:8: tls.site.cert: certificate file",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "{from:?}");
        let shown = site.error(&GOOD.replacen(from, to, 1));
        if expected.starts_with("east.toml:") {
            assert!(
                shown.starts_with(expected),
                "\n got: {shown}\nwant: {expected}"
            );
        } else {
            assert!(
                shown.contains(expected),
                "\n got: {shown}\nwant: {expected}"
            );
        }
    }
}

#[test]
fn key_mismatch_points_at_key() {
    let site = Site::new();
    let shown = site.error(&GOOD.replace("certs/east-key.pem", "certs/west-key.pem"));
    assert!(
        shown.starts_with("east.toml:29:7: tls.site.key: private key "),
        "{shown}"
    );
}
