#!/usr/bin/env bash
# Runs every test of the project from a fresh clone: installs the system
# tools the tests use (when missing), builds the release `tether` binary the
# cross-process tests start, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
# The AMQP tests' clients (tests/amqp/*.py) run on the system Python.
/usr/bin/python3 -c 'import proton' >/dev/null 2>&1 || need+=(python3-qpid-proton)
# The metrics tests parse /metrics with Prometheus's own Python parser.
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing test tools: ${need[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
      || echo "warning: could not install ${need[*]}; tests needing them may fail" >&2
  else
    echo "warning: not root, cannot install ${need[*]}; tests needing them may fail" >&2
  fi
fi

cargo build --release -p tether-router
export TETHER_BIN="$PWD/target/release/tether"
# The AMQP tests run real Qpid Proton clients: a missing Proton is a failure here.
export TETHER_REQUIRE_PROTON=1
export TETHER_REQUIRE_PROMETHEUS_CLIENT=1
cargo test --workspace --release -- --test-threads="${TEST_THREADS:-2}"
# The 1000-router simulation (ignored in unoptimised runs): correctness of
# every route at scale; its wall time is reported, not asserted.
cargo test --release -p tether-routing --test sim -- --ignored --nocapture a_thousand_routers
