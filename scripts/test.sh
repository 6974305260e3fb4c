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

step "media relay quick check: 20 calls × 3 s of RTP both ways, any lost packet fails"
cargo build --release --locked -p callbridge -p callbridge-benches --bin callbridge --bin media_load
target_dir=${CARGO_TARGET_DIR:-target}
"$target_dir/release/media_load" --callbridge "$target_dir/release/callbridge" \
    --calls 20 --seconds 3 --rtp-ports 42000-43999 --fail-on-loss
