#!/usr/bin/env bash
# HTTP API load benchmark: callbridge's POST /api/user/{telnum}/makecall against a minimal hyper
# hello-world (benches/src/bin/hello.rs: same hyper/hyper-util, same tokio multi-thread runtime,
# same http1::Builder settings, answers {"callid":"1"} to any POST) as the ceiling, both driven
# by wrk over loopback HTTP/1.1 keep-alive connections.
#
# Every request is a makecall with a fresh telnum (1000000 + a per-thread counter, from a wrk Lua
# script) and body {"caller":"2001","callee":"3001"}; hello gets the same requests. So callbridge
# does its full work per request: routing, JSON parsing and number checks, a new intent in the
# intent table, a new call record in the registry, metrics, and one info log line (written to a
# log file, as in service with the default log.filter=info). A third server,
# "callbridge-warn", is the same with log.filter=warn, to show what the per-request log costs.
#
# Webhooks (servers "callbridge-hooks" and "callbridge-hooks-stalled", not run by default):
# callbridge as "callbridge" with --set webhooks.url=http://127.0.0.1:SINK_PORT/hook,
# webhooks.secret and webhooks.timeout_ms=WEBHOOK_TIMEOUT_MS (other webhooks.* keys at their
# defaults). Each makecall then makes an intent.created event (and, with TELNUM_POOL > 0, an
# intent.replaced for the intent it replaces), written to the SQLite outbox and POSTed, signed,
# by the dispatcher to benches/src/bin/webhook_sink.rs, started before the server and stopped
# after it on each run: "ok" (callbridge-hooks: verifies each signature, answers 204) or
# "stall" (callbridge-hooks-stalled: never answers, each attempt holds one of the
# webhooks.max_in_flight (64) connections for webhooks.timeout_ms (5 s), then is retried with
# backoff; a target refusing connections would be a cheaper dead receiver). At tens of thousands
# of makecalls/s the stalled variant's outbox passes webhooks.max_pending (100000) and its oldest
# events are dropped: expected, and reported (not an error). Each is compared with "callbridge"
# (webhooks off) and hello in the same run (run them together: SERVERS="hello callbridge
# callbridge-hooks callbridge-hooks-stalled"). Per run the webhook counters are read from
# /metrics at the end of the measured window; callbridge-hooks is then given up to DRAIN_WAIT
# seconds to deliver its backlog (the time and server CPU it took are reported). The sink's CPU
# is reported apart from the server's.
#
# Several nodes (servers "callbridge-redis", "callbridge-pg" and "callbridge-cluster", not run
# by default; compare them with "callbridge" in the same run): callbridge as "callbridge" with
# the cluster's shared parts, each started fresh for each run on a free loopback port and
# stopped after it, and its CPU COUNTED WITH THE SERVER'S (a makecall's cost includes what it
# makes them do; the report also gives their share apart):
#   callbridge-redis    intents in Redis (--set cluster.redis_url=redis://…, cluster.node_id):
#                       Debian's redis-server, no persistence, an empty directory; its CPU is
#                       redis-server's utime + stime. The store stays the embedded SQLite file.
#   callbridge-pg       the store in PostgreSQL (--set store.url=postgres://postgres@127.0.0.1:
#                       PORT/callbridge instead of store.path): Debian's /usr/lib/postgresql/*/bin,
#                       initdb + pg_ctl in a directory of its own (scripts/postgres.sh; as the user
#                       postgres when root), removed after the run but for its logs. Durability
#                       as the embedded SQLite's (WAL, synchronous = NORMAL: a crash may lose the
#                       last commits, never corrupts): fsync = on, full_page_writes = on,
#                       synchronous_commit = off. Its CPU: utime + stime of the postmaster and of
#                       every child of it alive (backends, walwriter, checkpointer, ...) plus the
#                       postmaster's cutime + cstime (children that exited). Intents stay in
#                       memory.
#   callbridge-cluster  a node as in a cluster: intents in Redis AND the store in PostgreSQL, both
#                       as above; the CPU of all three summed.
# What the store has to do with makecall: nothing on the request path (no Idempotency-Key is
# sent, intent.require_ownership is off). With TELNUM_POOL = 0 every makecall is a new intent
# that stays pending (intent.ttl_secs = 120 outlasts a run), so nothing is written at all; with
# TELNUM_POOL = N > 0 each makecall replaces the telnum's pending intent, whose record ends
# (intent_replaced) and, a second later, goes through the store's writer thread, batched (up to
# 500 per transaction; beyond store.queue = 10,000 waiting, records are dropped and counted).
# So for every callbridge* server (SQLite or PostgreSQL) the report has a "store" table:
# callbridge's /metrics at the end of the measured window (makecalls answered, records written,
# queued, waiting to settle, dropped because the queue was full, failed, transactions; records
# written per second over the window), then, after the server stopped (a SIGTERM writes every
# record left), the records dropped over its life (its log's warnings) and the rows in the
# store's calls table, against the records expected (TELNUM_POOL > 0: the makecalls answered
# minus the distinct telnums, 2 * TELNUM_POOL + 1). Every
# callbridge* run starts with an empty store (its SQLite file removed, or a fresh PostgreSQL).
#
# For each connection count, each server is started fresh (nothing pinned to a CPU, same
# conditions), warmed up (WARMUP seconds of the same load, discarded), measured for DURATION
# seconds, and stopped; the whole sequence is repeated ROUNDS times, servers interleaved, and the
# table reports every run plus the mean per server and connection count. Recorded per run:
# requests/s, latency p50/p99 (wrk's own histogram, i.e. closed-loop latency: wrk sends the next
# request on a connection when the previous answer arrives), the server's CPU use
# (utime + stime from /proc/<pid>/stat over the measured window, with its Redis's and
# PostgreSQL's, also given apart) and requests per server CPU-second, and any error wrk saw.
#
# wrk runs with ONE thread (THREADS=1): this machine has few cores and wrk competes with the
# server for them; more wrk threads would mostly steal CPU from the server. The ratio
# callbridge / hello is therefore "on this shared machine, with the load generator on the same
# cores", for both sides alike.
#
# Unless SKIP_MICRO=1, the full run then runs the criterion micro-benchmarks intent_table and
# sdp_rewrite with short settings (-- --warm-up-time 1 --measurement-time 3) and adds their
# point estimates (from target/criterion/*/new/estimates.json) to the results.
#
# Usage:  benches/load/api.sh            (as root it installs wrk with apt-get if missing;
#                                         builds callbridge and hello in release; writes
#                                         benches/results/api.md)
#         QUICK=1 benches/load/api.sh    (smoke test: 3 s per server, 16 connections, one round,
#                                         no micro-benchmarks; writes to a temporary file, not
#                                         benches/results/api.md. Exits non-zero only on HTTP
#                                         errors -- any non-2xx response, a socket error, or no
#                                         response at all -- never on timing)
# Environment (all optional):
#   CONNS="16 64"  DURATION=10  WARMUP=3  ROUNDS=2  THREADS=1
#   TELNUM_POOL=0  (N > 0: telnums cycle over N numbers, so a makecall mostly replaces a pending
#                   intent and the intent table stays at N entries; 0: a new telnum every request)
#   INTENT_MAX_PENDING=10000000  (every callbridge*'s intent.max_pending: with a new telnum per
#                   request every makecall adds a pending intent, and at 100,000 makecalls/s the
#                   default 1,000,000 is passed within the warm-up and the window: the makecalls
#                   beyond it would be quick 503s)
#   SERVER_SET="section.key=value ..."  more --set options for every callbridge* server (e.g.
#                   "sip.max_ended_calls=2000000" with TELNUM_POOL > 0: at 100,000 ended records/s
#                   the default 100,000 prunes records from memory before their second of settling
#                   is over, and those never reach the store)
#   SERVERS="hello callbridge callbridge-warn"   (also callbridge-hooks, callbridge-hooks-stalled;
#                   callbridge-redis: intents in Redis; callbridge-pg: the store in PostgreSQL;
#                   callbridge-cluster: both, a cluster node. Several nodes' comparison:
#                   SERVERS="hello callbridge callbridge-redis callbridge-pg callbridge-cluster")
#   WEBHOOK_TIMEOUT_MS=5000 (webhooks.timeout_ms of the -hooks servers)  DRAIN_WAIT=30
#   SINK_PORT (the webhook sink, chosen free like the others)
#   API_PORT (callbridge HTTP)  SIP_PORT (callbridge SIP)  HELLO_PORT  REDIS_PORT  PG_PORT: each
#                   chosen free at run time below the ephemeral range unless given
#                   (scripts/ports.sh)
#   CARGO_TARGET_DIR (default: ./target)   OUT=benches/results/api.md
#   SKIP_BUILD=1 (use the binaries already built)   SKIP_MICRO=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

