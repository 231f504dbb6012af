#!/usr/bin/env python3
"""Validates deploy/kubernetes/ offline, bounded in time.

- The manifests are what deploy/kubernetes/generate.py makes from configs/ (not stale).
- Every core resource against the Kubernetes schemas bundled in kubernetes-validate (strict:
  an unknown field is an error), for the oldest and newest Kubernetes we claim.
- LeaderWorkerSet against the schema of its published CRD (deploy/kubernetes/schemas/, where
  its provenance is written), made strict the same way; its leader and worker pod templates,
  trimmed from that schema, as core v1 PodTemplates with kubernetes-validate.
- What no schema knows: NPU requests equal limits and match the preset's tensor-parallel
  size, probe paths are routes the server has, every `--flag` is one the CLI has, the HPA's
  metric is the one the prometheus-adapter values serve, and the LeaderWorkerSet's Service
  selects its leader.
- A self-test first: a misspelt field in each kind must be refused, so a green run means the
  validators ran.
"""

import copy
import json
import pathlib
import re
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.29.0", "1.37.0"]
NPU = "huawei.com/Ascend910"
errors: list[str] = []


def fail(where: str, msg: str) -> None:
    errors.append(f"{where}: {msg}")


def strict(schema):
    """A copy of an OpenAPI schema that refuses properties it does not declare, as
    kubectl's strict field validation does (CRD schemas otherwise prune them silently)."""
    if isinstance(schema, dict):
        s = {k: strict(v) for k, v in schema.items()}
        if "properties" in s and "additionalProperties" not in s:
            s["additionalProperties"] = False
        return s
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


LWS_SCHEMA = strict(
    {
        k: v
        for k, v in json.loads((K8S / "schemas/leaderworkerset-v1.schema.json").read_text()).items()
        if k != "$comment"
    }
)


def core_errors(doc: dict) -> list[str]:
    out = []
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"k8s {v}: {e.message} at {'.'.join(map(str, e.path))}")
    return out


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] == "Deployment":
        return [("template", doc["spec"]["template"])]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [(k, t[k]) for k in ("leaderTemplate", "workerTemplate") if k in t]
    return []


def lws_errors(doc: dict) -> list[str]:
    v = jsonschema.Draft7Validator(LWS_SCHEMA)
    out = [f"LeaderWorkerSet schema: {e.message} at {'.'.join(map(str, e.path))}" for e in v.iter_errors(doc)]
    for name, tpl in pod_templates(doc):
        pt = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.lower()}, "template": tpl}
        out += [f"{name}: {e}" for e in core_errors(pt)]
    return out


def schema_errors(doc: dict) -> list[str]:
    return lws_errors(doc) if doc.get("kind") == "LeaderWorkerSet" else core_errors(doc)


def self_test(sample: dict, lws: dict) -> None:
    bad = copy.deepcopy(sample)
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    if not schema_errors(bad):
        sys.exit("self-test: kubernetes-validate accepted a misspelt readinessProbe")
    bad = copy.deepcopy(lws)
    bad["spec"]["leaderWorkerTemplate"]["sizee"] = 2
    if not schema_errors(bad):
        sys.exit("self-test: the LeaderWorkerSet schema accepted a misspelt size")
    bad = copy.deepcopy(lws)
    bad["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containerz"] = []
    if not schema_errors(bad):
        sys.exit("self-test: a worker pod template with a misspelt field passed")


def server_routes() -> set[str]:
    src = (ROOT / "crates/api/src/server.rs").read_text()
    return set(re.findall(r'\.route\("([^"]+)"', src))


def cli_flags() -> set[str]:
    src = (ROOT / "crates/qwen3-serve/src/cli.rs").read_text()
    return {"--" + f.replace("_", "-") for f in re.findall(r"pub (\w+):", src)}


def adapter_metric() -> str:
    v = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = v["rules"]["custom"]
    if len(rules) != 1 or "vllm:num_requests_waiting" not in rules[0]["seriesQuery"]:
        sys.exit("prometheus-adapter-values.yaml: expected one rule over vllm:num_requests_waiting")
    return rules[0]["name"]["as"]


def semantic(where: str, doc: dict, routes: set, flags: set, metric: str, tp: int | None) -> None:
    for name, tpl in pod_templates(doc):
        for c in tpl["spec"]["containers"]:
            r = c.get("resources", {})
            req, lim = r.get("requests", {}).get(NPU), r.get("limits", {}).get(NPU)
            if req is None or req != lim:
                fail(where, f"{name}/{c['name']}: {NPU} requests {req} != limits {lim}")
            if tp is not None and req != tp:
                fail(where, f"{name}/{c['name']}: {req} NPUs for a preset of TP {tp}")
            for p in ("startupProbe", "readinessProbe", "livenessProbe"):
                path = c.get(p, {}).get("httpGet", {}).get("path")
                if path is not None and path not in routes:
                    fail(where, f"{p} path {path} is not a server route")
            for a in c.get("args", []):
                if a.startswith("--") and a not in flags:
                    fail(where, f"{name}/{c['name']}: {a} is not a qwen3-serve flag")
    if doc["kind"] == "HorizontalPodAutoscaler":
        names = [m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"]
        if names != [metric]:
            fail(where, f"HPA metrics {names}, prometheus-adapter serves {metric}")


def main() -> int:
    r = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], timeout=60)
    if r.returncode:
        fail("deploy/kubernetes", "manifests are stale")
    files = sorted((K8S / "replicas").glob("*.yaml")) + sorted((K8S / "multinode").glob("*.yaml"))
    docs = {f: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in files}
    by_kind = {d["kind"]: d for ds in docs.values() for d in ds}
    self_test(by_kind["Deployment"], by_kind["LeaderWorkerSet"])
    routes, flags, metric = server_routes(), cli_flags(), adapter_metric()
    n = 0
    for f, ds in docs.items():
        where = str(f.relative_to(ROOT))
        preset = ROOT / "configs" / f"{f.stem}-910b.toml"
        tp = tomllib.loads(preset.read_text()).get("tensor_parallel_size", 1) if preset.exists() else None
        lws = next((x for x in ds if x["kind"] == "LeaderWorkerSet"), None)
        for d in ds:
            n += 1
            for e in schema_errors(d):
                fail(f"{where} {d['kind']}/{d['metadata']['name']}", e)
            semantic(where, d, routes, flags, metric, tp)
            if d["kind"] == "Service" and lws is not None:
                leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]
                want = {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"], **leader["labels"]}
                if d["spec"]["selector"] != want:
                    fail(where, f"Service selects {d['spec']['selector']}, the leader is {want}")
    for e in errors:
        print("FAIL", e)
    print(f"check-kubernetes: {n} resources in {len(files)} files, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
