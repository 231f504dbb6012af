#!/usr/bin/env bash
# Schemathesis against the real binary on the fixture model: requests generated from the
# server's own /openapi.json, checking that none is answered 5xx and that every response
# (status, content type, body) conforms to the document. Bounded in examples and time.
# Usage: run.sh <python venv> (with tests/schemathesis/requirements.txt installed).
set -euo pipefail
venv=$1
bin=${QWEN3_SERVE_BIN:-target/debug/qwen3-serve}
log=$(mktemp)
# A short context keeps each generated request's work small on the CPU.
"$bin" --port 0 --max-model-len 256 --cpu-kv-cache-space 0.05 \
    --reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes \
    >/dev/null 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
addr=
for _ in $(seq 300); do
    addr=$(grep -o 'listening on http://[^ ]*' "$log" | head -1 | sed 's|listening on http://||') || true
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.2
done
[ -n "$addr" ] || { echo "server did not start"; cat "$log"; exit 1; }
timeout 240 "$venv/bin/schemathesis" --no-color run "http://$addr/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing --max-examples 50 --request-timeout 30 \
    --generation-deterministic --suppress-health-check all
