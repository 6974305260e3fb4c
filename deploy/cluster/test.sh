#!/usr/bin/env bash
# The cluster test of the README test command: three callbridge nodes behind the Kamailio
# dispatcher, started with deploy/cluster/cluster.sh exactly as an operator starts them (on
# free ports; SIPp standing for the trunk on 127.0.0.20), and:
#   a. one call with RTP: makecall on node 1's API, the phone's call (SIPp trunk_uac_rtp.xml,
#      playing g711a.pcap; the callee echoes it) sent to the dispatcher, which hands it to a
#      node; bridged, and its record (on whichever node took the INVITE) ended after an answer
#      with every packet of the pcap relayed each way (plain trunk_uac.xml without CAP_NET_RAW);
#   h. a call hung up through the API (POST /api/calls/{callid}/hangup): callbridge's BYE
#      reaches the caller through the dispatcher;
#   b. B_CALLS calls at B_RATE/s through the dispatcher, intents registered round-robin on the
#      three nodes' APIs: none failed, every node bridged some (callbridge_calls_bridged_total),
#      the callee saw exactly one leg B per call;
#   c. C_CALLS calls at the same rate, node 2 killed with SIGKILL KILL_AFTER s into the run:
#      the dispatcher marks it inactive within a few seconds; the calls failing are bounded by
#      those node 2 held or was setting up (at most FAIL_BOUND); then a second run (C2_CALLS)
#      with node 2 still dead, which must not fail a single call and lands on nodes 1 and 3;
#   r. node 2 started again: the dispatcher takes it back once it answers a probe, and it
#      bridges calls again (R_CALLS);
#   and no intent was claimed twice: each callid of b, c, c2 and r has at most one record
#   across the nodes (deploy/cluster/records.py), and a record for every call of b, c2 and r.
# Prints `PASS: cluster: ...` with the counts; on a failure the reason and the tails of every
# log. The cluster is always stopped on exit. About a minute and a half.
#
# Usage: deploy/cluster/test.sh        (root, or CAP_NET_RAW for SIPp's RTP; needs sipp, curl,
#                                       python3, kamailio, redis-server: scripts/ensure-tools.sh)
# Environment (all optional):
#   SKIP_CLUSTER=1           skip (exit 0 with a message)
#   CLUSTER_PG=1             the nodes share one PostgreSQL (store.url; the default), 0: each
#                            node its own SQLite file
#   CALLBRIDGE_BIN=path      use this binary (default: cargo build --release -p callbridge)
#   CLUSTER_TEST_DIR=dir     where logs go (default: a fresh temp dir, removed on success)
#   CLUSTER_TEST_KEEP=1      keep the work dir even on success
#   B_CALLS=150 B_RATE=30  C_CALLS=240 C2_CALLS=60 R_CALLS=30 HOLD_MS=1000 KILL_AFTER=3
# The cluster's sharing, each checked unless set to 0:
#   CLUSTER_TEST_SHARED_INDEX=1   any node answers GET /api/calls/{callid} for any call
#   CLUSTER_TEST_REMOTE_HANGUP=1  the hang-up of phase h is sent to a node that does not hold it
#   CLUSTER_TEST_NODE_LOST=1      the killed node's live calls get records ended "node_lost"
set -euo pipefail

if [[ ${SKIP_CLUSTER:-0} == 1 ]]; then
    echo "deploy/cluster/test.sh: SKIP_CLUSTER=1, skipping the cluster test"
    exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
scenarios=$repo/sipp-scenarios
cluster=$here/cluster.sh
started=$SECONDS

log() { printf '[cluster-test %3ds] %s\n' "$((SECONDS - started))" "$*"; }

for tool in sipp curl python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "deploy/cluster/test.sh: '$tool' not found (scripts/ensure-tools.sh installs it)" >&2
        exit 1
    }
done

B_CALLS=${B_CALLS:-150}
B_RATE=${B_RATE:-30}
C_CALLS=${C_CALLS:-240}
C2_CALLS=${C2_CALLS:-60}
R_CALLS=${R_CALLS:-30}
HOLD_MS=${HOLD_MS:-1000}
KILL_AFTER=${KILL_AFTER:-3}
NODES=3
KILLED=2
TRUNK_IP=127.0.0.20
# Calls node 2 may take down with it: its share of the calls up at the kill (each lives
# HOLD_MS plus about a second of set-up and of the dispatcher's own wait), and a margin.
FAIL_BOUND=${FAIL_BOUND:-$(((B_RATE * (HOLD_MS + 1000) + NODES * 1000 - 1) / (NODES * 1000) + 5))}

