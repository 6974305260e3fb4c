#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules the suite must hold: the transaction layer,
# the call engine and the intent table, each against its crate's unit tests (--lib). Not part of
# the test command (a full run takes about an hour on 2 cores); run it after changing these
# modules and compare with the figures in the closing notes of issue 15.
#
#   scripts/mutants.sh                     every module, every mutant
#   scripts/mutants.sh engine --shard 0/3  one module, the fixed one-in-three sample
# Results: target/mutants/<module>/mutants.out/{caught,missed,timeout,unviable}.txt
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "==> installing cargo-mutants"
    cargo install --locked cargo-mutants
fi
modules=(transaction engine intent)
if (($# > 0)) && [[ $1 != -* ]]; then
    modules=("$1")
    shift
fi
for module in "${modules[@]}"; do
    case $module in
    transaction) args=(-p sip-core -f 'crates/sip-core/src/transaction/*.rs' -f crates/sip-core/src/message/builders.rs -e 'crates/sip-core/src/transaction/tests.rs') ;;
    engine) args=(-p b2bua -f 'crates/b2bua/src/engine/*.rs' -e 'crates/b2bua/src/engine/tests.rs') ;;
    intent) args=(-p b2bua -f 'crates/b2bua/src/intent.rs') ;;
    *) echo "scripts/mutants.sh: unknown module $module (transaction, engine, intent)" >&2; exit 2 ;;
    esac
    echo "==> mutants of $module"
    # Exit codes 2 (mutants missed) and 3 (timeouts) are results to read, not failed runs.
    rc=0
    cargo mutants --no-shuffle --output "target/mutants/$module" "${args[@]}" --cargo-test-arg=--lib "$@" ||
        rc=$?
    ((rc == 0 || rc == 2 || rc == 3)) || exit "$rc"
done
