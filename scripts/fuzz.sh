#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a bounded time, so that a target that no
# longer builds, or an input the seeds and a short run find, fails CI instead of rotting unseen.
# cargo-fuzz is installed from crates.io when missing. The targets need nightly features
# (-Zsanitizer, libFuzzer's instrumentation); on the stable toolchain, the only one this machine
# has, RUSTC_BOOTSTRAP=1 enables them.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS=60 each
#   FUZZ_SECONDS=600 scripts/fuzz.sh parse
# New inputs found go to a temporary corpus (removed); seeds in fuzz/seeds/<target> are read only.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    seeds=fuzz/seeds/$target
    mkdir -p "$work/$target"
    echo "==> fuzz target $target: ${seconds} s"
    # -max_len: SIP messages up to the parser's default limit; -rss_limit_mb bounds memory.
    cargo fuzz run --fuzz-dir fuzz "$target" "$work/$target" $([[ -d $seeds ]] && echo "$seeds") -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)|^"|ecommended dictionary' || { echo "fuzz target $target failed" >&2; exit 1; }
done