# ---------------------------------------------------------------------------------------------
# Work directory, ports, the cluster's environment.
if [[ -n ${CLUSTER_TEST_DIR:-} ]]; then
    work=$CLUSTER_TEST_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-cluster-test.XXXXXX")
fi
work=$(cd "$work" && pwd)

# shellcheck source=../../scripts/ports.sh
source "$repo/scripts/ports.sh"
# shellcheck source=../../scripts/proc.sh
source "$repo/scripts/proc.sh"
free_port dispatcher_port
free_port sip_port
free_port api_port
free_port redis_port
free_port pg_port
free_port callee_port
free_port caller_port
free_port_range rtp1 400
free_port_range rtp2 400
free_port_range rtp3 400
free_port_range sipp_media 20
callee_mp=${sipp_media%-*}
caller_mp=$((callee_mp + 10))

# Only what this test chooses reaches cluster.sh (and CLUSTER_PG, CALLBRIDGE_BIN).
while read -r var; do
    [[ $var == CLUSTER_PG || $var == CLUSTER_TEST_* ]] || unset "$var"
done < <(compgen -e | grep '^CLUSTER_' || true)
export CLUSTER_DIR=$work/cluster
# One PostgreSQL for every node unless told otherwise: the deployment this tests.
export CLUSTER_PG=${CLUSTER_PG:-1}
export CLUSTER_NODES=$NODES
export CLUSTER_DISPATCHER_PORT=$dispatcher_port
export CLUSTER_SIP_PORT=$sip_port
export CLUSTER_API_PORT=$api_port
export CLUSTER_REDIS_PORT=$redis_port
export CLUSTER_PG_PORT=$pg_port
export CLUSTER_TRUNK=$TRUNK_IP:$callee_port
export CLUSTER_RTP_PORTS="$rtp1 $rtp2 $rtp3"
# Short SIP timers (as sipp-scenarios/run.sh); intents that outlive the whole test.
# A grace period of 1 s at the end: the nodes drain no calls then, but wait for the server
# transactions of the dispatcher's probes.
export CLUSTER_NODE_SET="sip.t1_ms=100 sip.t2_ms=400 sip.t4_ms=500 sip.no_answer_secs=10 intent.ttl_secs=300 sip.shutdown_grace_secs=1"
[[ -n ${CALLBRIDGE_BIN:-} ]] || export CLUSTER_BUILD=1

# ---------------------------------------------------------------------------------------------
# Cleanup and failure reporting.
ok=0
sipp_pids=()
cleanup() {
    local pid
    for pid in "${sipp_pids[@]}"; do stop_pid "$pid"; done
    "$cluster" stop >"$work/stop.log" 2>&1 || { echo "cluster.sh stop failed:"; cat "$work/stop.log"; }
    if [[ $ok == 1 && ${CLUSTER_TEST_KEEP:-0} != 1 && -z ${CLUSTER_TEST_DIR:-} ]]; then
        rm -rf "$work"
    else
        echo "deploy/cluster/test.sh: logs kept in $work"
    fi
}
trap cleanup EXIT

