#!/usr/bin/env python3
"""The official `ollama` Python client against a running `flexserve serve` (driven by
tests/serve_ollama.rs; `make test-venv` installs the client). Prints one JSON object on its
last line: what each call answered, for the Rust test to compare with the OpenAI routes.

Greedy throughout (temperature 0, repeat_penalty 1.0: Ollama's default penalty of 1.1
would make the text differ from the OpenAI routes', whose default is off).
"""
import argparse
import json
from datetime import datetime, timezone

import ollama


def greedy(n):
    return {"temperature": 0, "repeat_penalty": 1.0, "num_predict": n}


def error_of(call):
    """(status, message) of the ResponseError `call` raises."""
    try:
        call()
    except ollama.ResponseError as e:
        return e.status_code, e.error
    raise AssertionError("no error")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--raw-prompt", required=True)
    p.add_argument("--raw-tokens", type=int, required=True)
    a = p.parse_args()
    c = ollama.Client(host=a.host, timeout=120)
    messages = [{"role": "user", "content": a.prompt}]
    out = {}

    r = c.chat(model=a.model, messages=messages, options=greedy(a.tokens))
    assert r.done and r.message.role == "assistant", r
    out["chat"] = r.message.content
    out["chat_done_reason"] = r.done_reason
    out["chat_counts"] = [r.prompt_eval_count, r.eval_count]
    assert r.total_duration >= r.eval_duration >= 0 and r.load_duration >= 0, r
    assert r.created_at.endswith("Z"), r

    text, last, lines = "", None, 0
    for part in c.chat(model=a.model, messages=messages, options=greedy(a.tokens), stream=True):
        text += part.message.content or ""
        lines += 1
        if part.done:
            last = part
    assert last is not None and lines > 2, (lines, last)
    out["chat_stream"] = text
    out["chat_stream_done_reason"] = last.done_reason
    out["chat_stream_counts"] = [last.prompt_eval_count, last.eval_count]

    r = c.generate(model=a.model, prompt=a.prompt, options=greedy(a.tokens))
    out["generate"] = r.response
    text = "".join(
        part.response
        for part in c.generate(model=a.model, prompt=a.prompt, options=greedy(a.tokens),
                               stream=True)
    )
    out["generate_stream"] = text
    r = c.generate(model=a.model, prompt=a.raw_prompt, raw=True, options=greedy(a.raw_tokens),
                   keep_alive="10m")
    out["generate_raw"] = r.response

    out["list"] = [m.model for m in c.list().models]
    listed = next(m for m in c.list().models if m.model == a.model)
    out["list_details"] = listed.details.model_dump()
    out["list_size"] = int(listed.size)
    ps = c.ps().models
    out["ps"] = [m.model for m in ps]
    mine = next(m for m in ps if m.model == a.model)
    out["ps_size_vram"] = int(mine.size_vram)
    out["ps_expires_in"] = (mine.expires_at - datetime.now(timezone.utc)).total_seconds()
    out["ps_context_length"] = mine.context_length
    s = c.show(a.model)
    out["show_details"] = s.details.model_dump()
    out["show_model_info"] = dict(s.modelinfo)
    out["show_latest_tag"] = c.show(a.model + ":latest").details.model_dump()

    # Structured output: a JSON object, and a schema the answer follows; a schema outside
    # the supported subset is refused.
    cat = [{"role": "user", "content": 'Give me a JSON object with the keys "name" and "age" of a cat.'}]
    r = c.chat(model=a.model, messages=cat, format="json", options={"temperature": 0, "num_predict": 200})
    out["format_json"] = json.loads(r.message.content)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = c.chat(model=a.model, messages=cat, format=schema, options={"temperature": 0, "num_predict": 200})
    out["format_schema"] = json.loads(r.message.content)
    out["format_error"] = error_of(
        lambda: c.chat(model=a.model, messages=messages,
                       format={"type": "string", "pattern": "a+"}))
    out["mirostat_error"] = error_of(
        lambda: c.generate(model=a.model, prompt="x", options={"mirostat": 2}))
    out["unknown_model_error"] = error_of(
        lambda: c.chat(model="no-such-model", messages=messages))
    out["num_ctx_error"] = error_of(
        lambda: c.chat(model=a.model, messages=messages, options={"num_ctx": 1 << 20}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
