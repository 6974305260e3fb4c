#!/usr/bin/env bash
# End-to-end run of callbridge against SIPp over loopback (UDP; callers on TCP if asked).
#
#   1. builds callbridge (release) and starts it on loopback ports, with short SIP timers;
#   2. starts callee_uas.xml as the target phone on the trunk port;
#   3. registers one intent per user with POST /api/user/{telnum}/makecall;
#   4. sends every user's call with trunk_uac.xml and requires every one to be bridged, and
#      that nothing the callee receives names a caller's real number;
#   5. sends calls with no intent with refused_uac.xml and requires every one to get 403;
#   6. checks every call record (GET /api/calls/{callid}), /metrics counters, and that
#      callbridge drains back to no calls, dialogs, transactions, intents or media ports;
#   7. media: a few more calls with RTP. The caller (trunk_uac_rtp.xml) plays the RTP of
#      g711a.pcap after the ACK, the callee (callee_uas_rtp.xml, run with -rtp_echo) echoes it;
#      each call is held longer than the pcap plays, so its record must show every packet of the
#      pcap relayed each way with none dropped, and both legs latched to SIPp's media ports;
#      /metrics must count them, and callbridge must drain again (no media ports).
#   8. carrier extensions, a few calls each, callee scenarios standing for the carrier:
#      callee_uas_auth.xml challenges every INVITE (401, qop=auth) and checks callbridge's answer
#      with SIPp's verifyauth; callee_uas_100rel.xml sends a reliable 183 that callbridge must
#      PRACK, and trunk_uac_100rel.xml PRACKs what callbridge relays reliably;
#      callee_uas_timer.xml grants a 90 s session timer it refreshes once and then lets lapse
#      (on hold, so no media either): callbridge must end those calls itself (session_expired).
#      (SIPP_CARRIER=0 skips this phase: about 80 s.)
# Exits non-zero, with the reason and the tails of the logs, on any failure.
#
# Usage: sipp-scenarios/run.sh            (needs sipp, from Debian/Ubuntu package sip-tester, and curl;
#                                          the media phase needs root or CAP_NET_RAW: SIPp plays pcaps
#                                          through a raw socket)
# Environment (all optional):
#   SKIP_SIPP=1             skip the whole run (exit 0 with a message)
#   SIPP_CALLS=300          bridged calls;      SIPP_RATE=50 calls per second
#   SIPP_REFUSED_CALLS=5    calls with no intent (expects 403)
#   SIPP_HOLD_MS=500        how long each bridged call stays up
#   SIPP_MEDIA_CALLS=6      calls with RTP (0 skips the media phase); SIPP_MEDIA_RATE=2 calls per second
#   SIPP_MEDIA_HOLD_MS      how long each call with RTP stays up; default and minimum: the pcap's
#                           playing time + 2 s (so that every packet is played and echoed)
#   SIPP_MEDIA_PCAP=/usr/share/sip-tester/g711a.pcap   RTP the callers play (PCMA, as offered)
#   SIPP_CARRIER=1          the carrier-extension phase (0 skips it)
#   SIPP_CALLER_TRANSPORT=u1   SIPp transport of the callers (trunk side): u1 = UDP, t1 = TCP
#   SIPP_SIP_PORT=15060  SIPP_CALLEE_PORT=15080  SIPP_CALLER_PORT=15062  SIPP_API_PORT=18080
#   SIPP_MEDIA_PORT=16000   SIPp's own media ports (callee, caller = +100, refused = +200;
#                           the media phase reuses the callee's and the caller's)
#                           ports left unset are shifted together by 100s until all are free
#   SIPP_RTP_PORTS=30000-31999   callbridge's media.rtp_ports
#   SIPP_DRAIN_SECS=20      how long callbridge gets to forget calls/transactions at the end
#   SIPP_CALLBRIDGE_BIN=path     use this binary instead of building one
#   SIPP_WORKDIR=dir        where logs go (default: a fresh temp dir, removed on success)
#   SIPP_KEEP=1             keep the work dir even on success
#   SIPP_TRACE=1            also record every SIP message (sipp -trace_msg) into the work dir
set -euo pipefail

if [[ "${SKIP_SIPP:-0}" == 1 ]]; then
    echo "sipp-scenarios/run.sh: SKIP_SIPP=1, skipping the SIPp end-to-end run"
    exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
started=$SECONDS

log() { printf '[sipp-run %3ds] %s\n' "$((SECONDS - started))" "$*"; }

for tool in sipp curl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "sipp-scenarios/run.sh: '$tool' not found." >&2
        [[ $tool == sipp ]] && echo "  install it (Debian/Ubuntu: apt-get install sip-tester), or set SKIP_SIPP=1" >&2
        exit 1
    fi