show_tail() { # file [lines]
    [[ -s $1 ]] || return 0
    echo "----- tail of $1 -----"
    tail -n "${2:-40}" "$1"
}
fail() {
    echo >&2
    echo "deploy/cluster/test.sh: FAILED: $*" >&2
    {
        local f
        for f in "$CLUSTER_DIR"/kamailio/kamailio.log "$CLUSTER_DIR"/redis/redis.log \
            "$CLUSTER_DIR"/postgres/postgres.log "$CLUSTER_DIR"/node-*/callbridge.log; do
            [[ -e $f ]] && show_tail "$f" 40
        done
        for f in "$work"/*.errors.log; do [[ -e $f ]] && show_tail "$f" 20; done
        for f in "$work"/*.screen.log; do [[ -e $f ]] && show_tail "$f" 25; done
        "$cluster" status 2>&1 || true
    } >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# The cluster.
log "starting the cluster: $NODES nodes, dispatcher 127.0.0.10:$dispatcher_port, trunk $CLUSTER_TRUNK (work dir $work)"
"$cluster" start >"$work/start.log" 2>&1 || {
    cat "$work/start.log" >&2
    fail "cluster.sh start failed"
}
sed 's/^/    /' "$work/start.log"
eval "$("$cluster" env)"
read -r -a apis <<<"$CLUSTER_NODE_APIS"
log "cluster up: dispatcher $CLUSTER_DISPATCHER, nodes $CLUSTER_NODE_SIPS, store $CLUSTER_STORE"

# ---------------------------------------------------------------------------------------------
# SIPp helpers (as sipp-scenarios/run.sh).
stat_col() { # statistics file, column -> value in the last row
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") { print "?"; exit } split(last, f, ";"); print f[c] }
    ' "$1" 2>/dev/null || echo "?"
}
sipp_opts() { # run name
    printf '%s\n' -nostdin -trace_stat -stf "$work/$1.stat.csv" -fd 1 \
        -trace_err -error_file "$work/$1.errors.log" \
        -trace_screen -screen_file "$work/$1.screen.log" \
        -trace_msg -message_file "$work/$1.messages.log"
}
stat_summary() {
    printf 'calls=%s successful=%s failed=%s retransmissions=%s dead_call_msgs=%s' \
        "$(stat_col "$1" 'TotalCallCreated')" "$(stat_col "$1" 'SuccessfulCall(C)')" \
        "$(stat_col "$1" 'FailedCall(C)')" "$(stat_col "$1" 'Retransmissions(C)')" \
        "$(stat_col "$1" 'DeadCallMsgs(C)')"
}
check_sipp() { # name rc wanted-successful
    local f=$work/$1.stat.csv good failed
    good=$(stat_col "$f" 'SuccessfulCall(C)')
    failed=$(stat_col "$f" 'FailedCall(C)')
    log "$1: exit $2, $(stat_summary "$f")"
    [[ $2 == 0 ]] || fail "SIPp $1 exited with status $2 (0 = all calls successful)"
    [[ $good == "$3" && $failed == 0 ]] || fail "SIPp $1: $good successful and $failed failed calls, expected $3 and 0"
}

# start_callee NAME SCENARIO CALLS BUDGET [sipp args]: the target phone behind the trunk, on
# the trunk's address; its pid in callee_pid.
callee_pid=""
start_callee() {
    local name=$1 scenario=$2 calls=$3 budget=$4
    shift 4
    mapfile -t opts < <(sipp_opts "$name")
    sipp -sf "$scenario" -i "$TRUNK_IP" -p "$callee_port" -mp "$callee_mp" -t u1 -m "$calls" \
        -timeout "${budget}s" "$@" "${opts[@]}" >"$work/$name.out" 2>&1 &
    callee_pid=$!
    sipp_pids+=("$callee_pid")
    local i
    for i in $(seq 50); do
        [[ -n $(ss -Hlun "src $TRUNK_IP:$callee_port" 2>/dev/null) ]] && break
        kill -0 "$callee_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$callee_pid" 2>/dev/null || { show_tail "$work/$name.out"; fail "the callee SIPp ($name) did not start"; }
}
# wait_callee NAME SECS: waits for the callee to exit; its exit status in callee_rc (124: it
# was still running after SECS and was stopped).
wait_callee() {
    local i
    callee_rc=0
    for i in $(seq $(($2 * 10))); do
        kill -0 "$callee_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$callee_pid" 2>/dev/null; then
        stop_pid "$callee_pid"
        callee_rc=124
    else
        wait "$callee_pid" || callee_rc=$?
    fi
    callee_pid=""
}
# B-leg INVITEs the callee of run NAME received.
invites_seen() { grep -cE '^INVITE sip:3[0-9]{5}@' "$work/$1.messages.log" || true; }

# run_caller NAME SCENARIO CSV CALLS RATE HOLD_MS RECV_TIMEOUT_MS [sipp args]: the trunk's
# calls to the dispatcher; SIPp's exit status in caller_rc.
run_caller() {
    local name=$1 scenario=$2 csv=$3 calls=$4 rate=$5 hold=$6 recv=$7
    shift 7
    local budget=$((calls / rate + hold / 1000 + recv / 1000 + 30))
    mapfile -t opts < <(sipp_opts "$name")
    caller_rc=0
    (cd "$work" && exec sipp "$CLUSTER_DISPATCHER" -sf "$scenario" -inf "$csv" -i "$TRUNK_IP" \
        -p "$caller_port" -mp "$caller_mp" -t u1 -m "$calls" -r "$rate" -d "$hold" -l "$calls" \
        -recv_timeout "$recv" -timeout "${budget}s" -timeout_error "$@" "${opts[@]}") \
        >"$work/$name.out" 2>&1 || caller_rc=$?
}

# rows CSV FIRST N: SIPp CSV of N users from index FIRST: telnum 100000+i dials 200000+i to
# reach 300000+i.
# clean_run NAME CALLS: CALLS calls from $work/NAME.csv through the dispatcher at B_RATE/s, held
# HOLD_MS, every one successful on both SIPps; `spread` gets the calls each node bridged
# meanwhile ("n1 n2 n3").
clean_run() {
    local name=$1 calls=$2 before
    before=$(bridged_all)
    start_callee "${name}_callee" "$scenarios/callee_uas.xml" "$calls" $((calls / B_RATE + 60))
    run_caller "${name}_caller" "$scenarios/trunk_uac.xml" "$work/$name.csv" "$calls" "$B_RATE" "$HOLD_MS" 15000
    check_sipp "${name}_caller" "$caller_rc" "$calls"
    wait_callee "${name}_callee" 30
    check_sipp "${name}_callee" "$callee_rc" "$calls"
    spread=$(deltas "$before" "$(bridged_all)")
    log "$name: bridged per node: $spread"
}

rows() {
    local i
    echo SEQUENTIAL >"$1"
    for ((i = $2; i < $2 + $3; i++)); do echo "$((100000 + i));$((200000 + i));$((300000 + i))" >>"$1"; done
}

# make_intents CSV IDS API...: one makecall per row of CSV, round-robin over the APIs given,
# callids (in row order) to IDS. One curl process, kept-alive connections.
make_intents() {
    local csv=$1 ids=$2
    shift 2
    local targets=("$@") k=0 n
    n=$(($(wc -l <"$csv") - 1))
    {
        local sep="" tel ded tgt
        tail -n +2 "$csv" | while IFS=';' read -r tel ded tgt; do
            printf '%s' "$sep"
            sep=$'next\n'
            printf 'url = "%s/api/user/%s/makecall"\nrequest = "POST"\n' "${targets[k % ${#targets[@]}]}" "$tel"
            printf 'header = "content-type: application/json"\nmax-time = 5\n'
            printf 'data = "{\\"caller\\":\\"%s\\",\\"callee\\":\\"%s\\"}"\n' "$ded" "$tgt"
            printf 'write-out = "\\n@@%%{http_code}\\n"\n'
            k=$((k + 1))
        done
    } >"$ids.curl"
    curl -sS -K "$ids.curl" >"$ids.out" || fail "makecall: curl failed"
    awk -v want="$n" -v ids="$ids" '
        /^@@[0-9]+$/ {
            n++
            if ($0 != "@@200") { printf "makecall #%d answered %s: %s\n", n, substr($0, 3), body; bad = 1; exit }
            id = body; sub(/.*"callid"[ \t]*:[ \t]*"/, "", id); sub(/".*/, "", id)
            if (id == "" || id == body) { printf "makecall #%d: no callid in %s\n", n, body; bad = 1; exit }
            print id > ids
            body = ""; next
        }
        { body = body $0 }
        END { if (!bad && n != want) { printf "%d makecall answers, expected %d\n", n, want; bad = 1 } exit bad }
    ' "$ids.out" >"$ids.check" || fail "$(cat "$ids.check")"
}

