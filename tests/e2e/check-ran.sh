#!/usr/bin/env bash
# Reads the output of `cargo test -p rmachine-e2e` and fails, naming them, if any of the e2e
# test files (tests/*.rs) ran zero tests: they were compiled without `--cfg rmachine_e2e`.
set -euo pipefail
log="$1"
empty="$(awk '
    /Running tests\// { file = $2; next }
    /^running [0-9]+ tests?$/ { if (file != "" && $2 == 0) print file; file = "" }
' "$log")"
if [ -n "$empty" ]; then
    echo "e2e: these test files ran zero tests (compiled without RMACHINE_E2E=1?):" >&2
    echo "$empty" >&2
    exit 1
fi
if ! grep -q 'Running tests/' "$log"; then
    echo "e2e: no test file ran at all" >&2
    exit 1
fi
