#!/usr/bin/env python3
"""Checks docker/monitoring against what the server really exports.

- The Grafana dashboard is JSON with a datasource and a model_name variable, and every
  panel has PromQL targets; the alert rules are YAML with the fields Prometheus requires.
- Every expression parses as PromQL (promql-parser, PyPI: the Rust parser Prometheus-compatible
  tools use, standing in for `promtool check rules`), after Grafana's variables are
  substituted.
- Every metric an expression reads is in a real /metrics scrape of qwen3-serve on the emulated
  CANN and DCMI (started here: target/debug/qwen3-serve with target/debug/libcann_emu.so
  under CANN's and DCMI's library names), so a renamed metric breaks CI instead of a panel.
- The process memory is exported per NPU for every kind the dashboard stacks, weights and KV
  cache are not zero, and the kinds add up to the HBM the emulated DCMI reports in use (on
  the emulator that is exactly what the process allocated, rounded up to whole MB).

Usage: python .ci/check-monitoring.py   (after `cargo build -p qwen3-serve -p qwen3-cann-emu`)
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docker/monitoring/grafana/dashboards/qwen3-serve.json"
RULES = ROOT / "docker/monitoring/prometheus/alerts.yml"
PROMETHEUS = ROOT / "docker/monitoring/prometheus/prometheus.yml"
LIB_NAMES = ["libascendcl.so", "libnnopbase.so", "libopapi.so", "libhccl.so", "libdcmi.so"]


def fail(msg):
    print(f"check-monitoring: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def scrape():
    """/metrics of the server on the emulator, two NPUs (tensor parallel 2)."""
    binary = ROOT / "target/debug/qwen3-serve"
    emu = ROOT / "target/debug/libcann_emu.so"
    for f in (binary, emu):
        if not f.is_file():
            fail(f"{f} missing: cargo build -p qwen3-serve -p qwen3-cann-emu first")
    with tempfile.TemporaryDirectory() as libs:
        for name in LIB_NAMES:
            os.symlink(emu, os.path.join(libs, name))
        env = dict(os.environ, LD_LIBRARY_PATH=libs, CANN_EMU_DEVICES="2",
                   CANN_EMU_HBM_BYTES=str(256 << 20), RUST_LOG="info")
        for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_RT_VISIBLE_DEVICES"):
            env.pop(var, None)
        proc = subprocess.Popen(
            [str(binary), str(ROOT / "tests/fixtures/tiny-qwen3-hd128"), "--device", "npu",
             "--tensor-parallel-size", "2", "--port", "0", "--max-model-len", "1024",
             "--npu-metrics-interval-seconds", "1",
             # Full decode graphs at TP 2 for every size up to 64 would fill the emulated
             # 256 MiB HBM before the KV cache; a few sizes are enough here.
             "--max-num-seqs", "8"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        addr, log = [], []

        def read():
            for line in proc.stderr:
                log.append(line)
                m = re.search(r"listening on http://(\S+)", line)
                if m:
                    addr.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        try:
            deadline = time.time() + 180
            while not addr and time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
            if not addr:
                fail("the server did not start:\n" + "".join(log))
            text = ""
            while time.time() < deadline:
                with urllib.request.urlopen(f"http://{addr[0]}/metrics", timeout=10) as r:
                    text = r.read().decode()
                if "qwen3_serve_npu_" in text:
                    return text
                time.sleep(0.2)
            fail("no NPU metrics in the scrape:\n" + text)
        finally:
            proc.kill()
            proc.wait()


PROCESS_MEMORY = "qwen3_serve_npu_process_memory_bytes"
KINDS = {"weights", "kv_cache", "graphs", "activations", "pool_cached"}


def series(text, name):
    """{labels dict as a sorted tuple: value} of every sample of `name`."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(name + r"\{(.*)\} (\S+)", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1))))
            out[labels] = float(m.group(2))
    return out