# bridged API: the node's callbridge_calls_bridged_total ("dead" when it does not answer).
bridged() {
    curl -s --max-time 3 "$1/metrics" 2>/dev/null |
        awk '$1 == "callbridge_calls_bridged_total" { print $2; f = 1 } END { if (!f) print "dead" }'
}
# bridged_all: the three nodes' counts, space-separated.
bridged_all() {
    local a out=()
    for a in "${apis[@]}"; do out+=("$(bridged "$a")"); done
    echo "${out[*]}"
}
# deltas BEFORE AFTER: per-node growth ("-" for a node dead in AFTER).
deltas() {
    local -a b a
    read -r -a b <<<"$1"
    read -r -a a <<<"$2"
    local i out=()
    for i in "${!a[@]}"; do
        if [[ ${a[i]} == dead || ${b[i]} == dead ]]; then out+=("-"); else out+=("$((a[i] - b[i]))"); fi
    done
    echo "${out[*]}"
}
sum_of() { local s=0 v; for v in $1; do [[ $v == - ]] || s=$((s + v)); done; echo "$s"; }

# Where a call is: the nodes whose API has its record (name=state ...).
holders() {
    local i code out=""
    for i in "${!apis[@]}"; do
        code=$(curl -s -o "$work/holder.json" -w '%{http_code}' --max-time 3 "${apis[i]}/api/calls/$1" || true)
        if [[ $code == 200 ]]; then
            out+="${out:+ }node-$((i + 1))=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$work/holder.json")"
        fi
    done
    echo "$out"
}