done

CALLS=${SIPP_CALLS:-300}
CARRIER=${SIPP_CARRIER:-1}
# The account callbridge answers the carrier scenarios' challenges with.
TRUNK_USER=callbridge
TRUNK_PASS=sipp-trunk-secret
RATE=${SIPP_RATE:-50}
REFUSED=${SIPP_REFUSED_CALLS:-5}
HOLD_MS=${SIPP_HOLD_MS:-500}
MEDIA_CALLS=${SIPP_MEDIA_CALLS:-6}
MEDIA_RATE=${SIPP_MEDIA_RATE:-2}
DRAIN_SECS=${SIPP_DRAIN_SECS:-20}
RTP_PORTS=${SIPP_RTP_PORTS:-30000-31999}
CALLER_TRANSPORT=${SIPP_CALLER_TRANSPORT:-u1}
HOST=127.0.0.1

# The media phase: SIPp plays the RTP of a pcap, which takes a raw socket.
if ((MEDIA_CALLS > 0)); then
    pcap=${SIPP_MEDIA_PCAP:-}
    if [[ -z $pcap ]]; then
        for f in /usr/share/sip-tester/g711a.pcap /usr/share/doc/sip-tester/examples/pcap/g711a.pcap \
            /usr/local/share/sipp/pcap/g711a.pcap; do
            [[ -r $f ]] && { pcap=$f; break; }
        done
    fi
    if [[ -z $pcap || ! -r $pcap ]]; then
        echo "sipp-scenarios/run.sh: no RTP pcap to play (g711a.pcap of package sip-tester, or SIPP_MEDIA_PCAP);" >&2
        echo "  set SIPP_MEDIA_PCAP, or SIPP_MEDIA_CALLS=0 to skip the media phase" >&2
        exit 1
    fi
    # What the caller will play: the pcap's UDP packets and its playing time. Every one of them
    # must be relayed to the callee and, echoed, back to the caller: "some packets" is not enough.
    read -r PCAP_PACKETS PCAP_MS < <(python3 - "$pcap" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(data[:4])
if endian is None or len(data) < 24:
    sys.exit("not a classic pcap file")
off, count, first, last = 24, 0, None, 0.0
while off + 16 <= len(data):
    sec, usec, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
    off += 16 + incl
    count += 1
    at = sec + usec / 1e6
    first = at if first is None else first
    last = at
print(count, int((last - (first or 0)) * 1000) + 1)
PY
    ) || { echo "sipp-scenarios/run.sh: cannot read $pcap (python3 reads its packet count)" >&2; exit 1; }
    min_hold=$((PCAP_MS + 2000))
    MEDIA_HOLD_MS=${SIPP_MEDIA_HOLD_MS:-$min_hold}
    if ((MEDIA_HOLD_MS < min_hold)); then
        echo "sipp-scenarios/run.sh: SIPP_MEDIA_HOLD_MS=$MEDIA_HOLD_MS is shorter than $pcap plays" >&2
        echo "  (${PCAP_MS} ms) + 2 s: calls would end mid-playback and lost packets could not be told apart" >&2
        exit 1
    fi
    # CAP_NET_RAW is bit 13 of the effective capabilities (root has it unless dropped).
    cap_eff=$(awk '$1 == "CapEff:" { print $2 }' /proc/self/status 2>/dev/null || true)
    if [[ -n $cap_eff ]] && (((0x$cap_eff >> 13) & 1)); then
        :
    elif command -v getcap >/dev/null 2>&1 && getcap "$(command -v sipp)" 2>/dev/null | grep -q cap_net_raw; then
        :
    else
        echo "sipp-scenarios/run.sh: the media phase needs CAP_NET_RAW (SIPp plays pcaps through a raw socket):" >&2
        echo "  run as root, or setcap cap_net_raw+ep $(command -v sipp), or set SIPP_MEDIA_CALLS=0" >&2
        exit 1
    fi
fi

