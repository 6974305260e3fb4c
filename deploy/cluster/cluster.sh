#!/usr/bin/env bash
# Several callbridge nodes behind a Kamailio dispatcher on one machine, each on a loopback
# address of its own (deploy/cluster/README.md): Redis (the shared intents), optionally
# PostgreSQL (the shared store), Kamailio with kamailio-dispatcher.cfg, and N nodes from the
# release binary. Everything runs in the foreground of its own process group, with its logs,
# pid files and data in one work directory; no system service is used or touched.
# deploy/cluster/test.sh drives the same script.
#
# Usage: deploy/cluster/cluster.sh start | stop | status | env | kill-node N | start-node N
#   start        starts everything and waits until every node's /healthz is 200 and the
#                dispatcher has seen every node answer its OPTIONS probes (active); prints
#                the addresses. On a failure: the reason, the logs' tails, and everything
#                started is stopped again (exit 1).
#   stop         stops everything `start` started (SIGTERM to each process group, SIGKILL
#                after 5 s, CLUSTER_STOP_SECS (45) for the nodes; PostgreSQL with pg_ctl):
#                idempotent, also after a failed start.
#   status       each process, each node's /healthz and the dispatcher's view of the nodes;
#                exit 0 only when everything is up.
#   env          the cluster's addresses as shell assignments (eval "$(cluster.sh env)").
#   kill-node N  SIGKILL to node N (a crash, for tests).
#   start-node N starts node N again (same configuration, same data).
#
# The work directory: CLUSTER_DIR (default for start: a new mktemp directory, printed; the
# other subcommands find the last one started in $TMPDIR/callbridge-cluster-$UID.last).
#
# Environment (all optional; the defaults match kamailio-dispatcher.cfg's own):
#   CLUSTER_NODES=3                 how many nodes
#   CLUSTER_NODE_IPS                their addresses, space-separated
#                                   (default 127.0.0.11, 127.0.0.12, ... one per node)
#   CLUSTER_SIP_PORT=5060           each node's SIP port (UDP+TCP, on its own address)
#   CLUSTER_API_PORT=8080           each node's HTTP API port (on its own address)
#   CLUSTER_RTP_PORTS               each node's media.rtp_ports, space-separated ranges;
#                                   default CLUSTER_RTP_BASE (20000) + CLUSTER_RTP_PER_NODE
#                                   (2000) ports per node, one block after the other
#   CLUSTER_DISPATCHER_IP=127.0.0.10  CLUSTER_DISPATCHER_PORT=5060   Kamailio's UDP listener
#   CLUSTER_TRUNK=127.0.0.20:5080   where the nodes send leg B (sip.trunk), directly
#   CLUSTER_TRUSTED_NETS            CIDRs the dispatcher takes new calls from (default: the
#                                   trunk's address /32); the nodes trust the dispatcher and
#                                   the trunk
#   CLUSTER_REDIS_URL               an existing Redis to use (then none is started); default:
#                                   redis-server started on CLUSTER_REDIS_IP (127.0.0.1) port
#                                   CLUSTER_REDIS_PORT (16379), no persistence
#   CLUSTER_PG=0                    1: the nodes share one PostgreSQL (store.url), started from
#                                   /usr/lib/postgresql/*/bin on 127.0.0.1 port CLUSTER_PG_PORT
#                                   (15432) with fsync off (as user postgres when root;
#                                   scripts/postgres.sh), or
#                                   CLUSTER_PG_URL, an existing database (then none is started);
#                                   0: each node its own SQLite file in its directory
#   CLUSTER_PG_SETTINGS             the started PostgreSQL's `-c` settings, space-separated
#                                   (default "fsync=off synchronous_commit=off
#                                   full_page_writes=off": tests only, a power failure may
#                                   corrupt it; "synchronous_commit=off" keeps fsync and may only
#                                   lose the last commits, like the nodes' SQLite default)
#   CLUSTER_NODE_SET                extra `section.key=value` settings for every node,
#                                   space-separated, passed as --set (e.g. "sip.t1_ms=100")
#   CLUSTER_LOG_FILTER=info         the nodes' log.filter
#   CLUSTER_PING_SECS=1             the dispatcher's OPTIONS probe interval
#   CLUSTER_FR_TIMER_MS=2000        how long a node has to answer the dispatcher (100 Trying
#                                   to an INVITE, an OPTIONS probe) before it counts as dead
#   CLUSTER_KAMAILIO_CHILDREN=4     Kamailio's UDP workers
#   CLUSTER_KAMAILIO_SHM_MB=64      Kamailio's shared memory (-m); its transactions stay a few
#                                   seconds after each INVITE and BYE, about 12 KiB each, so a
#                                   load test needs more (benches/load/signalling.sh: 2048)
#   CLUSTER_KAMAILIO_MEM=tlsf       its memory manager (-x/-X: tlsf, fm, or qm, Debian's default,
#                                   a debugging allocator that costs it most of its CPU at load)
#   CLUSTER_KAMAILIO_RCVBUF         the UDP receive buffer its auto-probing may grow to (-b;
#                                   default: Kamailio's own, 256 KiB)
#   CLUSTER_START_SECS=30           how long start waits for health and the dispatcher
#   CLUSTER_STOP_SECS=45            how long stop gives each node after SIGTERM, then SIGKILL:
#                                   a node stops as soon as its calls have ended, at most
#                                   sip.shutdown_grace_secs (5) later; then it hangs up the calls
#                                   left and waits for those transactions, up to 128*T1 (64 s)
#   CALLBRIDGE_BIN                  the callbridge binary (default: the release build of this
#                                   checkout, $CARGO_TARGET_DIR or target/, built when missing;
#                                   CLUSTER_BUILD=1 always runs cargo build first)
# The nodes read only their generated config file and CLUSTER_NODE_SET: CALLBRIDGE_<SECTION>_<KEY>
# variables of the calling shell are not passed on.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
pointer=${TMPDIR:-/tmp}/callbridge-cluster-$(id -u).last