dispatcher_state() { # node N -> its dispatcher flags (AP, IP, TP ...)
    local ip_var=CLUSTER_NODE_$1_SIP
    $CLUSTER_KAMCMD dispatcher.list 2>/dev/null | awk -v d="sip:${!ip_var}" '
        /URI:/ { uri = $2 } /FLAGS:/ && uri == d { print $2; exit }'
}

records_check() { # name ids expect nodes... -> records.py over the live nodes
    local name=$1 ids=$2 expect=$3
    shift 3
    local args=() n
    for n in "$@"; do
        local api_var=CLUSTER_NODE_${n}_API
        args+=(--node "node-$n=${!api_var}")
    done
    python3 "$here/records.py" --ids "$ids" --expect "$expect" "${args[@]}" \
        >"$work/$name.records" 2>"$work/$name.records.err" || {
        cat "$work/$name.records.err" >&2
        fail "$name: call records: $(tail -n 1 "$work/$name.records.err")"
    }
    log "$name: $(tail -n 1 "$work/$name.records.err")"
}

# ---------------------------------------------------------------------------------------------
# a. One call with RTP, makecall on node 1, the INVITE through the dispatcher.
cap_eff=$(awk '$1 == "CapEff:" { print $2 }' /proc/self/status 2>/dev/null || echo 0)
pcap=/usr/share/sip-tester/g711a.pcap
media=0
if (((0x${cap_eff:-0} >> 13) & 1)) && [[ -r $pcap ]]; then media=1; fi
rows "$work/a.csv" 0 1
make_intents "$work/a.csv" "$work/a.ids" "$CLUSTER_NODE_1_API"
a_id=$(cat "$work/a.ids")
before=$(bridged_all)
if [[ $media == 1 ]]; then
    read -r pcap_packets pcap_ms < <(python3 - "$pcap" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}[data[:4]]
off, count, first, last = 24, 0, None, 0.0
while off + 16 <= len(data):
    sec, usec, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
    off += 16 + incl
    count += 1
    at = sec + usec / 1e6
    first = at if first is None else first
    last = at
print(count, int((last - first) * 1000) + 1)
PY
    )
    # SIPp finds the pcap next to the scenario (or in its working directory, the work dir).
    ln -sf "$pcap" "$work/g711a.pcap"
    cp "$scenarios/trunk_uac_rtp.xml" "$work/trunk_uac_rtp.xml"
    log "a: makecall on node 1 ($a_id), one call with RTP ($pcap_packets packets, $pcap_ms ms) to the dispatcher"
    start_callee a_callee "$scenarios/callee_uas_rtp.xml" 1 60 -rtp_echo
    run_caller a_caller "$work/trunk_uac_rtp.xml" "$work/a.csv" 1 1 $((pcap_ms + 2000)) 15000
else
    log "a: no CAP_NET_RAW (or no $pcap): one call without RTP"
    start_callee a_callee "$scenarios/callee_uas.xml" 1 60
    run_caller a_caller "$scenarios/trunk_uac.xml" "$work/a.csv" 1 1 500 15000
fi
check_sipp a_caller "$caller_rc" 1
wait_callee a_callee 15
check_sipp a_callee "$callee_rc" 1
# The caller's dialog went through the dispatcher both ways: callbridge's 200 carries the
# dispatcher's Record-Route (so the ACK and BYE come back through it to the node).
grep -qi "^Record-Route:.*$CLUSTER_DISPATCHER_IP" "$work/a_caller.messages.log" ||
    fail "a: the 200 of callbridge relayed to the caller has no Record-Route of the dispatcher (in-dialog requests would bypass it)"
