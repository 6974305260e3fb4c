#!/usr/bin/env bash
# Criterion micro-benchmarks (SIP parse/write, transaction matching, intent table, SDP rewrite),
# summarised into benches/results/micro.md from criterion's own estimates.
# Environment: CRITERION_ARGS="--warm-up-time 1 --measurement-time 3"  OUT=file
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
out=${OUT:-$repo/benches/results/micro.md}
# shellcheck disable=SC2086
cargo bench --locked -p callbridge-benches --benches -- ${CRITERION_ARGS:---warm-up-time 1 --measurement-time 3}
python3 - "$target/criterion" "$out" "$(git rev-parse --short HEAD)" <<'PY'
import json, os, sys, datetime
root, out, rev = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
for dirpath, _, files in os.walk(root):
    if dirpath.endswith(os.sep + "new") and "estimates.json" in files and "benchmark.json" in files:
        bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
        est = json.load(open(os.path.join(dirpath, "estimates.json")))
        mean = est["mean"]
        rows.append((bench["full_id"], mean["point_estimate"], mean["confidence_interval"]["lower_bound"], mean["confidence_interval"]["upper_bound"]))
def fmt(ns):
    return f"{ns/1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"
with open(out, "w") as f:
    f.write("## Micro-benchmarks (criterion)\n\n")
    f.write(f"- Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; commit {rev}; command: `benches/load/micro.sh`\n\n")
    f.write("| benchmark | mean | 95 % interval |\n|---|---|---|\n")
    for name, mean, lo, hi in sorted(rows):
        f.write(f"| `{name}` | **{fmt(mean)}** | {fmt(lo)} – {fmt(hi)} |\n")
print("wrote", out)
PY
