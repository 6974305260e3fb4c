#!/usr/bin/env bash
# API conformance test. Runs schemathesis against the real callbridge binary and its own OpenAPI
# 3.1 document (GET /api/openapi.json), so that every answer of the HTTP API matches what the
# document says: status codes, media types, bodies and headers. It also checks that the token is
# enforced, that other methods get 405 with `Allow`, that invalid input gets a 4xx, and that no
# request gets a 5xx. scripts/test.sh runs it after the workspace tests.
#
#   scripts/schemathesis.sh [more `schemathesis run` options, e.g. --include-path /healthz]
#
# Schemathesis, at the exact version in scripts/schemathesis-requirements.txt, lives in a venv at
# ${XDG_CACHE_HOME:-~/.cache}/callbridge/schemathesis-venv. The venv is made on the first run
# (this needs python3 >= 3.11 with venv; on Debian, as root, python3-venv is installed when it is
# missing). Later runs reuse it, and it is reinstalled when the requirements file changes. The
# binary is built with `cargo build --release --locked -p callbridge`, which honours
# CARGO_TARGET_DIR and does nothing when the binary is up to date. It is started on free loopback
# ports, with its own temporary directory (store.path) and a bearer token made for this run,
# which schemathesis sends.
#
#   SKIP_SCHEMATHESIS=1          skips the run (says so, exits 0)
#   CALLBRIDGE_BIN=path          uses this binary instead of building one
#   SCHEMATHESIS_SCHEMA=loc      uses this document (a file or a URL) instead of the server's own
#                                /api/openapi.json; its requests still go to the server started here
#   SCHEMATHESIS_MAX_EXAMPLES=n  test cases that fuzzing draws for each operation, and about the
#                                number of stateful scenarios (default 100: about 2 s per operation
#                                on 2 cores, so that the run stays well under 3 minutes)
#   SCHEMATHESIS_SEED=n          the seed (default 1). The same seed, document and server give the
#                                same requests.
#   SCHEMATHESIS_TIMEOUT=s       hard limit on the schemathesis run, in seconds (default 300)
# Exits non-zero when schemathesis reports a failure or an error, when callbridge stops during the
# run, or when callbridge does not exit cleanly on SIGTERM. Schemathesis's output shows each
# failure with a curl command that reproduces it. The last line is a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'schemathesis.sh: %s\n' "$*"; }
die() { printf 'schemathesis.sh: %s\n' "$*" >&2; exit 1; }

if [[ "${SKIP_SCHEMATHESIS:-0}" == 1 ]]; then
    log "skipped (SKIP_SCHEMATHESIS=1)"
    exit 0
fi

requirements=$repo/scripts/schemathesis-requirements.txt
config_file=$repo/scripts/schemathesis.toml
pinned=$(sed -n 's/^schemathesis==\([^[:space:]]*\).*/\1/p' "$requirements")
[[ -n $pinned ]] || die "$requirements pins no schemathesis==VERSION"
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-1}
run_timeout=${SCHEMATHESIS_TIMEOUT:-300}

# ---------------------------------------------------------------------------------------------
# The venv.
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/callbridge
venv=$cache_dir/schemathesis-venv
stamp=$venv/.callbridge-requirements.txt
mkdir -p "$cache_dir"

# Makes $venv with python3. If that fails (no python3, or Debian's python3 without the
# python3-venv package, whose ensurepip is missing), installs the package and tries again, when
# running as root on a system with apt-get.
make_venv() {
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "python3 cannot make a venv; installing python3 and python3-venv (apt-get)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
            hash -r
        fi
        python3 -m venv "$venv" ||
            die "cannot make a venv with python3; it needs python3 with the venv module (Debian: apt-get install python3-venv)"
    fi
    "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "schemathesis $pinned needs Python >= 3.11; python3 is $("$venv/bin/python" -V 2>&1)"
}

venv_ready() {
    [[ -x $venv/bin/schemathesis ]] && cmp -s "$requirements" "$stamp" &&
        "$venv/bin/python" -c 'import schemathesis' >/dev/null 2>&1
}

# Only one run at a time sets the venv up (a lock next to it).
exec 9>"$cache_dir/schemathesis-venv.lock"
flock 9
if ! venv_ready; then
    # A venv whose interpreter is gone (e.g. the python3 it was made from was removed) is remade.
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "making a venv in $venv"
        make_venv
    fi
    log "installing schemathesis==$pinned into $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements"
    cp "$requirements" "$stamp"