a_holders=$(holders "$a_id")
log "a: the call's record is on: ${a_holders:-no node}; bridged per node: $(deltas "$before" "$(bridged_all)")"
a_holder=""
for h in $a_holders; do [[ ${h#*=} == ended ]] && a_holder=${h%%=*}; done
[[ -n $a_holder ]] || fail "a: no node has the record of $a_id ended"
a_api_var=CLUSTER_NODE_${a_holder#node-}_API
curl -sS --max-time 5 "${!a_api_var}/api/calls/$a_id" >"$work/a.record.json"
python3 - "$work/a.record.json" "$media" "${pcap_packets:-0}" <<'PY' || fail "a: $(cat "$work/a.record.check")"
import json, sys
rec = json.load(open(sys.argv[1]))
media, packets = sys.argv[2] == "1", int(sys.argv[3])
out = open(sys.argv[1].replace(".record.json", ".record.check"), "w")
def bad(why):
    out.write(f"{why}: {json.dumps(rec)}\n"); out.close(); sys.exit(1)
if rec.get("state") != "ended": bad("state is not ended")
if not rec.get("answered_at"): bad("answered_at is not set")
if rec.get("leg_a_code") != 200: bad("leg_a_code is not 200")
if rec.get("end_cause") != "hangup": bad("end_cause is not hangup")
if media:
    m = rec.get("media") or {}
    a, b = m.get("a_to_b") or {}, m.get("b_to_a") or {}
    if a.get("packets") != packets: bad(f"{a.get('packets')} packets relayed A->B, the caller played {packets}")
    if b.get("packets") != packets: bad(f"{b.get('packets')} packets relayed B->A (the echo), the caller played {packets}")
    if a.get("dropped") or b.get("dropped"): bad("packets dropped")
PY
if [[ $media == 1 ]]; then
    log "a: bridged on $a_holder, ended by the caller, $pcap_packets RTP packets relayed each way, none dropped"
else
    log "a: bridged on $a_holder, ended by the caller"
fi
# Any node answers for any call (the shared call index, then the shared store).
if [[ ${CLUSTER_TEST_SHARED_INDEX:-1} == 1 ]]; then
    for api in "${apis[@]}"; do
        code=$(curl -s -o "$work/a.other.json" -w '%{http_code}' --max-time 3 "$api/api/calls/$a_id" || true)
        [[ $code == 200 ]] || fail "a: GET $api/api/calls/$a_id answered $code: every node should answer for every call"
        python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(0 if (a["state"],a.get("answered_at"),a.get("end_cause"))==(b["state"],b.get("answered_at"),b.get("end_cause")) else 1)' \
            "$work/a.record.json" "$work/a.other.json" || fail "a: $api answers a different record of $a_id"
    done
    log "a: every node answers GET /api/calls/$a_id alike (shared call index)"
fi

# ---------------------------------------------------------------------------------------------
# h. A call hung up through the API: callbridge's BYE reaches the caller via the dispatcher.
rows "$work/h.csv" 1 1
make_intents "$work/h.csv" "$work/h.ids" "$CLUSTER_NODE_3_API"
h_id=$(cat "$work/h.ids")
start_callee h_callee "$scenarios/callee_uas.xml" 1 60
mapfile -t hopts < <(sipp_opts h_caller)
(cd "$work" && exec sipp "$CLUSTER_DISPATCHER" -sf "$here/trunk_uac_hungup.xml" -inf "$work/h.csv" \
    -i "$TRUNK_IP" -p "$caller_port" -mp "$caller_mp" -t u1 -m 1 -recv_timeout 20000 -timeout 40s \
    -timeout_error "${hopts[@]}") >"$work/h_caller.out" 2>&1 &
h_caller_pid=$!
sipp_pids+=("$h_caller_pid")
h_holder=""
for _ in $(seq 100); do
    for h in $(holders "$h_id"); do [[ ${h#*=} == answered ]] && h_holder=${h%%=*}; done
    [[ -n $h_holder ]] && break
    sleep 0.1
done
[[ -n $h_holder ]] || fail "h: the call $h_id was not answered on any node within 10 s"
hangup_node=${h_holder#node-}
# The hang-up goes to a node that does not hold the call: Redis carries it to the holder.
if [[ ${CLUSTER_TEST_REMOTE_HANGUP:-1} == 1 ]]; then hangup_node=$((hangup_node % NODES + 1)); fi
hangup_api_var=CLUSTER_NODE_${hangup_node}_API
code=$(curl -s -o "$work/h.hangup.json" -w '%{http_code}' --max-time 5 -X POST "${!hangup_api_var}/api/calls/$h_id/hangup" || true)
[[ $code == 200 ]] || fail "h: POST /api/calls/$h_id/hangup on node $hangup_node answered $code: $(cat "$work/h.hangup.json")"
grep -q '"ended_by":"api"' "$work/h.hangup.json" || fail "h: the hang-up's record is not ended_by api: $(cat "$work/h.hangup.json")"
h_rc=0
for _ in $(seq 100); do kill -0 "$h_caller_pid" 2>/dev/null || break; sleep 0.1; done
wait "$h_caller_pid" || h_rc=$?
check_sipp h_caller "$h_rc" 1
wait_callee h_callee 15
check_sipp h_callee "$callee_rc" 1
log "h: answered on $h_holder, hung up through node $hangup_node's API: BYE to the caller through the dispatcher and to the callee"

# ---------------------------------------------------------------------------------------------
# b. Load through the dispatcher, intents round-robin on the three APIs.
rows "$work/b.csv" 100 "$B_CALLS"
make_intents "$work/b.csv" "$work/b.ids" "${apis[@]}"
log "b: $B_CALLS intents registered round-robin on the three nodes; $B_CALLS calls at $B_RATE/s, held $HOLD_MS ms"
clean_run b "$B_CALLS"
b_spread=$spread
b_invites=$(invites_seen b_callee)
[[ $b_invites == "$B_CALLS" ]] || fail "b: the callee received $b_invites B-leg INVITEs for $B_CALLS calls"
for d in $b_spread; do
    [[ $d =~ ^[0-9]+$ && $d -gt 0 ]] || fail "b: the calls did not reach every node (bridged per node: $b_spread)"
done
[[ $(sum_of "$b_spread") == "$B_CALLS" ]] || fail "b: the nodes bridged $(sum_of "$b_spread") calls, SIPp made $B_CALLS"
records_check b "$work/b.ids" bridged 1 2 3

# ---------------------------------------------------------------------------------------------
# c. kill -9 of node 2 during a run.
rows "$work/c.csv" 1000 "$C_CALLS"
make_intents "$work/c.csv" "$work/c.ids" "${apis[@]}"
log "c: $C_CALLS calls at $B_RATE/s, held $HOLD_MS ms; node $KILLED gets SIGKILL ${KILL_AFTER} s in (at most $FAIL_BOUND calls may fail)"
before=$(bridged_all)
start_callee c_callee "$scenarios/callee_uas.xml" "$C_CALLS" $((C_CALLS / B_RATE + 60)) -recv_timeout 8000
(
    sleep "$KILL_AFTER"
    date +%s.%N >"$work/c.kill_at"
    "$cluster" kill-node "$KILLED" >"$work/c.kill.log" 2>&1
    for _ in $(seq 200); do
        state=$(dispatcher_state "$KILLED")
        if [[ $state == I* || $state == T* ]]; then
            date +%s.%N >"$work/c.noticed_at"
            echo "$state" >"$work/c.noticed_state"
            break
        fi
        sleep 0.05
    done
) &
killer_pid=$!
run_caller c_caller "$scenarios/trunk_uac.xml" "$work/c.csv" "$C_CALLS" "$B_RATE" "$HOLD_MS" 8000
wait "$killer_pid" || true
[[ $caller_rc == 0 || $caller_rc == 1 ]] || fail "c: SIPp exited with status $caller_rc (neither 0 nor 1: it did not run its calls)"
[[ -s $work/c.kill_at ]] || fail "c: node $KILLED was not killed: $(cat "$work/c.kill.log")"
[[ -s $work/c.noticed_at ]] || fail "c: the dispatcher did not mark node $KILLED inactive within 10 s of the kill"
notice_ms=$(awk -v a="$(cat "$work/c.kill_at")" -v b="$(cat "$work/c.noticed_at")" 'BEGIN { printf "%d", (b - a) * 1000 }')
c_ok=$(stat_col "$work/c_caller.stat.csv" 'SuccessfulCall(C)')
c_failed=$(stat_col "$work/c_caller.stat.csv" 'FailedCall(C)')
log "c_caller: exit $caller_rc, $(stat_summary "$work/c_caller.stat.csv")"
log "c: the dispatcher marked node $KILLED $(cat "$work/c.noticed_state") ${notice_ms} ms after the kill"
failovers=$(grep -c 'did not answer INVITE' "$CLUSTER_KAMAILIO_LOG" || true)
log "c: $failovers INVITEs sent to node $KILLED after its death were failed over to another node"
[[ $((c_ok + c_failed)) == "$C_CALLS" ]] || fail "c: $c_ok successful + $c_failed failed calls, SIPp made $C_CALLS"
((c_failed <= FAIL_BOUND)) || fail "c: $c_failed calls failed, more than node $KILLED's share of the calls up at the kill ($FAIL_BOUND)"
wait_callee c_callee 20
c_spread=$(deltas "$before" "$(bridged_all)")
log "c: bridged per live node: $c_spread; callee: $(stat_summary "$work/c_callee.stat.csv")"
c_invites=$(invites_seen c_callee)
((c_invites <= C_CALLS)) || fail "c: the callee received $c_invites B-leg INVITEs for $C_CALLS calls: an intent was bridged twice"

# c2. With node 2 dead and noticed, every new call succeeds, on nodes 1 and 3.
rows "$work/c2.csv" 2000 "$C2_CALLS"
make_intents "$work/c2.csv" "$work/c2.ids" "$CLUSTER_NODE_1_API" "$CLUSTER_NODE_3_API"
log "c2: $C2_CALLS calls at $B_RATE/s with node $KILLED dead (dispatcher: $(dispatcher_state "$KILLED"))"
clean_run c2 "$C2_CALLS"
c2_spread=$spread
read -r -a c2d <<<"$c2_spread"
[[ ${c2d[0]} =~ ^[0-9]+$ && ${c2d[0]} -gt 0 && ${c2d[2]} =~ ^[0-9]+$ && ${c2d[2]} -gt 0 ]] ||
    fail "c2: the calls did not reach both nodes 1 and 3 (bridged per node: $c2_spread)"
[[ $(sum_of "$c2_spread") == "$C2_CALLS" ]] || fail "c2: the nodes bridged $(sum_of "$c2_spread") calls, SIPp made $C2_CALLS"

# Node loss: once node 2's heartbeat is older than cluster.heartbeat_ttl_secs (5 s), one
# survivor ends its live calls' records "node_lost": at least every call that failed with it.
if [[ ${CLUSTER_TEST_NODE_LOST:-1} == 1 ]]; then
    lost=0
    for _ in $(seq 30); do
        python3 "$here/records.py" --ids "$work/c.ids" --node "node-1=$CLUSTER_NODE_1_API" \
            --node "node-3=$CLUSTER_NODE_3_API" >"$work/c.lost.records" 2>"$work/c.lost.err" ||
            fail "c: records: $(cat "$work/c.lost.err")"
        lost=$(awk '$4 == "node_lost"' "$work/c.lost.records" | wc -l)
        ((lost >= c_failed)) && break
        sleep 0.5
    done
    log "c: $lost records ended node_lost by a survivor"
    ((lost >= c_failed)) || fail "c: $c_failed calls failed with node $KILLED but only $lost records ended node_lost"
fi

# ---------------------------------------------------------------------------------------------
# r. Node 2 back: the dispatcher takes it again once it answers a probe.
"$cluster" start-node "$KILLED" >"$work/r.start.log" 2>&1 || { cat "$work/r.start.log" >&2; fail "r: node $KILLED did not come back"; }
log "r: node $KILLED started again; dispatcher: $(dispatcher_state "$KILLED")"
rows "$work/r.csv" 3000 "$R_CALLS"
make_intents "$work/r.csv" "$work/r.ids" "${apis[@]}"
clean_run r "$R_CALLS"
r_spread=$spread
read -r -a rd <<<"$r_spread"
[[ ${rd[1]} =~ ^[0-9]+$ && ${rd[1]} -gt 0 ]] || fail "r: node $KILLED took no call after it came back (bridged per node: $r_spread)"

# ---------------------------------------------------------------------------------------------
# No intent claimed twice: at most one record per callid across the nodes (node 2's records
# from before its death are in its store, which it reopened), and one for each call that
# could not fail.
records_check c "$work/c.ids" any 1 2 3
records_check c2 "$work/c2.ids" bridged 1 2 3
records_check r "$work/r.ids" bridged 1 2 3
c_lost=$(awk '$2 == "-"' "$work/c.records" | wc -l)
c_bridged=$(awk '$2 != "-" && $4 == "hangup" && $5 == 1' "$work/c.records" | wc -l)
# Without a record: the calls up on node 2 at the kill (they failed), and those that ended on
# node 2 within its last second or so (records reach the store about a second after the end:
# README, "What a crash can lose").
log "c: $c_bridged calls bridged and recorded; $c_lost callids without a record: $c_failed failed with node $KILLED, $((c_lost - c_failed)) ended on it just before the kill, records not yet written"

total=$((1 + 1 + B_CALLS + c_ok + C2_CALLS + R_CALLS))
read -r -a bd <<<"$b_spread"
ok=1
log "PASS: cluster: $total bridged across $NODES nodes (b: ${bd[0]}/${bd[1]}/${bd[2]}), kill -9 of node $KILLED: $c_failed failed during the switch (bound $FAIL_BOUND, noticed in ${notice_ms} ms), $((C2_CALLS + R_CALLS)) bridged after, in $((SECONDS - started)) s"
