"""lm-evaluation-harness (pinned, from PyPI) against the real qwen3-serve binary through its
`local-completions` model: a small multiple-choice task and a rolling-perplexity task, both
with their data in tests/lm_eval/data, must finish with the loglikelihoods transformers gives
for the fixture model (expected.json, made by tests/fixtures/make_logprob_goldens.py).

Offline: the tokenizer is the fixture's directory (no hub), the datasets are local JSON files,
and the HF_*_OFFLINE switches make any hub access an error instead of a hang. Run by .ci/run
after `cargo build -p qwen3-serve`; QWEN3_SERVE_BIN points at the binary.
"""
import json
import math
import os
import re
import subprocess
import threading

import pytest

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[key] = "1"

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("QWEN3_SERVE_BIN", os.path.join(ROOT, "target/debug/qwen3-serve"))
FIXTURE = os.path.join(ROOT, "tests/fixtures/tiny-qwen3")
MODEL = "tiny-qwen3"
# Sums of a few F32 token logprobs, each within 1e-4 of transformers' (the model tests' bound).
TOL = 1e-3

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""

PPL_TASK = """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/tiny_ppl.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [BIN, FIXTURE, "--port", "0", "--served-model-name", MODEL, "--dtype", "float32",
         "--cpu-kv-cache-space", "0.05", "--max-model-len", "512",
         "--max-num-batched-tokens", "32"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "server did not start"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield addr
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def evaluate(addr, tmp_path):
    for name, text in (("tiny_mc.yaml", MC_TASK), ("tiny_ppl.yaml", PPL_TASK)):
        (tmp_path / name).write_text(text.format(data=os.path.join(HERE, "data")))
    return lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": MODEL,
            "base_url": f"http://{addr}/v1/completions",
            "tokenizer": FIXTURE,
            "tokenizer_backend": "huggingface",
            "tokenized_requests": True,
            "num_concurrent": 2,
            "max_retries": 1,
            "max_length": 512,
        },
        tasks=["tiny_mc", "tiny_ppl"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        batch_size=4,
        log_samples=True,
    )


def test_loglikelihoods_equal_transformers(server, tmp_path):
    with open(os.path.join(HERE, "expected.json")) as f:
        expected = json.load(f)
    out = evaluate(server, tmp_path)
    samples = out["samples"]

    mc = sorted(samples["tiny_mc"], key=lambda s: s["doc_id"])
    assert len(mc) == len(expected["tiny_mc"])
    correct = 0
    for s, want in zip(mc, expected["tiny_mc"]):
        got = [r[0][0] for r in s["resps"]]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert abs(g - w) < TOL, (s["doc_id"], got, want)
        best = max(range(len(want)), key=lambda i: want[i])
        correct += best == s["doc"]["answer"]
    acc = out["results"]["tiny_mc"]["acc,none"]
    assert abs(acc - correct / len(mc)) < 1e-9, (acc, correct)

    ppl = sorted(samples["tiny_ppl"], key=lambda s: s["doc_id"])
    assert len(ppl) == len(expected["tiny_ppl"])
    for s, want in zip(ppl, expected["tiny_ppl"]):
        got = s["resps"][0][0]
        assert abs(got - want) < TOL, (s["doc_id"], got, want)
    # word_perplexity = exp(-sum loglik / sum words), from the same numbers.
    words = sum(len(re.split(r"\s+", s["doc"]["text"])) for s in ppl)
    want_ppl = math.exp(-sum(expected["tiny_ppl"]) / words)
    got_ppl = out["results"]["tiny_ppl"]["word_perplexity,none"]
    assert abs(got_ppl / want_ppl - 1) < 1e-3, (got_ppl, want_ppl)
