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
#
# For each server and each rate the server is started fresh, the callee SIPp and then the
# caller SIPp run RATE calls/s for DURATION seconds, each call held HOLD_MS, and the harness
# records:
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
#     "KiB per active call"; peak is VmHWM (callbridge) / the highest PSS sample (Kamailio).
# "Highest clean rate" = highest rate with no failed call.
#
# Usage:  benches/load/signalling.sh            (as root: installs sip-tester and kamailio with
#                                                apt-get if missing, builds callbridge release)
#         QUICK=1 benches/load/signalling.sh    (one rate, 100 calls/s for 10 s; exits non-zero
#                                                on any failed call through callbridge)
# Environment (all optional):
#   RATES="100 200 400 800 1600"  calls per second (QUICK=1: 100)
#   DURATION=15              seconds of new calls per rate (QUICK=1: 10)
#   HOLD_MS=1000             call hold time (SIPp -d)
#   SERVERS="callbridge kamailio"   also callbridge-t1_<ms>: callbridge with --set sip.t1_ms=<ms>.
#                            (Before 0ee0d5f callbridge kept a call's relay ports until its last
#                            transaction ended, 64*T1 after the BYE, and the port range limited
#                            the sustained rate; the ports are now freed when the call ends.)
#   KAMAILIO_CHILDREN=2      Kamailio UDP workers;  KAMAILIO_SHM_MB=512  KAMAILIO_PKG_MB=16
#   CALLBRIDGE_BIN=path      use this binary instead of building one (CARGO_TARGET_DIR honoured)
#   OUT=file                 results markdown (default benches/results/signalling.md; QUICK=1:
#                            <workdir>/signalling.md, so a quick run does not replace the results)
#   WORKDIR=dir              logs and SIPp statistics (default: a fresh temp dir, kept)
#   BASE_PORT=35060          server SIP port; caller +2, callee +20, Kamailio +10, API +3000,
#                            SIPp media +1000/+1100; moved by 100s until all are free
#   RTP_PORTS=first-last     callbridge's media.rtp_ports (default: 15500 ports, 7750 pairs at 2 per
#                            call, chosen free at run time below the ephemeral range)
#   NO_INSTALL=1             do not try apt-get
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
started=$SECONDS
log() { printf '[signalling %4ds] %s\n' "$((SECONDS - started))" "$*"; }
die() { echo "benches/load/signalling.sh: $*" >&2; exit 1; }

# The command as given (the variables set in the environment), for the results.
cmd_env=""
for v in QUICK RATES DURATION HOLD_MS SERVERS KAMAILIO_CHILDREN KAMAILIO_SHM_MB KAMAILIO_PKG_MB RTP_PORTS BASE_PORT CALLBRIDGE_BIN CARGO_TARGET_DIR; do
    if [[ -n ${!v:-} ]]; then printf -v cmd_env '%s%s=%q ' "$cmd_env" "$v" "${!v}"; fi
done

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RATES=${RATES:-100}
    DURATION=${DURATION:-10}
else
    RATES=${RATES:-100 200 400 800 1600}
    DURATION=${DURATION:-15}
fi
HOLD_MS=${HOLD_MS:-1000}
SERVERS=${SERVERS:-callbridge kamailio}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
KAMAILIO_SHM_MB=${KAMAILIO_SHM_MB:-512}
KAMAILIO_PKG_MB=${KAMAILIO_PKG_MB:-16}
# shellcheck source=../../scripts/ports.sh
source "$repo/scripts/ports.sh"
[[ -n ${RTP_PORTS:-} ]] || free_port_range RTP_PORTS 15500
HOST=127.0.0.1
CLK_TCK=$(getconf CLK_TCK)

for r in $RATES; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES: '$r' is not a positive integer"; done
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
[[ $HOLD_MS =~ ^[0-9]+$ ]] || die "HOLD_MS must be a non-negative integer"
for s in $SERVERS; do
    [[ $s == callbridge || $s == kamailio || $s =~ ^callbridge-t1_[1-9][0-9]*$ ]] || die "SERVERS: unknown server '$s'"
done

# ---------------------------------------------------------------------------------------------
# Tools: sipp (sip-tester) and kamailio from Debian, curl, ss.
need_pkgs=()
command -v sipp >/dev/null 2>&1 || need_pkgs+=(sip-tester)
[[ " $SERVERS " == *" kamailio "* ]] && ! command -v kamailio >/dev/null 2>&1 && need_pkgs+=(kamailio)
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
# Ports: BASE_PORT and the offsets from it, moved together by 100s until none is bound.
port_busy() { [[ -n $(ss -Htuln "sport = :$1" 2>/dev/null) ]]; }
base0=${BASE_PORT:-35060}
busy=""
for try in 0 1 2 3 4 5 6 7 8 9; do
    b=$((base0 + try * 100))
    SIP_PORT=$b CALLER_PORT=$((b + 2)) KAM_PORT=$((b + 10)) CALLEE_PORT=$((b + 20))
    API_PORT=$((b + 3000)) MEDIA_CALLEE=$((b + 1000)) MEDIA_CALLER=$((b + 1100))
    busy=""
    for p in $SIP_PORT $CALLER_PORT $KAM_PORT $CALLEE_PORT $API_PORT $MEDIA_CALLEE $MEDIA_CALLER; do
        port_busy "$p" && busy="$busy $p"
    done
    [[ -z $busy ]] && break
    [[ -n ${BASE_PORT:-} ]] && break
    log "ports in use:$busy; trying the next set"
