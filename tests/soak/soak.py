#!/usr/bin/env python3
"""Soak test (not in CI): a bounded mix of normal, hostile, dropped-stream and oversized
traffic against a qwen3-serve started here on loopback, for a configurable duration.

Reports requests by (kind, outcome), p50/p99 latency of the normal requests, the server's RSS
over time, KV cache usage and requests running at the end (must be 0), and its open file
descriptors (must return to the baseline). Standard library only.

    tests/soak/soak.py --binary target/release/qwen3-serve --duration 1800
"""

import argparse
import collections
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

COUNTS = collections.Counter()
LAT = []
LOCK = threading.Lock()


def note(kind, outcome, latency=None):
    with LOCK:
        COUNTS[(kind, outcome)] += 1
        if latency is not None:
            LAT.append(latency)


def read_all(s):
    """Everything the server sends until it closes the socket."""
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    return raw


def http(addr, method, path, body=b"", headers=None, timeout=60.0):
    """One request on its own connection; returns (status, body bytes)."""
    hdrs = {"Host": "x", "Connection": "close", "Content-Length": str(len(body))}
    if body:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        raw = read_all(s)
    m = re.match(rb"HTTP/1\.1 (\d+)", raw)
    return (int(m.group(1)) if m else 0), raw


def post_json(addr, path, obj, **kw):
    return http(addr, "POST", path, json.dumps(obj).encode(), **kw)


def normal(addr, rng):
    t = time.monotonic()
    if rng.random() < 0.5:
        st, _ = post_json(addr, "/v1/completions",
                          {"prompt": "Hello, my name is", "max_tokens": 8, "temperature": 0})
        kind = "normal-completion"
    else:
        st, _ = post_json(addr, "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                           "stream": True})
        kind = "normal-chat-stream"
    note(kind, st, time.monotonic() - t if st == 200 else None)


def hostile(addr, rng):
    choice = rng.randrange(8)
    if choice == 0:
        st, _ = http(addr, "POST", "/v1/completions", b"{not json")
        note("malformed-json", st)
    elif choice == 1:
        st, _ = http(addr, "POST", "/v1/completions", b'{"prompt":"x"}',
                     {"Content-Type": "text/plain"})
        note("text-plain", st)
    elif choice == 2:
        st, _ = post_json(addr, "/v1/completions", {"prompt": ["a"] * 40, "n": 128, "max_tokens": 1})
        note("n-too-big", st)
    elif choice == 3:
        st, _ = post_json(addr, "/v1/completions", {"prompt": "word " * 400_000, "max_tokens": 1})
        note("huge-prompt", st)
    elif choice == 4:
        st, _ = post_json(addr, "/tokenize", {"prompt": "word " * 400_000})
        note("huge-tokenize", st)
    elif choice == 5:
        # Slowloris: partial headers, then wait for the server to close.
        t = time.monotonic()
        with socket.create_connection(addr, timeout=120) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            try:
                closed = s.recv(1) == b""
            except OSError:
                closed = True
        note("slowloris", f"closed-after-{round(time.monotonic() - t)}s" if closed else "open")
    elif choice == 6:
        # Headers, no body.
        with socket.create_connection(addr, timeout=120) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
            raw = read_all(s)
        note("body-never-sent", raw[9:12].decode() or "closed")
    else:
        st, _ = post_json(addr, "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": 5}], "echo": "yes",
                           "best_of": 10**6})
        note("invalid-chat", st)


