#!/usr/bin/env bash
# Installs what the end-to-end runs need when it is missing: SIPp (Debian package sip-tester)
# and curl for the SIPp run, Kamailio (Debian package kamailio) with its TLS module (Debian
# package kamailio-tls-modules) for the carrier tests (sip-tests/tests/carrier.rs and
# trunk_auth.rs, which start their own Kamailio, over TLS too, and fail when there is none),
# dnsmasq (Debian package dnsmasq-base: the binary without the system service) for the trunk
# DNS tests (sip-tests/tests/trunk_dns.rs, which start their own on a loopback port),
# redis-server for the cluster's tests (crates/cluster, sip-tests/tests/cluster.rs: each starts
# its own on a loopback port, never the system service), and PostgreSQL's server binaries
# (Debian package postgresql) for the store's tests (crates/store, which run every scenario on
# PostgreSQL too, each test binary starting its own server with initdb and pg_ctl, and fail
# without them).
# Needs root or passwordless sudo; does nothing when all are there. SKIP_SIPP=1 leaves SIPp
# and curl out, SKIP_KAMAILIO=1 leaves Kamailio and its TLS module out, SKIP_DNSMASQ=1 leaves
# dnsmasq out, SKIP_REDIS=1 redis-server, CALLBRIDGE_SKIP_PG=1 PostgreSQL (and the store's
# tests skip it).
set -euo pipefail

# Debian installs kamailio in /usr/sbin, which a non-root PATH may lack; the carrier harness
# looks there too.
have_kamailio() {
    command -v kamailio >/dev/null 2>&1 || [[ -x /usr/sbin/kamailio ]]
}

# The tls module (tls.so, from kamailio-tls-modules) in Kamailio's module directory, which
# Debian puts under the architecture's library directory.
have_kamailio_tls() {
    compgen -G '/usr/lib/*/kamailio/modules/tls.so' >/dev/null ||
        [[ -f /usr/lib/kamailio/modules/tls.so ]]
}

# Debian installs dnsmasq in /usr/sbin too; the trunk DNS harness looks there as well.
have_dnsmasq() {
    command -v dnsmasq >/dev/null 2>&1 || [[ -x /usr/sbin/dnsmasq ]]
}

# Debian's server binaries live in /usr/lib/postgresql/<version>/bin, off the PATH.
have_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
# SIPp (Debian/Ubuntu package sip-tester) and curl for sipp-scenarios/run.sh.
if [[ "${SKIP_SIPP:-0}" != 1 ]]; then
    command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
fi
# Kamailio, the real SIP carrier of the carrier tests, and its TLS module (the carrier over
# TLS): both when either is missing, so the two come from the same release.
if [[ "${SKIP_KAMAILIO:-0}" != 1 ]]; then
    if ! have_kamailio || ! have_kamailio_tls; then
        missing+=(kamailio kamailio-tls-modules)
    fi
fi
# dnsmasq, the DNS server of the trunk DNS tests (NAPTR, SRV and A records on loopback).
if [[ "${SKIP_DNSMASQ:-0}" != 1 ]]; then
    have_dnsmasq || missing+=(dnsmasq-base)
fi
# Redis, the cluster's shared intent table, call index and hang-ups.
if [[ "${SKIP_REDIS:-0}" != 1 ]]; then
    command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
fi
# PostgreSQL, the shared backend of the store's tests.
if [[ "${CALLBRIDGE_SKIP_PG:-0}" != 1 ]]; then
    have_postgres || missing+=(postgresql)
fi
if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}"
    if [[ $(id -u) == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "${missing[*]} missing, and neither root nor sudo is available to install it" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" sip-tester "* ]]; then
        command -v sipp >/dev/null 2>&1 || { echo "sip-tester installed but sipp not found" >&2; exit 1; }
    fi
    if [[ " ${missing[*]} " == *" dnsmasq-base "* ]]; then
        have_dnsmasq || { echo "dnsmasq-base installed but dnsmasq not found" >&2; exit 1; }
    fi
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        have_postgres || { echo "postgresql installed but no initdb in /usr/lib/postgresql/*/bin" >&2; exit 1; }
        # Where systemd runs, the package starts a system cluster on port 5432; the tests
        # never use it (each starts its own server on a free port).
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            "${as_root[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
        fi
    fi
    if [[ " ${missing[*]} " == *" kamailio "* ]]; then
        have_kamailio || { echo "kamailio installed but its binary not found" >&2; exit 1; }
        have_kamailio_tls || { echo "kamailio-tls-modules installed but tls.so not found" >&2; exit 1; }
        # The package enables a system Kamailio on port 5060 where systemd runs. The tests
        # never use it (each starts its own on a free port), and it would hold the port a
        # locally run callbridge may want: stop and disable the one this script installed.
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            "${as_root[@]}" systemctl disable --now kamailio >/dev/null 2>&1 || true
        fi
    fi
    # The same for the system Redis and PostgreSQL the packages enable: the tests start their
    # own, on free ports, with temporary data.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        for unit in redis-server; do
            if [[ " ${missing[*]} " == *" ${unit} "* ]]; then
                "${as_root[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
            fi
        done
    fi
fi
