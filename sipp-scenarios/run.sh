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
#      callbridge drains back to no calls, dialogs, transactions or intents.
# Exits non-zero, with the reason and the tails of the logs, on any failure.
#
# Usage: sipp-scenarios/run.sh            (needs sipp, from Debian/Ubuntu package sip-tester, and curl)
# Environment (all optional):
#   SKIP_SIPP=1             skip the whole run (exit 0 with a message)
#   SIPP_CALLS=300          bridged calls;      SIPP_RATE=50 calls per second
#   SIPP_REFUSED_CALLS=5    calls with no intent (expects 403)
#   SIPP_HOLD_MS=500        how long each bridged call stays up
#   SIPP_CALLER_TRANSPORT=u1   SIPp transport of the callers (trunk side): u1 = UDP, t1 = TCP
#   SIPP_SIP_PORT=15060  SIPP_CALLEE_PORT=15080  SIPP_CALLER_PORT=15062  SIPP_API_PORT=18080
#   SIPP_MEDIA_PORT=16000   SIPp's own media ports (callee, caller = +100, refused = +200)
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
RATE=${SIPP_RATE:-50}
REFUSED=${SIPP_REFUSED_CALLS:-5}
HOLD_MS=${SIPP_HOLD_MS:-500}
DRAIN_SECS=${SIPP_DRAIN_SECS:-20}
RTP_PORTS=${SIPP_RTP_PORTS:-30000-31999}
CALLER_TRANSPORT=${SIPP_CALLER_TRANSPORT:-u1}
HOST=127.0.0.1

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
stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
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
    if [[ "${SIPP_TRACE:-0}" == 1 || $name == callee ]]; then
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

# ---------------------------------------------------------------------------------------------
# The callee (target phone behind the trunk): answers every B-leg INVITE, exits after CALLS calls.
callee_budget=$((CALLS / RATE + HOLD_MS / 1000 + 60))
log "starting callee_uas.xml on $HOST:$CALLEE_PORT"
mapfile -t opts < <(sipp_opts callee)
sipp -sf "$here/callee_uas.xml" -i "$HOST" -p "$CALLEE_PORT" -mp "$MEDIA_PORT" -t u1 \
    -m "$CALLS" -recv_timeout 15000 -timeout "${callee_budget}s" -timeout_error \
    "${opts[@]}" >"$work/callee.out" 2>&1 &
callee_pid=$!
for _ in $(seq 50); do
    port_busy "$CALLEE_PORT" && break
    kill -0 "$callee_pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$callee_pid" 2>/dev/null || { show_tail "$work/callee.out"; fail "the callee SIPp did not start"; }
command -v ss >/dev/null 2>&1 || sleep 1

# ---------------------------------------------------------------------------------------------
# Intents: one per user. telnum 100000+i dials dedicated 200000+i to reach 300000+i.
csv=$work/calls.csv
ids=$work/callids.txt
echo SEQUENTIAL >"$csv"
for ((i = 0; i < CALLS; i++)); do
    echo "$((100000 + i));$((200000 + i));$((300000 + i))" >>"$csv"
done
# One curl process, one kept-alive connection, one POST per user; each answer is followed by
# a line "@@<status>".
log "registering $CALLS intents"
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
awk -v want="$CALLS" -v ids="$ids" '
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
[[ $(metric callbridge_intents_pending) == "$CALLS" ]] ||
    fail "callbridge_intents_pending is $(metric callbridge_intents_pending) after $CALLS makecalls"

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

# The callee exits by itself once it has seen CALLS calls through (4 s timewait each).
log "waiting for the callee SIPp to finish its calls"
for _ in $(seq 300); do
    kill -0 "$callee_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$callee_pid" 2>/dev/null; then
    fail "the callee SIPp is still running 30 s after the callers finished: $(stat_summary "$work/callee.stat.csv")"
fi
rc=0
wait "$callee_pid" || rc=$?
callee_pid=""
check_sipp callee "$rc" "$CALLS"

# What the target saw: every B-leg INVITE dialled the callee number, and nothing it received
# names a user's real number (telnums are 1xxxxx; dedicated 2xxxxx; callees 3xxxxx).
invites=$(grep -cE '^INVITE sip:3[0-9]{5}@' "$work/callee.messages.log" || true)
[[ $invites -ge $CALLS ]] || fail "the callee received $invites INVITEs for 3xxxxx numbers, expected $CALLS"
if leak=$(grep -nE '(sip:|tel:|[<:;= ])1[0-9]{5}@' "$work/callee.messages.log" | head -n 5) && [[ -n $leak ]]; then
    fail "leg B reveals a caller's real number (telnum): $leak"
fi

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

held() {
    printf 'active_calls=%s dialogs=%s transactions(client)=%s transactions(server)=%s intents=%s' \
        "$(metric callbridge_active_calls)" "$(metric callbridge_sip_dialogs)" \
        "$(metric 'callbridge_sip_transactions{kind="client"}')" \
        "$(metric 'callbridge_sip_transactions{kind="server"}')" \
        "$(metric callbridge_intents_pending)"
}
drained="active_calls=0 dialogs=0 transactions(client)=0 transactions(server)=0 intents=0"
for _ in $(seq $((DRAIN_SECS * 2))); do
    scrape
    [[ $(held) == "$drained" ]] && break
    sleep 0.5
done
[[ $(held) == "$drained" ]] || fail "callbridge still holds state ${DRAIN_SECS} s after the last call: $(held)"
log "callbridge drained: $(held)"

kill -0 "$cb_pid" 2>/dev/null || fail "callbridge is no longer running"
ok=1
log "PASS: $CALLS bridged, $REFUSED refused, in $((SECONDS - started)) s"
