#!/usr/bin/env bash
# Installs what the end-to-end SIPp run needs when it is missing: SIPp (Debian package
# sip-tester) and curl. Needs root or passwordless sudo; does nothing when both are there or
# when SKIP_SIPP=1.
set -euo pipefail

# SIPp (Debian/Ubuntu package sip-tester) and curl for sipp-scenarios/run.sh.
missing=()
if [[ "${SKIP_SIPP:-0}" != 1 ]]; then
    command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
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
    command -v sipp >/dev/null 2>&1 || { echo "sip-tester installed but sipp not found" >&2; exit 1; }
fi

