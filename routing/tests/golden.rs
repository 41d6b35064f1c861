//! Golden routes: small topology files in `tests/data/` (`<name>.toml`, the
//! `tether sim --topology` format) each with the routes worked out by hand
//! (`<name>.routes`). The network of engines runs to convergence on the
//! simulator and every router's route to every other router must match
//! the file line for line: next hop and cost, or unreachable.

use std::path::PathBuf;

use tether_routing::sim::{parse_topology_file, SimConfig, Simulation};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Converges `<name>.toml` and writes every router's routes in the
/// `.routes` format, routers and destinations in name order.
fn converged_routes(name: &str) -> Vec<String> {
    let net = parse_topology_file(&data(&format!("{name}.toml"))).unwrap();
    let mut routers = net.routers.clone();
    routers.sort();
    let mut sim = Simulation::new(SimConfig::new(net, name));
    let phase = sim.converge("start");
    // The simulator's own check against its independent computation too.
    assert!(phase.passed(), "{name}: {phase:?}");
    let mut out = Vec::new();
    for from in &routers {
        let engine = sim.engine(from).unwrap();
        for to in routers.iter().filter(|to| *to != from) {
            out.push(match engine.route(to) {
                Some(r) => format!("{from} -> {to}: via {}, cost {}", r.next_router, r.cost),
                None => format!("{from} -> {to}: unreachable"),
            });
        }
    }
    out
}

/// The lines of `<name>.routes` without comments and blank lines.
fn golden(name: &str) -> Vec<String> {
    let path = data(&format!("{name}.routes"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn check(name: &str) {
    let want = golden(name);
    let got = converged_routes(name);
    if want != got {
        let diff: Vec<String> = want
            .iter()
            .filter(|l| !got.contains(l))
            .map(|l| format!("  want {l}"))
            .chain(
                got.iter()
                    .filter(|l| !want.contains(l))
                    .map(|l| format!("  got  {l}")),
            )
            .collect();
        panic!(
            "{name}: routes differ from {name}.routes:\n{}\nall routes now:\n{}",
            diff.join("\n"),
            got.join("\n")
        );
    }
}

#[test]
fn diamond_matches_its_golden_routes() {
    check("diamond");
}

#[test]
fn kite_matches_its_golden_routes() {
    check("kite");
}

#[test]
fn mesh8_matches_its_golden_routes() {
    check("mesh8");
}