# Overrides given in the environment, repeated in the report's command line.
ENV_GIVEN=
for v in QUICK CONNS DURATION WARMUP ROUNDS THREADS TELNUM_POOL INTENT_MAX_PENDING SERVER_SET SERVERS SKIP_MICRO WEBHOOK_TIMEOUT_MS DRAIN_WAIT OUT; do
    [[ -n ${!v+x} ]] && ENV_GIVEN+="$v=\"${!v}\" "
done
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    CONNS=${CONNS:-16}
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
    ROUNDS=${ROUNDS:-1}
    SERVERS=${SERVERS:-"hello callbridge"}
    SKIP_MICRO=1
    OUT=${OUT:-$(mktemp /tmp/callbridge-api-quick.XXXXXX.md)}
else
    CONNS=${CONNS:-"16 64"}
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-3}
    ROUNDS=${ROUNDS:-2}
    SERVERS=${SERVERS:-"hello callbridge callbridge-warn"}
    SKIP_MICRO=${SKIP_MICRO:-0}
    OUT=${OUT:-$ROOT/benches/results/api.md}
fi
THREADS=${THREADS:-1}
TELNUM_POOL=${TELNUM_POOL:-0}
INTENT_MAX_PENDING=${INTENT_MAX_PENDING:-10000000}
SERVER_SET=${SERVER_SET:-}
WEBHOOK_TIMEOUT_MS=${WEBHOOK_TIMEOUT_MS:-5000}
DRAIN_WAIT=${DRAIN_WAIT:-30}
WEBHOOK_SECRET="bench-webhook-secret"
HOOKS=0
PG=0
for s in $SERVERS; do
    case $s in
    hello | callbridge | callbridge-warn | callbridge-redis) ;;
    callbridge-pg | callbridge-cluster) PG=1 ;;
    callbridge-hooks | callbridge-hooks-stalled) HOOKS=1 ;;
    *) echo "api.sh: unknown server $s" >&2; exit 1 ;;
    esac
done
# shellcheck source=../../scripts/ports.sh
source "$ROOT/scripts/ports.sh"
# shellcheck source=../../scripts/postgres.sh
source "$ROOT/scripts/postgres.sh"
[[ -n ${API_PORT:-} ]] || free_port API_PORT
[[ -n ${SIP_PORT:-} ]] || free_port SIP_PORT
[[ -n ${HELLO_PORT:-} ]] || free_port HELLO_PORT
[[ $HOOKS == 0 || -n ${SINK_PORT:-} ]] || free_port SINK_PORT
HOST=127.0.0.1
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
BODY='{"caller":"2001","callee":"3001"}'

die() {
    echo "api.sh: $*" >&2
    exit 1
}
log() { echo "api.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing wrk"
        DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null ||
            { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; } ||
            die "cannot install wrk"
    else
        die "wrk not found (install it, e.g. apt-get install wrk)"
    fi
fi
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found (used to read criterion's estimates)"
if [[ $PG == 1 ]]; then
    pg_bin >/dev/null || die "callbridge-pg and callbridge-cluster need PostgreSQL (Debian package postgresql)"
fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building callbridge and hello (release, target dir $TARGET)"
    CARGO_TARGET_DIR=$TARGET cargo build --release --quiet -p callbridge --bin callbridge
    CARGO_TARGET_DIR=$TARGET cargo build --release --quiet -p callbridge-benches --bin hello
    if [[ $HOOKS == 1 ]]; then
        CARGO_TARGET_DIR=$TARGET cargo build --release --quiet -p callbridge-benches --bin webhook_sink
    fi
fi
CALLBRIDGE=$TARGET/release/callbridge
HELLO=$TARGET/release/hello
SINK=$TARGET/release/webhook_sink
[[ -x $CALLBRIDGE && -x $HELLO ]] || die "binaries missing under $TARGET/release"
[[ $HOOKS == 0 || -x $SINK ]] || die "$SINK missing"

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in $API_PORT $HELLO_PORT ${SINK_PORT:-}; do
    port_open "$p" && die "port $p is already in use (set API_PORT / HELLO_PORT / SINK_PORT)"
done

WORK=$(mktemp -d /tmp/callbridge-api-bench.XXXXXX)
log "server logs and raw figures in $WORK"
SERVER_PID=
SINK_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n $SINK_PID ]]; then
        kill "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
    fi
    stop_redis
    stop_pg
}
trap cleanup EXIT

