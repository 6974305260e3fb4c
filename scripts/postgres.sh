# shellcheck shell=bash
# Sourced by deploy/cluster/cluster.sh and benches/load/api.sh: a throwaway PostgreSQL server of
# Debian's packages (/usr/lib/postgresql/*/bin, the newest), in a directory of its own, with
# database `callbridge` for store.url = postgres://postgres@127.0.0.1:PORT/callbridge (trust
# authentication on loopback, user postgres). No system service is used or touched. As root
# the server runs as the user postgres (Debian's postgresql package creates it).
#
#   pg_bin                      prints the bin directory; fails (message on stderr) without one
#   pg_run PROGRAM ARGS...      runs PROGRAM of that directory (initdb, pg_ctl, psql, ...), as
#                               postgres when root, from / (the caller's directory may be closed
#                               to postgres)
#   pg_start DIR PORT [NAME=VALUE...]
#                               initdb in DIR/data, starts the server on 127.0.0.1:PORT (its
#                               Unix socket in DIR; log DIR/postgres.log; initdb's and pg_ctl's
#                               output in DIR/initdb.log, DIR/pg_ctl.log) with each NAME=VALUE
#                               as a `-c` setting (no spaces in them; max_connections=300
#                               unless given), and creates the database callbridge. On a
#                               failure it returns 1 with PG_ERROR (what failed) and
#                               PG_ERROR_LOG (the log to show, or empty) set, and leaves
#                               whatever it started for pg_stop.
#   pg_stop DIR                 stops the server of DIR (pg_ctl -m fast, 10 s; then SIGKILL to
#                               the postmaster and its children); nothing if none runs
#   pg_pids DIR                 the postmaster's pid and those of its children (backends,
#                               checkpointer, walwriter, ...), one per line
#   pg_cpu_ticks DIR            the CPU the server has used so far, in clock ticks: utime+stime
#                               of the postmaster and its live children, plus the postmaster's
#                               cutime+cstime (its children already exited and waited for).
#                               The difference of two readings is the server's CPU between them.
#   pg_log MESSAGE              how these functions report (on stderr); a sourcing script may
#                               define its own after sourcing this file.
#
# Durability is the caller's choice, through the settings: PostgreSQL's defaults (fsync=on,
# full_page_writes=on, synchronous_commit=on) are the safest; synchronous_commit=off keeps
# fsync (a crash may lose the last commits, never corrupts: like SQLite's WAL with
# synchronous=NORMAL); fsync=off (tests only) may corrupt the database on a power failure.
# initdb itself runs with --no-sync: the servers are throwaway.

pg_log() { echo "postgres.sh: $*" >&2; }

pg_bin() {
    local d
    d=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1 || true)
    if [[ -z $d || ! -x $d/initdb ]]; then
        echo "PostgreSQL not found in /usr/lib/postgresql/*/bin (apt-get install postgresql, or scripts/ensure-tools.sh)" >&2
        return 1
    fi
    echo "$d"
}

pg_run() { # program args... (as postgres when root)
    local bin
    bin=$(pg_bin) || return 1
    if [[ $(id -u) == 0 ]]; then
        (cd / && runuser -u postgres -- "$bin/$1" "${@:2}")
    else
        (cd / && "$bin/$1" "${@:2}")
    fi
}

# shellcheck disable=SC2034 # PG_ERROR and PG_ERROR_LOG are for the caller
pg_start() { # dir port [name=value...]
    local dir=$1 port=$2 kv opts="" up
    shift 2
    PG_ERROR="" PG_ERROR_LOG=""
    pg_bin >/dev/null || { PG_ERROR="PostgreSQL not found"; return 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || {
            PG_ERROR="as root, PostgreSQL runs as the user postgres, which does not exist (Debian's postgresql package creates it)"
            return 1
        }
        # The server runs as postgres: it must reach its directory through every directory
        # above it (a mktemp directory is 0700): search permission only, on the ones this
        # user owns.
        up=$(dirname "$dir")
        while [[ -n $up && $up != / ]]; do
            [[ -O $up ]] && chmod o+x "$up"
            up=$(dirname "$up")
        done
        chown postgres: "$dir"
    fi
    [[ " $* " == *" max_connections="* ]] || set -- max_connections=300 "$@"
    for kv in listen_addresses=127.0.0.1 "$@"; do
        [[ $kv == *=* && $kv != *[[:space:]]* ]] || { PG_ERROR="pg_start: bad setting '$kv'"; return 1; }
        opts+=" -c $kv"
    done
    pg_run initdb -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || {
        PG_ERROR="initdb failed" PG_ERROR_LOG=$dir/initdb.log
        return 1
    }
    pg_run pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o "-k $dir -p $port$opts" \
        start >"$dir/pg_ctl.log" 2>&1 || {
        PG_ERROR="pg_ctl start failed" PG_ERROR_LOG=$dir/pg_ctl.log
        return 1
    }
    pg_run psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE DATABASE callbridge" >>"$dir/pg_ctl.log" 2>&1 || {
        PG_ERROR="CREATE DATABASE callbridge failed: $(tail -n 3 "$dir/pg_ctl.log")"
        return 1
    }
}

# The postmaster's pid, if DIR's server runs (its pid file names a live postgres process).
pg_postmaster_pid() { # dir
    local pid
    [[ -f $1/data/postmaster.pid ]] || return 1
    read -r pid <"$1/data/postmaster.pid" || return 1
    [[ -n $pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q postgres || return 1
    echo "$pid"
}

# /proc/PID/stat of every process as "pid" and the fields after "(comm) " (comm may hold
# spaces): $1 pid, $2 state, $3 ppid, $13 utime, $14 stime, $15 cutime, $16 cstime.
_pg_stats() {
    local f line
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        echo "${line%% *} ${line##*") "}"
    done
}

pg_pids() { # dir
    local pm
    pm=$(pg_postmaster_pid "$1") || return 0
    echo "$pm"
    _pg_stats | awk -v pm="$pm" '$3 == pm { print $1 }'
}

pg_cpu_ticks() { # dir
    local pm
    pm=$(pg_postmaster_pid "$1") || { echo 0; return 0; }
    _pg_stats | awk -v pm="$pm" '
        $1 == pm { t += $13 + $14 + $15 + $16 }
        $3 == pm { t += $13 + $14 }
        END { print t + 0 }'
}

pg_stop() { # dir
    local dir=$1 pid pids
    [[ -f $dir/data/postmaster.pid ]] || return 0
    pg_run pg_ctl -D "$dir/data" -w -t 10 -m fast stop >/dev/null 2>&1 || true
    if [[ -f $dir/data/postmaster.pid ]]; then
        if pid=$(pg_postmaster_pid "$dir"); then
            pg_log "PostgreSQL did not stop: SIGKILL"
            pids=$(pg_pids "$dir")
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/data/postmaster.pid"
    fi
}