# ---------------------------------------------------------------------------------------------
# Ports: explicit values are used as given; the defaults move together in steps of 100 until
# none of them is bound already (checked with ss when it is available).
port_busy() {
    command -v ss >/dev/null 2>&1 || return 1
    [[ -n $(ss -Htuln "sport = :$1" 2>/dev/null) ]]
}
offset=0
for try in 0 1 2 3 4 5 6 7 8 9; do
    offset=$((try * 100))
    SIP_PORT=${SIPP_SIP_PORT:-$((15060 + offset))}
    CALLER_PORT=${SIPP_CALLER_PORT:-$((15062 + offset))}
    CALLEE_PORT=${SIPP_CALLEE_PORT:-$((15080 + offset))}
    API_PORT=${SIPP_API_PORT:-$((18080 + offset))}
    MEDIA_PORT=${SIPP_MEDIA_PORT:-$((16000 + offset * 3))}
    busy=""
    for p in "$SIP_PORT" "$CALLER_PORT" "$CALLEE_PORT" "$API_PORT" \
        "$MEDIA_PORT" "$((MEDIA_PORT + 100))" "$((MEDIA_PORT + 200))"; do
        if port_busy "$p"; then busy="$busy $p"; fi
    done
    [[ -z $busy ]] && break
    log "ports in use:$busy; trying the next set"
done
[[ -z $busy ]] || { echo "sipp-scenarios/run.sh: no free set of ports (busy:$busy)" >&2; exit 1; }

if [[ -n "${SIPP_WORKDIR:-}" ]]; then
    work=$SIPP_WORKDIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-sipp.XXXXXX")
fi
cb_log=$work/callbridge.log

