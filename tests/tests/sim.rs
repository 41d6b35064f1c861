//! `tether sim` as a user runs it: generated networks converge and verify,
//! a topology file answers "what if these links fail?", and bad input is a
//! clear error with a non-zero exit.

use std::path::PathBuf;
use std::time::Duration;

use tether_tests::binary::run_bounded;
use tether_tests::Tether;

fn sim(args: &[&str]) -> tether_tests::binary::Output {
    let mut cmd = Tether::locate().command();
    cmd.arg("sim").args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

#[test]
fn generated_networks_converge_and_every_route_verifies() {
    for topo in [
        &["--routers", "40", "--topology", "ring"][..],
        &["--routers", "36", "--topology", "grid", "--fail-links", "4"][..],
        &[
            "--routers",
            "60",
            "--topology",
            "random",
            "--degree",
            "4",
            "--seed",
            "9",
            "--fail-links",
            "6",
        ][..],
    ] {
        let out = sim(topo);
        assert!(out.success(), "{topo:?}: {}", out.describe());
        assert!(
            out.stdout.contains("result: PASSED"),
            "{topo:?}: {}",
            out.describe()
        );
        assert!(
            out.stdout.contains(" 0 wrong"),
            "{topo:?}: {}",
            out.describe()
        );
        assert!(
            out.stdout.contains("converged"),
            "{topo:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn topology_file_answers_what_if_links_fail() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../routing/tests/data/diamond.toml");
    let file = file.to_str().expect("utf-8 path");
    let out = sim(&["--topology", file, "--fail-links", "a-b,d-e"]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("after failing 2 link(s)"),
        "{}",
        out.describe()
    );
    // Cutting d-e leaves e alone: its pairs are reported unreachable, and
    // that is verified as correct, not as wrong.
    assert!(
        out.stdout.contains("correctly unreachable"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("result: PASSED"), "{}", out.describe());
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = sim(&["--topology", "/nonexistent/net.toml"]);
    assert!(!out.success());
    assert!(out.stderr.contains("No such file"), "{}", out.describe());
    let out = sim(&["--routers", "10", "--topology", "ring", "--degree", "3"]);
    assert!(!out.success());
    assert!(out.stderr.contains("--degree"), "{}", out.describe());
    let out = sim(&[
        "--routers",
        "10",
        "--topology",
        "ring",
        "--fail-links",
        "r0-nobody",
    ]);
    assert!(!out.success(), "{}", out.describe());
}
