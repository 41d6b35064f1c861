//! The command line outside the data path: `tether certs` and clean exits.
//!
//! - `tether certs --out DIR east west` writes ca.pem, ca-key.pem and a
//!   leaf and key per name, and two routers configured with those files
//!   bring a link up (so the SANs and usages are right for mutual TLS).
//! - A router exits 0 on SIGTERM and on SIGINT.

use std::time::Duration;

use tether_tests::router::wait_connectable;
use tether_tests::{free_port, RouterConfig, RouterProc, TestEnv, TlsProfile};

#[test]
fn certs_command_writes_a_usable_pki() {
    let env = TestEnv::new("cli-certs");
    let out_dir = env.dir().join("generated");
    let out = env.bin.certs(&out_dir, &["east", "west"]);
    assert!(out.success(), "`tether certs` failed\n{}", out.describe());
    for f in [
        "ca.pem",
        "ca-key.pem",
        "east.pem",
        "east-key.pem",
        "west.pem",
        "west-key.pem",
    ] {
        let p = out_dir.join(f);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            text.contains("-----BEGIN "),
            "{} is not PEM:\n{text}",
            p.display()
        );
    }
    let cert = std::fs::read_to_string(out_dir.join("east.pem")).unwrap();
    assert!(
        cert.contains("BEGIN CERTIFICATE"),
        "east.pem holds no certificate"
    );
    let key = std::fs::read_to_string(out_dir.join("east-key.pem")).unwrap();
    assert!(
        key.contains("PRIVATE KEY"),
        "east-key.pem holds no private key"
    );

    // Configs in the generated folder, naming the generated files.
    let link = free_port();
    let profile = |n: &str| TlsProfile::new("ca.pem", &format!("{n}.pem"), &format!("{n}-key.pem"));
    let east_cfg = RouterConfig::new("east")
        .listener(link, "site")
        .tls("site", profile("east"));
    let west_cfg = RouterConfig::new("west")
        .connector(link, "site")
        .tls("site", profile("west"));
    for (name, cfg) in [("east.toml", &east_cfg), ("west.toml", &west_cfg)] {
        let p = out_dir.join(name);
        std::fs::write(&p, cfg.to_toml()).unwrap();
        let check = env.bin.check_config(&p);
        assert!(
            check.success(),
            "--check on {name} with `tether certs` files\n{}",
            check.describe()
        );
    }
    let east = RouterProc::start_in(&env, &east_cfg, &out_dir);
    let west = RouterProc::start_in(&env, &west_cfg, &out_dir);
    RouterProc::check(
        east.wait_link_up("west", 0, Duration::from_secs(10)),
        &[&east, &west],
    );
    RouterProc::check(
        west.wait_link_up("east", 0, Duration::from_secs(10)),
        &[&east, &west],
    );
}

fn exits_zero_on(sig: i32, name: &str) {
    let env = TestEnv::new(&format!("cli-{name}"));
    let link = free_port();
    let r = env.start_router(
        &RouterConfig::new("solo")
            .listener(link, "site")
            .tls("site", env.tls_for("solo")),
    );
    if let Err(e) = wait_connectable(link, Duration::from_secs(10), &[&r]) {
        panic!("router never listened: {e}");
    }
    match r.terminate_with(sig, Duration::from_secs(5)) {
        Some(st) if st.success() => {}
        Some(st) => panic!(
            "router exited with {st} on {name}, expected 0\n{}",
            r.tail(30)
        ),
        None => panic!("router did not exit within 5 s of {name}\n{}", r.tail(30)),
    }
}

#[test]
fn router_exits_zero_on_sigterm() {
    exits_zero_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn router_exits_zero_on_sigint() {
    exits_zero_on(libc::SIGINT, "SIGINT");
}