log() { printf '[cluster] %s\n' "$*"; }
die() {
    printf 'cluster.sh: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# The work directory and the cluster's settings. `start` resolves every setting and writes them
# to $CLUSTER_DIR/cluster.env; every other subcommand reads them back from there.

find_dir() {
    if [[ -n ${CLUSTER_DIR:-} ]]; then
        DIR=$CLUSTER_DIR
    elif [[ -r $pointer ]]; then
        DIR=$(cat "$pointer")
    else
        die "no CLUSTER_DIR given and no cluster started before ($pointer)"
    fi
    [[ -d $DIR ]] || die "work directory $DIR does not exist"
}

load_env() {
    find_dir
    [[ -r $DIR/cluster.env ]] || die "$DIR/cluster.env missing: no cluster was started there"
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    read -r -a NODE_IPS <<<"$CLUSTER_NODE_IPS"
    read -r -a RTP_RANGES <<<"$CLUSTER_RTP_PORTS"
}

resolve_settings() {
    CLUSTER_NODES=${CLUSTER_NODES:-3}
    [[ $CLUSTER_NODES =~ ^[1-9][0-9]*$ ]] || die "CLUSTER_NODES=$CLUSTER_NODES is not a number"
    CLUSTER_DISPATCHER_IP=${CLUSTER_DISPATCHER_IP:-127.0.0.10}
    CLUSTER_DISPATCHER_PORT=${CLUSTER_DISPATCHER_PORT:-5060}
    CLUSTER_SIP_PORT=${CLUSTER_SIP_PORT:-5060}
    CLUSTER_API_PORT=${CLUSTER_API_PORT:-8080}
    CLUSTER_TRUNK=${CLUSTER_TRUNK:-127.0.0.20:5080}
    local trunk_ip=${CLUSTER_TRUNK%:*}
    CLUSTER_TRUSTED_NETS=${CLUSTER_TRUSTED_NETS:-$trunk_ip/32}
    if [[ -z ${CLUSTER_NODE_IPS:-} ]]; then
        local base=${CLUSTER_DISPATCHER_IP%.*} last=${CLUSTER_DISPATCHER_IP##*.} i ips=()
        for ((i = 1; i <= CLUSTER_NODES; i++)); do ips+=("$base.$((last + i))"); done
        CLUSTER_NODE_IPS=${ips[*]}
    fi
    read -r -a NODE_IPS <<<"$CLUSTER_NODE_IPS"
    CLUSTER_NODES=${#NODE_IPS[@]}
    if [[ -z ${CLUSTER_RTP_PORTS:-} ]]; then
        local rbase=${CLUSTER_RTP_BASE:-20000} per=${CLUSTER_RTP_PER_NODE:-2000} i ranges=()
        for ((i = 0; i < CLUSTER_NODES; i++)); do
            ranges+=("$((rbase + i * per))-$((rbase + (i + 1) * per - 1))")
        done
        CLUSTER_RTP_PORTS=${ranges[*]}
    fi
    read -r -a RTP_RANGES <<<"$CLUSTER_RTP_PORTS"
    ((${#RTP_RANGES[@]} == CLUSTER_NODES)) ||
        die "CLUSTER_RTP_PORTS has ${#RTP_RANGES[@]} ranges for $CLUSTER_NODES nodes"
    CLUSTER_REDIS_IP=${CLUSTER_REDIS_IP:-127.0.0.1}
    CLUSTER_REDIS_PORT=${CLUSTER_REDIS_PORT:-16379}
    if [[ -n ${CLUSTER_REDIS_URL:-} ]]; then
        CLUSTER_REDIS_OWN=0
    else
        CLUSTER_REDIS_OWN=1
        CLUSTER_REDIS_URL=redis://$CLUSTER_REDIS_IP:$CLUSTER_REDIS_PORT/0
    fi
    CLUSTER_PG=${CLUSTER_PG:-0}
    CLUSTER_PG_PORT=${CLUSTER_PG_PORT:-15432}
    CLUSTER_PG_OWN=0
    if [[ $CLUSTER_PG == 1 ]]; then
        CLUSTER_STORE=postgres
        if [[ -z ${CLUSTER_PG_URL:-} ]]; then
            CLUSTER_PG_OWN=1
            CLUSTER_PG_URL=postgres://postgres@127.0.0.1:$CLUSTER_PG_PORT/callbridge
        fi
    else
        CLUSTER_STORE=sqlite
        CLUSTER_PG_URL=""
    fi
    CLUSTER_NODE_SET=${CLUSTER_NODE_SET:-}
    CLUSTER_LOG_FILTER=${CLUSTER_LOG_FILTER:-info}
    CLUSTER_PING_SECS=${CLUSTER_PING_SECS:-1}
    CLUSTER_FR_TIMER_MS=${CLUSTER_FR_TIMER_MS:-2000}
    CLUSTER_KAMAILIO_CHILDREN=${CLUSTER_KAMAILIO_CHILDREN:-4}
    CLUSTER_START_SECS=${CLUSTER_START_SECS:-30}
}

# Writes the resolved settings, and the addresses derived from them, for the other
# subcommands and for `env`.
write_env() {
    local i apis="" sips=""
    for ((i = 0; i < CLUSTER_NODES; i++)); do
        apis+="${apis:+ }http://${NODE_IPS[i]}:$CLUSTER_API_PORT"
        sips+="${sips:+ }${NODE_IPS[i]}:$CLUSTER_SIP_PORT"
    done
    {
        echo "# written by deploy/cluster/cluster.sh start"
        local var
        for var in CLUSTER_DIR CLUSTER_NODES CLUSTER_NODE_IPS CLUSTER_SIP_PORT CLUSTER_API_PORT \
            CLUSTER_RTP_PORTS CLUSTER_DISPATCHER_IP CLUSTER_DISPATCHER_PORT CLUSTER_TRUNK \
            CLUSTER_TRUSTED_NETS CLUSTER_REDIS_URL CLUSTER_REDIS_OWN CLUSTER_REDIS_IP \
            CLUSTER_REDIS_PORT CLUSTER_PG CLUSTER_PG_OWN CLUSTER_PG_PORT CLUSTER_PG_URL \
            CLUSTER_STORE CLUSTER_NODE_SET CLUSTER_LOG_FILTER CLUSTER_PING_SECS \
            CLUSTER_FR_TIMER_MS CLUSTER_KAMAILIO_CHILDREN CLUSTER_START_SECS CALLBRIDGE_BIN; do
            printf '%s=%q\n' "$var" "${!var}"
        done
        printf '%s=%q\n' CLUSTER_DISPATCHER "$CLUSTER_DISPATCHER_IP:$CLUSTER_DISPATCHER_PORT"
        printf '%s=%q\n' CLUSTER_NODE_APIS "$apis" CLUSTER_NODE_SIPS "$sips"
        printf '%s=%q\n' CLUSTER_KAMCMD "kamcmd -s unix:$CLUSTER_DIR/kamailio/ctl"
        for ((i = 1; i <= CLUSTER_NODES; i++)); do
            printf '%s=%q\n' "CLUSTER_NODE_${i}_IP" "${NODE_IPS[i - 1]}" \
                "CLUSTER_NODE_${i}_SIP" "${NODE_IPS[i - 1]}:$CLUSTER_SIP_PORT" \
                "CLUSTER_NODE_${i}_API" "http://${NODE_IPS[i - 1]}:$CLUSTER_API_PORT" \
                "CLUSTER_NODE_${i}_ID" "node-$i" \
                "CLUSTER_NODE_${i}_DIR" "$CLUSTER_DIR/node-$i" \
                "CLUSTER_NODE_${i}_LOG" "$CLUSTER_DIR/node-$i/callbridge.log"
        done
        printf '%s=%q\n' CLUSTER_KAMAILIO_LOG "$CLUSTER_DIR/kamailio/kamailio.log" \
            CLUSTER_REDIS_LOG "$CLUSTER_DIR/redis/redis.log"
    } >"$DIR/cluster.env.tmp"
    mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"
}

# ---------------------------------------------------------------------------------------------
# Processes. Each one runs in a session (and so a process group) of its own, its pid (= its
# process group id) in $DIR/pids/NAME.pid with the word its command line must contain, so that
# stop never signals a pid that was reused by something else.

# spawn NAME WORD LOGFILE COMMAND...: starts COMMAND in a new session, output to LOGFILE.
spawn() {
    local name=$1 word=$2 logfile=$3
    shift 3
    mkdir -p "$DIR/pids"
    setsid bash -c 'echo "$$ $1" >"$2"; shift 2; exec "$@"' spawn "$word" "$DIR/pids/$name.pid" \
        "$@" </dev/null >>"$logfile" 2>&1 &
    local i
    for i in $(seq 50); do
        [[ -s $DIR/pids/$name.pid ]] && return 0
        sleep 0.02
    done
    die "$name did not start (no pid file)"
}

# pid_of NAME: the recorded pid if that process still runs the expected program; else fails.
pid_of() {
    local file=$DIR/pids/$1.pid pid word
    [[ -r $file ]] || return 1
    read -r pid word <"$file" || return 1
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$word" || return 1
    echo "$pid"
}

# stop_group NAME [SECS]: SIGTERM to NAME's process group, SIGKILL after SECS (5) s; forgets
# the pid.
stop_group() {
    local name=$1 secs=${2:-5} pid i
    if pid=$(pid_of "$name"); then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq $((secs * 10))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop within $secs s: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        # Whatever else is left in the group (Kamailio's children).
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/$name.pid"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

show_tail() { # file [lines]
    [[ -s $1 ]] || return 0
    echo "----- tail of $1 -----"
    tail -n "${2:-30}" "$1"
}

show_logs() {
    local f
    for f in "$DIR"/redis/redis.log "$DIR"/postgres/postgres.log "$DIR"/kamailio/kamailio.log \
        "$DIR"/node-*/callbridge.log; do
        [[ -e $f ]] && show_tail "$f" 30
    done
    return 0
}

# ---------------------------------------------------------------------------------------------
# Redis.

redis_ping() { # host port -> 0 when it answers PONG
    local reply=""
    if command -v redis-cli >/dev/null 2>&1; then
        reply=$(redis-cli -h "$1" -p "$2" ping 2>/dev/null || true)
    else
        reply=$(exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && timeout 1 head -c 7 <&3 || true)
    fi
    [[ $reply == *PONG* ]]
}

start_redis() {
    [[ $CLUSTER_REDIS_OWN == 1 ]] || {
        log "Redis: $CLUSTER_REDIS_URL (not started here)"
        return 0
    }
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (apt-get install redis-server, or scripts/ensure-tools.sh)"
    mkdir -p "$DIR/redis"
    log "Redis: $CLUSTER_REDIS_URL (log $DIR/redis/redis.log)"
    spawn redis redis-server "$DIR/redis/redis.log" \
        redis-server --bind "$CLUSTER_REDIS_IP" --port "$CLUSTER_REDIS_PORT" --dir "$DIR/redis" \
        --save "" --appendonly no --daemonize no --protected-mode no --logfile ""
    local i
    for i in $(seq 100); do
        redis_ping "$CLUSTER_REDIS_IP" "$CLUSTER_REDIS_PORT" && return 0
        pid_of redis >/dev/null || fail_start "redis-server exited during start-up"
        sleep 0.1
    done
    fail_start "redis-server did not answer PING within 10 s"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (CLUSTER_PG=1): one server in $DIR/postgres, run as user postgres when root
# (scripts/postgres.sh, shared with the load benchmarks).

# shellcheck source=../../scripts/postgres.sh
source "$repo/scripts/postgres.sh"
pg_log() { log "$@"; }

start_postgres() {
    [[ $CLUSTER_PG == 1 ]] || return 0
    [[ $CLUSTER_PG_OWN == 1 ]] || {
        log "PostgreSQL: $CLUSTER_PG_URL (not started here)"
        return 0
    }
    local pgdir=$DIR/postgres
    pg_bin >/dev/null 2>&1 || die "PostgreSQL not found in /usr/lib/postgresql/*/bin (apt-get install postgresql, or scripts/ensure-tools.sh)"
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "CLUSTER_PG=1 as root needs the user postgres (Debian's postgresql package creates it)"
    fi
    log "PostgreSQL: $CLUSTER_PG_URL (log $pgdir/postgres.log)"
    # By default tests only: no fsync at all (a power failure may corrupt the database).
    local settings
    read -r -a settings <<<"${CLUSTER_PG_SETTINGS:-fsync=off synchronous_commit=off full_page_writes=off}"
    pg_start "$pgdir" "$CLUSTER_PG_PORT" "${settings[@]}" max_connections=300 || {
        [[ -n $PG_ERROR_LOG ]] && show_tail "$PG_ERROR_LOG"
        fail_start "$PG_ERROR"
    }
}

stop_postgres() {
    pg_stop "$DIR/postgres"
}

# ---------------------------------------------------------------------------------------------
# Kamailio with the dispatcher configuration.

kamailio_bin() {
    if command -v kamailio >/dev/null 2>&1; then
        command -v kamailio
    elif [[ -x /usr/sbin/kamailio ]]; then
        echo /usr/sbin/kamailio
    else
        die "kamailio not found (apt-get install kamailio, or scripts/ensure-tools.sh)"
    fi
}

kamcmd_bin() {
    if command -v kamcmd >/dev/null 2>&1; then command -v kamcmd; else echo /usr/sbin/kamcmd; fi
}

kamcmd_run() { # rpc args...
    timeout 5 "$(kamcmd_bin)" -s "unix:$DIR/kamailio/ctl" "$@"
}

start_kamailio() {
    local kdir=$DIR/kamailio i bin
    bin=$(kamailio_bin)
    mkdir -p "$kdir/run"
    # Every node starts inactive and probed (flags 9 = inactive | probing): the dispatcher sends
    # it calls only once it has answered an OPTIONS probe.
    : >"$kdir/dispatcher.list"
    for ((i = 0; i < CLUSTER_NODES; i++)); do
        echo "1 sip:${NODE_IPS[i]}:$CLUSTER_SIP_PORT 9 0 node=node-$((i + 1))" >>"$kdir/dispatcher.list"
    done
    local mem=${CLUSTER_KAMAILIO_MEM:-tlsf}
    [[ $mem =~ ^(tlsf|fm|qm)$ ]] || die "CLUSTER_KAMAILIO_MEM must be tlsf, fm or qm"
    local args=(-f "$here/kamailio-dispatcher.cfg" -DD -E -m "${CLUSTER_KAMAILIO_SHM_MB:-64}" -M 8
        -x "$mem" -X "$mem" ${CLUSTER_KAMAILIO_RCVBUF:+-b "$CLUSTER_KAMAILIO_RCVBUF"}
        -P "$kdir/kamailio.pid" -Y "$kdir/run" -w "$kdir"
        -A "LISTEN=udp:$CLUSTER_DISPATCHER_IP:$CLUSTER_DISPATCHER_PORT"
        -A "DS_LIST=\"$kdir/dispatcher.list\""
        -A "PING_FROM=\"sip:dispatcher@$CLUSTER_DISPATCHER_IP\""
        -A "TRUSTED_NETS=\"$CLUSTER_TRUSTED_NETS\""
        -A "CTL_SOCKET=\"unix:$kdir/ctl\""
        -A "CHILDREN=$CLUSTER_KAMAILIO_CHILDREN"
        -A "PING_SECS=$CLUSTER_PING_SECS"
        -A "FR_TIMER_MS=$CLUSTER_FR_TIMER_MS")
    "$bin" -c "${args[@]}" >"$kdir/check.log" 2>&1 || {
        show_tail "$kdir/check.log"
        fail_start "kamailio -c rejects kamailio-dispatcher.cfg"
    }
    printf '%q ' "$bin" "${args[@]}" >"$kdir/command.txt"
    log "Kamailio dispatcher: udp:$CLUSTER_DISPATCHER_IP:$CLUSTER_DISPATCHER_PORT (log $kdir/kamailio.log)"
    spawn kamailio kamailio "$kdir/kamailio.log" "$bin" "${args[@]}"
    for i in $(seq 100); do
        [[ -S $kdir/ctl ]] && kamcmd_run core.version >/dev/null 2>&1 && return 0
        pid_of kamailio >/dev/null || fail_start "kamailio exited during start-up"
        sleep 0.1
    done
    fail_start "kamailio's control socket did not answer within 10 s"
}

# The dispatcher's state of each node: "IP:PORT FLAGS" lines (FLAGS e.g. AP active+probing,
# IP inactive+probing, TP trying+probing).
dispatcher_states() {
    kamcmd_run dispatcher.list 2>/dev/null | awk '
        /URI:/ { uri = $2; sub(/^sip:/, "", uri) }
        /FLAGS:/ && uri != "" { print uri, $2; uri = "" }'
}

# ---------------------------------------------------------------------------------------------
# Nodes.

callbridge_bin() {
    if [[ -n ${CALLBRIDGE_BIN:-} ]]; then
        [[ -x $CALLBRIDGE_BIN ]] || die "CALLBRIDGE_BIN=$CALLBRIDGE_BIN is not executable"
        return 0
    fi
    local target=${CARGO_TARGET_DIR:-$repo/target}
    [[ $target == /* ]] || target=$repo/$target
    CALLBRIDGE_BIN=$target/release/callbridge
    if [[ ${CLUSTER_BUILD:-0} == 1 || ! -x $CALLBRIDGE_BIN ]]; then
        log "building callbridge (cargo build --release -p callbridge)"
        (cd "$repo" && cargo build --release --locked -p callbridge) || die "cargo build failed"
    fi
    [[ -x $CALLBRIDGE_BIN ]] || die "$CALLBRIDGE_BIN not found after the build"
}

# write_node_config N: $DIR/node-N/callbridge.toml from node.toml.template.
write_node_config() {
    local n=$1 ip=${NODE_IPS[$1 - 1]} ndir=$DIR/node-$1 store peers
    mkdir -p "$ndir"
    if [[ $CLUSTER_STORE == postgres ]]; then
        store="url = \"$CLUSTER_PG_URL\""
    else
        store="path = \"$ndir/callbridge.db\""
    fi
    peers="[\"$CLUSTER_DISPATCHER_IP/32\", \"${CLUSTER_TRUNK%:*}/32\"]"
    sed -e "s|%NODE_ID%|node-$n|g" -e "s|%NODE_IP%|$ip|g" \
        -e "s|%SIP_PORT%|$CLUSTER_SIP_PORT|g" -e "s|%API_PORT%|$CLUSTER_API_PORT|g" \
        -e "s|%RTP_PORTS%|${RTP_RANGES[$n - 1]}|g" -e "s|%TRUNK%|$CLUSTER_TRUNK|g" \
        -e "s|%TRUSTED_PEERS%|$peers|g" -e "s|%REDIS_URL%|$CLUSTER_REDIS_URL|g" \
        -e "s|%STORE%|$store|g" -e "s|%LOG_FILTER%|$CLUSTER_LOG_FILTER|g" \
        "$here/node.toml.template" >"$ndir/callbridge.toml"
    if grep -v '^#' "$ndir/callbridge.toml" | grep -q '%[A-Z_]*%'; then
        die "$ndir/callbridge.toml: placeholders left: $(grep -v '^#' "$ndir/callbridge.toml" | grep -o '%[A-Z_]*%' | sort -u | tr '\n' ' ')"
    fi
}

# start_node N: node N in the background (config written before).
start_node_process() {
    local n=$1 ndir=$DIR/node-$1 sets=() kv
    for kv in $CLUSTER_NODE_SET; do sets+=(--set "$kv"); done
    # Hermetic: the calling shell's CALLBRIDGE_<SECTION>_<KEY> variables are not passed on.
    local unset_vars=()
    while read -r kv; do unset_vars+=(-u "$kv"); done < <(compgen -e | grep '^CALLBRIDGE_' || true)
    printf '%q ' "$CALLBRIDGE_BIN" --config "$ndir/callbridge.toml" "${sets[@]}" >"$ndir/command.txt"
    echo "===== $(date '+%F %T') start" >>"$ndir/callbridge.log"
    spawn "node-$n" "$CALLBRIDGE_BIN" "$ndir/callbridge.log" \
        env "${unset_vars[@]}" NO_COLOR=1 "$CALLBRIDGE_BIN" --config "$ndir/callbridge.toml" "${sets[@]}"
}

wait_node_healthy() { # N deadline(SECONDS)
    local n=$1 deadline=$2 api=http://${NODE_IPS[$1 - 1]}:$CLUSTER_API_PORT
    while ((SECONDS < deadline)); do
        [[ $(http_code "$api/healthz") == 200 ]] && return 0
        pid_of "node-$n" >/dev/null || fail_start "node $n exited during start-up (see $DIR/node-$n/callbridge.log)"
        sleep 0.2
    done
    fail_start "node $n: $api/healthz did not answer 200 within ${CLUSTER_START_SECS} s"
}

# Waits until the dispatcher has node N (or all nodes: N = all) active (it answered a probe).
wait_dispatcher_active() { # N|all deadline
    local which=$1 deadline=$2 want=() states i missing
    if [[ $which == all ]]; then
        for ((i = 0; i < CLUSTER_NODES; i++)); do want+=("${NODE_IPS[i]}:$CLUSTER_SIP_PORT"); done
    else
        want=("${NODE_IPS[$which - 1]}:$CLUSTER_SIP_PORT")
    fi
    while ((SECONDS < deadline)); do
        states=$(dispatcher_states)
        missing=""
        for i in "${want[@]}"; do
            grep -q "^$i A" <<<"$states" || missing+=" $i"
        done
        [[ -z $missing ]] && return 0
        sleep 0.2
    done
    fail_start "the dispatcher does not see node(s)$missing active after ${CLUSTER_START_SECS} s: $(tr '\n' ';' <<<"$states")"
}

# ---------------------------------------------------------------------------------------------
# Subcommands.

STARTING=0
fail_start() {
    echo "cluster.sh: start failed: $*" >&2
    show_logs >&2
    if [[ $STARTING == 1 ]]; then
        echo "cluster.sh: stopping what was started" >&2
        do_stop >&2 || true
    fi
    exit 1
}

do_start() {
    if [[ -n ${CLUSTER_DIR:-} ]]; then
        DIR=$CLUSTER_DIR
        mkdir -p "$DIR"
    else
        DIR=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-cluster.XXXXXX")
    fi
    DIR=$(cd "$DIR" && pwd)
    CLUSTER_DIR=$DIR
    if [[ -d $DIR/pids ]] && compgen -G "$DIR/pids/*.pid" >/dev/null; then
        local f running=""
        for f in "$DIR"/pids/*.pid; do
            f=$(basename "$f" .pid)
            pid_of "$f" >/dev/null && running+=" $f"
        done
        [[ -z $running ]] || die "a cluster is already running in $DIR ($running); stop it first"
    fi
    resolve_settings
    for tool in curl setsid; do command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found"; done
    kamailio_bin >/dev/null
    callbridge_bin
    echo "$DIR" >"$pointer"
    write_env
    STARTING=1
    trap 'fail_start "interrupted"' INT TERM
    local t0=$SECONDS deadline i
    log "work directory: $DIR ($CLUSTER_NODES nodes, store: $CLUSTER_STORE)"
    start_redis
    start_postgres
    for ((i = 1; i <= CLUSTER_NODES; i++)); do write_node_config "$i"; done
    deadline=$((SECONDS + CLUSTER_START_SECS))
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        log "node $i: SIP ${NODE_IPS[i - 1]}:$CLUSTER_SIP_PORT, API http://${NODE_IPS[i - 1]}:$CLUSTER_API_PORT, RTP ${RTP_RANGES[i - 1]} (log $DIR/node-$i/callbridge.log)"
        start_node_process "$i"
        # One shared database: the first node applies its migrations alone.
        [[ $i == 1 && $CLUSTER_STORE == postgres ]] && wait_node_healthy 1 "$deadline"
    done
    for ((i = 1; i <= CLUSTER_NODES; i++)); do wait_node_healthy "$i" "$deadline"; done
    log "every node's /healthz is 200"
    start_kamailio
    wait_dispatcher_active all $((SECONDS + CLUSTER_START_SECS))
    trap - INT TERM
    STARTING=0
    log "the dispatcher sees every node active: $(dispatcher_states | tr '\n' ' ')"
    log "cluster up in $((SECONDS - t0)) s: send calls to $CLUSTER_DISPATCHER_IP:$CLUSTER_DISPATCHER_PORT; export CLUSTER_DIR=$DIR"
}

do_stop() {
    local f name
    log "stopping the cluster in $DIR"
    if [[ -d $DIR/pids ]]; then
        # The dispatcher first (no new calls), then the nodes (they drain), then the stores.
        # A node answers SIGTERM by refusing new calls and giving live ones
        # sip.shutdown_grace_secs (5); it stops as soon as they have ended (the dispatcher's
        # answered OPTIONS probes are not waited for), or hangs up the ones left.
        stop_group kamailio
        local stoppers=()
        for f in "$DIR"/pids/node-*.pid; do
            [[ -e $f ]] || continue
            name=$(basename "$f" .pid)
            stop_group "$name" "${CLUSTER_STOP_SECS:-45}" &
            stoppers+=($!)
        done
        # Only these: after a failed start, the processes it spawned are this shell's
        # children too.
        ((${#stoppers[@]} == 0)) || wait "${stoppers[@]}"
        stop_group redis
        for f in "$DIR"/pids/*.pid; do
            [[ -e $f ]] && stop_group "$(basename "$f" .pid)"
        done
    fi
    stop_postgres
    log "stopped"
}

do_status() {
    load_env
    local ok=0 name pid i code states
    for name in redis kamailio; do
        [[ $name == redis && $CLUSTER_REDIS_OWN != 1 ]] && continue
        if pid=$(pid_of "$name"); then
            printf '%-10s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s NOT running\n' "$name"
            ok=1
        fi
    done
    if [[ $CLUSTER_PG_OWN == 1 ]]; then
        if pg_run pg_ctl -D "$DIR/postgres/data" status >/dev/null 2>&1; then
            printf '%-10s running (%s)\n' postgres "$CLUSTER_PG_URL"
        else
            printf '%-10s NOT running\n' postgres
            ok=1
        fi
    fi
    states=$(dispatcher_states || true)
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        local ip=${NODE_IPS[i - 1]} state
        code=$(http_code "http://$ip:$CLUSTER_API_PORT/healthz")
        state=$(awk -v d="$ip:$CLUSTER_SIP_PORT" '$1 == d { print $2 }' <<<"$states")
        if pid=$(pid_of "node-$i"); then pid="pid $pid"; else pid="NOT running"; fi
        printf '%-10s %s, /healthz %s, dispatcher %s (SIP %s:%s)\n' "node-$i" "$pid" \
            "${code:-000}" "${state:-?}" "$ip" "$CLUSTER_SIP_PORT"
        [[ $code == 200 && $state == A* ]] || ok=1
    done
    return $ok
}

node_arg() { # validates N
    [[ ${1:-} =~ ^[1-9][0-9]*$ ]] && (($1 <= CLUSTER_NODES)) || die "node number 1..$CLUSTER_NODES expected, got '${1:-}'"
}

do_kill_node() {
    load_env
    node_arg "${1:-}"
    local pid
    pid=$(pid_of "node-$1") || die "node $1 is not running"
    kill -KILL "$pid"
    log "node $1 (pid $pid) killed with SIGKILL"
}

do_start_node() {
    load_env
    node_arg "${1:-}"
    pid_of "node-$1" >/dev/null && die "node $1 is already running"
    local deadline=$((SECONDS + CLUSTER_START_SECS))
    start_node_process "$1"
    STARTING=0
    wait_node_healthy "$1" "$deadline"
    wait_dispatcher_active "$1" "$deadline"
    log "node $1 is back: /healthz 200, active in the dispatcher"
}

cmd=${1:-}
case $cmd in
start) do_start ;;
stop)
    # Idempotent: nothing started (or the directory gone) is nothing to stop.
    if [[ -z ${CLUSTER_DIR:-} && ! -r $pointer ]] || [[ -n ${CLUSTER_DIR:-} && ! -d $CLUSTER_DIR ]]; then
        log "no cluster to stop"
        exit 0
    fi
    find_dir
    do_stop
    ;;
status) do_status ;;
env)
    load_env
    cat "$DIR/cluster.env"
    ;;
kill-node) do_kill_node "${2:-}" ;;
start-node) do_start_node "${2:-}" ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