def check_process_memory(text):
    mem = series(text, PROCESS_MEMORY)
    used = {dict(k)["npu"]: v for k, v in series(text, "qwen3_serve_npu_hbm_used_bytes").items()}
    if not used:
        fail("no qwen3_serve_npu_hbm_used_bytes in the scrape")
    for npu, hbm in sorted(used.items()):
        kinds = {dict(k)["kind"]: v for k, v in mem.items() if dict(k)["npu"] == npu}
        if set(kinds) != KINDS:
            fail(f"{PROCESS_MEMORY} on NPU {npu}: kinds {sorted(kinds)}, want {sorted(KINDS)}")
        if kinds["weights"] <= 0 or kinds["kv_cache"] <= 0:
            fail(f"{PROCESS_MEMORY} on NPU {npu}: no weights or KV cache: {kinds}")
        total = sum(kinds.values())
        if not hbm - (1 << 20) < total <= hbm:
            fail(f"{PROCESS_MEMORY} on NPU {npu}: kinds add up to {total}, DCMI reports {hbm} in use")


def exported_names(text):
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def grafana_to_promql(expr):
    """Grafana's variables replaced by values PromQL accepts."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("${model_name}", ".*").replace("$model_name", ".*"))


def metric_names(node, out):
    kind = type(node).__name__
    if kind == "VectorSelector":
        name = node.name
        if not name:
            fail(f"a selector without a metric name: {node}")
        out.add(name)
        return
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            metric_names(child, out)
    for arg in getattr(node, "args", None) or []:
        metric_names(arg, out)


def check(where, expr, exported):
    try:
        ast = promql_parser.parse(grafana_to_promql(expr))
    except Exception as e:  # the parser raises its own exception types
        fail(f"{where}: not PromQL: {e}\n  {expr}")
    used = set()
    metric_names(ast, used)
    if not used:
        fail(f"{where}: reads no metric: {expr}")
    missing = sorted(used - exported)
    if missing:
        fail(f"{where}: metrics the server does not export: {missing}\n  {expr}")
    return used


def main():
    text = scrape()
    check_process_memory(text)
    exported = exported_names(text)
    used = set()

    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        fail("dashboard: no `datasource` variable")
    if "model_name" not in variables:
        fail("dashboard: no `model_name` variable")
    used |= check("dashboard variable model_name",
                  re.sub(r"^label_values\((.*), *model_name\)$", r"\1",
                         variables["model_name"]["query"]["query"]), exported)
    panels = [p for p in dash["panels"] if p.get("type") != "row"]
    if not panels:
        fail("dashboard: no panels")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard: panel ids repeat")
    memory = [p for p in panels if any(PROCESS_MEMORY in t["expr"] for t in p.get("targets", []))]
    if not any("{{kind}}" in t.get("legendFormat", "") for p in memory for t in p["targets"]):
        fail(f"dashboard: no panel shows {PROCESS_MEMORY} by kind")
    for p in panels:
        if not p.get("targets"):
            fail(f"dashboard panel {p.get('title')!r}: no targets")
        for t in p["targets"]:
            used |= check(f"dashboard panel {p['title']!r} {t['refId']}", t["expr"], exported)

    rules = yaml.safe_load(RULES.read_text())
    alerts = []
    for g in rules["groups"]:
        if not g.get("name") or not g.get("rules"):
            fail(f"rules: a group without a name or rules: {g}")
        for r in g["rules"]:
            if "alert" not in r or "expr" not in r:
                fail(f"rules: an alerting rule needs `alert` and `expr`: {r}")
            if "for" in r and not re.fullmatch(r"(\d+[smhdwy])+", str(r["for"])):
                fail(f"rules {r['alert']}: `for` is not a duration: {r['for']}")
            if r.get("labels", {}).get("severity") not in ("warning", "critical"):
                fail(f"rules {r['alert']}: severity must be warning or critical")
            used |= check(f"rule {r['alert']}", r["expr"], exported)
            alerts.append(r["alert"])
    want = {"NpuHbmNearlyFull", "NpuAiCoreUnderusedWhileRequestsWait", "NpuTemperatureHigh"}
    if not want <= set(alerts):
        fail(f"rules: missing {sorted(want - set(alerts))}")

    prom = yaml.safe_load(PROMETHEUS.read_text())
    if "/etc/prometheus/alerts.yml" not in prom.get("rule_files", []):
        fail("prometheus.yml does not load the alert rules")

    npu = sorted(n for n in exported if n.startswith("qwen3_serve_npu_"))
    unshown = [n for n in npu if n not in used]
    if unshown:
        fail(f"NPU metrics the dashboard and rules never show: {unshown}")
    print(f"check-monitoring: ok: {len(panels)} panels, {len(alerts)} alerts, "
          f"{len(used)} metrics, all in the emulated server's /metrics")


if __name__ == "__main__":
    main()
