#!/usr/bin/env bash
# Media relay: the same RTP streams through callbridge and through rtpengine (userspace),
# measured by media_load in the same run. Writes benches/results/media.md.
#
#   benches/load/media.sh                 sizes 50 200 500 1000 calls, 10 s each, both relays;
#                                         callbridge's memory per active call measured too
#   QUICK=1 benches/load/media.sh         20 calls × 3 s through callbridge only; fails on any
#                                         lost packet (never on timing)
# Environment: SIZES="50 200 500 1000" SECONDS_PER_RUN=10 PPS=50 OUT=file
#   RTP_PORTS=first-last (default: 8000 ports chosen free at run time below the ephemeral range)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
quick=${QUICK:-0}
sizes=${SIZES:-50 200 500 1000}
secs=${SECONDS_PER_RUN:-10}
pps=${PPS:-50}
# shellcheck source=../../scripts/ports.sh
source "$repo/scripts/ports.sh"
if [[ -n ${RTP_PORTS:-} ]]; then ports=$RTP_PORTS; else free_port_range ports 8000; fi
out=${OUT:-$repo/benches/results/media.md}

if [[ $quick != 1 ]] && ! command -v rtpengine >/dev/null 2>&1; then
    echo "==> installing rtpengine-daemon (userspace relay used as the reference)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends rtpengine-daemon
    # The package starts a system daemon; the benchmark starts its own.
    systemctl stop rtpengine-daemon >/dev/null 2>&1 || pkill -x rtpengine || true
fi
cargo build --release --locked -p callbridge -p callbridge-benches --bin callbridge --bin media_load
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
tool="$target/release/media_load"

if [[ $quick == 1 ]]; then
    exec "$tool" --callbridge "$target/release/callbridge" --calls 20 --seconds 3 \
        --rtp-ports "$ports" --fail-on-loss
fi

rows=()
for n in $sizes; do
    for relay in callbridge rtpengine; do
        if [[ $relay == callbridge ]]; then
            args=(--callbridge "$target/release/callbridge" --memory)
        else
            args=(--rtpengine "$(command -v rtpengine)")
        fi
        log=$(mktemp)
        echo "==> $relay, $n calls, $secs s"
        "$tool" "${args[@]}" --calls "$n" --seconds "$secs" --pps "$pps" --rtp-ports "$ports" \
            --log "/tmp/media_load-$relay.log" | tee "$log"
        per_cpu=$(sed -n 's/.*PACKETS RELAYED PER CPU-SECOND: \([0-9]*\).*/\1/p' "$log")
        relayed=$(sed -n 's/^packets sent [0-9]*  relayed (received) \([0-9]*\)  lost \([0-9]*\).*/\1 \2/p' "$log")
        latency=$(sed -n 's/^latency (both directions) p50 \([0-9]*\) us  p99 \([0-9]*\) us.*/\1 \2/p' "$log")
        cpu=$(sed -n "s/^$relay CPU \([0-9.]*\) s.*/\1/p" "$log")
        memory=$(sed -n 's/.*MEMORY PER ACTIVE CALL: \([0-9.]*\) KiB (at the end of setup: \([0-9.]*\) KiB).*/\1 KiB (\2)/p' "$log")
        rows+=("$n|$relay|${relayed% *}|${relayed#* }|$cpu|$per_cpu|${latency% *}|${latency#* }|${memory:-}")
        rm -f "$log"
    done
done

{
    echo "## Media relay: callbridge against rtpengine"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- callbridge $(git rev-parse --short HEAD); rtpengine $(rtpengine --version 2>&1 | head -1 | sed 's/Version: //') (userspace, \`--table=-1\`, 2 threads)"
    echo "- Command: \`benches/load/media.sh\` (media_load: ${secs} s of ${pps} pps per direction per call, PCMU-sized packets; relay CPU from /proc)"
    echo
    echo "| calls | relay | relayed | lost | relay CPU s | **relayed per CPU-second** | latency p50 / p99 µs | ratio callbridge / rtpengine | memory per active call |"
    echo "|---|---|---|---|---|---|---|---|---|"
    prev=""
    for row in "${rows[@]}"; do
        IFS='|' read -r n relay relayed lost cpu per_cpu p50 p99 memory <<<"$row"
        ratio=""
        if [[ $relay == rtpengine && -n $prev && -n $per_cpu && $per_cpu != 0 ]]; then
            ratio=$(awk -v a="$prev" -v b="$per_cpu" 'BEGIN { printf "%.2f×", a / b }')
        fi
        [[ $relay == callbridge ]] && prev=$per_cpu
        echo "| $n | $relay | $relayed | $lost | $cpu | **$per_cpu** | $p50 / $p99 | $ratio | $memory |"
    done
    echo
    echo "Target: ≥ 2× rtpengine's packets per CPU-second, 0 loss at 1,000 calls, p99 added latency < 1 ms."
    echo "The generator runs on the same 2 cores as the relay: read ratios, not absolute numbers."
    echo
    echo "*Memory per active call* (callbridge; target ≤ 16 KiB beyond kernel socket buffers): growth of"
    echo "callbridge's PSS (\`/proc/<pid>/smaps_rollup\`; kernel socket buffers are not in it) from before"
    echo "the calls to when they are all up, divided by the calls. Taken with no transaction left"
    echo "(64·T1 after the last setup; media_load runs T1 = 100 ms) and 5 s later, once the allocator"
    echo "has given the setup's freed pages back (jemalloc, 1 s decay); in brackets, the figure when the"
    echo "last setup transaction ended. The calls carry media while measured: relay sockets and tasks included."
} >"$out"
echo "wrote $out"
