#!/usr/bin/env bash
# The one command that reproduces BENCHMARKS.md: installs the references (SIPp, Kamailio,
# rtpengine, wrk) from Debian if missing, runs every part of the harness, and writes
# BENCHMARKS.md from the parts' results (benches/results/*.md).
#
#   benches/run.sh            everything (about 20-30 minutes on 2 cores)
#   QUICK=1 benches/run.sh    the CI quick mode: 100 calls/s of signalling, 20 RTP calls and a
#                             short API run through callbridge; fails on any failed call, lost
#                             packet or HTTP error, never on timing; BENCHMARKS.md untouched
#   PARTS="micro media"       run only some parts (micro media signalling api; also soak, not
#                             run by default: benches/load/soak.sh, 30 minutes, QUICK=1 one;
#                             its section, benches/results/soak.md, is written by hand from a run;
#                             PARTS=write runs nothing and only writes BENCHMARKS.md again)
#   SIGNALLING_SERVERS=...    SERVERS for the signalling part only, API_SERVERS=... for the api
#   API_SERVERS=...           part only (SERVERS itself reaches every part); e.g. with webhooks:
#     SIGNALLING_SERVERS="callbridge kamailio callbridge-hooks callbridge-hooks-stalled" \
#     API_SERVERS="hello callbridge callbridge-warn callbridge-hooks callbridge-hooks-stalled" \
#     PARTS="signalling api" benches/run.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
parts=${PARTS:-micro media signalling api}
quick=${QUICK:-0}

# Runs a part's script, with SERVERS set to $1 when $1 is not empty.
with_servers() { # servers script
    local servers=$1
    shift
    if [[ -n $servers ]]; then SERVERS=$servers "$@"; else "$@"; fi
}

for part in $parts; do
    printf '\n==> benchmark part: %s%s\n' "$part" "$([[ $quick == 1 ]] && echo ' (quick)')"
    case $part in
        micro) [[ $quick == 1 ]] || benches/load/micro.sh ;;
        media) QUICK=$quick benches/load/media.sh ;;
        signalling) QUICK=$quick with_servers "${SIGNALLING_SERVERS:-}" benches/load/signalling.sh ;;
        api) QUICK=$quick with_servers "${API_SERVERS:-}" benches/load/api.sh ;;
        soak) QUICK=$quick benches/load/soak.sh ;;
        write) ;; # nothing to run: BENCHMARKS.md is written again from benches/results/
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done
[[ $quick == 1 ]] && exit 0

{
    cat <<'HEAD'
# Benchmarks

Written by `benches/run.sh` (one command; it installs SIPp, Kamailio, rtpengine and wrk from
Debian when missing). Every comparison runs callbridge and its reference in the same run on
the same machine: a 2-core virtual machine shared with other work, where the load generator
competes with the server for the same cores. Read the ratios and the CPU per unit of work; the
absolute numbers are noise-prone. Each part's section says how it was measured and which
target it is held to.

HEAD
    # profiling.md is written by hand (what was profiled and fixed, with before/after figures),
    # and so are soak.md (the soak's results block with what was run), webhooks.md (what
    # the webhook runs of signalling and api showed) and nodes.md (the api runs with Redis and
    # PostgreSQL: several nodes); the other parts are written by their scripts.
    for part in profiling micro signalling media api webhooks nodes soak; do
        if [[ -f benches/results/$part.md ]]; then
            # Each part is a section of this page: its headings move one level down when its
            # title is a level-1 heading (outside code blocks).
            awk 'NR == 1 { demote = /^# / }
                 /^```/ { fence = !fence }
                 demote && !fence && /^#+ / { $0 = "#" $0 }
                 { print }' "benches/results/$part.md"
            echo
        fi
    done
} >BENCHMARKS.md
echo "wrote BENCHMARKS.md"
