#!/usr/bin/env bash
# Signalling load benchmark: callbridge against Kamailio (stateful proxy), both driven by the
# same SIPp pair over loopback UDP, at increasing call rates.
#
#   SIPp benches/load/trunk_uac.xml (telnums from a CSV) -> server -> SIPp callee (UAS)
#
# benches/load/trunk_uac.xml is sipp-scenarios/trunk_uac.xml with late provisional responses
# (a 180 relayed after the 200) handled without rewinding the call; see its comment.
#
#   callbridge: the intents are registered over the HTTP API first (one kept-alive curl, one
#               POST /api/user/{telnum}/makecall per call); callbridge then bridges each call
#               to the callee on its trunk address (two legs, media relay ports allocated, no
#               RTP sent). The callee runs sipp-scenarios/callee_uas.xml, unchanged.
#   kamailio:   Debian kamailio with benches/load/kamailio.cfg (tm + rr: record_route, t_relay
#               to the callee, in-dialog ACK/BYE by loose_route); the callee runs
#               benches/load/callee_uas_rr.xml (callee_uas.xml echoing Record-Route).
#               Kamailio runs with its TLSF memory manager (-x tlsf -X tlsf, KAMAILIO_MEM), not
#               its default: Debian's build defaults to q_malloc, the debugging allocator, whose
#               free-list walk (qm_malloc) took two thirds of Kamailio's CPU here and made it
#               1.0-1.9 ms per call instead of 0.2-0.45, so it failed at 1,600 calls/s.
#   callbridge-hooks, callbridge-hooks-stalled (not run by default): callbridge as above with
#               webhooks on (--set webhooks.url=http://127.0.0.1:SINK_PORT/hook, webhooks.secret,
#               webhooks.timeout_ms=WEBHOOK_TIMEOUT_MS, the other webhooks.* keys at their
#               defaults): every intent and call change (intent.created per makecall; call.incoming,
#               call.ringing, call.answered, call.ended per bridged call) is written to the SQLite
#               outbox and POSTed, signed, to benches/src/bin/webhook_sink.rs, started before the
#               server and stopped after it, on each run. -hooks: the sink verifies each signature
#               and answers 204 (a healthy receiver). -hooks-stalled: the sink reads each request
#               and never answers, so every attempt holds one of callbridge's connections
#               (webhooks.max_in_flight, 64) until webhooks.timeout_ms (5 s), then is retried with
#               backoff: the dead receiver that costs the most (a target refusing connections
#               fails each attempt at once and holds nothing, which is cheaper). Their CPU per
#               call is compared with callbridge's (webhooks off) at each rate when callbridge
#               runs too; the webhook counters (/metrics at the end of each run) and the sink's
#               counts are reported. The sink's CPU is its own, not the server's (and not
#               counted in "others' CPU").
#   cluster (not run by default): deploy/cluster/cluster.sh's cluster, as an operator runs
#               several nodes: CLUSTER_NODES (3) callbridge nodes on 127.0.0.11.. behind the
#               Kamailio dispatcher (deploy/cluster/kamailio-dispatcher.cfg: tm, OPTIONS probes,
#               round-robin, record_route) on 127.0.0.10, intents in one Redis, the store in one
#               PostgreSQL (fsync on, synchronous_commit off: as durable as the single node's
#               SQLite in WAL mode with synchronous=NORMAL; CLUSTER_PG=0: each node its own
#               SQLite file), all started fresh per run. The intents are registered on node 1's API; the caller SIPp sends to the
#               dispatcher, which spreads the calls over the nodes; whichever node gets a call
#               claims its intent in Redis and sends leg B straight to the callee
#               (sipp-scenarios/callee_uas.xml). Every process counts as the server: the
#               nodes, Kamailio, Redis and PostgreSQL (postmaster and backends), in CPU and
#               memory; their shares of the CPU are reported apart. Run it with callbridge (one
#               node, embedded defaults, SIPp straight to it) for the comparison:
#               SERVERS="callbridge cluster". On one machine the cluster cannot be faster: its
#               processes share the same cores; what it shows is the cost per call of the
#               dispatcher hop and the shared state.
#
# Both servers and both SIPps ask for the same UDP socket buffers (UDP_BUF_BYTES, 4 MiB:
# callbridge's default sip.recv_buffer_bytes; Kamailio -b, whose default cap is 256 KiB; SIPp
# -buff_size, whose default is 64 KiB): a burst then queues in the kernel instead of being dropped
# and retransmitted 500 ms later. The drops each socket saw are recorded (/proc/net/udp).
#
# The rates are run in increasing order, each rate for every server in turn (callbridge, then
# Kamailio, at the same rate a few seconds apart, so both see the same background load on this
# shared machine); a server that failed MAX_FAILS rates in a row runs no higher rate. For each
# run the server is started fresh, the callee SIPp and then the caller SIPp run RATE calls/s for
# DURATION seconds, each call held HOLD_MS, and the harness records:
#   - calls attempted / successful / failed (caller SIPp; callee failures are added), and
#     whether the rate was clean (every call successful on both sides, no failed call);
#   - retransmissions seen by SIPp (caller + callee, Retransmissions(C));
#   - server CPU: utime + stime from /proc/<pid>/stat (summed over Kamailio's processes),
#     from just before the first call until the callee SIPp exits (its last call + 4 s
#     timewait), divided by the successful calls -> CPU ms per call;
#   - server memory: PSS summed over the server's processes (/proc/<pid>/smaps_rollup; equal to
#     RSS for the single-process callbridge, and not double-counting Kamailio's shared memory)
#     sampled every 0.5 s, with the caller SIPp's CurrentCall at that moment; the growth over
#     the pre-call baseline at the sample with the most calls up, divided by those calls, is the
#     "KiB per active call"; peak is VmHWM (callbridge) / the highest PSS sample (Kamailio);
#   - UDP receive-buffer drops on the server's, the caller's and the callee's socket;
#   - the CPU everything else used meanwhile (other jobs on this shared machine), in %.
# "Highest clean rate" = highest rate with no failed call (a failed call on either SIPp, or one
# that never finished, makes the rate fail; retransmissions and drops alone do not).
#
# Usage:  benches/load/signalling.sh            (as root: installs sip-tester and kamailio with
#                                                apt-get if missing, builds callbridge release)
#         QUICK=1 benches/load/signalling.sh    (one rate, 100 calls/s for 10 s; exits non-zero
#                                                on any failed call through callbridge)
# Environment (all optional):
#   RATES="100 200 400 800 1600 2400 3200 4000 5000 6000 7000 8000"   calls per second (QUICK=1: 100)
#   MAX_FAILS=2              a server that failed this many rates in a row skips the higher ones
#   QUIET_PCT=10 QUIET_WAIT=120   before each run, wait up to QUIET_WAIT s for the machine to be
#                            below QUIET_PCT % CPU (the machine is shared; see wait_quiet;
#                            QUICK=1: QUIET_WAIT=0, no wait)
#   RETRY_DISTURBED=1        run a failed rate again once if other work used >= QUIET_PCT % of the
#                            machine during it, or held ports of callbridge's relay range (0: never)
#   DURATION=15              seconds of new calls per rate (QUICK=1: 10)
#   HOLD_MS=1000             call hold time (SIPp -d)
#   SERVERS="callbridge kamailio"   also callbridge-t1_<ms>: callbridge with --set sip.t1_ms=<ms>;
#                            callbridge-norecords: with store.records=false (no record written to
#                            the store: the reference for the store's cost per call);
#                            callbridge-hooks, callbridge-hooks-stalled: webhooks on, receiver
#                            healthy / stalled (see above; run them with callbridge for the
#                            comparison: SERVERS="callbridge callbridge-hooks callbridge-hooks-stalled");
#                            cluster: three nodes behind Kamailio's dispatcher (see above; it
#                            also honours CLUSTER_NODES, CLUSTER_PG, CLUSTER_KAMAILIO_CHILDREN).
#                            (Before 0ee0d5f callbridge kept a call's relay ports until its last
#                            transaction ended, 64*T1 after the BYE, and the port range limited
#                            the sustained rate; the ports are now freed when the call ends.)
#   KAMAILIO_CHILDREN=2      Kamailio UDP workers;  KAMAILIO_PKG_MB=16
#   KAMAILIO_SHM_MB=2048     Kamailio shared memory (-m): its transactions linger 5 s (wt_timer)
#                            after each call's INVITE and BYE, about 12 KiB each: 460 MiB at
#                            3,200 calls/s, 1 GiB at 6,000 (512, the old value, ran out above ~3,500)
#   KAMAILIO_MEM=tlsf        Kamailio's memory manager for shm and pkg (-x/-X: tlsf, fm, or qm,
#                            the packaged default, to reproduce the old figures)
#   UDP_BUF_BYTES=4194304    SO_RCVBUF/SO_SNDBUF every SIP socket asks for (callbridge
#                            sip.recv_buffer_bytes/send_buffer_bytes, Kamailio -b, SIPp -buff_size;
#                            the kernel caps it at net.core.rmem_max/wmem_max)
#   CALLBRIDGE_BIN=path      use this binary instead of building one (CARGO_TARGET_DIR honoured)
#   OUT=file                 results markdown (default benches/results/signalling.md; QUICK=1:
#                            <workdir>/signalling.md, so a quick run does not replace the results)
#   WORKDIR=dir              logs and SIPp statistics (default: a fresh temp dir, kept)
#   BASE_PORT=35060          server SIP port; caller +2, callee +20, Kamailio +10, API +3000,
#                            webhook sink +3001, the cluster's Redis +3002 and PostgreSQL +3003,
#                            SIPp media +1000/+1100; moved by 100s until all
#                            are free
#   WEBHOOK_TIMEOUT_MS=5000  webhooks.timeout_ms of the -hooks variants (5000 is the default: how
#                            long the stalled receiver holds each attempt's connection)
#   WEBHOOK_SINK_BIN=path    use this webhook_sink instead of building one (cargo build --release
#                            -p callbridge-benches --bin webhook_sink)
#   RTP_PORTS=first-last     callbridge's media.rtp_ports (default: 22000 ports, 11000 pairs at 2 per
#                            call, about 5,500 calls up at once, chosen free at run time below the
#                            ephemeral range, or the widest of 16000/10000/6000 that is free; above
#                            about 5,000 calls/s held 1 s this range, not callbridge, may be the
#                            limit: see the port refusals column)
#   NO_INSTALL=1             do not try apt-get
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
started=$SECONDS
log() { printf '[signalling %4ds] %s\n' "$((SECONDS - started))" "$*"; }
die() { echo "benches/load/signalling.sh: $*" >&2; exit 1; }