# --- the wrk script ----------------------------------------------------------------------------
# One Lua state per wrk thread: each thread numbers its own telnums from its own base. done()
# prints one machine-readable line; latency is in microseconds.
LUA=$WORK/makecall.lua
cat >"$LUA" <<'EOF'
local threads = {}
function setup(thread)
    thread:set("id", #threads)
    table.insert(threads, thread)
end
function init(args)
    -- args[1]: offset, so the warm-up and the measured run use different telnums.
    -- args[2]: telnum pool size; 0 = a new telnum for every request.
    base = 1000000 + (tonumber(args[1]) or 0) + id * 100000000
    pool = tonumber(args[2]) or 0
    counter = 0
    bad = 0
    headers = { ["Content-Type"] = "application/json" }
    body = '{"caller":"2001","callee":"3001"}'
end
function request()
    counter = counter + 1
    local n = counter
    if pool > 0 then n = counter % pool end
    return wrk.format("POST", "/api/user/" .. (base + n) .. "/makecall", headers, body)
end
function done(summary, latency, requests)
    local bad_total = 0
    for _, t in ipairs(threads) do bad_total = bad_total + (t:get("bad") or 0) end
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.1f max_us=%d " ..
        "status_errors=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.mean, latency.max, e.status, bad_total, e.connect, e.read, e.write, e.timeout))
end
EOF
# QUICK=1 checks every status (a response() callback makes wrk parse every response into Lua,
# which slows it; the full run relies on wrk's own count of status >= 400 instead).
if [[ $QUICK == 1 ]]; then
    cat >>"$LUA" <<'EOF'
function response(status, headers, body)
    if status < 200 or status > 299 then bad = bad + 1 end
end
EOF
fi

# --- servers -----------------------------------------------------------------------------------
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# "server redis postgres": the CPU of the server, of its Redis and of its PostgreSQL (0 without
# them), read at (nearly) the same time. The shared intent table's and the store's work are part
# of a makecall's cost.
server_cpu() {
    local redis=0 pg=0
    [[ -n ${REDIS_PID:-} ]] && redis=$(cpu_ticks "$REDIS_PID")
    [[ -n ${PG_DIR:-} ]] && pg=$(pg_cpu_ticks "$PG_DIR")
    echo "$(cpu_ticks "$SERVER_PID") $redis $pg"
}

# callbridge-redis's Redis: Debian's redis-server, on its own port and empty directory, no
# persistence, fresh for each run.
start_redis() {
    command -v redis-server >/dev/null || die "callbridge-redis needs redis-server (Debian package redis-server)"
    [[ -n ${REDIS_PORT:-} ]] || free_port REDIS_PORT
    mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind "$HOST" --save "" --appendonly no \
        --dir "$WORK/redis" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    local i
    for i in $(seq 100); do
        port_open "$REDIS_PORT" && return
        sleep 0.05
    done
    die "redis-server did not start: $(tail -5 "$WORK/redis.log")"
}

stop_redis() {
    [[ -n ${REDIS_PID:-} ]] || return 0
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
}

# callbridge-pg's and callbridge-cluster's PostgreSQL: fresh for each run, in its own directory
# under $WORK (its data removed after the run, its logs kept), durable as the embedded SQLite
# (see the header). PG_DIR is set while it runs.
PG_RUN=0
start_pg() {
    [[ -n ${PG_PORT:-} ]] || free_port PG_PORT
    PG_RUN=$((PG_RUN + 1))
    PG_DIR=$WORK/postgres-$PG_RUN
    pg_start "$PG_DIR" "$PG_PORT" fsync=on full_page_writes=on synchronous_commit=off || {
        local why=$PG_ERROR
        [[ -n $PG_ERROR_LOG ]] && why+=": $(tail -5 "$PG_ERROR_LOG")"
        die "PostgreSQL did not start: $why"
    }
}

# Stops it (after the server: a stopping callbridge writes its last records), and removes its data.
stop_pg() {
    [[ -n ${PG_DIR:-} ]] || return 0
    pg_stop "$PG_DIR"
    rm -rf "$PG_DIR/data"
    PG_DIR=
}

# The rows in the store's calls table (the server stopped): "?" when it cannot be read.
store_rows() { # server name
    if [[ -n ${PG_DIR:-} ]]; then
        pg_run psql -h "$HOST" -p "$PG_PORT" -U postgres -d callbridge -Atqc 'SELECT count(*) FROM calls' \
            2>/dev/null || echo "?"
    else
        python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM calls").fetchone()[0])' \
            "$WORK/$1.db" 2>/dev/null || echo "?"
    fi
}

start_server() { # name -> sets SERVER_PID, URL
    local name=$1
    case $name in
    hello)
        "$HELLO" "$HOST:$HELLO_PORT" >"$WORK/hello.log" 2>&1 &
        SERVER_PID=$!
        URL=http://$HOST:$HELLO_PORT
        ;;
    callbridge | callbridge-warn | callbridge-hooks | callbridge-hooks-stalled | callbridge-redis | \
        callbridge-pg | callbridge-cluster)
        local filter=info extra=()
        [[ $name == callbridge-warn ]] && filter=warn
        # A fresh store for every run: records (TELNUM_POOL > 0) left by the previous run would
        # make the store bigger for this one than for a fresh PostgreSQL, and a -hooks server
        # would deliver the previous run's outbox (a stalled one's pending events) again.
        rm -f "$WORK/$name.db" "$WORK/$name.db-wal" "$WORK/$name.db-shm"
        if [[ $name == callbridge-redis || $name == callbridge-cluster ]]; then
            start_redis
            extra+=(--set "cluster.redis_url=redis://$HOST:$REDIS_PORT/0" --set "cluster.node_id=bench-1")
        fi
        if [[ $name == callbridge-pg || $name == callbridge-cluster ]]; then
            start_pg
            extra+=(--set "store.url=postgres://postgres@$HOST:$PG_PORT/callbridge")
        else
            extra+=(--set "store.path=$WORK/$name.db")
        fi
        local kv
        for kv in $SERVER_SET; do extra+=(--set "$kv"); done
        if [[ $name == callbridge-hooks* ]]; then
            # The receiver first, so that no event meets a closed port.
            start_sink "$name"
            extra+=(--set "webhooks.url=http://$HOST:$SINK_PORT/hook" --set "webhooks.secret=$WEBHOOK_SECRET"
                --set "webhooks.timeout_ms=$WEBHOOK_TIMEOUT_MS")
        fi
        "$CALLBRIDGE" --set "api.listen=$HOST:$API_PORT" --set "sip.listen=$HOST:$SIP_PORT" \
            --set "log.filter=$filter" --set "intent.max_pending=$INTENT_MAX_PENDING" "${extra[@]}" \
            >"$WORK/$name.log" 2>&1 &
        SERVER_PID=$!
        URL=http://$HOST:$API_PORT
        ;;
    *) die "unknown server $name" ;;
    esac
    local i
    for i in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited at start: $(tail -5 "$WORK/$name.log")"
        port_open "${URL##*:}" && break
        sleep 0.1
    done
    # One request by hand: the answer must be 200 with a callid.
    local answer
    answer=$(curl -s -o - -w ' %{http_code}' -X POST -H 'Content-Type: application/json' \
        -d "$BODY" "$URL/api/user/999999/makecall") || die "$name: curl failed"
    [[ $answer == *'"callid":'*' 200' ]] || die "$name: unexpected answer to makecall: $answer"
}

