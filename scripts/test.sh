#!/usr/bin/env bash
# The one command that runs every check of callbridge: formatting, lints, all test suites
# (unit, property, end-to-end over loopback sockets) and the SIPp run through the real binary
# (SIPp is installed first if missing; SKIP_SIPP=1 leaves that run out). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked

step "SIPp end-to-end through the release binary (sipp-scenarios/run.sh)"
./scripts/ensure-tools.sh
./sipp-scenarios/run.sh
