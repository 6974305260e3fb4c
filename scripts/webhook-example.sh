#!/usr/bin/env bash
# Checks examples/webhook_receiver.py against the real server: callbridge (release build) posts
# an intent's events to it, and it must verify and print both in seq order; then requests
# signed with the wrong body, a stale timestamp or no signature must get 400, and a correctly
# signed one 204. Part of the README test command.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
bin=${CALLBRIDGE_BIN:-$target_dir/release/callbridge}
# Built (or found up to date) unless CALLBRIDGE_BIN names a binary.
[[ -n ${CALLBRIDGE_BIN:-} ]] || cargo build --release --locked --quiet -p callbridge --bin callbridge
# shellcheck source=ports.sh
source scripts/ports.sh
free_port api_port
free_port sip_port
free_port hook_port
free_port_range rtp_ports 20

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "webhook-example: $*" >&2; echo "--- receiver:" >&2; cat "$work/receiver.out" >&2; echo "--- callbridge (tail):" >&2; tail -20 "$work/callbridge.log" >&2; exit 1; }

# Hermetic: the caller's own CALLBRIDGE_<SECTION>_<KEY> variables (and CALLBRIDGE_BIN) are
# not passed on to the server.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CALLBRIDGE_' || true)
export WEBHOOK_SECRET="whsec_example_$RANDOM$RANDOM"
python3 examples/webhook_receiver.py "$hook_port" >"$work/receiver.out" 2>&1 &
pids+=($!)
CALLBRIDGE_SIP_LISTEN="127.0.0.1:$sip_port" CALLBRIDGE_API_LISTEN="127.0.0.1:$api_port" \
CALLBRIDGE_MEDIA_RTP_PORTS="$rtp_ports" CALLBRIDGE_STORE_PATH="$work/cb.db" \
CALLBRIDGE_WEBHOOKS_URL="http://127.0.0.1:$hook_port/hook" \
CALLBRIDGE_WEBHOOKS_SECRET="$WEBHOOK_SECRET" \
    "$bin" >"$work/callbridge.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$api_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
callid=$(curl -fs -X POST "http://127.0.0.1:$api_port/api/user/1001/makecall" \
    -H 'Content-Type: application/json' -d '{"caller":"2001","callee":"3001","data":"example"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["callid"])') || fail "makecall failed"
curl -fs -X POST "http://127.0.0.1:$api_port/api/user/1001/cancelcall" >/dev/null || fail "cancelcall failed"

for _ in $(seq 100); do
    [[ $(grep -c '"verified"' "$work/receiver.out" || true) -ge 2 ]] && break
    sleep 0.1
done
python3 - "$work/receiver.out" "$callid" <<'PY' || fail "the receiver did not verify both events in order"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
got = [(l["event"], l["seq"], l["callid"]) for l in lines]
want = [("intent.created", 1, sys.argv[2]), ("intent.cancelled", 2, sys.argv[2])]
assert got == want, f"{got} != {want}"
PY

# The receiver's checks, against requests made here: only a correctly signed one passes.
post() { # body signature-header -> HTTP status
    curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$hook_port/hook" \
        -H 'Content-Type: application/json' ${2:+-H "Callbridge-Signature: $2"} --data-binary "$1"
}
sign() { # body t -> header value
    python3 -c 'import hmac,hashlib,os,sys; k=os.environ["WEBHOOK_SECRET"].encode(); t=sys.argv[2]
print(f"t={t},v1="+hmac.new(k,(t+".").encode()+sys.argv[1].encode(),hashlib.sha256).hexdigest())' "$1" "$2"
}
body='{"id":"evt_x","event":"call.ended","callid":"1","seq":9,"at":0,"data":"","call":{"state":"ended"}}'
now=$(date +%s)
good=$(sign "$body" "$now")
[[ $(post "$body" "$good") == 204 ]] || fail "a correctly signed request was refused"
[[ $(post "${body/call.ended/call.answered}" "$good") == 400 ]] || fail "a tampered body was accepted"
[[ $(post "$body" "$(sign "$body" $((now - 1000)))") == 400 ]] || fail "a stale signature was accepted"
[[ $(post "$body" "") == 400 ]] || fail "an unsigned request was accepted"
echo "webhook-example: 2 events verified in order; tampered, stale and unsigned requests refused"