# Stops the server, then its Redis and PostgreSQL; for callbridge* servers sets ROWS to the rows
# of the store's calls table once the server has stopped, and DROPPED to the records its log
# says the full writer queue dropped over its whole life (its warnings' dropped= counts; /metrics
# is read at the window's end, and a full queue may still drop records after it); else "-".
stop_server() { # name
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    ROWS=- DROPPED=-
    if [[ ${1:-} == callbridge* ]]; then
        ROWS=$(store_rows "$1")
        DROPPED=$(awk '/store queue full/ { for (i = 1; i <= NF; i++) if ($i ~ /^dropped=/) { sub(/^dropped=/, "", $i); n += $i } }
            END { print n + 0 }' "$WORK/$1.log" 2>/dev/null || echo "?")
    fi
    stop_redis
    stop_pg
}

# The webhook receiver of a -hooks server: "ok" (verifies, answers 204) or "stall" (never
# answers); its counts go to $WORK/$name.sink.counts every second and when it is stopped.
start_sink() { # server name -> SINK_PID
    local name=$1 mode=ok
    [[ $name == callbridge-hooks-stalled ]] && mode=stall
    rm -f "$WORK/$name.sink.counts"
    "$SINK" "$HOST:$SINK_PORT" "$mode" "$WEBHOOK_SECRET" "$WORK/$name.sink.counts" >"$WORK/$name.sink.log" 2>&1 &
    SINK_PID=$!
    for _ in $(seq 50); do
        kill -0 "$SINK_PID" 2>/dev/null || die "webhook_sink exited at start: $(tail -5 "$WORK/$name.sink.log")"
        port_open "$SINK_PORT" && return 0
        sleep 0.1
    done
    die "webhook_sink is not listening on $SINK_PORT"
}

# Stops the sink (in this shell: a $(...) subshell could neither wait for it nor clear
# SINK_PID, and the next server's run would read a dead process's /proc entry).
stop_sink() {
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=
}

sink_counts() { # name -> "requests verified unverified" (the stopped sink's final counts)
    awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); c[kv[1]] = kv[2] } }
        END { print (c["requests"] != "" ? c["requests"] : "?"), (c["verified"] != "" ? c["verified"] : "?"), (c["unverified"] != "" ? c["unverified"] : "?") }' \
        "$WORK/$1.sink.counts" 2>/dev/null || echo "? ? ?"
}

# shellcheck source=webhook_metrics.sh
source "$ROOT/benches/load/webhook_metrics.sh"

# The store's writer, from callbridge's /metrics: "answered written queued unsettled
# dropped_full errors batches" (answered: HTTP 2xx answers so far; queued: handed to the writer,
# not yet committed; unsettled: ended records waiting their second before they are handed over).
store_metrics() {
    curl -s --max-time 2 "$1/metrics" 2>/dev/null | awk '
        /^callbridge_http_requests_total\{class="2xx"\}/ { a = $2 }
        /^callbridge_store_writes_total\{result="written"\}/ { w = $2 }
        /^callbridge_store_writes_total\{result="dropped_full"\}/ { d = $2 }
        /^callbridge_store_writes_total\{result="error"\}/ { e = $2 }
        /^callbridge_store_queue_depth / { q = $2 }
        /^callbridge_store_unsettled_records / { u = $2 }
        /^callbridge_store_batches_total / { b = $2 }
        END { if (w == "") print "- - - - - - -"; else print a + 0, w + 0, q + 0, u + 0, d + 0, e + 0, b + 0 }'
}

field() { # line key -> value
    local kv
    for kv in $1; do [[ ${kv%%=*} == "$2" ]] && { echo "${kv#*=}"; return; }; done
    echo ""
}