done
[[ -z $busy ]] || die "no free set of ports (busy:$busy)"
api=http://$HOST:$API_PORT

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

# ---------------------------------------------------------------------------------------------
# Processes: the server, the callee SIPp, the memory sampler. Stopped by pid on exit.
srv_pid="" callee_pid="" sampler_pid=""
# shellcheck source=../../scripts/proc.sh
source "$repo/scripts/proc.sh"
cleanup() {
    stop_pid "$sampler_pid"
    stop_pid "$callee_pid"
    stop_pid "$srv_pid"
    echo "benches/load/signalling.sh: logs and SIPp statistics in $work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# callbridge binary.
if [[ " $SERVERS " == *" callbridge"* ]]; then
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
# callbridge's own CALLBRIDGE_<SECTION>_<KEY> variables are not passed on.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CALLBRIDGE_' || true)

# ---------------------------------------------------------------------------------------------
# /proc measurements over the server's processes (callbridge: one; Kamailio: main + children).
server_pids() {
    [[ -n $srv_pid ]] || return 0
    echo "$srv_pid"
    pgrep -P "$srv_pid" 2>/dev/null || true
}
cpu_ticks() { # utime + stime, summed
    local p total=0 rest
    for p in $(server_pids); do
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

# Value of column $2 in the last row of SIPp statistics file $1 (-trace_stat, ';'-separated).
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") { print "?"; exit } split(last, f, ";"); print f[c] }
    ' "$1" 2>/dev/null || echo "?"
}
num() { [[ $1 =~ ^[0-9]+$ ]] && echo "$1" || echo 0; }

# Memory sampler: every 0.5 s "epoch_ms pss_kib rss_kib current_calls" (current calls from the
# caller SIPp's statistics file, written every second).
start_sampler() { # file caller-stat-file
    local file=$1 stat=$2
    (
        while :; do
            read -r pss rss < <(mem_kib)
            printf '%s %s %s %s\n' "$(date +%s%3N)" "$pss" "$rss" "$(num "$(stat_col "$stat" CurrentCall)")"
            sleep 0.5
        done
    ) >"$file" 2>/dev/null &
    sampler_pid=$!
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

start_server() { # server name -> srv_pid, sip target "host:port"
    local server=$1 name=$2
    if [[ $server == callbridge* ]]; then
        local extra=()
        [[ $server == callbridge-t1_* ]] && extra=(--set "sip.t1_ms=${server#callbridge-t1_}")
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
            "${extra[@]}" \
            >"$work/$name.server.log" 2>&1 &
        srv_pid=$!
        for _ in $(seq 150); do
            kill -0 "$srv_pid" 2>/dev/null || { tail -n 20 "$work/$name.server.log" >&2; die "callbridge exited during start-up"; }
            [[ $(http_code "$api/healthz") == 200 ]] && break
            sleep 0.2
        done
        [[ $(http_code "$api/healthz") == 200 ]] || die "callbridge: GET /healthz did not answer 200 within 30 s"
        target=$HOST:$SIP_PORT
    else
        # -DD: the main process stays in the foreground (its workers are its children); -E: log
        # to stderr (debug=0 in the config: warnings and errors, as callbridge's log.filter=warn).
        kamailio -f "$kam_cfg" -DD -E -m "$KAMAILIO_SHM_MB" -M "$KAMAILIO_PKG_MB" \
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
        target=$HOST:$KAM_PORT
    fi
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

    start_server "$server" "$name"
    log "$server started (pid $srv_pid, $(nprocs) process(es)), SIP at $target"

    local scen_callee=$repo/sipp-scenarios/callee_uas.xml
    [[ $server == kamailio ]] && scen_callee=$here/callee_uas_rr.xml
    local budget=$((DURATION + hold_s + 60))
    sipp -sf "$scen_callee" -i "$HOST" -p "$CALLEE_PORT" -mp "$MEDIA_CALLEE" -t u1 \
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
    if [[ $server == callbridge* ]]; then
        local t0=$SECONDS
        make_intents "$csv" "$calls" "$name"
        t_int=$((SECONDS - t0))
        log "$calls intents registered in ${t_int} s"
    fi

    sleep 1
    local cpu0 pss0 rss0
    cpu0=$(cpu_ticks)
    read -r pss0 rss0 < <(mem_kib)
    start_sampler "$work/$name.mem.txt" "$work/$name.caller.stat.csv"

    local rc=0 t_calls=$SECONDS
    sipp "$target" -sf "$here/trunk_uac.xml" -inf "$csv" -i "$HOST" -p "$CALLER_PORT" \
        -mp "$MEDIA_CALLER" -t u1 -m "$calls" -r "$rate" -d "$HOLD_MS" -l "$calls" \
        -recv_timeout 20000 -timeout "${budget}s" -timeout_error -nostdin \
        -trace_stat -stf "$work/$name.caller.stat.csv" -fd 1 \
        -trace_err -error_file "$work/$name.caller.errors.log" \
        -trace_screen -screen_file "$work/$name.caller.screen.log" \
        >"$work/$name.caller.out" 2>&1 || rc=$?
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
    local cpu1 hwm pss1 rss1 alive=yes
    cpu1=$(cpu_ticks)
    hwm=$(hwm_kib)
    read -r pss1 rss1 < <(mem_kib)
    stop_pid "$sampler_pid"
    sampler_pid=""
    kill -0 "$srv_pid" 2>/dev/null || alive=no
    local warn_lines
    warn_lines=$(grep -ciE 'warn|error|crit' "$work/$name.server.log" || true)
    stop_pid "$srv_pid"
    srv_pid=""

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
        "server_log_warnings=$warn_lines clean=$clean"
    printf '%s\t' "$server" "$rate" "$calls" "$created" "$ok" "$all_failed" "$retr" "$ce_retr" \
        "$achieved" "$cpu_total_ms" "$cpu_ms" "$pss0" "$peak_calls" "$peak_pss" "$per_call_kib" \
        "$peak_kib" "$pss1" "$warn_lines" "$alive" "$t_int" >>"$results"
    printf '%s\n' "$clean" >>"$results"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for server in $SERVERS; do
    for rate in $RATES; do
        run_one "$server" "$rate"
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
    echo "- Software: callbridge $cb_rev$cb_dirty (release profile); $(kamailio -v 2>/dev/null | awk 'NR == 1 { print $2, $3 }' || echo kamailio) with \`benches/load/kamailio.cfg\` ($KAMAILIO_CHILDREN UDP workers, -m $KAMAILIO_SHM_MB -M $KAMAILIO_PKG_MB); $(sipp -v 2>/dev/null | awk 'NF { sub(/\.$/, "", $2); print $1, $2; exit }' | tr -d '\r')"
    echo "- Command: \`$cmd\` (effective: RATES=\"$RATES\" DURATION=$DURATION HOLD_MS=$HOLD_MS)"
    echo "- Each run: fresh server; callee SIPp (\`sipp-scenarios/callee_uas.xml\`, or \`benches/load/callee_uas_rr.xml\`"
    echo "  for Kamailio); for callbridge one intent per call registered first (one kept-alive curl, POST makecall);"
    echo "  then \`benches/load/trunk_uac.xml\` (\`sipp-scenarios/trunk_uac.xml\` surviving a 180 relayed after the 200) with the telnums from a CSV, RATE calls/s for $DURATION s, each held $HOLD_MS ms;"
    echo "  UDP, default timers (T1 500 ms) on every side; logging warnings only (callbridge \`log.filter=warn\`, Kamailio \`debug=0\`)."
    echo "- Columns: *failed* = failed on either SIPp side or never finished; *retrans* = SIPp retransmissions"
    echo "  (caller + callee); *CPU ms/call* = server utime+stime (\`/proc/<pid>/stat\`, all Kamailio processes)"
    echo "  from the first call to the callee's exit (last call + 4 s), over successful calls; *base* = server PSS"
    echo "  before the calls (callbridge: with the intents registered); *KiB/active call* = PSS growth over the base"
    echo "  at the sample (every 0.5 s) with the most calls up (caller SIPp's CurrentCall) divided by those calls;"
    echo "  *peak* = VmHWM (callbridge) or the highest summed PSS sample (Kamailio; RSS would count its shared"
    echo "  memory once per process); *after* = PSS when the callee exited."
    echo
    for server in $SERVERS; do
        echo "### $server"
        echo
        echo "| rate (cps) | calls | successful | failed | retrans | achieved cps | CPU ms/call | base MiB | max calls up | KiB/active call | peak MiB | after MiB | clean |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
        awk -F'\t' -v s="$server" '$1 == s' "$results" | while IFS=$'\t' read -r _ rate calls created ok failed retr ce_retr ach cpu_tot cpu_ms pss0 pc ppss pck peak pss1 warn alive tint clean; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$rate" "$calls" "$ok" "$failed" "$((retr + ce_retr))" "$ach" "$cpu_ms" "$(mib "$pss0")" \
                "$pc" "$pck" "$(mib "$peak")" "$(mib "$pss1")" "$clean"
        done
        echo
        echo "Highest clean rate: **$(best_rate "$server")** calls/s (of the rates tried)."
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