fi
flock -u 9
installed=$("$venv/bin/schemathesis" --version 2>&1 | sed -n 's/.*version \([^[:space:]]*\).*/\1/p')
[[ $installed == "$pinned" ]] || die "the venv has schemathesis ${installed:-?}, not $pinned"

# ---------------------------------------------------------------------------------------------
# The binary.
if [[ -n ${CALLBRIDGE_BIN:-} ]]; then
    bin=$CALLBRIDGE_BIN
else
    log "building callbridge (release)"
    cargo build --release --locked -p callbridge
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$repo/$target
    bin=$target/release/callbridge
fi
[[ -x $bin ]] || die "callbridge binary $bin not found"

# ---------------------------------------------------------------------------------------------
# Start callbridge on loopback, with its own directory and token.
# shellcheck source=ports.sh
source scripts/ports.sh
free_port api_port
free_port sip_port
# Webhooks on, aimed at a port where nothing listens: every event fails and is retried in the
# background, and the events routes answer as they do in production (redeliver: 404/409/200).
free_port hook_port
api=http://127.0.0.1:$api_port
work=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-schemathesis.XXXXXX")
token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
cb_pid=""

# Stops callbridge: SIGTERM, up to 10 s for it to drain and exit, then SIGKILL. Sets cb_status
# to its exit status ("killed" when SIGKILL was needed).
cb_status=""
stop_callbridge() {
    [[ -n $cb_pid ]] || return 0
    kill -TERM "$cb_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$cb_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$cb_pid" 2>/dev/null; then
        kill -KILL "$cb_pid" 2>/dev/null || true
        wait "$cb_pid" 2>/dev/null || true
        cb_status=killed
    else
        cb_status=0
        wait "$cb_pid" 2>/dev/null || cb_status=$?
    fi
    cb_pid=""
}
st_pid=""
cleanup() {
    if [[ -n $st_pid ]]; then
        kill -TERM "$st_pid" 2>/dev/null || true
        wait "$st_pid" 2>/dev/null || true
    fi
    stop_callbridge
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints the status of a GET of $1 (0 when there is no answer). Proxies are bypassed.
http_status() {
    "$venv/bin/python" - "$1" <<'PY'
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as error:
    print(error.code)
except Exception:
    print(0)
PY
}

# The run is hermetic: callbridge's own CALLBRIDGE_<SECTION>_<KEY> variables are not passed on.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CALLBRIDGE_' || true)
log "starting callbridge: API $api, SIP 127.0.0.1:$sip_port, store $work/cb.db"
NO_COLOR=1 "$bin" \
    --set "api.listen=127.0.0.1:$api_port" \
    --set "sip.listen=127.0.0.1:$sip_port" \
    --set "store.path=$work/cb.db" \
    --set "api.tokens=[\"$token\"]" \
    --set "webhooks.url=http://127.0.0.1:$hook_port/hook" \
    --set "webhooks.secret=schemathesis" \
    >"$work/callbridge.log" 2>&1 &
cb_pid=$!

show_log() { echo "--- callbridge log (last 40 lines)" >&2; tail -n 40 "$work/callbridge.log" >&2; }
healthy=0
for _ in $(seq 150); do
    if ! kill -0 "$cb_pid" 2>/dev/null; then
        show_log
        die "callbridge exited during start-up"
    fi
    if [[ $(http_status "$api/healthz") == 200 ]]; then
        healthy=1
        break
    fi
    sleep 0.2
done
((healthy)) || { show_log; die "GET /healthz did not answer 200 within 30 s"; }

# ---------------------------------------------------------------------------------------------
# Run schemathesis.
if [[ -n ${SCHEMATHESIS_SCHEMA:-} ]]; then
    location=$SCHEMATHESIS_SCHEMA
    [[ $location == *://* || $location == /* ]] || location=$repo/$location
else
    location=$api/api/openapi.json
fi

# The checks: all that schemathesis 4.32 has (`--checks all`), except:
#   object_level_authorization  needs several identities and fails when one of them can read an
#                               object that another one created. callbridge's tokens are not
#                               identities: every token may see and end every call, by design.
#                               (With one token the check does nothing anyway.)
# The checks that remain, and what callbridge must do to pass them:
#   not_a_server_error            no 5xx for any request, valid or not (5xx such as
#                                 intent_table_full or sip_unavailable do not occur in this run)
#   status_code_conformance       every status must be documented for its operation, including
#                                 400/401/404/405/413/415/422; a `default` response disables the
#                                 check for that operation. Requests with a method that the
#                                 document does not list, and content-type probes, are exempt.
#   content_type_conformance      Content-Type is one of the documented media types of that status
#   response_schema_conformance   the body validates against the documented schema
#   response_headers_conformance  documented response headers are present when required, and
#                                 match their schemas (e.g. `Allow` on 405, `WWW-Authenticate`
#                                 on 401)
#   positive_data_acceptance      valid requests are not refused; 422 is accepted, see
#                                 scripts/schemathesis.toml
#   negative_data_rejection       requests that the document calls invalid get 400, 401, 403,
#                                 404, 405, 406, 409, 415, 422, 428, 429 or 5xx. Accepting one
#                                 means that the document is stricter than the server.
#   missing_required_header       a required header parameter left out gets a 4xx (401 for
#                                 Authorization)
#   unsupported_method            a method that the document does not list for a path gets 405
#                                 with `Allow` (OPTIONS, TRACE, QUERY, PATCH, ... are sent; HEAD
#                                 is not). A 404 is accepted for a made-up path parameter, and
#                                 401/403 for an operation that declares security.
#   allow_header_conformance      `Allow` in the answer to OPTIONS lists exactly the documented
#                                 methods of the path (HEAD and OPTIONS may be added)
#   ignored_auth                  an operation that declares security and answers 2xx with the
#                                 token must answer 401/403 without it and with a wrong one.
#                                 /healthz and /metrics must declare `security: []`.
#   use_after_free, ensure_resource_availability
#                                 stateful: after a successful DELETE, the resource is 404; a
#                                 resource created by POST (201 or Location) can be read through
#                                 its links
# Requests go over HTTP/1.1: schemathesis sends them with `requests` (urllib3), which speaks
# nothing else. They go to loopback only: proxies are bypassed, redirects are not followed
# (--max-redirects 0; callbridge never redirects), and --origin makes every request go to the
# server started here, whatever `servers` the document names. The run does not read or write any
# state outside $work (the cache is off in schemathesis.toml, and the examples database is
# `none`), so the same seed gives the same run.
st_args=(
    --origin "$api"
    --header "Authorization: Bearer $token"
    --checks all
    --exclude-checks object_level_authorization
    --max-examples "$max_examples"
    --seed "$seed"
    --workers 1
    --generation-database none
    --request-timeout 10
    --max-redirects 0
    --report json
    --report-json-path "$work/report.json"
    --no-color
)
log "schemathesis $pinned run $location (seed $seed, max-examples $max_examples, limit ${run_timeout} s)"
started=$SECONDS
# In the background and waited for, so that a SIGTERM to this script is acted on at once (the
# trap stops schemathesis, then callbridge) rather than when schemathesis is done.
(
    cd "$work"
    unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY all_proxy
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    exec timeout --signal=INT --kill-after=30 "$run_timeout" \
        "$venv/bin/schemathesis" --config-file "$config_file" run "$location" "${st_args[@]}" "$@"
) &
st_pid=$!
rc=0
wait "$st_pid" || rc=$?
st_pid=""
elapsed=$((SECONDS - started))

problems=()
timed_out=0
((rc == 124 || rc == 137)) && timed_out=1
((timed_out)) && problems+=("schemathesis did not finish within ${run_timeout} s")
alive=1
kill -0 "$cb_pid" 2>/dev/null || alive=0
stop_callbridge
if ((!alive)); then
    problems+=("callbridge exited during the run (status $cb_status)")
    show_log
elif [[ $cb_status != 0 ]]; then
    problems+=("callbridge did not exit cleanly on SIGTERM (status $cb_status)")
    show_log
fi

# The one-line summary, from schemathesis's JSON report.
counts=$("$venv/bin/python" - "$work/report.json" <<'PY' 2>/dev/null || echo "no test ran"
import json, sys
r = json.load(open(sys.argv[1]))
ops, cases = r["operations"], r["test_cases"]
warnings = sorted(kind for kind, items in (r.get("warnings") or {}).items() if items)
print(f'{ops["tested"]}/{ops["selected"]} operations, {cases["generated"]} test cases, '
      f'{cases["unique_failures"]} unique failures, {len(r["errors"])} errors, '
      f'warnings: {", ".join(warnings) or "none"}')
PY
)
if ((rc == 0)) && ((${#problems[@]} == 0)); then
    verdict=passed
else
    verdict=FAILED
    ((rc != 0 && !timed_out)) && problems=("schemathesis exit status $rc" "${problems[@]}")
fi
summary="schemathesis: $verdict: $counts in ${elapsed} s (schemathesis $pinned, seed $seed, max-examples $max_examples)"
for problem in "${problems[@]}"; do summary+="; $problem"; done
echo "$summary"
[[ $verdict == passed ]]