# cpu_pct counts the server's Redis and PostgreSQL; redis_pct, pg_pct are theirs alone ("-"
# without).
RUNS=$WORK/runs.tsv # server conns round rps p50_us p99_us cpu_pct req_per_cpu_s errors redis_pct pg_pct
: >"$RUNS"
# callbridge* servers: server conns round answered written queued unsettled dropped_full errors
# batches (end of the measured window) rows (in the store's calls table after the stop)
# written_per_s (over the measured window) dropped_in_all (the server's log, after the stop)
STORE_RUNS=$WORK/store.tsv
: >"$STORE_RUNS"
# -hooks servers: server conns round makecalls sink_cpu_pct delivered retried failed dropped
# pending in_flight queue_dropped store_errors queued (end of the measured window) drain_s drain_cpu_s
# delivered_after_drain pending_after_drain sink_requests sink_verified sink_unverified
HOOKS_RUNS=$WORK/hooks.tsv
: >"$HOOKS_RUNS"
FAILED=0
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for round in $(seq "$ROUNDS"); do
    for conns in $CONNS; do
        for server in $SERVERS; do
            start_server "$server"
            wrk_args=(-t "$THREADS" -c "$conns" --latency -s "$LUA")
            warm=$(wrk "${wrk_args[@]}" -d "${WARMUP}s" "$URL" -- 0 "$TELNUM_POOL")
            sm0=
            [[ $server == callbridge* ]] && sm0=$(store_metrics "$URL")
            read -r t0 r0 g0 < <(server_cpu)
            [[ -n $SINK_PID ]] && s0=$(cpu_ticks "$SINK_PID")
            out=$(wrk "${wrk_args[@]}" -d "${DURATION}s" "$URL" -- 50000000 "$TELNUM_POOL")
            read -r t1 r1 g1 < <(server_cpu)
            line=$(grep '^RESULT ' <<<"$out") || { stop_server; die "no RESULT line from wrk: $out"; }
            sm=
            [[ $server == callbridge* ]] && sm=$(store_metrics "$URL")
            if [[ $server == callbridge-hooks* ]]; then
                s1=$(cpu_ticks "$SINK_PID")
                wh=$(webhook_metrics "$URL")
                # A healthy receiver: how long the backlog left at the end of the window took to
                # deliver (at most DRAIN_WAIT s), and the server CPU it took.
                drain_s=- drain_cpu=- wh_end=$wh
                if [[ $server == callbridge-hooks ]]; then
                    d0=$(date +%s%N)
                    while :; do
                        read -r _ _ _ _ wh_p wh_i _ _ wh_q <<<"$wh_end"
                        [[ $wh_p == 0 && $wh_i == 0 && $wh_q == 0 ]] && { drain_s=$(awk -v a="$d0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'); break; }
                        (($(date +%s%N) - d0 > DRAIN_WAIT * 1000000000)) && { drain_s=">$DRAIN_WAIT"; break; }
                        sleep 0.5
                        wh_end=$(webhook_metrics "$URL")
                    done
                    drain_cpu=$(awk -v a="$t1" -v b="$(cpu_ticks "$SERVER_PID")" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
                fi
                stop_server "$server"
                stop_sink
                sink_counts=$(sink_counts "$server")
                read -r -a whs <<<"$wh"
                read -r -a whe <<<"$wh_end"
                # makecalls: warm-up + measured + the start-up check.
                makecalls=$(($(field "$(grep '^RESULT ' <<<"$warm")" requests) + $(field "$line" requests) + 1))
                sink_pct=$(awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" -v d="$(field "$line" duration_us)" \
                    'BEGIN { printf "%.0f", 100 * (b - a) / hz / (d / 1e6) }')
                printf '%s\t' "$server" "$conns" "$round" "$makecalls" "$sink_pct" "${whs[@]}" "$drain_s" \
                    "$drain_cpu" "${whe[0]}" "${whe[4]}" >>"$HOOKS_RUNS"
                read -r -a sc <<<"$sink_counts"
                printf '%s\t%s\t%s\n' "${sc[@]}" >>"$HOOKS_RUNS"
                log "$server c=$conns round $round webhooks at the window's end (delivered retried failed" \
                    "dropped pending in_flight queue_dropped store_errors queued): $wh; drained in ${drain_s} s" \
                    "(server CPU ${drain_cpu} s, then $wh_end); sink (requests verified unverified): $sink_counts," \
                    "sink CPU ${sink_pct} %"
            else
                stop_server "$server"
            fi
            if [[ $server == callbridge* ]]; then
                read -r -a sms <<<"$sm"
                read -r _ w0 _ <<<"$sm0"
                # Records committed per second over the measured window.
                wps=$(awk -v a="$w0" -v b="${sms[1]}" -v d="$(field "$line" duration_us)" \
                    'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.0f", (b - a) / (d / 1e6) }')
                printf '%s\t' "$server" "$conns" "$round" "${sms[@]}" "$ROWS" "$wps" >>"$STORE_RUNS"
                printf '%s\n' "$DROPPED" >>"$STORE_RUNS"
                log "$server c=$conns round $round store at the window's end (answered written queued" \
                    "unsettled dropped_full errors batches): $sm; rows in the store after the stop: $ROWS," \
                    "dropped in all (log): $DROPPED"
            fi
            requests=$(field "$line" requests)
            dur=$(field "$line" duration_us)
            errors=""
            for k in status_errors non2xx connect read write timeout; do
                v=$(field "$line" "$k")
                [[ $v != 0 ]] && errors+="$k=$v "
            done
            if [[ $requests == 0 ]] || [[ $(field "$line" status_errors) != 0 ]] ||
                [[ $(field "$line" non2xx) != 0 ]] || [[ $(field "$line" connect) != 0 ]] ||
                [[ $(field "$line" read) != 0 ]] || [[ $(field "$line" write) != 0 ]]; then
                FAILED=1
                log "HTTP errors: $server c=$conns: requests=$requests ${errors:-}"
            fi
            has_redis=0 has_pg=0
            [[ $server == callbridge-redis || $server == callbridge-cluster ]] && has_redis=1
            [[ $server == callbridge-pg || $server == callbridge-cluster ]] && has_pg=1
            read -r rps cpu_pct per_cpu redis_pct pg_pct < <(awk -v r="$requests" -v d="$dur" \
                -v a="$t0" -v b="$t1" -v ra="$r0" -v rb="$r1" -v ga="$g0" -v gb="$g1" \
                -v hr="$has_redis" -v hg="$has_pg" -v hz="$CLK_TCK" 'BEGIN {
                    s = d / 1e6; rcpu = (rb - ra) / hz; gcpu = (gb - ga) / hz;
                    cpu = (b - a) / hz + rcpu + gcpu;
                    printf "%.0f %.0f %.0f %s %s\n", r / s, 100 * cpu / s, (cpu > 0 ? r / cpu : 0),
                        (hr ? sprintf("%.1f", 100 * rcpu / s) : "-"),
                        (hg ? sprintf("%.1f", 100 * gcpu / s) : "-") }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$conns" "$round" "$rps" \
                "$(field "$line" p50_us)" "$(field "$line" p99_us)" "$cpu_pct" "$per_cpu" \
                "${errors:-none}" "$redis_pct" "$pg_pct" >>"$RUNS"
            log "$server c=$conns round $round: $rps req/s, p50 $(field "$line" p50_us) us," \
                "p99 $(field "$line" p99_us) us, server CPU $cpu_pct % (of which Redis $redis_pct %," \
                "PostgreSQL $pg_pct %), errors: ${errors:-none}"
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- micro-benchmarks --------------------------------------------------------------------------
MICRO=$WORK/micro.tsv
: >"$MICRO"
if [[ $SKIP_MICRO != 1 ]]; then
    for bench in intent_table sdp_rewrite; do
        log "criterion: $bench"
        CARGO_TARGET_DIR=$TARGET cargo bench --quiet -p callbridge-benches --bench "$bench" -- \
            --warm-up-time 1 --measurement-time 3 >"$WORK/$bench.txt" 2>&1 ||
            die "cargo bench $bench failed: $(tail -20 "$WORK/$bench.txt")"
    done
    python3 - "$TARGET/criterion" >"$MICRO" <<'EOF'
import json, os, sys
root = sys.argv[1]
rows = []
for group in ("intent_table", "sdp"):
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir):
        continue
    for dirpath, _, files in os.walk(gdir):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        est = json.load(open(os.path.join(dirpath, "estimates.json")))
        bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
        e = est.get("slope") or est["mean"]
        ci = e["confidence_interval"]
        tp = bench.get("throughput") or {}
        rows.append((bench["full_id"], ci["lower_bound"], e["point_estimate"],
                     ci["upper_bound"], tp.get("Bytes", "")))
for r in sorted(rows):
    print("\t".join(str(x) for x in r))
EOF
fi

# --- report ------------------------------------------------------------------------------------
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || REV="$REV + uncommitted changes under crates/"
RUSTC=$(rustc --version 2>/dev/null || echo unknown)
WRK=$( (wrk --version 2>&1 || true) | head -1 | cut -d' ' -f1-2)
CMD="${ENV_GIVEN}benches/load/api.sh"

python3 - "$RUNS" "$MICRO" "$HOOKS_RUNS" "$STORE_RUNS" "$TELNUM_POOL" >"$WORK/tables.md" <<'EOF'
import sys
from collections import defaultdict
runs = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
micro = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
acc = defaultdict(list)
order = []
for server, conns, rnd, rps, p50, p99, cpu, per_cpu, errors, redis, pg in runs:
    key = (int(conns), server)
    if key not in acc:
        order.append(key)
    acc[key].append((float(rps), float(p50), float(p99), float(cpu), float(per_cpu), errors,
                     None if redis == "-" else float(redis), None if pg == "-" else float(pg)))
mean = lambda xs: sum(xs) / len(xs)
def ms(us):
    return f"{us / 1000:.2f}"
print("| connections | server | runs | requests/s (mean) | each run | p50 ms | p99 ms | server CPU | of which Redis | of which PostgreSQL | requests per server CPU-s | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def share(values):
    if not values:
        return "-"
    m = mean(values)
    return f"{m:.1f} %" if m < 10 else f"{m:.0f} %"
summary = {}
parts = {}
for conns, server in sorted(order, key=lambda k: (k[0], order.index(k))):
    xs = acc[(conns, server)]
    rps = mean([x[0] for x in xs])
    summary[(conns, server)] = (rps, mean([x[4] for x in xs]))
    # CPU per makecall in µs: the server's own, its Redis's, its PostgreSQL's (means of the rounds).
    r_us = mean([x[6] / 100 / x[0] * 1e6 for x in xs]) if xs[0][6] is not None else None
    g_us = mean([x[7] / 100 / x[0] * 1e6 for x in xs]) if xs[0][7] is not None else None
    parts[(conns, server)] = (mean([x[3] / 100 / x[0] * 1e6 for x in xs]) - (r_us or 0) - (g_us or 0), r_us, g_us)
    each = " / ".join(f"{x[0]:.0f}" for x in xs)
    errs = ", ".join(sorted({x[5] for x in xs}))
    redis = share([x[6] for x in xs if x[6] is not None])
    pg = share([x[7] for x in xs if x[7] is not None])
    print(f"| {conns} | {server} | {len(xs)} | **{rps:.0f}** | {each} | "
          f"{ms(mean([x[1] for x in xs]))} | {ms(mean([x[2] for x in xs]))} | "
          f"{mean([x[3] for x in xs]):.0f} % | {redis} | {pg} | {mean([x[4] for x in xs]):.0f} | {errs} |")
print()
verdicts = []
if any(k[1] == "hello" for k in summary):
    print("| connections | server | callbridge / hello, requests/s | callbridge / hello, requests per CPU-s | ≥ 0.8× target |")
    print("|---|---|---|---|---|")
    for conns in sorted({k[0] for k in summary}):
        if (conns, "hello") not in summary:
            continue
        h_rps, h_cpu = summary[(conns, "hello")]
        for server in ("callbridge", "callbridge-warn"):
            if (conns, server) not in summary:
                continue
            rps, per_cpu = summary[(conns, server)]
            r = rps / h_rps
            c = per_cpu / h_cpu if h_cpu else 0
            met = r >= 0.8
            if server == "callbridge":
                verdicts.append(met)
            print(f"| {conns} | {server} | **{r:.2f}×** | {c:.2f}× | {'met' if met else 'NOT met'} |")
    print()
node_servers = [s for s in ("callbridge-redis", "callbridge-pg", "callbridge-cluster")
                if any(k[1] == s for k in summary)]
if node_servers and any(k[1] == "callbridge" for k in summary):
    print("### Several nodes' parts against the embedded callbridge")
    print()
    print("Each server's requests/s, and its CPU per makecall counting its Redis's and PostgreSQL's, over")
    print("`callbridge`'s (everything embedded: intents in memory, the store in SQLite), same connections,")
    print("same run (means over the rounds); the CPU per makecall also split between callbridge, Redis")
    print("and PostgreSQL.")
    print()
    print("| connections | server | requests/s (mean) | × callbridge | CPU per makecall, µs | × callbridge | callbridge µs | Redis µs | PostgreSQL µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for conns in sorted({k[0] for k in summary}):
        base = summary.get((conns, "callbridge"))
        if not base:
            continue
        for server in ["callbridge"] + node_servers:
            if (conns, server) not in summary:
                continue
            rps, per_cpu = summary[(conns, server)]
            us = 1e6 / per_cpu if per_cpu else 0
            base_us = 1e6 / base[1] if base[1] else 0
            own, r_us, g_us = parts[(conns, server)]
            f = lambda v: "-" if v is None else f"{v:.1f}"
            print(f"| {conns} | {server} | {rps:.0f} | **{rps / base[0]:.2f}×** | {us:.1f} | "
                  f"**{(us / base_us if base_us else 0):.2f}×** | {f(own)} | {f(r_us)} | {f(g_us)} |")
    print()
store = [l.rstrip("\n").split("\t") for l in open(sys.argv[4]) if l.strip()]
pool = int(sys.argv[5])
if store:
    print("### The store's writer")
    print()
    idle = all(r[4] == "0" and r[7] == "0" and r[8] == "0" and r[10] == "0" and r[12] in ("0", "-")
               for r in store)
    if pool == 0 and idle:
        answered = [int(r[3]) for r in store if r[3].isdigit()]
        print("TELNUM_POOL = 0: every makecall's intent stays pending (intent.ttl_secs outlasts the run),")
        print("no call ends, so nothing goes to the store: in every run of every callbridge* server")
        print("callbridge's `/metrics` at the end of the window showed 0 records written, queued, dropped")
        print("or failed, and the store's `calls` table had 0 rows after the stop"
              + (f" ({min(answered)}–{max(answered)} makecalls answered per run)." if answered else "."))
        print("Run with TELNUM_POOL > 0 for the writer's load (each makecall then ends an intent).")
        print()
        store = []
    else:
        print("callbridge's `/metrics` at the end of each measured window: *answered* = HTTP 2xx so far")
        print("(the makecalls of the warm-up and of the window, the start-up check, those wrk did not count")
        print("at its stop, and one `/metrics` read at the window's start), then the writer's counters:")
        print("records *written* (committed), *queued* (handed to the writer, not yet committed),")
        print("*unsettled* (ended, waiting their second before they are handed over), *dropped* (the")
        print("writer's queue, `store.queue` = 10,000, was full), *errors*, *transactions*, and the records")
        print("written per second over the measured window; then, once the server stopped (SIGTERM")
        print("writes every record left), the records *dropped in all* (the sum of its log's warnings: a")
        print("full queue may still drop after the window's end) and the rows of the store's `calls`")
        print("table, against those *expected*: " + (
            "none (TELNUM_POOL = 0: every makecall's intent stays pending, nothing ends)." if pool == 0 else
            f"one per makecall that replaced a pending intent (TELNUM_POOL = {pool}), i.e. *answered* "
            f"minus the `/metrics` read and the distinct telnums (2 × {pool} + 1). Rows + dropped in all "
            "short of *expected*: records lost without a count (e.g. pruned from memory, beyond "
            "`sip.max_ended_calls`, before the writer took them)."))
        print()
    if store:
        print("| connections | server | round | answered | written | queued | unsettled | dropped | errors | transactions | written/s in the window | dropped in all | rows after the stop | rows + dropped in all | expected |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in store:
        (server, conns, rnd, answered, written, queued, unsettled, dropped, errs, batches, rows, wps,
         dropped_all) = row
        if pool == 0:
            expected = "0"
        elif answered.isdigit():
            expected = f"{max(0, int(answered) - 1 - 2 * pool - 1)}"
        else:
            expected = "?"
        total = str(int(rows) + int(dropped_all)) if rows.isdigit() and dropped_all.isdigit() else "?"
        print(f"| {conns} | {server} | {rnd} | {answered} | {written} | {queued} | {unsettled} | "
              f"**{dropped}** | **{errs}** | {batches} | {wps} | {dropped_all} | {rows} | {total} | {expected} |")
    if store:
        print()
hooks = [l.rstrip("\n").split("\t") for l in open(sys.argv[3]) if l.strip()]
hook_servers = [s for s in ("callbridge-hooks", "callbridge-hooks-stalled") if any(k[1] == s for k in summary)]
if hook_servers:
    print("### Webhooks on vs off")
    print()
    print("Requests/s and requests per server CPU-second of each webhooks variant over callbridge's (webhooks")
    print("off) and hello's, same connections, same run (means over the rounds).")
    print()
    print("| connections | server | requests/s (mean) | × callbridge (off) | × hello | requests per server CPU-s | × callbridge (off), per CPU-s |")
    print("|---|---|---|---|---|---|---|")
    ratio = lambda a, b: f"{a / b:.2f}×" if b else "-"
    for conns in sorted({k[0] for k in summary}):
        off = summary.get((conns, "callbridge"))
        hello = summary.get((conns, "hello"))
        for server in hook_servers:
            if (conns, server) not in summary:
                continue
            rps, per_cpu = summary[(conns, server)]
            print(f"| {conns} | {server} | {rps:.0f} | **{ratio(rps, off[0]) if off else '-'}** | "
                  f"{ratio(rps, hello[0]) if hello else '-'} | {per_cpu:.0f} | "
                  f"{ratio(per_cpu, off[1]) if off else '-'} |")
    print()
    print("Webhook counters per run: callbridge's `/metrics` at the end of the measured window (after the")
    print("warm-up and the measured run: *makecalls* counts both as wrk does, plus the start-up check; wrk does")
    print("not count the requests still on its connections when it stops, so up to 2 × connections more were")
    print("made); for callbridge-hooks,")
    print("the time and server CPU it then took to deliver the backlog (at most DRAIN_WAIT s) and the counters")
    print("after it; the sink's own counts when it was stopped (after the server), and its CPU over the window")
    print("(100 % = one core). *dropped* = let go because more than webhooks.max_pending waited (the stalled")
    print("receiver's expected outcome at these rates), *queue drops* = dropped by the engine's event queue;")
    print("*pending* includes those in flight; *not yet in the outbox* = built by the engine, not yet taken by the")
    print("dispatcher.")
    print()
    print("| connections | server | round | makecalls | delivered | retried | failed | dropped | queue drops | pending | in flight | not yet in the outbox | drained in | drain CPU | delivered / pending after | sink requests | verified | unverified | sink CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for h in hooks:
        (server, conns, rnd, makecalls, sink_pct, d, r, f, x, p, i, q, e, w, drain_s, drain_cpu,
         d_after, p_after, requests, verified, unverified) = h
        drained = f"{drain_s} s" if drain_s != "-" else "-"
        drain_cpu = f"{drain_cpu} s" if drain_cpu != "-" else "-"
        after = f"{d_after} / {p_after}" if drain_s != "-" else "-"
        errors = f" ({e} outbox write errors)" if e not in ("0", "?") else ""
        print(f"| {conns} | {server} | {rnd} | {makecalls} | {d} | {r} | {f} | **{x}**{errors} | {q} | {p} | {i} | {w} | "
              f"{drained} | {drain_cpu} | {after} | {requests} | {verified} | {unverified} | {sink_pct} % |")
    print()
if verdicts:
    print("VERDICT:" + ("met" if all(verdicts) else ("not met" if not any(verdicts) else "partly met")))
if micro:
    print("MICRO")
    def t(ns):
        ns = float(ns)
        return f"{ns:.1f} ns" if ns < 1000 else f"{ns / 1000:.2f} µs"
    print("| benchmark | time per operation [lower, **estimate**, upper] | throughput |")
    print("|---|---|---|")
    for bid, lo, pt, hi, nbytes in micro:
        tp = ""
        if nbytes:
            tp = f"{float(nbytes) / (float(pt) * 1e-9) / 2**20:.0f} MiB/s ({nbytes} B in)"
        print(f"| `{bid}` | {t(lo)} / **{t(pt)}** / {t(hi)} | {tp} |")
EOF

VERDICT=$(grep '^VERDICT:' "$WORK/tables.md" | cut -d: -f2 || true)
mkdir -p "$(dirname "$OUT")"
{
    echo "# HTTP API: makecall vs plain hyper"
    echo
    echo "Generated by \`$CMD\` — do not edit by hand; rerun the script."
    echo
    echo "- Date: $STARTED"
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $(uname -sr); shared with other work, load average"
    echo "  $LOAD_BEFORE before the runs and $LOAD_AFTER after (1/5/15 min). wrk runs on the same"
    echo "  CPUs as the server with $THREADS thread(s) and competes with it; nothing is pinned."
    echo "- Build: callbridge $REV, \`$RUSTC\`, release profile; $WRK."
    echo "- Servers: \`hello\` = \`benches/src/bin/hello.rs\` (hyper 1 http1, tokio multi-thread,"
    echo "  same builder settings as crates/api, answers \`{\"callid\":\"1\"}\`); \`callbridge\` ="
    echo "  defaults plus \`--set api.listen=$HOST:$API_PORT --set sip.listen=$HOST:$SIP_PORT"
    echo "  --set log.filter=info --set intent.max_pending=$INTENT_MAX_PENDING\` (one info line per"
    echo "  makecall, to a file; intent.max_pending is 1,000,000 by default, which a new telnum per"
    echo "  request passes within the run at 100,000 makecalls/s); \`callbridge-warn\` = the same with"
    echo "  \`log.filter=warn\`."
    if [[ -n $SERVER_SET ]]; then
        echo "  Every callbridge* server also gets \`--set\` $SERVER_SET."
    fi
    if [[ $HOOKS == 1 ]]; then
        echo "  \`callbridge-hooks\`, \`callbridge-hooks-stalled\` = \`callbridge\` with webhooks on"
        echo "  (\`--set webhooks.url=http://$HOST:$SINK_PORT/hook --set webhooks.secret=…"
        echo "  --set webhooks.timeout_ms=$WEBHOOK_TIMEOUT_MS\`, other webhooks.* keys at their defaults: max_in_flight"
        echo "  64, max_attempts 10, max_pending 100000, backoff_base_ms 1000; a fresh store each run), posting every"
        echo "  event (intent.created per makecall, plus intent.replaced when TELNUM_POOL > 0) to"
        echo "  \`benches/src/bin/webhook_sink.rs\` (hyper 1, counters only), started before the server and stopped"
        echo "  after it: \`ok\` (verifies each \`Callbridge-Signature\`, answers 204) or \`stall\` (never answers: each"
        echo "  attempt holds a connection for the timeout, the costliest dead receiver; one refusing connections"
        echo "  fails each attempt at once). The sink runs on the same CPUs; its CPU is reported apart."
    fi
    if [[ " $SERVERS " == *" callbridge-redis "* || " $SERVERS " == *" callbridge-cluster "* ]]; then
        echo "  \`callbridge-redis\` = \`callbridge\` as a cluster node with its intents in Redis"
        echo "  (\`--set cluster.redis_url=redis://$HOST:PORT/0 --set cluster.node_id=bench-1\`; $(redis-server --version | cut -d' ' -f1-3),"
        echo "  no persistence, fresh each run)."
    fi
    if [[ $PG == 1 ]]; then
        echo "  \`callbridge-pg\` = \`callbridge\` with its store in PostgreSQL"
        echo "  (\`--set store.url=postgres://postgres@$HOST:PORT/callbridge\` instead of the SQLite file;"
        echo "  $(pg_run postgres --version), fresh each run, scripts/postgres.sh) with fsync = on,"
        echo "  full_page_writes = on, synchronous_commit = off: a crash may lose the last commits but never"
        echo "  corrupts, as the embedded SQLite (WAL, synchronous = NORMAL). \`callbridge-cluster\` = both:"
        echo "  intents in Redis and the store in PostgreSQL, a cluster node's configuration."
    fi
    echo "- Load: per run a fresh server, ${WARMUP} s warm-up (discarded), then"
    echo "  \`wrk -t $THREADS -c CONNS -d ${DURATION}s --latency -s makecall.lua URL\`, CONNS in {$CONNS},"
    echo "  $ROUNDS round(s), servers interleaved. makecall.lua (in api.sh) POSTs"
    if [[ $TELNUM_POOL == 0 ]]; then
        echo "  \`/api/user/{1000000+n}/makecall\` with \`$BODY\`, a new telnum per request."
    else
        echo "  \`/api/user/{1000000+(n mod $TELNUM_POOL)}/makecall\` with \`$BODY\` (TELNUM_POOL=$TELNUM_POOL)."
    fi
    echo "  Latency is wrk's closed-loop latency. Server CPU = utime + stime of the server process"
    echo "  over the measured window (100 % = one core), plus, for callbridge-redis, -pg and -cluster,"
    echo "  that of redis-server and of PostgreSQL (the postmaster and all its children, those that"
    echo "  exited through the postmaster's cutime + cstime), also given apart."
    echo "- Commands:"
    echo
    echo '  ```sh'
    echo "  CARGO_TARGET_DIR=$TARGET $CMD"
    echo '  ```'
    echo
    echo "## Results"
    echo
    sed -n '/^VERDICT:/q;p' "$WORK/tables.md"
    echo "Target (callbridge ≥ 0.8× plain hyper's requests per second, default configuration):"
    echo "**${VERDICT:-n/a}**."
    if [[ -s $MICRO ]]; then
        echo
        echo "## Micro (criterion)"
        echo
        echo "\`CARGO_TARGET_DIR=$TARGET cargo bench -p callbridge-benches --bench intent_table -- --warm-up-time 1 --measurement-time 3\`"
        echo "and the same for \`--bench sdp_rewrite\` (short settings: figures are indicative;"
        echo "the estimate is criterion's slope, or mean where it has no slope)."
        echo
        echo "- \`intent_table/OP/N\`: one operation on an \`IntentTable\` holding N intents, one"
        echo "  thread (see \`benches/benches/intent_table.rs\`)."
        echo "- \`sdp/*\`: a 12-line audio offer (PCMU, PCMA, telephone-event + fmtp, ptime)"
        echo "  parsed, and rewritten to the relay's address and port and written back."
        echo
        sed -n '/^MICRO$/,$p' "$WORK/tables.md" | tail -n +2
    fi
} >"$OUT"
log "wrote $OUT"
cat "$OUT"

if [[ $FAILED == 1 ]]; then
    die "HTTP errors during the runs (see above)"
fi
