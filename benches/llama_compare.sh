#!/usr/bin/env bash
# qwen3-serve against llama.cpp on the same random Qwen3-0.6B-shape BF16 weights, same threads,
# runs alternated (ours, theirs, ours, theirs...) so a shared machine's load hits both alike.
# Every figure is written with the 1-minute load average at the time it was taken.
#
#   benches/llama_compare.sh            # all tests, PAIRS pairs each
#   TESTS="prefill128 serve" PAIRS=3 benches/llama_compare.sh
#
# Tests: prefill128 prefill2048 decode1 decode8 decode8k ready serve (decode8 is ours only
# offline: llama.cpp's 8-stream figure is the `serve` test's, through llama-server -np 8).
# Environment (defaults in brackets):
#   QS         qwen3-serve binary [target/release/qwen3-serve]
#   LLAMA_BIN  llama.cpp build/bin [/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin]
#   HF_MODEL   model directory for qwen3-serve, made here if missing [/work/llama/models/q06-hf]
#   GGUF       the same weights as a BF16 GGUF, converted here if missing [/work/llama/models/q06-bf16.gguf]
#   PYTHON     a python with torch, transformers, gguf and sentencepiece, for the conversion [/tmp/fxenv/bin/python]
#   THREADS [2]  PAIRS [3]  OUT [bench-llama-<time>.tsv]
#   DECODE_TOKENS [128]  tokens decoded by the decode1 / decode8 tests
#   NUM_PROMPTS [32]     requests of the serve test (8 at a time, 128 in / 128 out)
set -euo pipefail

QS=${QS:-target/release/qwen3-serve}
LLAMA_BIN=${LLAMA_BIN:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
HF_MODEL=${HF_MODEL:-/work/llama/models/q06-hf}
GGUF=${GGUF:-/work/llama/models/q06-bf16.gguf}
PYTHON=${PYTHON:-/tmp/fxenv/bin/python}
THREADS=${THREADS:-2}
PAIRS=${PAIRS:-3}
DECODE_TOKENS=${DECODE_TOKENS:-128}
NUM_PROMPTS=${NUM_PROMPTS:-32}
TESTS=${TESTS:-prefill128 prefill2048 decode1 decode8 decode8k ready serve}
OUT=${OUT:-bench-llama-$(date -u +%Y%m%dT%H%M%S).tsv}
PORT_OURS=${PORT_OURS:-18100}
PORT_THEIRS=${PORT_THEIRS:-18101}
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ ! -f "$HF_MODEL/model.safetensors" ]; then
    "$QS" bench make-model --shape qwen3-0.6b --out "$HF_MODEL"
fi
if [ ! -f "$GGUF" ]; then
    llama_dir=$(dirname "$(dirname "$LLAMA_BIN")")
    PYTHONPATH="$llama_dir/gguf-py" "$PYTHON" "$llama_dir/convert_hf_to_gguf.py" "$HF_MODEL" \
        --outtype bf16 --outfile "$GGUF"
fi

load1() { cut -d' ' -f1 /proc/loadavg; }
# record TEST ENGINE VALUE UNIT
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%H:%M:%S)" "$1" "$2" "$3" "$4" "$(load1)" | tee -a "$OUT"
}

# Ours offline: bench latency, one figure out of its JSON.
ours_latency() { # FIELD ARGS...
    local field=$1
    shift
    "$QS" bench latency "$HF_MODEL" --device cpu --cpu-threads "$THREADS" \
        --output-json "$TMP/ours.json" "$@" >"$TMP/ours.log" 2>&1
    jq -r ".$field" "$TMP/ours.json"
}

# Theirs offline: llama-bench, tokens/s of its one test.
theirs_bench() { # ARGS...
    "$LLAMA_BIN/llama-bench" -m "$GGUF" -t "$THREADS" -r 1 -o jsonl "$@" 2>"$TMP/theirs.log" |
        jq -r '.avg_ts'
}

