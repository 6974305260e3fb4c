# Sourced by the test and benchmark scripts: process helpers shared by them.

# stop_pid PID: SIGTERM, up to 5 s for the process to exit (a callbridge drains its calls and
# writes its last log lines), then SIGKILL; reaps it. Does nothing for an empty or dead PID.
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