# The command as given (the variables set in the environment), for the results.
cmd_env=""
for v in QUICK RATES MAX_FAILS QUIET_PCT QUIET_WAIT RETRY_DISTURBED DURATION HOLD_MS SERVERS KAMAILIO_CHILDREN KAMAILIO_SHM_MB KAMAILIO_PKG_MB KAMAILIO_MEM UDP_BUF_BYTES RTP_PORTS BASE_PORT WEBHOOK_TIMEOUT_MS CALLBRIDGE_BIN WEBHOOK_SINK_BIN CARGO_TARGET_DIR CLUSTER_NODES CLUSTER_PG CLUSTER_KAMAILIO_CHILDREN; do
    if [[ -n ${!v:-} ]]; then printf -v cmd_env '%s%s=%q ' "$cmd_env" "$v" "${!v}"; fi
done

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RATES=${RATES:-100}
    DURATION=${DURATION:-10}
else
    RATES=${RATES:-100 200 400 800 1600 2400 3200 4000 5000 6000 7000 8000}
    DURATION=${DURATION:-15}
fi
HOLD_MS=${HOLD_MS:-1000}
SERVERS=${SERVERS:-callbridge kamailio}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
KAMAILIO_SHM_MB=${KAMAILIO_SHM_MB:-2048}
KAMAILIO_PKG_MB=${KAMAILIO_PKG_MB:-16}
KAMAILIO_MEM=${KAMAILIO_MEM:-tlsf}
UDP_BUF_BYTES=${UDP_BUF_BYTES:-4194304}
MAX_FAILS=${MAX_FAILS:-2}
QUIET_PCT=${QUIET_PCT:-10}
if [[ $QUICK == 1 ]]; then QUIET_WAIT=${QUIET_WAIT:-0}; else QUIET_WAIT=${QUIET_WAIT:-120}; fi
RETRY_DISTURBED=${RETRY_DISTURBED:-1}
WEBHOOK_TIMEOUT_MS=${WEBHOOK_TIMEOUT_MS:-5000}
# The signing secret of the -hooks variants (the sink verifies every event with it).
WEBHOOK_SECRET="bench-webhook-secret"
# shellcheck source=../../scripts/ports.sh
source "$repo/scripts/ports.sh"
# The widest free range it can get (22000 ports hold about 5,500 calls up at once; another user's
# relay test may hold ports of the space below the ephemeral range).
if [[ -z ${RTP_PORTS:-} ]]; then
    for len in 22000 16000 10000 6000; do free_port_range RTP_PORTS "$len" 2>/dev/null && break; done
    [[ -n ${RTP_PORTS:-} ]] || die "no free range of 6000 relay ports below the ephemeral range"
fi
HOST=127.0.0.1
CLK_TCK=$(getconf CLK_TCK)

for r in $RATES; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES: '$r' is not a positive integer"; done
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
[[ $HOLD_MS =~ ^[0-9]+$ ]] || die "HOLD_MS must be a non-negative integer"
[[ $MAX_FAILS =~ ^[1-9][0-9]*$ ]] || die "MAX_FAILS must be a positive integer"
for v in QUIET_PCT QUIET_WAIT RETRY_DISTURBED; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"; done
[[ $UDP_BUF_BYTES =~ ^[1-9][0-9]*$ ]] || die "UDP_BUF_BYTES must be a positive integer"
[[ $KAMAILIO_MEM =~ ^(tlsf|fm|qm)$ ]] || die "KAMAILIO_MEM must be tlsf, fm or qm"
[[ $WEBHOOK_TIMEOUT_MS =~ ^[1-9][0-9]*$ ]] || die "WEBHOOK_TIMEOUT_MS must be a positive integer"
hooks_servers=""
for s in $SERVERS; do
    [[ $s == callbridge || $s == callbridge-norecords || $s == kamailio || $s =~ ^callbridge-t1_[1-9][0-9]*$ ||
        $s == callbridge-hooks || $s == callbridge-hooks-stalled || $s == cluster ]] || die "SERVERS: unknown server '$s'"
    [[ $s == callbridge-hooks* ]] && hooks_servers="$hooks_servers $s"
done

# ---------------------------------------------------------------------------------------------
# Tools: sipp (sip-tester) and kamailio from Debian, curl, ss.
need_pkgs=()
command -v sipp >/dev/null 2>&1 || need_pkgs+=(sip-tester)
[[ " $SERVERS " == *" kamailio "* || " $SERVERS " == *" cluster "* ]] && ! command -v kamailio >/dev/null 2>&1 && need_pkgs+=(kamailio)
if [[ " $SERVERS " == *" cluster "* ]]; then
    command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
    [[ ${CLUSTER_PG:-1} == 0 ]] || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_pkgs+=(postgresql)
