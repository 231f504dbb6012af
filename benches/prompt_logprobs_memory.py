#!/usr/bin/env python3
"""Peak resident memory of the server for one long prompt, with and without prompt logprobs.

    cargo build --release -p qwen3-serve
    python3 benches/prompt_logprobs_memory.py target/release/qwen3-serve [TOKENS]

Each mode gets a fresh server on the fixture model (F32); its peak RSS (VmHWM) is reset once
the server is idle, so the figure is the request's growth over the idle server's RSS. Linux,
standard library only.
"""
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/qwen3-serve"
TOKENS = int(sys.argv[2]) if len(sys.argv) > 2 else 8192


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1))


def reset_peak(pid):
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS (the load's peak is not ours).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def run(body):
    proc = subprocess.Popen(
        [BIN, "--port", "0", "--dtype", "float32", "--max-model-len", str(TOKENS + 16),
         "--max-num-batched-tokens", "2048", "--cpu-kv-cache-space", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    reset_peak(proc.pid)
    idle = status_kib(proc.pid, "VmRSS")
    req = urllib.request.Request(f"http://{addr}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=3600) as r:
        size = len(r.read())
    secs = time.time() - t
    peak = status_kib(proc.pid, "VmHWM")
    proc.terminate()
    proc.wait(timeout=30)
    return (peak - idle) / 1024, idle / 1024, size / 2**20, secs


def main():
    # Token ids 1000..: a prompt of exactly TOKENS tokens whatever the tokenizer does.
    prompt = [1000 + (i * 7919) % 100000 for i in range(TOKENS)]
    modes = [
        ("no logprobs", {}),
        ("echo + logprobs 1, max_tokens 0 (lm-eval)", {"echo": True, "logprobs": 1}),
        ("prompt_logprobs 20", {"prompt_logprobs": 20}),
    ]
    print(f"{TOKENS}-token prompt, fixture model (vocab 151,936), F32, chunk 2048")
    print(f"[{TOKENS}, 151936] F32 logits at once would be {TOKENS * 151936 * 4 / 2**30:.1f} GiB")
    for name, extra in modes:
        body = {"prompt": prompt, "max_tokens": 0 if extra.get("echo") else 1,
                "temperature": 0, **extra}
        grow, idle, size, secs = run(body)
        print(f"{name}: peak RSS +{grow:.0f} MiB over idle {idle:.0f} MiB; "
              f"response {size:.1f} MiB; {secs:.1f} s")


if __name__ == "__main__":
    main()