def dropped_stream(addr, rng):
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 200, "stream": True,
                       "ignore_eos": True}).encode()
    with socket.create_connection(addr, timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = s.recv(4096)
        time.sleep(rng.random() * 0.2)
    note("dropped-stream", int(got[9:12]) if got[:5] == b"HTTP/" else "no-answer")


def oversized(addr, rng):
    # Over the 32 MiB body limit: the server answers 413 without reading it all.
    body = b"x" * (33 << 20)
    try:
        st, _ = http(addr, "POST", "/v1/completions", body)
    except OSError as e:
        st = f"reset({e.__class__.__name__})"
    note("oversized-body", st)


def worker(addr, deadline, seed, mix):
    rng = random.Random(seed)
    kinds, weights = zip(*mix)
    while time.monotonic() < deadline:
        f = rng.choices(kinds, weights)[0]
        try:
            f(addr, rng)
        except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
            note(f.__name__, f"client-error:{e.__class__.__name__}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(addr, name):
    _, raw = http(addr, "GET", "/metrics")
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--binary", default="target/release/qwen3-serve")
    ap.add_argument("--duration", type=float, default=1800, help="seconds of traffic")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--sample-every", type=float, default=30, help="seconds between RSS samples")
    ap.add_argument("--settle", type=float, default=70,
                    help="seconds of quiet after the traffic before the final RSS sample")
    ap.add_argument("--kv-cache-space", default="0.25",
                    help="GiB of KV cache; its pages become resident as blocks are first used, "
                         "so RSS grows towards baseline + this much under load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-log", help="write the server's stderr here")
    ap.add_argument("server_args", nargs="*", help="extra flags for the server")
    a = ap.parse_args()

    proc = subprocess.Popen(
        [a.binary, "--port", "0", "--host", "127.0.0.1", "--cpu-kv-cache-space", a.kv_cache_space,
         "--max-waiting-requests", "64", *a.server_args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
            break
    if addr is None:
        sys.exit("the server did not start")
    def drain():
        log = open(a.server_log, "w") if a.server_log else None
        for line in proc.stderr:
            if log:
                log.write(line)
                log.flush()

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(1)
    base_fds, base_rss = fds(proc.pid), rss_kib(proc.pid)
    print(f"server pid {proc.pid} on {addr}; baseline fds {base_fds}, RSS {base_rss} KiB", flush=True)

    mix = [(normal, 60), (hostile, 30), (dropped_stream, 8), (oversized, 2)]
    start = time.monotonic()
    deadline = start + a.duration
    threads = [threading.Thread(target=worker, args=(addr, deadline, a.seed + i, mix))
               for i in range(a.workers)]
    for t in threads:
        t.start()
    rss = [(0, base_rss)]
    def sample():
        rss.append((round(time.monotonic() - start), rss_kib(proc.pid)))
        print(f"t={rss[-1][0]}s RSS {rss[-1][1]} KiB fds {fds(proc.pid)} "
              f"requests {sum(COUNTS.values())}", flush=True)

    while time.monotonic() < deadline:
        time.sleep(max(0.0, min(a.sample_every, deadline - time.monotonic())))
        sample()
    for t in threads:
        t.join()

    # Let closed connections and aborted sequences settle (keep-alive timeout is 5 s), and
    # give the heap trimmer its chance: RSS after the load is what shows whether it came back.
    time.sleep(8)
    sample()
    time.sleep(max(0.0, a.settle - 8))
    sample()
    end_fds = fds(proc.pid)
    running = metric(addr, "vllm:num_requests_running")
    waiting = metric(addr, "vllm:num_requests_waiting")
    kv = metric(addr, "vllm:kv_cache_usage_perc")
    end_fds_after = fds(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)

    print("\n== outcomes (kind, status) ==")
    for (kind, outcome), n in sorted(COUNTS.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"{kind:22} {str(outcome):28} {n}")
    fivexx = sum(n for (k, o), n in COUNTS.items() if isinstance(o, int) and o >= 500)
    print(f"5xx answers: {fivexx}")
    if LAT:
        lat = sorted(LAT)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
        print(f"normal requests OK: {len(lat)}; latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
              f"mean {statistics.mean(lat) * 1e3:.1f} ms")
    print("RSS over time (s, KiB): " + ", ".join(f"{t}:{r}" for t, r in rss))
    print(f"RSS: baseline {base_rss} KiB, peak {max(r for _, r in rss)} KiB, "
          f"after {a.settle:.0f} s quiet {rss[-1][1]} KiB")
    print(f"at the end: running {running}, waiting {waiting}, KV cache usage {kv}")
    print(f"fds: baseline {base_fds}, end {end_fds} (after /metrics: {end_fds_after})")
    ok = fivexx == 0 and running == 0 and waiting == 0 and kv == 0 and end_fds <= base_fds
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