# Starts a server in the background (not in a subshell: SERVER_PID must stay set); writes the
# seconds from launch to the first 200 of /health into $TMP/ready.
start_server() { # ours|theirs PORT
    local t0 port=$2
    t0=$(date +%s.%N)
    if [ "$1" = ours ]; then
        "$QS" serve "$HF_MODEL" --device cpu --cpu-threads "$THREADS" --max-model-len 4096 \
            --max-num-seqs 8 --port "$port" >"$TMP/server.log" 2>&1 &
    else
        "$LLAMA_BIN/llama-server" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np 8 -c 32768 \
            --port "$port" >"$TMP/server.log" 2>&1 &
    fi
    SERVER_PID=$!
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited:" >&2
            tail -20 "$TMP/server.log" >&2
            exit 1
        fi
        sleep 0.02
    done
    echo "$(date +%s.%N) - $t0" | bc >"$TMP/ready"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

serve_once() { # ours|theirs PORT
    start_server "$1" "$2"
    record ready "$1" "$(cat "$TMP/ready")" s
    if [ "$1" = ours ]; then
        grep -m1 -o 'KV cache[^"]*' "$TMP/server.log" >"$TMP/kv-$1.txt" || true
    else
        grep -m1 'llama_kv_cache: size' "$TMP/server.log" >"$TMP/kv-$1.txt" || true
    fi
    if [ "$3" = serve ]; then
        "$QS" bench serve --base-url "http://127.0.0.1:$2" --tokenizer "$HF_MODEL/tokenizer.json" \
            --random-input-len 128 --random-output-len 128 --num-prompts "$NUM_PROMPTS" \
            --max-concurrency 8 --ignore-eos --disable-tqdm --save-result \
            --result-dir "$TMP" --result-filename "serve-$1.json" >"$TMP/serve.log" 2>&1 ||
            tail -5 "$TMP/serve.log" >&2
        record serve8_output "$1" "$(jq -r '.output_throughput' "$TMP/serve-$1.json")" tok/s
        record serve8_ttft_median "$1" "$(jq -r '.median_ttft_ms' "$TMP/serve-$1.json")" ms
    fi
    stop_server
}

echo -e "time\ttest\tengine\tvalue\tunit\tload1" | tee "$OUT"
for _ in $(seq "$PAIRS"); do
    for t in $TESTS; do
        case $t in
        prefill128 | prefill2048)
            n=${t#prefill}
            record "$t" ours "$(ours_latency prefill_tokens_per_second --input-len "$n" \
                --output-len 1 --max-model-len 4096)" tok/s
            record "$t" theirs "$(theirs_bench -p "$n" -n 0)" tok/s
            ;;
        decode1)
            record decode1 ours "$(ours_latency decode_tokens_per_second --input-len 128 \
                --output-len "$DECODE_TOKENS" --max-model-len 4096)" tok/s
            record decode1 theirs "$(theirs_bench -p 0 -n "$DECODE_TOKENS" -d 128)" tok/s
            ;;
        decode8)
            record decode8 ours "$(ours_latency decode_tokens_per_second --input-len 128 \
                --output-len "$DECODE_TOKENS" --max-model-len 4096 --batch-size 8)" tok/s
            ;;
        decode8k)
            record decode8k ours "$(ours_latency decode_tokens_per_second --input-len 8192 \
                --output-len 32 --max-model-len 8256)" tok/s
            record decode8k theirs "$(theirs_bench -p 0 -n 32 -d 8192)" tok/s
            ;;
        ready)
            serve_once ours "$PORT_OURS" ready
            serve_once theirs "$PORT_THEIRS" ready
            ;;
        serve)
            serve_once ours "$PORT_OURS" serve
            serve_once theirs "$PORT_THEIRS" serve
            ;;
        *)
            echo "unknown test $t" >&2
            exit 2
            ;;
        esac
    done
done
for e in ours theirs; do
    [ -f "$TMP/kv-$e.txt" ] && echo "KV at start-up ($e): $(cat "$TMP/kv-$e.txt")"
done

# Means per test and engine, and ours / theirs.
python3 - "$OUT" <<'EOF'
import csv, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["test"], {}).setdefault(r["engine"], []).append(float(r["value"]))
for test, e in by.items():
    ours, theirs = e.get("ours", []), e.get("theirs", [])
    line = f"{test:20s}"
    for name, v in (("ours", ours), ("theirs", theirs)):
        if v:
            line += f"  {name} mean {statistics.mean(v):8.2f} (n={len(v)})"
    if ours and theirs:
        line += f"  ratio {statistics.mean(ours) / statistics.mean(theirs):.2f}"
    print(line)
EOF
