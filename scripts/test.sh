#!/usr/bin/env bash
# The one command that runs every check of callbridge: formatting, lints, the rust-version
# claim, all test suites (unit, property, end-to-end over loopback sockets, the carrier tests
# against a real Kamailio), the SIPp run through the real binary (SIPp and Kamailio are
# installed first if missing; SKIP_SIPP=1 leaves the SIPp run out), a media relay check, a
# two-minute soak through SIPp with RTP (benches/load/soak.sh QUICK=1; SKIP_SOAK=1 or
# SKIP_SIPP=1 leaves it out) and a bounded fuzzing run of every fuzz target (SKIP_FUZZ=1 leaves
# it out; FUZZ_SECONDS sets its length). Right after the workspace tests, schemathesis
# checks the release binary's HTTP API against its OpenAPI document (scripts/schemathesis.sh,
# about a minute; SKIP_SCHEMATHESIS=1 leaves it out), and the Python webhook receiver of
# examples/ is checked against the server's signed events (scripts/webhook-example.sh). After
# the SIPp run, the cluster test: three nodes behind a Kamailio dispatcher, a kill -9 during
# calls (deploy/cluster/test.sh, about 70 s; SKIP_CLUSTER=1 or SKIP_SIPP=1 leaves it out). CI
# runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "rust-version is the real minimum (dependencies; clippy checked our own code)"
./scripts/check-msrv.sh

# Before the tests: the carrier tests (sip-tests/tests/carrier.rs) start a real Kamailio and
# the trunk DNS tests (sip-tests/tests/trunk_dns.rs) a real dnsmasq, the store's tests a real
# PostgreSQL (crates/store/src/testing.rs), and fail without them;
# this installs them (and SIPp, used further down) when missing.
step "tools: SIPp, curl, Kamailio, dnsmasq, Redis and PostgreSQL installed if missing (scripts/ensure-tools.sh)"
./scripts/ensure-tools.sh

step "cargo test --workspace"
cargo test --workspace --locked

if [[ "${SKIP_SCHEMATHESIS:-0}" != 1 ]]; then
    step "API conformance: schemathesis against the release binary and its /api/openapi.json (scripts/schemathesis.sh)"
    ./scripts/schemathesis.sh
fi

step "webhooks: examples/webhook_receiver.py verifies the release binary's events (scripts/webhook-example.sh)"
./scripts/webhook-example.sh

step "SIPp end-to-end through the release binary (sipp-scenarios/run.sh)"
./sipp-scenarios/run.sh

if [[ "${SKIP_SIPP:-0}" != 1 && "${SKIP_CLUSTER:-0}" != 1 ]]; then
    step "cluster: three nodes behind a Kamailio dispatcher, kill -9 of one during calls (deploy/cluster/test.sh)"
    ./deploy/cluster/test.sh
fi

step "media relay quick check: 20 calls × 3 s of RTP both ways, any lost packet fails"
cargo build --release --locked -p callbridge -p callbridge-benches --bin callbridge --bin media_load
target_dir=${CARGO_TARGET_DIR:-target}
# shellcheck source=ports.sh
source scripts/ports.sh
free_port_range rtp_ports 400
free_port sip_port
free_port api_port
"$target_dir/release/media_load" --callbridge "$target_dir/release/callbridge" \
    --calls 20 --seconds 3 --rtp-ports "$rtp_ports" --sip-port "$sip_port" --api-port "$api_port" \
    --fail-on-loss

if [[ "${SKIP_SIPP:-0}" != 1 && "${SKIP_SOAK:-0}" != 1 ]]; then
    step "soak, quick: 1 min at 50 calls/s held 5 s with RTP; any failed call, leftover or growing RSS fails (benches/load/soak.sh)"
    QUICK=1 CALLBRIDGE_BIN="$target_dir/release/callbridge" ./benches/load/soak.sh
fi

if [[ "${SKIP_FUZZ:-0}" != 1 ]]; then
    step "fuzzing: every target in fuzz/ built and run ${FUZZ_SECONDS:-60} s (scripts/fuzz.sh)"
    ./scripts/fuzz.sh
fi
