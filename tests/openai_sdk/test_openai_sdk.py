"""The official OpenAI Python client against the real qwen3-serve binary on the fixture model.

Run by .ci/run after `cargo build -p qwen3-serve`; QWEN3_SERVE_BIN points at the binary.
"""
import os
import re
import subprocess
import threading

import openai
import pytest

BIN = os.environ.get("QWEN3_SERVE_BIN", "target/debug/qwen3-serve")
MODEL = "Qwen3-30B"


@pytest.fixture(scope="module")
def client():
    proc = subprocess.Popen(
        [BIN, "--port", "0", "--served-model-name", MODEL, "--cpu-kv-cache-space", "0.05",
         "--max-model-len", "2048", "--reasoning-parser", "qwen3",
         "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "server did not start"
    # Keep draining stderr so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield openai.OpenAI(base_url=f"http://{addr}/v1", api_key="none")
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion(client):
    r = client.completions.create(model=MODEL, prompt="请介绍一下你自己。", max_tokens=100, temperature=0.7)
    assert r.object == "text_completion"
    assert isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 4


def test_completion_n2_stop_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, n=2, logprobs=3,
                                  temperature=1.0, seed=1, stop=["\n\n"])
    assert len(r.choices) == 2
    for c in r.choices:
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs)
        # OpenAI: the sampled token's logprob is always included, so up to logprobs + 1 entries.
        assert all(1 <= len(t) <= 4 for t in c.logprobs.top_logprobs)
    greedy = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0)
    text = greedy.choices[0].text
    if len(text) > 3:
        s = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                      stop=[text[2:4]])
        assert s.choices[0].finish_reason == "stop"
        assert text[2:4] not in s.choices[0].text


def test_chat_and_thinking_off(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"}],
        max_tokens=8, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 8


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to three"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 for c in content)


def test_tools_accepted(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       tools=tools, tool_choice="auto", max_tokens=8)
    c = r.choices[0]
    # Random weights rarely emit a <tool_call>; either way the shape is OpenAI's.
    assert c.finish_reason in ("stop", "length", "tool_calls")
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"


def test_errors_are_raised_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=9)


def _parse(client, **kwargs):
    # `chat.completions.parse` in current SDKs; `beta.chat.completions.parse` before 1.92.
    chat = client.chat.completions
    parse = getattr(chat, "parse", None) or client.beta.chat.completions.parse
    return parse(**kwargs)


def test_structured_output_parses_into_a_pydantic_model(client):
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=12)
        population: int = Field(ge=0, le=10_000_000)
        capital: bool

    # Thinking off: with it on, the constraint would wait for a `</think>` that random
    # weights rarely write.
    r = _parse(client, model=MODEL, messages=[{"role": "user", "content": "A city as JSON."}],
               response_format=City, max_tokens=120, temperature=1.0, seed=3,
               extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    city = r.choices[0].message.parsed
    assert isinstance(city, City), r.choices[0].message.content
    assert len(city.name) <= 12 and 0 <= city.population <= 10_000_000


def test_tool_choice_required_always_calls_a_tool(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                       "required": ["city"], "additionalProperties": False}}}]
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools,
        tool_choice="required", parallel_tool_calls=False, max_tokens=80,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather"
    import json
    assert isinstance(json.loads(call.function.arguments)["city"], str)