fi
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
if ((${#need_pkgs[@]} > 0)); then
    [[ ${NO_INSTALL:-0} != 1 ]] || die "missing packages: ${need_pkgs[*]} (NO_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "missing packages: ${need_pkgs[*]}; run as root or install them"
    log "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # Where an init system runs, the kamailio package also starts the packaged service (on its
    # own config and port 5060); the harness runs its own instance and leaves that one alone.
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
for tool in sipp curl ss awk; do command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found"; done
if [[ " $SERVERS " == *" kamailio "* ]]; then
    command -v kamailio >/dev/null 2>&1 || die "'kamailio' not found"
    kam_cfg=$here/kamailio.cfg
    [[ -r $kam_cfg ]] || die "$kam_cfg not found"
fi

# Plenty of descriptors: callbridge holds 4 relay sockets per bridged call.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Ports: BASE_PORT and the offsets from it, moved together by 100s until none is bound. Chosen
# again before every run: on this shared machine another user's run may bind one meanwhile.
port_busy() { [[ -n $(ss -Htuln "sport = :$1" 2>/dev/null) ]]; }
# Bound in any state: BASE_PORT's set lies in the ephemeral range, where an outgoing TCP
# connection's port in TIME-WAIT (curl's, or the webhook client's of a -hooks run) keeps a
# listener off it for a minute, SO_REUSEADDR or not.
port_taken() { [[ -n $(ss -Htuan "sport = :$1" 2>/dev/null) ]]; }
choose_ports() {
    local base0=${BASE_PORT:-35060} busy="" try b p
    for try in 0 1 2 3 4 5 6 7 8 9; do
        b=$((base0 + try * 100))
        SIP_PORT=$b CALLER_PORT=$((b + 2)) KAM_PORT=$((b + 10)) CALLEE_PORT=$((b + 20))
        API_PORT=$((b + 3000)) SINK_PORT=$((b + 3001)) MEDIA_CALLEE=$((b + 1000)) MEDIA_CALLER=$((b + 1100))
        REDIS_PORT=$((b + 3002)) PG_PORT=$((b + 3003))
        busy=""
        for p in $SIP_PORT $CALLER_PORT $KAM_PORT $CALLEE_PORT $API_PORT $SINK_PORT $MEDIA_CALLEE $MEDIA_CALLER $REDIS_PORT $PG_PORT; do
            port_taken "$p" && busy="$busy $p"
        done
        [[ -z $busy ]] && break
        [[ -n ${BASE_PORT:-} ]] && break
        log "ports in use:$busy; trying the next set"
    done
    [[ -z $busy ]] || die "no free set of ports (busy:$busy)"
    api=http://$HOST:$API_PORT
}
choose_ports

if [[ -n ${WORKDIR:-} ]]; then
    work=$WORKDIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/signalling-bench.XXXXXX")
fi
if [[ -n ${OUT:-} ]]; then
    out=$OUT
elif [[ $QUICK == 1 ]]; then
    out=$work/signalling.md
else
    out=$repo/benches/results/signalling.md
fi
results=$work/results.tsv
: >"$results"
: >"$work/superseded.tsv"

# ---------------------------------------------------------------------------------------------
# Processes: the server, the two SIPps, the memory sampler. Stopped by pid on exit.
srv_pid="" callee_pid="" caller_pid="" sampler_pid="" srv_port="" sink_pid="" cluster_dir=""
# shellcheck source=../../scripts/proc.sh
source "$repo/scripts/proc.sh"
# shellcheck source=../../scripts/postgres.sh
source "$repo/scripts/postgres.sh"
cleanup() {
    stop_pid "$sampler_pid"
    stop_pid "$caller_pid"
    stop_pid "$callee_pid"
    stop_server
    stop_pid "$sink_pid"
    echo "benches/load/signalling.sh: logs and SIPp statistics in $work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# callbridge binary.
if [[ " $SERVERS " == *" callbridge"* || " $SERVERS " == *" cluster "* ]]; then
    if [[ -n ${CALLBRIDGE_BIN:-} ]]; then
        cb_bin=$CALLBRIDGE_BIN
    else
        log "building callbridge (release)"
        (cd "$repo" && cargo build --release --locked -p callbridge)
        target=${CARGO_TARGET_DIR:-target}
        [[ $target == /* ]] || target=$repo/$target
        cb_bin=$target/release/callbridge
    fi
    [[ -x $cb_bin ]] || die "callbridge binary $cb_bin not found"
fi
# The webhook receiver of the -hooks variants (benches/src/bin/webhook_sink.rs).
if [[ -n $hooks_servers ]]; then
    if [[ -n ${WEBHOOK_SINK_BIN:-} ]]; then
        sink_bin=$WEBHOOK_SINK_BIN
    else
        log "building webhook_sink (release)"
        (cd "$repo" && cargo build --release --locked -p callbridge-benches --bin webhook_sink)
        target=${CARGO_TARGET_DIR:-target}
        [[ $target == /* ]] || target=$repo/$target
        sink_bin=$target/release/webhook_sink
    fi
    [[ -x $sink_bin ]] || die "webhook_sink binary $sink_bin not found"
fi
# callbridge's own CALLBRIDGE_<SECTION>_<KEY> variables are not passed on.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CALLBRIDGE_' || true)

# ---------------------------------------------------------------------------------------------
# /proc measurements over the server's processes (callbridge: one; Kamailio: main + children).
server_pids() {
    if [[ -n $cluster_dir ]]; then
        cluster_pids all
        return 0
    fi
    [[ -n $srv_pid ]] || return 0
    echo "$srv_pid"
    pgrep -P "$srv_pid" 2>/dev/null || true
}
# The cluster's processes, all of them or one part's (nodes, kamailio, redis, postgres): every
# process group deploy/cluster/cluster.sh spawned ($cluster_dir/pids/NAME.pid: "PGID word"), and
# PostgreSQL's postmaster (pg_ctl starts it outside them) with its children.
cluster_pids() { # part
    local part=$1 f name pgid
    for f in "$cluster_dir"/pids/*.pid; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .pid)
        [[ $name == node-* ]] && name=nodes
        [[ $part == all || $part == "$name" ]] || continue
        read -r pgid _ <"$f" 2>/dev/null || continue
        pgrep -g "$pgid" 2>/dev/null || true
    done
    if [[ $part == all || $part == postgres ]]; then
        pg_pids "$cluster_dir/postgres"
    fi
}
cpu_ticks() { # utime + stime, summed over the server's processes (the cluster: its parts')
    if [[ -n $cluster_dir ]]; then
        cluster_ticks | awk '{ print $1 + $2 + $3 + $4 }'
        return 0
    fi
    # shellcheck disable=SC2046 # one pid per word
    ticks_of $(server_pids)
}
cluster_ticks() { # "nodes kamailio redis postgres": each part's utime + stime
    local part sums=()
    for part in nodes kamailio redis; do
        # shellcheck disable=SC2046 # one pid per word
        sums+=("$(ticks_of $(cluster_pids "$part"))")
    done
    # PostgreSQL's with its exited backends' (scripts/postgres.sh).
    sums+=("$(pg_cpu_ticks "$cluster_dir/postgres")")
    echo "${sums[*]}"
}
ticks_of() { # pid... -> utime + stime, summed
    local p total=0 rest
    for p in "$@"; do
        rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${rest##*) } # fields from 3 (state) on; comm may contain spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
mem_kib() { # "PSS RSS" in KiB, summed
    local p pids=()
    for p in $(server_pids); do pids+=("/proc/$p/smaps_rollup"); done
    awk '$1 == "Pss:" { pss += $2 } $1 == "Rss:" { rss += $2 } END { print pss + 0, rss + 0 }' \
        "${pids[@]}" 2>/dev/null || echo "0 0"
}
hwm_kib() { # VmHWM, summed (for Kamailio this counts shared memory once per process)
    local p files=()
    for p in $(server_pids); do files+=("/proc/$p/status"); done
    awk '$1 == "VmHWM:" { s += $2 } END { print s + 0 }' "${files[@]}" 2>/dev/null || echo 0
}
nprocs() { server_pids | wc -l; }
pid_ticks() { # utime + stime of one process (0 when it is gone)
    local rest
    rest=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
    rest=${rest##*) }
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}
machine_ticks() { # "busy total" ticks over all CPUs (/proc/stat). busy: user nice system steal;
    # not irq and softirq, which the kernel does not charge to any process (here: mostly the
    # loopback delivery of the benchmark's own datagrams).
    awk '$1 == "cpu" { print $2 + $3 + $4 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}
# UDP sockets bound to a port of RTP_PORTS, whoever holds them: with no callbridge running,
# another process's (another user's relay test on this machine).
rtp_range_bound() {
    local first=${RTP_PORTS%-*} last=${RTP_PORTS#*-}
    ports_in_use | awk -v a="$first" -v b="$last" '$1 >= a && $1 <= b { n++ } END { print n + 0 }'
}
# The machine is shared, and with the scheduler's autogroups another session's busy job takes its
# share of the cores whatever its nice level: a run started then can collapse into retransmissions
# that have nothing to do with the server. Before each run, wait (at most QUIET_WAIT seconds) until
# the machine's CPU use over 5 s is below QUIET_PCT.
wait_quiet() {
    local waited=0 busy0 total0 busy1 total1 pct
    ((QUIET_WAIT > 0)) || return 0
    while :; do
        read -r busy0 total0 < <(machine_ticks)
        sleep 5
        read -r busy1 total1 < <(machine_ticks)
        pct=$(((busy1 - busy0) * 100 / (total1 - total0 > 0 ? total1 - total0 : 1)))
        waited=$((waited + 5))
        if ((pct < QUIET_PCT)); then
            ((waited > 5)) && log "machine quiet (CPU ${pct} %) after ${waited} s"
            return 0
        fi
        if ((waited >= QUIET_WAIT)); then
            log "machine still busy (CPU ${pct} % over 5 s) after ${waited} s; running anyway"
            return 0
        fi
        ((waited % 30 == 5)) && log "machine busy (CPU ${pct} % over 5 s); waiting"
    done
}

# Value of column $2 in the last row of SIPp statistics file $1 (-trace_stat, ';'-separated).
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") { print "?"; exit } split(last, f, ";"); print f[c] }
    ' "$1" 2>/dev/null || echo "?"
}
num() { [[ $1 =~ ^[0-9]+$ ]] && echo "$1" || echo 0; }

# Sampler: every 0.5 s "epoch_ms pss_kib rss_kib current_calls drops_server drops_caller
# drops_callee caller_ticks callee_ticks" (current calls from the caller SIPp's statistics file,
# written every second; a SIPp's CPU ticks as last seen before it exits).
start_sampler() { # file caller-stat-file
    local file=$1 stat=$2
    (
        while :; do
            read -r pss rss < <(mem_kib)
            printf '%s %s %s %s %s %s\n' "$(date +%s%3N)" "$pss" "$rss" "$(num "$(stat_col "$stat" CurrentCall)")" \
                "$(udp_drops)" "$(pid_ticks "$caller_pid") $(pid_ticks "$callee_pid")"
            sleep 0.5
        done
    ) >"$file" 2>/dev/null &
    sampler_pid=$!
}

# "server caller callee": datagrams the kernel dropped on a full receive buffer, on the UDP
# sockets of the server's, the caller SIPp's and the callee SIPp's port (skmem d; a socket's count
# starts at 0 when it is created). One ss query, filtered in the kernel (sock_diag): reading
# /proc/net/udp instead costs about 0.2 s of CPU per read once callbridge holds its thousands of
# relay sockets, which would load the machine under test.
udp_drops() {
    ss -Huanm "( sport = :$srv_port or sport = :$CALLER_PORT or sport = :$CALLEE_PORT )" 2>/dev/null |
        awk -v a="$srv_port" -v b="$CALLER_PORT" -v c="$CALLEE_PORT" '
            /skmem:/ { if (match($0, /,d[0-9]+\)/)) n[port] += substr($0, RSTART + 2, RLENGTH - 3); next }
            { k = split($4, l, ":"); port = l[k] }
            END { print n[a] + 0, n[b] + 0, n[c] + 0 }'
}
# The receive and send buffer sizes the kernel granted the UDP socket on port $1 (ss skmem rb, tb).
udp_bufs() {
    ss -Huamn "sport = :$1" 2>/dev/null | grep -o 'skmem:([^)]*)' | head -1 |
        awk -F'[(,)]' '{ for (i = 2; i <= NF; i++) { if ($i ~ /^rb/) rb = substr($i, 3); if ($i ~ /^tb/) tb = substr($i, 3) } } END { print (rb ? rb : "?") "/" (tb ? tb : "?") }'
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

# The webhook receiver of a -hooks variant: `ok` (verifies, answers 204) or `stall` (never
# answers); it writes its counts to $work/$name.sink.counts every second and when stopped.
start_sink() { # server name -> sink_pid
    local server=$1 name=$2 mode=ok
    [[ $server == callbridge-hooks-stalled ]] && mode=stall
    rm -f "$work/$name.sink.counts"
    "$sink_bin" "$HOST:$SINK_PORT" "$mode" "$WEBHOOK_SECRET" "$work/$name.sink.counts" \
        >"$work/$name.sink.log" 2>&1 &
    sink_pid=$!
    for _ in $(seq 50); do
        kill -0 "$sink_pid" 2>/dev/null || { cat "$work/$name.sink.log" >&2; die "webhook_sink exited during start-up"; }
        port_busy "$SINK_PORT" && break
        sleep 0.1
    done
    port_busy "$SINK_PORT" || die "webhook_sink is not listening on $SINK_PORT"
}
# shellcheck source=webhook_metrics.sh
source "$repo/benches/load/webhook_metrics.sh"

start_server() { # server name -> srv_pid, sip target "host:port"
    local server=$1 name=$2
    if [[ $server == callbridge* ]]; then
        local extra=()
        [[ $server == callbridge-t1_* ]] && extra=(--set "sip.t1_ms=${server#callbridge-t1_}")
        # The reference for the store's cost: the same server with call records kept in memory
        # only (store.records = false), nothing written to the SQLite file.
        [[ $server == callbridge-norecords ]] && extra=(--set "store.records=false")
        if [[ $server == callbridge-hooks* ]]; then
            # The receiver first, so that no event meets a closed port. A fresh store: the outbox
            # of an earlier attempt at this run (a stalled one's pending events) would be
            # delivered again at start.
            start_sink "$server" "$name"
            rm -f "$work/$name.db" "$work/$name.db-wal" "$work/$name.db-shm"
            extra=(--set "webhooks.url=http://$HOST:$SINK_PORT/hook" --set "webhooks.secret=$WEBHOOK_SECRET"
                --set "webhooks.timeout_ms=$WEBHOOK_TIMEOUT_MS")
        fi
        NO_COLOR=1 "$cb_bin" \
            --set "sip.listen=$HOST:$SIP_PORT" \
            --set "sip.trunk=$HOST:$CALLEE_PORT" \
            --set "sip.public_addr=$HOST" \
            --set "media.public_ip=$HOST" \
            --set "media.bind_ip=$HOST" \
            --set "media.rtp_ports=$RTP_PORTS" \
            --set "media.inactivity_secs=0" \
            --set "api.listen=$HOST:$API_PORT" \
            --set "intent.ttl_secs=900" \
            --set "log.filter=warn" \
            --set "store.path=$work/$name.db" \
            --set "sip.recv_buffer_bytes=$UDP_BUF_BYTES" \
            --set "sip.send_buffer_bytes=$UDP_BUF_BYTES" \
            "${extra[@]}" \
            >"$work/$name.server.log" 2>&1 &
        srv_pid=$!
        for _ in $(seq 150); do
            kill -0 "$srv_pid" 2>/dev/null || { tail -n 20 "$work/$name.server.log" >&2; die "callbridge exited during start-up"; }
            [[ $(http_code "$api/healthz") == 200 ]] && break
            sleep 0.2
        done
        [[ $(http_code "$api/healthz") == 200 ]] || die "callbridge: GET /healthz did not answer 200 within 30 s"
        target=$HOST:$SIP_PORT srv_port=$SIP_PORT
    elif [[ $server == cluster ]]; then
        start_cluster "$name"
    else
        # -DD: the main process stays in the foreground (its workers are its children); -E: log
        # to stderr (debug=0 in the config: warnings and errors, as callbridge's log.filter=warn).
        # -x/-X: the memory manager (see the top of this file); -b: the receive buffer the
        # auto-probing may grow to (Kamailio 5.6 has no send-buffer option: wmem_default).
        kamailio -f "$kam_cfg" -DD -E -m "$KAMAILIO_SHM_MB" -M "$KAMAILIO_PKG_MB" \
            -x "$KAMAILIO_MEM" -X "$KAMAILIO_MEM" -b "$UDP_BUF_BYTES" \
            -A "LISTEN=udp:$HOST:$KAM_PORT" -A "CALLEE_URI=\"sip:$HOST:$CALLEE_PORT\"" \
            -A "CHILDREN=$KAMAILIO_CHILDREN" \
            >"$work/$name.server.log" 2>&1 &
        srv_pid=$!
        for _ in $(seq 100); do
            kill -0 "$srv_pid" 2>/dev/null || { tail -n 20 "$work/$name.server.log" >&2; die "kamailio exited during start-up"; }
            port_busy "$KAM_PORT" && break
            sleep 0.1
        done
        port_busy "$KAM_PORT" || die "kamailio is not listening on $KAM_PORT"
        sleep 1 # let every worker start
        target=$HOST:$KAM_PORT srv_port=$KAM_PORT
    fi
}

# The cluster: deploy/cluster/cluster.sh start, which returns once every node is healthy and the
# dispatcher has seen each answer its probes. Its trunk is the callee SIPp, whose address is also
# the only one the dispatcher takes new calls from (the caller SIPp binds the same address).
# The relay range is split between the nodes; Redis and PostgreSQL take REDIS_PORT and PG_PORT.
start_cluster() { # name -> cluster_dir, srv_pid (the dispatcher), target, srv_port, api
    local name=$1 nodes=${CLUSTER_NODES:-3} first=${RTP_PORTS%-*} last=${RTP_PORTS#*-} per i ranges=()
    cluster_dir=$work/$name.cluster
    rm -rf "$cluster_dir"
    mkdir -p "$cluster_dir"
    per=$(((last - first + 1) / nodes))
    per=$((per - per % 2))
    for ((i = 0; i < nodes; i++)); do ranges+=("$((first + i * per))-$((first + (i + 1) * per - 1))"); done
    CLUSTER_DIR=$cluster_dir CLUSTER_NODES=$nodes CLUSTER_TRUNK=$HOST:$CALLEE_PORT CLUSTER_TRUSTED_NETS=$HOST/32 \
        CLUSTER_PG=${CLUSTER_PG:-1} CLUSTER_REDIS_PORT=$REDIS_PORT CLUSTER_PG_PORT=$PG_PORT \
        CLUSTER_PG_SETTINGS=synchronous_commit=off \
        CLUSTER_RTP_PORTS="${ranges[*]}" CLUSTER_LOG_FILTER=warn \
        CLUSTER_KAMAILIO_SHM_MB=$KAMAILIO_SHM_MB CLUSTER_KAMAILIO_MEM=$KAMAILIO_MEM CLUSTER_KAMAILIO_RCVBUF=$UDP_BUF_BYTES \
        CLUSTER_NODE_SET="media.inactivity_secs=0 intent.ttl_secs=900 sip.recv_buffer_bytes=$UDP_BUF_BYTES sip.send_buffer_bytes=$UDP_BUF_BYTES" \
        CALLBRIDGE_BIN=$cb_bin "$repo/deploy/cluster/cluster.sh" start >"$work/$name.server.log" 2>&1 || {
        tail -n 30 "$work/$name.server.log" >&2
        die "the cluster did not start (see $work/$name.server.log)"
    }
    # CLUSTER_DISPATCHER (ip:port), CLUSTER_NODE_APIS, CLUSTER_SIP_PORT...
    eval "$(CLUSTER_DIR=$cluster_dir "$repo/deploy/cluster/cluster.sh" env)"
    read -r srv_pid _ <"$cluster_dir/pids/kamailio.pid"
    target=$CLUSTER_DISPATCHER srv_port=${CLUSTER_DISPATCHER#*:}
    api=${CLUSTER_NODE_APIS%% *}
}

# Stops whichever server runs: the cluster with its own stop (SIGTERM to each part; the nodes
# have no call left by then), else the one process.
stop_server() {
    if [[ -n $cluster_dir ]]; then
        CLUSTER_DIR=$cluster_dir "$repo/deploy/cluster/cluster.sh" stop >>"$work/cluster-stop.log" 2>&1 || true
        cluster_dir=""
    else
        stop_pid "$srv_pid"
    fi
    srv_pid=""
}

# The server is still up: every process of the cluster (cluster.sh status), else the one.
server_alive() {
    if [[ -n $cluster_dir ]]; then
        CLUSTER_DIR=$cluster_dir "$repo/deploy/cluster/cluster.sh" status >/dev/null 2>&1
    else
        kill -0 "$srv_pid" 2>/dev/null
    fi
}

# Calls refused because a relay port range was used up (503), from /metrics (each node's).
port_refusals_of() { # api-url...
    local url
    for url in "$@"; do
        curl -s --max-time 2 "$url/metrics" 2>/dev/null || true
    done | awk '/^callbridge_calls_failed_total\{reason="resources_exhausted"\}/ { n += $2 } END { print n + 0 }'
}

# Registers one intent per CSV row (callbridge), one kept-alive curl, fails unless every
# POST answered 200.
make_intents() { # csv n name
    local csv=$1 n=$2 name=$3
    tail -n +2 "$csv" | awk -F';' -v api="$api" '
        NR > 1 { print "next" }
        {
            printf "url = \"%s/api/user/%s/makecall\"\nrequest = \"POST\"\n", api, $1
            printf "header = \"content-type: application/json\"\nmax-time = 5\n"
            printf "data = \"{\\\"caller\\\":\\\"%s\\\",\\\"callee\\\":\\\"%s\\\"}\"\n", $2, $3
            printf "write-out = \"\\n@@%%{http_code}\\n\"\n"
        }' >"$work/$name.makecall.curl"
    curl -sS -K "$work/$name.makecall.curl" >"$work/$name.makecall.out" || die "makecall: curl failed"
    local ok
    ok=$(grep -c '^@@200$' "$work/$name.makecall.out" || true)
    [[ $ok == "$n" ]] || die "makecall: $ok of $n intents registered (see $work/$name.makecall.out)"
}

# ---------------------------------------------------------------------------------------------
# One run: server $1 at rate $2.
run_one() {
    local server=$1 rate=$2
    local name=$server-$rate calls=$((rate * DURATION))
    local hold_s=$(((HOLD_MS + 999) / 1000))
    ((calls <= 899999)) || die "$calls calls per run: the CSV numbering allows 899999"
    log "== $server at $rate calls/s: $calls calls, held ${HOLD_MS} ms"

    # telnum 1000000+i dials dedicated 2000000+i to reach 3000000+i (7 digits, no overlap).
    local csv=$work/$name.csv
    awk -v n="$calls" 'BEGIN { print "SEQUENTIAL"; for (i = 0; i < n; i++) printf "%d;%d;%d\n", 1000000 + i, 2000000 + i, 3000000 + i }' >"$csv"

    choose_ports
    local foreign_before=0
    [[ $server == callbridge* || $server == cluster ]] && foreign_before=$(rtp_range_bound)
    start_server "$server" "$name"
    log "$server started (pid $srv_pid, $(nprocs) process(es)), SIP at $target"

    local scen_callee=$repo/sipp-scenarios/callee_uas.xml
    [[ $server == kamailio ]] && scen_callee=$here/callee_uas_rr.xml
    local budget=$((DURATION + hold_s + 60))
    sipp -sf "$scen_callee" -i "$HOST" -p "$CALLEE_PORT" -mp "$MEDIA_CALLEE" -t u1 -buff_size "$UDP_BUF_BYTES" \
        -m "$calls" -recv_timeout 20000 -timeout "${budget}s" -timeout_error -nostdin \
        -trace_stat -stf "$work/$name.callee.stat.csv" -fd 1 \
        -trace_err -error_file "$work/$name.callee.errors.log" \
        -trace_screen -screen_file "$work/$name.callee.screen.log" \
        >"$work/$name.callee.out" 2>&1 &
    callee_pid=$!
    for _ in $(seq 50); do
        port_busy "$CALLEE_PORT" && break
        sleep 0.1
    done
    kill -0 "$callee_pid" 2>/dev/null || die "the callee SIPp did not start (see $work/$name.callee.out)"

    local t_int=0
    if [[ $server == callbridge* || $server == cluster ]]; then
        local t0=$SECONDS
        make_intents "$csv" "$calls" "$name"
        t_int=$((SECONDS - t0))
        log "$calls intents registered in ${t_int} s"
    fi

    log "UDP buffers granted (receive/send bytes): server $(udp_bufs "$srv_port"), callee SIPp $(udp_bufs "$CALLEE_PORT")"
    sleep 1
    local cpu0 pss0 rss0 callee_ticks0 busy0 total0 sink_ticks0=0 parts0=""
    cpu0=$(cpu_ticks)
    [[ -n $cluster_dir ]] && parts0=$(cluster_ticks)
    callee_ticks0=$(pid_ticks "$callee_pid")
    [[ -n $sink_pid ]] && sink_ticks0=$(pid_ticks "$sink_pid")
    read -r busy0 total0 < <(machine_ticks)
    read -r pss0 rss0 < <(mem_kib)

    local rc=0 t_calls=$SECONDS
    sipp "$target" -sf "$here/trunk_uac.xml" -inf "$csv" -i "$HOST" -p "$CALLER_PORT" \
        -mp "$MEDIA_CALLER" -t u1 -buff_size "$UDP_BUF_BYTES" -m "$calls" -r "$rate" -d "$HOLD_MS" -l "$calls" \
        -recv_timeout 20000 -timeout "${budget}s" -timeout_error -nostdin \
        -trace_stat -stf "$work/$name.caller.stat.csv" -fd 1 \
        -trace_err -error_file "$work/$name.caller.errors.log" \
        -trace_screen -screen_file "$work/$name.caller.screen.log" \
        >"$work/$name.caller.out" 2>&1 &
    caller_pid=$!
    start_sampler "$work/$name.mem.txt" "$work/$name.caller.stat.csv"
    wait "$caller_pid" || rc=$?
    caller_pid=""
    local caller_secs=$((SECONDS - t_calls))

    # The callee exits once it has seen every call through (+4 s timewait); if calls were lost
    # it would wait for its timeout, so it gets hold + 15 s.
    local crc=0
    for _ in $(seq $(((hold_s + 15) * 10))); do
        kill -0 "$callee_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$callee_pid" 2>/dev/null; then
        log "the callee SIPp is still running; stopping it"
        stop_pid "$callee_pid"
        crc=timeout
    else
        wait "$callee_pid" || crc=$?
    fi
    callee_pid=""
    local cpu1 hwm pss1 rss1 alive=yes srv_drops_end busy1 total1 sink_ticks1=0 parts="- - - -"
    cpu1=$(cpu_ticks)
    # The cluster's CPU by part, in ms: nodes, Kamailio, Redis, PostgreSQL.
    if [[ -n $cluster_dir ]]; then
        parts=$(printf '%s\n%s\n' "$parts0" "$(cluster_ticks)" | awk -v hz="$CLK_TCK" '
            NR == 1 { for (i = 1; i <= NF; i++) a[i] = $i; next }
            { for (i = 1; i <= NF; i++) printf "%d%s", ($i - a[i]) * 1000 / hz, (i < NF ? " " : "\n") }')
    fi
    [[ -n $sink_pid ]] && sink_ticks1=$(pid_ticks "$sink_pid")
    read -r busy1 total1 < <(machine_ticks)
    read -r srv_drops_end _ < <(udp_drops)
    hwm=$(hwm_kib)
    read -r pss1 rss1 < <(mem_kib)
    stop_pid "$sampler_pid"
    sampler_pid=""
    server_alive || alive=no
    local warn_lines
    if [[ -n $cluster_dir ]]; then
        # The nodes' and Kamailio's logs (cluster.sh's own output is progress, not warnings).
        warn_lines=$(cat "$cluster_dir"/node-*/*.log "$cluster_dir"/kamailio/kamailio.log 2>/dev/null | grep -ciE 'warn|error|crit' || true)
    else
        warn_lines=$(grep -ciE 'warn|error|crit' "$work/$name.server.log" || true)
    fi
    # callbridge: calls refused because the relay port range was used up (503), from /metrics.
    local port_refusals=- foreign_ports=0
    if [[ $server == callbridge* ]]; then
        port_refusals=$(port_refusals_of "$api")
    elif [[ $server == cluster ]]; then
        # shellcheck disable=SC2086 # one URL per word
        port_refusals=$(port_refusals_of $CLUSTER_NODE_APIS)
    fi
    # Webhooks: the dispatcher's counters at the end of the run (after the CPU window). A healthy
    # receiver is given up to 10 s to take the last events first; a stalled one is not waited for.
    local wh="- - - - - - - - -" sink_counts="- - -" wh_p wh_i wh_q
    if [[ $server == callbridge-hooks* ]]; then
        wh=$(webhook_metrics "$api")
        if [[ $server == callbridge-hooks ]]; then
            for _ in $(seq 20); do
                read -r _ _ _ _ wh_p wh_i _ _ wh_q <<<"$wh"
                [[ $wh_p == 0 && $wh_i == 0 && $wh_q == 0 ]] && break
                sleep 0.5
                wh=$(webhook_metrics "$api")
            done
        fi
    fi
    stop_server
    # The receiver stops after the server and writes its final counts.
    if [[ -n $sink_pid ]]; then
        stop_pid "$sink_pid"
        sink_pid=""
        sink_counts=$(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); c[kv[1]] = kv[2] } }
            END { print (c["requests"] != "" ? c["requests"] : "?"), (c["verified"] != "" ? c["verified"] : "?"), (c["unverified"] != "" ? c["unverified"] : "?") }' \
            "$work/$name.sink.counts" 2>/dev/null || echo "? ? ?")
    fi
    # Ports of callbridge's relay range that another process held before the run or still holds
    # after it (another user's relay test on this shared machine): callbridge skips them, and
    # refuses calls when it meets too many in a row. Such a run counts as disturbed.
    if [[ $server == callbridge* || $server == cluster ]]; then
        foreign_ports=$(rtp_range_bound)
        ((foreign_before > foreign_ports)) && foreign_ports=$foreign_before
    fi

    local cs=$work/$name.caller.stat.csv ce=$work/$name.callee.stat.csv
    local created ok failed retr ce_ok ce_failed ce_retr
    created=$(num "$(stat_col "$cs" TotalCallCreated)")
    ok=$(num "$(stat_col "$cs" 'SuccessfulCall(C)')")
    failed=$(num "$(stat_col "$cs" 'FailedCall(C)')")
    retr=$(num "$(stat_col "$cs" 'Retransmissions(C)')")
    ce_ok=$(num "$(stat_col "$ce" 'SuccessfulCall(C)')")
    ce_failed=$(num "$(stat_col "$ce" 'FailedCall(C)')")
    ce_retr=$(num "$(stat_col "$ce" 'Retransmissions(C)')")
    # Calls that neither side counted as finished are failed too.
    local lost=$((calls - ok - failed))
    ((lost < 0)) && lost=0
    # A call that failed shows on both sides: failed = calls not successful on the worse side.
    local all_failed=$((calls - ok))
    ((calls - ce_ok > all_failed)) && all_failed=$((calls - ce_ok))
    local clean=no
    [[ $rc == 0 && $all_failed == 0 && $ok == "$calls" && $ce_ok == "$calls" && $alive == yes ]] && clean=yes

    # Achieved rate: calls created / seconds from the last statistics row before the first call
    # to the first row with every call created (rows every second: about ±1 s on the span).
    local achieved
    achieved=$(awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "TotalCallCreated") c = i; if ($i == "CurrentTime") t = i }; next }
        {
            split($t, ts, "\t"); s = ts[3] + 0
            if ($c == 0) { first = s; next }
            if ($c > prev) { last = s; clast = $c }
            prev = $c
        }
        END { if (first != "" && last > first) printf "%.0f", clast / (last - first); else print "?" }
    ' "$cs" 2>/dev/null || echo "?")

    # Memory: the sample with the most calls up (latest such sample), against the baseline.
    local peak_calls peak_pss max_pss
    read -r peak_calls peak_pss max_pss < <(awk -v p0="$pss0" '
        { if ($4 >= pc) { pc = $4; pp = $2 } if ($2 > mx) mx = $2 }
        END { print pc + 0, (pp ? pp : p0), (mx ? mx : p0) }' "$work/$name.mem.txt")
    # UDP receive-buffer drops over the run (server, caller SIPp, callee SIPp): the highest count
    # sampled (SIPp's sockets are gone once it exits), the server's also read at the end.
    local drops_srv drops_caller drops_callee
    read -r drops_srv drops_caller drops_callee < <(awk -v e="$srv_drops_end" '
        { if ($5 > a) a = $5; if ($6 > b) b = $6; if ($7 > c) c = $7 }
        END { if (e > a) a = e; print a + 0, b + 0, c + 0 }' "$work/$name.mem.txt")
    # CPU of everything else on the machine over the run (other jobs, steal, this harness's own
    # sampling), in % of all cores: busy ticks minus the server's and the two SIPps'.
    local sipp_ticks others_pct
    sipp_ticks=$(awk -v c0="$callee_ticks0" '{ if ($8 > a) a = $8; if ($9 > b) b = $9 } END { print a + (b > c0 ? b - c0 : 0) }' "$work/$name.mem.txt")
    # The webhook sink's CPU (the -hooks variants' receiver) is its own column, not "others".
    local sink_ticks=$((sink_ticks1 - sink_ticks0)) sink_cpu_ms=-
    ((sink_ticks < 0)) && sink_ticks=0
    [[ $server == callbridge-hooks* ]] && sink_cpu_ms=$((sink_ticks * 1000 / CLK_TCK))
    others_pct=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v s=$((cpu1 - cpu0)) -v p=$((sipp_ticks + sink_ticks)) \
        'BEGIN { o = b - s - p; if (o < 0) o = 0; printf "%.0f", (t > 0 ? 100 * o / t : 0) }')
    local cpu_ms per_call_kib
    cpu_ms=$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { if (n > 0) printf "%.3f", d * 1000 / hz / n; else print "n/a" }')
    per_call_kib=$(awk -v a="$peak_pss" -v b="$pss0" -v n="$peak_calls" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }')
    local peak_kib=$max_pss
    [[ $server == callbridge* ]] && peak_kib=$hwm
    local cpu_total_ms=$(((cpu1 - cpu0) * 1000 / CLK_TCK))

    log "$server@$rate: rc=$rc callee_rc=$crc created=$created ok=$ok failed=$failed lost=$lost" \
        "callee_ok=$ce_ok callee_failed=$ce_failed retrans=$retr+$ce_retr achieved=${achieved}cps" \
        "cpu=${cpu_total_ms}ms (${cpu_ms} ms/call) pss0=${pss0}KiB peak_calls=$peak_calls" \
        "pss@peak=${peak_pss}KiB (${per_call_kib} KiB/call) peak=${peak_kib}KiB server_alive=$alive" \
        "server_log_warnings=$warn_lines udp_drops(server/caller/callee)=$drops_srv/$drops_caller/$drops_callee port_refusals=$port_refusals foreign_rtp_ports=$foreign_ports sipp_cpu=$((sipp_ticks * 1000 / CLK_TCK))ms others_cpu=${others_pct}% clean=$clean"
    [[ -n $cluster_dir || $server == cluster ]] &&
        log "$server@$rate CPU ms by part (nodes kamailio redis postgres): $parts"
    [[ $server == callbridge-hooks* ]] &&
        log "$server@$rate webhooks (delivered retried failed dropped pending in_flight queue_dropped store_errors queued): $wh;" \
            "sink (requests verified unverified): $sink_counts; sink_cpu=${sink_cpu_ms}ms"
    printf '%s\t' "$server" "$rate" "$calls" "$created" "$ok" "$all_failed" "$retr" "$ce_retr" \
        "$achieved" "$cpu_total_ms" "$cpu_ms" "$pss0" "$peak_calls" "$peak_pss" "$per_call_kib" \
        "$peak_kib" "$pss1" "$warn_lines" "$alive" "$t_int" >>"$results"
    # Columns 22-27 after "clean" (21): UDP drops at the server, caller and callee; port
    # refusals; the others' CPU %; relay-range ports bound by another process.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t' "$clean" "$drops_srv" "$drops_caller" "$drops_callee" "$port_refusals" "$others_pct" "$foreign_ports" >>"$results"
    # Columns 28-40 (-hooks variants; "-" otherwise): the sink's CPU ms over the run; webhook
    # deliveries delivered, retried, failed, dropped; outbox pending, in flight, events dropped
    # by the engine's queue, outbox write errors, events queued in the engine (/metrics, end of
    # run); the sink's requests, verified, unverified.
    local wh_cols sink_cols
    read -r -a wh_cols <<<"$wh"
    read -r -a sink_cols <<<"$sink_counts"
    printf '%s\t' "$sink_cpu_ms" "${wh_cols[@]}" "${sink_cols[0]}" "${sink_cols[1]}" "${sink_cols[2]}" >>"$results"
    # Columns 41-44 (cluster; "-" otherwise): CPU ms over the run of the nodes, Kamailio, Redis
    # and PostgreSQL.
    local part_cols
    read -r -a part_cols <<<"$parts"
    printf '%s\t%s\t%s\t%s\n' "${part_cols[@]}" >>"$results"
}

# Rate by rate, every server at each rate before the next rate (see the top of this file).
declare -A fails_in_a_row=() skipped_from=()
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for rate in $RATES; do
    for server in $SERVERS; do
        if ((${fails_in_a_row[$server]:-0} >= MAX_FAILS)); then
            [[ -n ${skipped_from[$server]:-} ]] || skipped_from[$server]=$rate
            log "== $server at $rate calls/s: skipped ($MAX_FAILS rates in a row failed)"
            continue
        fi
        wait_quiet
        run_one "$server" "$rate"
        # A failed run during which other work took more than QUIET_PCT of the machine, or
        # another process held ports of callbridge's relay range, is run again once (the first
        # attempt is kept in superseded.tsv and listed in the results).
        read -r clean others foreign < <(awk -F'\t' -v s="$server" -v r="$rate" '$1 == s && $2 == r { c = $21; o = $26; f = $27 } END { print c, o + 0, f + 0 }' "$results")
        if [[ $clean != yes ]] && ((RETRY_DISTURBED > 0 && (others >= QUIET_PCT || foreign > 0))); then
            log "$server@$rate failed while other work used ${others} % of the machine and held $foreign relay ports: running it again"
            awk -F'\t' -v s="$server" -v r="$rate" '$1 == s && $2 == r' "$results" >>"$work/superseded.tsv"
            awk -F'\t' -v s="$server" -v r="$rate" '!($1 == s && $2 == r)' "$results" >"$results.tmp"
            mv "$results.tmp" "$results"
            wait_quiet
            run_one "$server" "$rate"
        fi
        if [[ $(awk -F'\t' -v s="$server" -v r="$rate" '$1 == s && $2 == r { c = $21 } END { print c }' "$results") == yes ]]; then
            fails_in_a_row[$server]=0
        else
            fails_in_a_row[$server]=$((${fails_in_a_row[$server]:-0} + 1))
        fi
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Results (markdown).
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
best_rate() { # server -> highest clean rate, or "none"
    awk -F'\t' -v s="$1" '$1 == s && $21 == "yes" && $2 > b { b = $2 } END { print b ? b : "none" }' "$results"
}
cpu_at() { # server rate -> CPU ms per call
    awk -F'\t' -v s="$1" -v r="$2" '$1 == s && $2 == r { print $11 }' "$results"
}
clean_at() { # server rate -> yes/no
    awk -F'\t' -v s="$1" -v r="$2" '$1 == s && $2 == r { print $21 }' "$results"
}
col_at() { # server rate column -> that column of the run
    awk -F'\t' -v s="$1" -v r="$2" -v c="$3" '$1 == s && $2 == r { print $c }' "$results"
}
cb_rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo "?")
cb_dirty=$(cd "$repo" && git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
cmd="${cmd_env}benches/load/signalling.sh"
{
    echo "## Signalling load: callbridge vs Kamailio (stateful proxy)"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) vCPU ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(uname -sr); load average $load_before before, $load_after after."
    echo "  Server, caller SIPp and callee SIPp all run on this machine over loopback: at the higher rates"
    echo "  the three processes compete for the $(nproc) cores, so a failing rate may be SIPp's limit as much as the server's."
    echo "- Software: callbridge $cb_rev$cb_dirty (release profile); $(kamailio -v 2>/dev/null | awk 'NR == 1 { print $2, $3 }' || echo kamailio) with \`benches/load/kamailio.cfg\` ($KAMAILIO_CHILDREN UDP workers, -m $KAMAILIO_SHM_MB -M $KAMAILIO_PKG_MB, memory manager \`-x $KAMAILIO_MEM -X $KAMAILIO_MEM\`); $(sipp -v 2>/dev/null | awk 'NF { sub(/\.$/, "", $2); print $1, $2; exit }' | tr -d '\r')"
    echo "- UDP socket buffers: every SIP socket asks for $UDP_BUF_BYTES bytes (callbridge \`sip.recv_buffer_bytes\`/\`send_buffer_bytes\`, Kamailio \`-b\`, SIPp \`-buff_size\`; net.core.rmem_max $(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo ?))."
    echo "- Order: rate by rate, each rate run for every server ($SERVERS) before the next; a server that failed $MAX_FAILS rates in a row runs no higher rate."
    echo "- Command: \`$cmd\` (effective: RATES=\"$RATES\" DURATION=$DURATION HOLD_MS=$HOLD_MS)"
    echo "- Each run: fresh server; callee SIPp (\`sipp-scenarios/callee_uas.xml\`, or \`benches/load/callee_uas_rr.xml\`"
    echo "  for Kamailio); for callbridge one intent per call registered first (one kept-alive curl, POST makecall);"
    echo "  then \`benches/load/trunk_uac.xml\` (\`sipp-scenarios/trunk_uac.xml\` surviving a 180 relayed after the 200) with the telnums from a CSV, RATE calls/s for $DURATION s, each held $HOLD_MS ms;"
    echo "  UDP, default timers (T1 500 ms) on every side; logging warnings only (callbridge \`log.filter=warn\`, Kamailio \`debug=0\`)."
    if [[ -n $hooks_servers ]]; then
        echo "- Webhooks:$hooks_servers = callbridge with \`--set webhooks.url=http://$HOST:<port>/hook --set webhooks.secret=…"
        echo "  --set webhooks.timeout_ms=$WEBHOOK_TIMEOUT_MS\` (other webhooks.* keys at their defaults: max_in_flight 64, max_attempts 10,"
        echo "  max_pending 100000, backoff_base_ms 1000); the target is \`benches/src/bin/webhook_sink.rs\` (hyper 1, counters only),"
        echo "  started before the server and stopped after it on each run: \`ok\` (callbridge-hooks: verifies each"
        echo "  \`Callbridge-Signature\`, answers 204) or \`stall\` (callbridge-hooks-stalled: reads each request and never"
        echo "  answers, so each attempt holds a connection for the timeout: the costliest dead receiver; one refusing"
        echo "  connections fails each attempt at once). The sink's CPU is reported apart, not in the server's CPU nor"
        echo "  in *others' CPU*."
    fi
    echo "- Columns: *failed* = failed on either SIPp side or never finished; *retrans* = SIPp retransmissions"
    echo "  (caller + callee); *CPU ms/call* = server utime+stime (\`/proc/<pid>/stat\`, all Kamailio processes)"
    echo "  from the first call to the callee's exit (last call + 4 s), over successful calls; *base* = server PSS"
    echo "  before the calls (callbridge: with the intents registered); *KiB/active call* = PSS growth over the base"
    echo "  at the sample (every 0.5 s) with the most calls up (caller SIPp's CurrentCall) divided by those calls;"
    echo "  *peak* = VmHWM (callbridge) or the highest summed PSS sample (Kamailio; RSS would count its shared"
    echo "  memory once per process); *after* = PSS when the callee exited; *UDP drops* = datagrams the kernel"
    echo "  dropped on a full receive buffer (\`/proc/net/udp\`), server / caller SIPp / callee SIPp; *port refusals* ="
    echo "  callbridge's calls refused with 503 because its relay port range ($RTP_PORTS) was used up; *others' CPU* ="
    echo "  CPU used during the run by everything but the server and the two SIPps (other jobs on this shared"
    echo "  machine, steal, the harness's sampling; not irq/softirq time), in % of all cores. Each run waits first (up to $QUIET_WAIT s) for"
    echo "  the machine to be below $QUIET_PCT % busy; a failed run during which others used ≥ $QUIET_PCT %, or during which"
    echo "  another process held ports of callbridge's relay range, is run again once."
    echo
    for server in $SERVERS; do
        echo "### $server"
        echo
        refusals_col="" refusals_sep=""
        [[ $server == callbridge* || $server == cluster ]] && refusals_col=" port refusals |" refusals_sep="---:|"
        echo "| rate (cps) | calls | successful | failed | retrans | UDP drops | achieved cps | CPU ms/call | base MiB | max calls up | KiB/active call | peak MiB | after MiB |$refusals_col others' CPU | clean |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|$refusals_sep---:|:---:|"
        row() { # one results.tsv line on stdin -> one table row
            local _ rate calls created ok failed retr ce_retr ach cpu_tot cpu_ms pss0 pc ppss pck peak pss1 warn alive tint clean d_srv d_caller d_callee refusals others foreign
            while IFS=$'\t' read -r _ rate calls created ok failed retr ce_retr ach cpu_tot cpu_ms pss0 pc ppss pck peak pss1 warn alive tint clean d_srv d_caller d_callee refusals others foreign _; do
                refusals_cell=""
                if [[ $server == callbridge* || $server == cluster ]]; then
                    refusals_cell=" $refusals |"
                    ((${foreign:-0} > 0)) && refusals_cell=" $refusals ($foreign ports of the range held by others) |"
                fi
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |%s %s %% | %s |\n' \
                    "$rate" "$calls" "$ok" "$failed" "$((retr + ce_retr))" "$d_srv / $d_caller / $d_callee" "$ach" "$cpu_ms" "$(mib "$pss0")" \
                    "$pc" "$pck" "$(mib "$peak")" "$(mib "$pss1")" "$refusals_cell" "$others" "$clean"
            done
        }
        awk -F'\t' -v s="$server" '$1 == s' "$results" | row
        echo
        echo "Highest clean rate: **$(best_rate "$server")** calls/s (of the rates tried)."
        if [[ -n ${skipped_from[$server]:-} ]]; then
            echo "Not run from $(printf '%s' "${skipped_from[$server]}") calls/s on: $MAX_FAILS rates in a row had failed."
        fi
        if [[ $server == callbridge-hooks* ]]; then
            echo
            if [[ $server == callbridge-hooks ]]; then
                echo "Webhooks, receiver healthy (\`webhook_sink ok\`: verifies each signature, answers 204):"
            else
                echo "Webhooks, receiver stalled (\`webhook_sink stall\`: never answers; each attempt holds a connection"
                echo "for webhooks.timeout_ms = $WEBHOOK_TIMEOUT_MS ms, then is retried with backoff):"
            fi
            echo "callbridge's counters (\`/metrics\`) at the end of the run (healthy: once the outbox was empty, 10 s"
            echo "at most), and the requests the sink received. Each bridged call makes 5 events (intent.created at"
            echo "makecall, call.incoming, call.ringing, call.answered, call.ended); *dropped* = let go because more"
            echo "than webhooks.max_pending waited (outbox) or the engine's queue was full; *pending* includes those in"
            echo "flight; *not yet in the outbox* = built by the call engine, not yet taken by the dispatcher."
            echo
            echo "| rate (cps) | calls | delivered | delivered per call | retried | failed | dropped (outbox full) | dropped (engine queue) | pending at end | in flight at end | not yet in the outbox | outbox write errors | sink requests | verified | unverified | sink CPU ms |"
            echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            awk -F'\t' -v s="$server" '$1 == s {
                per = ($29 ~ /^[0-9]+$/ && $3 > 0) ? sprintf("%.2f", $29 / $3) : "-"
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                    $2, $3, $29, per, $30, $31, $32, $35, $33, $34, $37, $36, $38, $39, $40, $28 }' "$results"
        fi
        if awk -F'\t' -v s="$server" '$1 == s { f = 1 } END { exit !f }' "$work/superseded.tsv"; then
            echo
            echo "Run again because other work used ≥ $QUIET_PCT % of the machine, or held ports of the relay range, during a failed first attempt (first attempts):"
            echo
            echo "| rate (cps) | calls | successful | failed | retrans | UDP drops | achieved cps | CPU ms/call | base MiB | max calls up | KiB/active call | peak MiB | after MiB |$refusals_col others' CPU | clean |"
            echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|$refusals_sep---:|:---:|"
            awk -F'\t' -v s="$server" '$1 == s' "$work/superseded.tsv" | row
        fi
        echo
    done
    if [[ " $SERVERS " == *" kamailio "* ]]; then
        km_best=$(best_rate kamailio)
        top=$(awk -F'\t' '{ if ($2 > m) m = $2 } END { print m }' "$results")
        for cb in $SERVERS; do
            [[ $cb == callbridge* ]] || continue
            cb_best=$(best_rate "$cb")
            echo "### $cb / Kamailio"
            echo
            if [[ $cb_best != none && $km_best != none ]]; then
                echo "- Highest clean rate: $cb_best / $km_best = **$(awk -v a="$cb_best" -v b="$km_best" 'BEGIN { printf "%.2f", a / b }')**"
                if [[ $km_best == "$top" && $cb_best == "$top" ]]; then
                    echo "  (both were clean at every rate tried: neither limit was reached, the ratio says nothing more)"
                elif [[ $km_best == "$top" ]]; then
                    echo "  (Kamailio was clean at every rate tried: its real limit is higher, so this ratio is an upper bound)"
                fi
            else
                echo "- Highest clean rate: $cb $cb_best, Kamailio $km_best (no ratio)"
            fi
            echo "- CPU ms per call, same rate (a run with failed calls is marked †: its figure covers the calls that succeeded):"
            for rate in $RATES; do
                a=$(cpu_at "$cb" "$rate") b=$(cpu_at kamailio "$rate")
                [[ -z $a && -z $b ]] && continue
                a=${a:-not run} b=${b:-not run}
                mark=""
                [[ $(clean_at "$cb" "$rate") == yes && $(clean_at kamailio "$rate") == yes ]] || mark=" †"
                if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk -v b="$b" 'BEGIN { exit !(b > 0) }'; then
                    echo "  - $rate cps: $a / $b = **$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')×**$mark"
                else
                    echo "  - $rate cps: $a / $b (no ratio)$mark"
                fi
            done
            echo
        done
    fi
    if [[ " $SERVERS " == *" callbridge "* && -n $hooks_servers ]]; then
        echo "### Webhooks on vs off"
        echo
        echo "CPU ms per call of each webhooks variant against callbridge with webhooks off, at the same rate in the"
        echo "same run (ratio: variant / off; † = a run with failed calls, whose figure covers the calls that succeeded),"
        echo "and the failed calls and SIPp retransmissions of each: the webhook work (events written to the outbox,"
        echo "signed, POSTed; the stalled receiver's held connections and retries) must not fail or slow the calls."
        echo
        hdr="| rate (cps) | callbridge (off): CPU ms/call | failed | retrans |"
        sep="|---:|---:|---:|---:|"
        for h in $hooks_servers; do
            hdr="$hdr $h: CPU ms/call | × off | failed | retrans |"
            sep="$sep---:|---:|---:|---:|"
        done
        echo "$hdr"
        echo "$sep"
        for rate in $RATES; do
            off=$(cpu_at callbridge "$rate")
            line="| $rate | ${off:-not run} | $(col_at callbridge "$rate" 6) | $(awk -F'\t' -v r="$rate" '$1 == "callbridge" && $2 == r { print $7 + $8 }' "$results") |"
            any=${off:+1}
            for h in $hooks_servers; do
                a=$(cpu_at "$h" "$rate")
                if [[ -z $a ]]; then
                    line="$line not run | | | |"
                    continue
                fi
                any=1
                mark=""
                [[ $(clean_at "$h" "$rate") == yes && $(clean_at callbridge "$rate") == yes ]] || mark=" †"
                if [[ $a =~ ^[0-9.]+$ && $off =~ ^[0-9.]+$ ]] && awk -v b="$off" 'BEGIN { exit !(b > 0) }'; then
                    ratio="**$(awk -v a="$a" -v b="$off" 'BEGIN { printf "%.2f", a / b }')×**$mark"
                else
                    ratio="-$mark"
                fi
                line="$line $a | $ratio | $(col_at "$h" "$rate" 6) | $(awk -F'\t' -v s="$h" -v r="$rate" '$1 == s && $2 == r { print $7 + $8 }' "$results") |"
            done
            [[ -n $any ]] && echo "$line"
        done
        echo
        echo "Highest clean rate: callbridge (off) $(best_rate callbridge)$(for h in $hooks_servers; do printf ', %s %s' "$h" "$(best_rate "$h")"; done) calls/s (of the rates tried)."
        echo
    fi
    if [[ " $SERVERS " == *" cluster "* ]]; then
        echo "### cluster (dispatcher + ${CLUSTER_NODES:-3} nodes) / callbridge (one node, direct)"
        echo
        echo "The cluster: Kamailio's dispatcher (\`deploy/cluster/kamailio-dispatcher.cfg\`, $KAMAILIO_MEM allocator) in front of"
        echo "${CLUSTER_NODES:-3} nodes with intents in Redis and the store in $([[ ${CLUSTER_PG:-1} == 0 ]] && echo "each node's SQLite file" || echo "one PostgreSQL (fsync on, synchronous_commit off)"), started by"
        echo "\`deploy/cluster/cluster.sh\`; its CPU is every one of those processes'. callbridge: one node, embedded"
        echo "defaults (in-memory intents, SQLite), SIPp straight to it. Same machine, same SIPp pair, same rates."
        echo
        if [[ " $SERVERS " == *" callbridge "* ]]; then
            cl_best=$(best_rate cluster) cb_best=$(best_rate callbridge)
            echo "- Highest clean rate: cluster $cl_best, callbridge $cb_best calls/s (of the rates tried)."
        fi
        echo
        echo "| rate (cps) | cluster CPU ms/call | callbridge CPU ms/call | × one node | nodes | Kamailio | Redis | PostgreSQL | cluster failed | callbridge failed |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for rate in $RATES; do
            a=$(cpu_at cluster "$rate")
            [[ -n $a ]] || continue
            b=$(cpu_at callbridge "$rate")
            mark=""
            [[ $(clean_at cluster "$rate") == yes && $(clean_at callbridge "$rate") == yes ]] || mark=" †"
            if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk -v b="$b" 'BEGIN { exit !(b > 0) }'; then
                ratio="**$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')×**$mark"
            else
                ratio="-$mark"
            fi
            # Each part's CPU ms per successful call of the cluster's run.
            parts_ms=$(awk -F'\t' -v r="$rate" '$1 == "cluster" && $2 == r {
                for (i = 41; i <= 44; i++) printf "%s%s", ($5 > 0 && $i ~ /^[0-9]+$/ ? sprintf("%.3f", $i / $5) : "-"), (i < 44 ? " | " : "") }' "$results")
            echo "| $rate | $a | ${b:-not run} | $ratio | $parts_ms | $(col_at cluster "$rate" 6) | $(col_at callbridge "$rate" 6) |"
        done
        echo
        echo "*nodes*, *Kamailio*, *Redis*, *PostgreSQL*: each part's CPU ms per successful call of the cluster's run (the"
        echo "nodes together). † = a run with failed calls on either side."
        echo
    fi
    echo "Raw per-run logs and SIPp statistics were in \`$work\` (not kept in the repository)."
} >"$out.tmp"
mv "$out.tmp" "$out"
log "results written to $out"
cat "$out"

# QUICK=1: any failed call through callbridge fails the run.
if [[ $QUICK == 1 ]] && [[ " $SERVERS " == *" callbridge "* ]]; then
    bad=$(awk -F'\t' '$1 == "callbridge" && $21 != "yes"' "$results")
    [[ -z $bad ]] || die "QUICK=1: callbridge had failed calls (see the table above and $work)"
fi