# ---------------------------------------------------------------------------------------------
# Cleanup and failure reporting.
cb_pid=""
callee_pid=""
ok=0
# shellcheck source=../scripts/proc.sh
source "$repo/scripts/proc.sh"
cleanup() {
    stop_pid "$callee_pid"
    stop_pid "$cb_pid"
    if [[ $ok == 1 && "${SIPP_KEEP:-0}" != 1 && -z "${SIPP_WORKDIR:-}" ]]; then
        rm -rf "$work"
    else
        echo "sipp-scenarios/run.sh: logs kept in $work"
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
    echo "sipp-scenarios/run.sh: FAILED: $*" >&2
    {
        show_tail "$cb_log" 60
        for f in "$work"/*errors.log; do [[ -e $f ]] && show_tail "$f" 40; done
        for f in "$work"/*screen.log; do [[ -e $f ]] && show_tail "$f" 30; done
    } >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Build and start callbridge.
if [[ -n "${SIPP_CALLBRIDGE_BIN:-}" ]]; then
    bin=$SIPP_CALLBRIDGE_BIN
else
    log "building callbridge (release)"
    (cd "$repo" && cargo build --release --locked -p callbridge)
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$repo/$target
    bin=$target/release/callbridge
fi
[[ -x $bin ]] || fail "callbridge binary $bin not found"

api=http://$HOST:$API_PORT
# The run is hermetic: callbridge's own CALLBRIDGE_<SECTION>_<KEY> variables are not passed on.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CALLBRIDGE_' || true)
log "starting callbridge: SIP $HOST:$SIP_PORT, trunk $HOST:$CALLEE_PORT, API $api (log: $cb_log)"
NO_COLOR=1 "$bin" \
    --set "sip.listen=$HOST:$SIP_PORT" \
    --set "sip.trunk=$HOST:$CALLEE_PORT" \
    --set "sip.public_addr=$HOST" \
    --set "sip.t1_ms=100" \
    --set "sip.t2_ms=400" \
    --set "sip.t4_ms=500" \
    --set "sip.no_answer_secs=10" \
    --set "media.public_ip=$HOST" \
    --set "media.rtp_ports=$RTP_PORTS" \
    --set "api.listen=$HOST:$API_PORT" \
    --set "intent.ttl_secs=300" \
    --set "store.path=$work/callbridge.db" \
    --set "trunk.username=$TRUNK_USER" \
    --set "trunk.password=$TRUNK_PASS" \
    >"$cb_log" 2>&1 &
cb_pid=$!

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }
for _ in $(seq 150); do
    kill -0 "$cb_pid" 2>/dev/null || fail "callbridge exited during start-up"
    [[ $(http_code "$api/healthz") == 200 ]] && break
    sleep 0.2
done
[[ $(http_code "$api/healthz") == 200 ]] || fail "GET /healthz did not answer 200 within 30 s"
log "callbridge is healthy (pid $cb_pid)"

# ---------------------------------------------------------------------------------------------
# SIPp helpers.
# Value of column $2 in the last row of SIPp statistics file $1 (-trace_stat, ';'-separated).
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") { print "?"; exit } split(last, f, ";"); print f[c] }
    ' "$1" 2>/dev/null || echo "?"
}
# Common options: statistics file, error file and final screen for run $1.
sipp_opts() {
    local name=$1
    printf '%s\n' -nostdin -trace_stat -stf "$work/$name.stat.csv" -fd 1 \
        -trace_err -error_file "$work/$name.errors.log" \
        -trace_screen -screen_file "$work/$name.screen.log"
    if [[ "${SIPP_TRACE:-0}" == 1 || $name == *callee ]]; then
        printf '%s\n' -trace_msg -message_file "$work/$name.messages.log"
    fi
}
# "calls=.. ok=.. failed=.. retrans=.. dead=.." from a statistics file.
stat_summary() {
    printf 'calls=%s successful=%s failed=%s retransmissions=%s dead_call_msgs=%s unexpected=%s' \
        "$(stat_col "$1" 'TotalCallCreated')" "$(stat_col "$1" 'SuccessfulCall(C)')" \
        "$(stat_col "$1" 'FailedCall(C)')" "$(stat_col "$1" 'Retransmissions(C)')" \
        "$(stat_col "$1" 'DeadCallMsgs(C)')" "$(stat_col "$1" 'FailedUnexpectedMessage(C)')"
}
# Fails unless run $1 ended with exit status $2 == 0 and $3 successful calls, none failed.
check_sipp() {
    local name=$1 rc=$2 want=$3 f=$work/$1.stat.csv
    local good failed
    good=$(stat_col "$f" 'SuccessfulCall(C)')
    failed=$(stat_col "$f" 'FailedCall(C)')
    log "$name: exit $rc, $(stat_summary "$f")"
    [[ $rc == 0 ]] || fail "SIPp $name exited with status $rc (0 = all calls successful)"
    [[ $good == "$want" && $failed == 0 ]] ||
        fail "SIPp $name: $good successful and $failed failed calls, expected $want and 0"
}
metric() { # name-with-labels -> value, from the last /metrics scrape
    awk -v m="$1" '$1 == m { print $2; found = 1 } END { if (!found) print "missing" }' "$work/metrics.txt"
}
metric_sum() { # family name -> sum over all label sets
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }' "$work/metrics.txt"
}
scrape() { curl -sS --max-time 5 -o "$work/metrics.txt" "$api/metrics" || fail "GET /metrics failed"; }

# Starts the callee (the target phone behind the trunk, on the trunk port) for run $1 with
# scenario $2, exiting after $3 calls or $4 seconds; further arguments go to SIPp.
start_callee() {
    local name=$1 scenario=$2 calls=$3 budget=$4
    shift 4
    log "starting $(basename "$scenario") on $HOST:$CALLEE_PORT"
    mapfile -t opts < <(sipp_opts "$name")
    sipp -sf "$scenario" -i "$HOST" -p "$CALLEE_PORT" -mp "$MEDIA_PORT" -t u1 \
        -m "$calls" -recv_timeout 15000 -timeout "${budget}s" -timeout_error \
        "$@" "${opts[@]}" >"$work/$name.out" 2>&1 &
    callee_pid=$!
    for _ in $(seq 50); do
        port_busy "$CALLEE_PORT" && break
        kill -0 "$callee_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$callee_pid" 2>/dev/null || { show_tail "$work/$name.out"; fail "the callee SIPp ($name) did not start"; }
    command -v ss >/dev/null 2>&1 || sleep 1
}
# The callee of run $1 exits by itself once it has seen $2 calls through (4 s timewait each).
# Then checks what the target saw: every B-leg INVITE dialled a callee number (3xxxxx), and
# nothing it received names a user's real number (telnums are 1xxxxx; dedicated 2xxxxx).
finish_callee() {
    local name=$1 calls=$2 rc=0 invites leak
    log "waiting for the callee SIPp ($name) to finish its calls"
    for _ in $(seq 300); do
        kill -0 "$callee_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$callee_pid" 2>/dev/null; then
        fail "the callee SIPp ($name) is still running 30 s after the callers finished: $(stat_summary "$work/$name.stat.csv")"
    fi
    wait "$callee_pid" || rc=$?
    callee_pid=""
    check_sipp "$name" "$rc" "$calls"
    invites=$(grep -cE '^INVITE sip:3[0-9]{5}@' "$work/$name.messages.log" || true)
    [[ $invites -ge $calls ]] || fail "the callee ($name) received $invites INVITEs for 3xxxxx numbers, expected $calls"
    if leak=$(grep -nE '(sip:|tel:|[<:;= ])1[0-9]{5}@' "$work/$name.messages.log" | head -n 5) && [[ -n $leak ]]; then
        fail "leg B reveals a caller's real number (telnum): $leak"
    fi
}

# Registers one intent per row of SIPp CSV $1 ("telnum;dedicated;callee", $3 rows) with
# POST /api/user/{telnum}/makecall, and writes the callids, in order, to $2.
# One curl process, one kept-alive connection, one POST per user; each answer is followed by
# a line "@@<status>".
make_intents() {
    local csv=$1 ids=$2 n=$3
    log "registering $n intents"
    {
        sep=""
        tail -n +2 "$csv" | while IFS=';' read -r tel ded tgt; do
            printf '%s' "$sep"
            sep=$'next\n'
            printf 'url = "%s/api/user/%s/makecall"\nrequest = "POST"\n' "$api" "$tel"
            printf 'header = "content-type: application/json"\nmax-time = 5\n'
            printf 'data = "{\\"caller\\":\\"%s\\",\\"callee\\":\\"%s\\"}"\n' "$ded" "$tgt"
            printf 'write-out = "\\n@@%%{http_code}\\n"\n'
        done
    } >"$work/makecall.curl"
    curl -sS -K "$work/makecall.curl" >"$work/makecall.out" || fail "makecall: curl failed"
    rm -f "$ids"
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
    ' "$work/makecall.out" >"$work/makecall.check" || fail "$(cat "$work/makecall.check")"
    scrape
    [[ $(metric callbridge_intents_pending) == "$n" ]] ||
        fail "callbridge_intents_pending is $(metric callbridge_intents_pending) after $n makecalls"
}

# What callbridge still holds, from the last scrape; and waiting until it holds nothing.
held() {
    printf 'active_calls=%s dialogs=%s transactions(client)=%s transactions(server)=%s intents=%s media_ports=%s' \
        "$(metric callbridge_active_calls)" "$(metric callbridge_sip_dialogs)" \
        "$(metric 'callbridge_sip_transactions{kind="client"}')" \
        "$(metric 'callbridge_sip_transactions{kind="server"}')" \
        "$(metric callbridge_intents_pending)" "$(metric callbridge_media_ports_in_use)"
}
drained="active_calls=0 dialogs=0 transactions(client)=0 transactions(server)=0 intents=0 media_ports=0"
wait_drained() {
    local t0=$SECONDS
    for _ in $(seq $((DRAIN_SECS * 2))); do
        scrape
        [[ $(held) == "$drained" ]] && break
        sleep 0.5
    done
    [[ $(held) == "$drained" ]] || fail "callbridge still holds state ${DRAIN_SECS} s after the last call: $(held)"
    log "callbridge drained in $((SECONDS - t0)) s: $(held)"
}

# ---------------------------------------------------------------------------------------------
# The callee (target phone behind the trunk): answers every B-leg INVITE, exits after CALLS calls.
start_callee callee "$here/callee_uas.xml" "$CALLS" $((CALLS / RATE + HOLD_MS / 1000 + 60))

# ---------------------------------------------------------------------------------------------
# Intents: one per user. telnum 100000+i dials dedicated 200000+i to reach 300000+i.
csv=$work/calls.csv
ids=$work/callids.txt
echo SEQUENTIAL >"$csv"
for ((i = 0; i < CALLS; i++)); do
    echo "$((100000 + i));$((200000 + i));$((300000 + i))" >>"$csv"
done
make_intents "$csv" "$ids" "$CALLS"

# ---------------------------------------------------------------------------------------------
# The bridged calls.
uac_budget=$((CALLS / RATE + HOLD_MS / 1000 + 45))
log "trunk_uac.xml: $CALLS calls at $RATE/s, held ${HOLD_MS} ms (budget ${uac_budget} s)"
mapfile -t opts < <(sipp_opts caller)
rc=0
sipp "$HOST:$SIP_PORT" -sf "$here/trunk_uac.xml" -inf "$csv" -i "$HOST" -p "$CALLER_PORT" \
    -mp "$((MEDIA_PORT + 100))" -t "$CALLER_TRANSPORT" -m "$CALLS" -r "$RATE" -d "$HOLD_MS" -l "$CALLS" \
    -recv_timeout 15000 -timeout "${uac_budget}s" -timeout_error \
    "${opts[@]}" >"$work/caller.out" 2>&1 || rc=$?
check_sipp caller "$rc" "$CALLS"

finish_callee callee "$CALLS"

# ---------------------------------------------------------------------------------------------
# Calls with no intent: one whose intent was already used, the rest never registered.
rcsv=$work/refused.csv
{
    echo SEQUENTIAL
    echo "100000;200000;300000"
    for ((i = 1; i < REFUSED; i++)); do echo "$((900000 + i));$((200000 + i));$((300000 + i))"; done
} >"$rcsv"
log "refused_uac.xml: $REFUSED calls with no intent"
mapfile -t opts < <(sipp_opts refused)
rc=0
sipp "$HOST:$SIP_PORT" -sf "$here/refused_uac.xml" -inf "$rcsv" -i "$HOST" -p "$CALLER_PORT" \
    -mp "$((MEDIA_PORT + 200))" -t "$CALLER_TRANSPORT" -m "$REFUSED" -r 10 \
    -recv_timeout 10000 -timeout 30s -timeout_error \
    "${opts[@]}" >"$work/refused.out" 2>&1 || rc=$?
check_sipp refused "$rc" "$REFUSED"

# ---------------------------------------------------------------------------------------------
# Call records: every bridged call ended after an answer, with 200 sent to the phone.
log "checking $CALLS call records"
sed "s|^|url = \"$api/api/calls/|; s|\$|\"|" "$ids" >"$work/records.curl"
curl -sS --max-time 60 -w '\n@@%{http_code}\n' -K "$work/records.curl" >"$work/records.out" ||
    fail "GET /api/calls/{callid}: curl failed"
awk -v want="$CALLS" '
    /^@@[0-9]+$/ {
        n++; rec = body; body = ""
        gsub(/[ \t]/, "", rec)
        why = ""
        if ($0 != "@@200") why = "status " substr($0, 3)
        else if (rec !~ /"state":"ended"/) why = "state is not ended"
        else if (rec !~ /"answered_at":[0-9]+/) why = "answered_at is not set"
        else if (rec !~ /"leg_a_code":200[,}]/) why = "leg_a_code is not 200"
        if (why != "") { printf "call record #%d: %s: %s\n", n, why, rec; bad = 1; exit }
        next
    }
    { body = body $0 }
    END { if (!bad && n != want) { printf "%d call records, expected %d\n", n, want; bad = 1 } exit bad }
' "$work/records.out" >"$work/records.check" || fail "$(cat "$work/records.check")"
log "sample record: $(head -n 1 "$ids" | xargs -I{} curl -sS --max-time 5 "$api/api/calls/{}" | tr -d '\n')"

# ---------------------------------------------------------------------------------------------
# Metrics, and callbridge draining back to nothing held.
scrape
bridged=$(metric callbridge_calls_bridged_total)
refused=$(metric_sum callbridge_calls_refused_total)
failed=$(metric_sum callbridge_calls_failed_total)
log "metrics: bridged=$bridged refused=$refused failed=$failed"
[[ $bridged == "$CALLS" ]] || fail "callbridge_calls_bridged_total is $bridged, expected $CALLS"
[[ $refused == "$REFUSED" ]] || fail "callbridge_calls_refused_total sums to $refused, expected $REFUSED"
[[ $failed == 0 ]] || fail "callbridge_calls_failed_total sums to $failed, expected 0"

wait_drained

# ---------------------------------------------------------------------------------------------
# Media: calls with RTP through callbridge's relay. The caller plays g711a.pcap (PCMA, 30 ms
# packets) from its media port to the relay port in callbridge's 200; the callee (-rtp_echo)
# sends every packet back to the relay port it came from. Each call is held until the whole pcap
# has played, so each record must count exactly the pcap's packets each way, none dropped, and
# show both legs latched to SIPp's media ports.
media_summary=""
if ((MEDIA_CALLS > 0)); then
    # trunk_uac_rtp.xml plays "g711a.pcap": SIPp 3.6 looks for it next to the scenario, older
    # versions in the working directory. The work dir is both.
    ln -sf "$pcap" "$work/g711a.pcap"
    cp "$here/trunk_uac_rtp.xml" "$work/trunk_uac_rtp.xml"
    mcsv=$work/media_calls.csv
    mids=$work/media_callids.txt
    echo SEQUENTIAL >"$mcsv"
    for ((i = CALLS; i < CALLS + MEDIA_CALLS; i++)); do
        echo "$((100000 + i));$((200000 + i));$((300000 + i))" >>"$mcsv"
    done
    start_callee media_callee "$here/callee_uas_rtp.xml" "$MEDIA_CALLS" \
        $((MEDIA_CALLS / MEDIA_RATE + MEDIA_HOLD_MS / 1000 + 60)) -rtp_echo
    make_intents "$mcsv" "$mids" "$MEDIA_CALLS"

    media_budget=$((MEDIA_CALLS / MEDIA_RATE + MEDIA_HOLD_MS / 1000 + 45))
    log "trunk_uac_rtp.xml: $MEDIA_CALLS calls with RTP at $MEDIA_RATE/s, held ${MEDIA_HOLD_MS} ms, playing $pcap ($PCAP_PACKETS packets, $PCAP_MS ms)"
    mapfile -t opts < <(sipp_opts media_caller)
    rc=0
    (cd "$work" && exec sipp "$HOST:$SIP_PORT" -sf "$work/trunk_uac_rtp.xml" -inf "$mcsv" -i "$HOST" \
        -p "$CALLER_PORT" -mp "$((MEDIA_PORT + 100))" -t "$CALLER_TRANSPORT" -m "$MEDIA_CALLS" \
        -r "$MEDIA_RATE" -d "$MEDIA_HOLD_MS" -l "$MEDIA_CALLS" \
        -recv_timeout 15000 -timeout "${media_budget}s" -timeout_error \
        "${opts[@]}" >"$work/media_caller.out" 2>&1) || rc=$?
    check_sipp media_caller "$rc" "$MEDIA_CALLS"
    finish_callee media_callee "$MEDIA_CALLS"
    # Calls publish their media counters about once a second, and the final ones when they are
    # forgotten: once callbridge has drained, the records hold the final counts.
    wait_drained

    # Every call: ended normally, packets relayed both ways, leg A latched to the caller's media
    # port and leg B to the callee's. Prints "callid a_to_b b_to_a dropped_a dropped_b" per call.
    sed "s|^|url = \"$api/api/calls/|; s|\$|\"|" "$mids" >"$work/media_records.curl"
    check_media_records() {
        curl -sS --max-time 10 -w '\n@@%{http_code}\n' -K "$work/media_records.curl" \
            >"$work/media_records.out" || { echo "GET /api/calls/{callid}: curl failed"; return 1; }
        awk -v want="$MEDIA_CALLS" -v packets="$PCAP_PACKETS" -v la="$HOST:$((MEDIA_PORT + 100))" -v lb="$HOST:$MEDIA_PORT" '
            function obj(rec, key) { # the flat JSON object that is the value of key, or ""
                return match(rec, "\"" key "\":[{][^{}]*[}]") ? substr(rec, RSTART, RLENGTH) : ""
            }
            function val(rec, key) { # a number, string or null value of key, without quotes
                if (!match(rec, "\"" key "\":(\"[^\"]*\"|[0-9]+|null)")) return ""
                v = substr(rec, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
                gsub(/"/, "", v)
                return v
            }
            /^@@[0-9]+$/ {
                n++; rec = body; body = ""
                gsub(/[ \t]/, "", rec)
                a = obj(rec, "a_to_b"); b = obj(rec, "b_to_a")
                why = ""
                if ($0 != "@@200") why = "status " substr($0, 3)
                else if (rec !~ /"state":"ended"/) why = "state is not ended"
                else if (rec !~ /"leg_a_code":200[,}]/) why = "leg_a_code is not 200"
                else if (a == "" || b == "") why = "no media counters (media.a_to_b, media.b_to_a)"
                else if (val(a, "packets") + 0 != packets) why = val(a, "packets") + 0 " packets relayed from leg A to leg B, the caller played " packets
                else if (val(b, "packets") + 0 != packets) why = val(b, "packets") + 0 " packets relayed from leg B to leg A (the echo), the caller played " packets
                else if (val(a, "dropped") + 0 != 0) why = val(a, "dropped") " packets from leg A dropped"
                else if (val(b, "dropped") + 0 != 0) why = val(b, "dropped") " packets from leg B dropped"
                else if (val(rec, "latched_a") != la) why = "leg A latched to " val(rec, "latched_a") ", expected " la
                else if (val(rec, "latched_b") != lb) why = "leg B latched to " val(rec, "latched_b") ", expected " lb
                if (why != "") { printf "media call record #%d: %s: %s\n", n, why, rec; bad = 1; exit }
                printf "%s %d %d %d %d\n", val(rec, "callid"), val(a, "packets"), val(b, "packets"),
                    val(a, "dropped"), val(b, "dropped")
                next
            }
            { body = body $0 }
            END { if (!bad && n != want) { printf "%d media call records, expected %d\n", n, want; bad = 1 } exit bad }
        ' "$work/media_records.out"
    }
    log "checking the media of $MEDIA_CALLS call records"
    for _ in $(seq 20); do
        check_media_records >"$work/media_records.check" && break
        sleep 0.5
    done
    check_media_records >"$work/media_records.check" || fail "$(tail -n 1 "$work/media_records.check")"
    while read -r id a_b b_a drop_a drop_b; do
        log "  call $id: A->B $a_b packets, B->A $b_a packets (dropped $drop_a / $drop_b)"
    done <"$work/media_records.check"
    log "sample media record: $(head -n 1 "$mids" | xargs -I{} curl -sS --max-time 5 "$api/api/calls/{}" | tr -d '\n')"
    media_sum=$(awk '{ s += $2 + $3 } END { print s + 0 }' "$work/media_records.check")

    scrape
    relayed=$(metric callbridge_media_packets_relayed_total)
    log "metrics: media_packets_relayed=$relayed (the records sum to $media_sum)" \
        "media_packets_dropped=$(metric callbridge_media_packets_dropped_total)" \
        "media_ports_in_use=$(metric callbridge_media_ports_in_use)" \
        "bridged=$(metric callbridge_calls_bridged_total)"
    [[ $relayed =~ ^[0-9]+$ && $relayed -gt 0 ]] ||
        fail "callbridge_media_packets_relayed_total is $relayed after $MEDIA_CALLS calls with RTP"
    # Only these calls carried RTP, and their records are final: the two counts must agree.
    [[ $relayed == "$media_sum" ]] ||
        fail "callbridge_media_packets_relayed_total is $relayed, but the media call records sum to $media_sum"
    [[ $(metric callbridge_media_ports_in_use) == 0 ]] ||
        fail "callbridge_media_ports_in_use is $(metric callbridge_media_ports_in_use) after the calls ended"
    [[ $(metric callbridge_calls_bridged_total) == $((CALLS + MEDIA_CALLS)) ]] ||
        fail "callbridge_calls_bridged_total is $(metric callbridge_calls_bridged_total), expected $((CALLS + MEDIA_CALLS))"
    [[ $(metric_sum callbridge_calls_failed_total) == 0 ]] ||
        fail "callbridge_calls_failed_total sums to $(metric_sum callbridge_calls_failed_total), expected 0"
    media_summary=", $MEDIA_CALLS with RTP ($relayed packets relayed)"
fi

# ---------------------------------------------------------------------------------------------
# Carrier extensions: digest challenges, reliable provisionals, session timers. Each phase has
# its own callee scenario on the trunk port, its own callers and intents (numbers 15xxxx,
# 25xxxx, 35xxxx and up), and its records are checked for how they ended.
carrier_summary=""
# Runs phase $1: callee scenario $2, caller scenario $3, $4 calls, each held $5 ms, records
# ending with cause $6; further arguments go to the callee's SIPp.
carrier_phase() {
    local name=$1 callee=$2 caller=$3 n=$4 hold=$5 cause=$6 base=$7
    shift 7
    local pcsv=$work/$name.csv pids=$work/$name.callids.txt rc=0 i
    echo SEQUENTIAL >"$pcsv"
    for ((i = base; i < base + n; i++)); do
        echo "$((100000 + i));$((200000 + i));$((300000 + i))" >>"$pcsv"
    done
    start_callee "${name}_callee" "$here/$callee" "$n" 150 "$@"
    make_intents "$pcsv" "$pids" "$n"
    log "$caller: $n calls ($name)"
    mapfile -t opts < <(sipp_opts "${name}_caller")
    sipp "$HOST:$SIP_PORT" -sf "$here/$caller" -inf "$pcsv" -i "$HOST" -p "$CALLER_PORT" \
        -mp "$((MEDIA_PORT + 100))" -t "$CALLER_TRANSPORT" -m "$n" -r 5 -d "$hold" -l "$n" \
        -recv_timeout 100000 -timeout 140s -timeout_error \
        "${opts[@]}" >"$work/${name}_caller.out" 2>&1 || rc=$?
    check_sipp "${name}_caller" "$rc" "$n"
    finish_callee "${name}_callee" "$n"
    local id record
    while read -r id; do
        record=$(curl -sS --max-time 5 "$api/api/calls/$id" | tr -d ' \n')
        [[ $record == *'"state":"ended"'* && $record == *"\"end_cause\":\"$cause\""* && $record == *'"answered_at":'[0-9]* ]] ||
            fail "$name: call record not answered and ended as $cause: $record"
    done <"$pids"
    carrier_summary+=", $n $name"
}
if [[ $CARRIER == 1 ]]; then
    base=$((CALLS + MEDIA_CALLS + 50000))
    carrier_phase auth callee_uas_auth.xml trunk_uac.xml 4 500 hangup "$base" \
        -set user "$TRUNK_USER" -set pass "$TRUNK_PASS"
    carrier_phase prack callee_uas_100rel.xml trunk_uac_100rel.xml 4 500 hangup $((base + 10))
    carrier_phase timer callee_uas_timer.xml trunk_uac_timer.xml 3 0 session_expired $((base + 20))
    scrape
    [[ $(metric_sum callbridge_calls_failed_total) == 0 ]] ||
        fail "callbridge_calls_failed_total sums to $(metric_sum callbridge_calls_failed_total) after the carrier phase"
    wait_drained
fi

kill -0 "$cb_pid" 2>/dev/null || fail "callbridge is no longer running"
ok=1
log "PASS: $CALLS bridged, $REFUSED refused$media_summary$carrier_summary, in $((SECONDS - started)) s"
