//! Harness for Tether's cross-process integration tests.
//!
//! The tests in `tests/tests/*.rs` run the real `tether` binary as separate
//! processes on loopback and talk to them with plain `std::net` sockets: no
//! async runtime, no code shared with the router, so the tests check the
//! contract of the binary and nothing else.
//!
//! What lives here:
//! - [`binary`]: finding the `tether` binary ([`Tether`]) and running it
//!   with a bounded wait ([`binary::run_bounded`]).
//! - [`certs`]: a test PKI made with rcgen ([`Certs`]): a CA, router leaf
//!   certificates, an unrelated second CA and an expired leaf.
//! - [`config`]: a builder for router TOML files ([`RouterConfig`]).
//! - [`router`]: a running router process ([`RouterProc`]): spawns it, keeps
//!   its stderr in a file, greps it, signals it, kills it on drop.
//! - [`net`]: free ports, connect helpers with timeouts, readiness polling.
//! - [`pair`]: the usual east/west topology, started and waited for.
//! - [`network`]: N routers with named links (optionally through a
//!   [`Relay`]), started and waited for; live cost changes by SIGHUP.
//! - [`relay`]: an in-process TCP relay that can cut ([`Relay::kill`]) or
//!   silence ([`Relay::freeze`]) one inter-router link.
//! - [`flows`]: client traffic generators (byte-exact echo, download rate,
//!   recovery probes).
//! - [`services`]: threaded echo, source/sink and custom TCP services that
//!   stand for the "real service" behind a `tcp_connector`.
//! - [`procfs`]: RSS and CPU time of a process, the file-descriptor limit.
//! - [`proton`]: running the Proton (Python) AMQP client programs of
//!   `tests/amqp/` with bounded waits and reading their JSON lines.
//! - [`tlspeer`]: a rustls client/server standing in for a peer router, for
//!   certificates a real router would refuse to start with.
//!
//! Every wait in this crate is bounded (a deadline and a loop count), every
//! socket has read and write timeouts, and every process it starts is killed
//! by PID when its handle is dropped, so a missing or broken binary makes the
//! tests fail, never hang.
//!
//! [`TestEnv`] ties these together for one test: a temporary folder holding
//! the certificates, the configs and the router logs.

pub mod binary;
pub mod certs;
pub mod config;
pub mod flows;
pub mod halfclose;
pub mod net;
pub mod network;
pub mod pair;
pub mod procfs;
pub mod proton;
pub mod relay;
pub mod router;
pub mod services;
pub mod tlspeer;

use std::path::Path;

pub use binary::Tether;
pub use certs::{Certs, LeafFiles};
pub use config::{ClientListener, Distribution, RouterConfig, TlsProfile};
pub use net::{free_port, wait_until_connectable};
pub use network::{Network, NetworkSpec};
pub use pair::{Pair, PairSpec};
pub use relay::Relay;
pub use router::RouterProc;
pub use services::Service;

/// Per-test environment: a temporary folder with a fresh test PKI, and the
/// located `tether` binary.
///
/// The folder is deleted when the environment is dropped, unless the test is
/// panicking or `TETHER_TEST_KEEP=1` is set: then it is kept and its path is
/// printed, so the router logs and configs of a failed test can be read.
pub struct TestEnv {
    dir: tempfile::TempDir,
    /// The test PKI, written into [`TestEnv::dir`].
    pub certs: Certs,
    /// The binary under test.
    pub bin: Tether,
    name: String,
}

impl TestEnv {
    /// A new environment for the test called `name` (used in the folder name
    /// and in messages). Panics if the binary cannot be found.
    pub fn new(name: &str) -> TestEnv {
        let bin = Tether::locate();
        let dir = tempfile::Builder::new()
            .prefix(&format!("tether-{name}-"))
            .tempdir()
            .expect("create temporary folder");
        let certs = Certs::generate(dir.path());
        TestEnv {
            dir,
            certs,
            bin,
            name: name.to_string(),
        }
    }

    /// The folder holding certificates, configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A TLS profile for router `name` with a leaf from the test CA
    /// (creating the leaf files on first use).
    pub fn tls_for(&self, name: &str) -> TlsProfile {
        let leaf = self.certs.leaf(name);
        TlsProfile::new(certs::CA_FILE, &leaf.cert, &leaf.key)
    }

    /// Starts a router with this config (see [`RouterProc::start`]).
    pub fn start_router(&self, cfg: &RouterConfig) -> RouterProc {
        RouterProc::start(self, cfg)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let keep =
            std::thread::panicking() || std::env::var("TETHER_TEST_KEEP").is_ok_and(|v| v == "1");
        if keep {
            self.dir.disable_cleanup(true);
            eprintln!(
                "[{}] test files kept in {}",
                self.name,
                self.dir.path().display()
            );
        }
    }
}

/// Formats a byte rate as MiB/s for messages.
pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}
