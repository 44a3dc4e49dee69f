#!/usr/bin/env python3
"""The official `openai` Python client against a running `flexserve serve` (driven by
tests/serve.rs; `make test-venv` installs the client). Each scenario prints one JSON object
on its last line.

  basic       list models (TCP and the Unix socket), a chat completion, a streamed chat
              completion, a completion and a streamed completion, all greedy
  concurrent  N clients x M requests in threads (streamed and not, alternating), each client
              with its own prompt; plus one client that disconnects mid-stream
  sampling    logprobs (chat whole and streamed, completions), seeds drawn and returned,
              penalties, many stop strings, max_tokens clamped, n choices, unsupported
              fields refused
  bias        the first greedy token's bytes with --bias (a JSON logit_bias) applied
"""
import argparse
import json
import math
import sys
import threading

import openai

try:
    import httpx2 as httpx  # what openai 3.x is built on
except ImportError:  # pragma: no cover - older openai releases
    import httpx


def client(base_url, uds=None):
    http = None
    if uds:
        http = httpx.Client(transport=httpx.HTTPTransport(uds=uds))
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120,
                         http_client=http)


def chat(c, model, prompt, n, stream):
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        r = c.chat.completions.create(model=model, messages=messages, temperature=0,
                                      max_tokens=n)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.model_dump()
    text, finish, usage, first = "", None, None, True
    for chunk in c.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=n, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for ch in chunk.choices:
            if first:
                assert ch.delta.role == "assistant", chunk
                first = False
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    return text, finish, usage


def complete(c, model, prompt, n, stream):
    if not stream:
        r = c.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=n)
        return r.choices[0].text, r.choices[0].finish_reason, r.usage.model_dump()
    text, finish, usage = "", None, None
    for chunk in c.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=n,
                                      stream=True):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for ch in chunk.choices:
            text += ch.text
            finish = ch.finish_reason or finish
    return text, finish, usage


def basic(a):
    c = client(a.base_url)
    out = {"models": [m.id for m in c.models.list()],
           "models_uds": [m.id for m in client("http://flexserve/v1", a.uds).models.list()]}
    for name, fn, prompt, n in (("chat", chat, a.chat_prompt, a.chat_tokens),
                                ("completion", complete, a.completion_prompt,
                                 a.completion_tokens)):
        for stream in (False, True):
            text, finish, usage = fn(c, a.model, prompt, n, stream)
            key = name + ("_stream" if stream else "")
            out[key] = text
            out[key + "_finish"] = finish
            out[key + "_usage"] = usage
    # Errors arrive as the client's own exception types.
    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user",
                                                                    "content": "hi"}])
    except openai.NotFoundError as e:
        out["unknown_model_error"] = e.code
    try:
        c.chat.completions.create(model=a.model, messages=[{"role": "user", "content": "hi"}],
                                  temperature=7)
    except openai.BadRequestError as e:
        out["bad_temperature_param"] = e.param
    return out


def concurrent(a):
    prompts = [f"Client {i} asks: tell me about the number {i * 7 + 3}." for i in range(a.clients)]
    c = client(a.base_url)
    expected = [chat(c, a.model, p, a.max_tokens, False)[0] for p in prompts]
    results = {"ok": 0, "mismatches": [], "errors": [], "distinct_expected": len(set(expected))}
    lock = threading.Lock()

    def run(i):
        mine = client(a.base_url)
        for r in range(a.requests):
            try:
                text = chat(mine, a.model, prompts[i], a.max_tokens, r % 2 == 1)[0]
            except Exception as e:  # every failure is reported, not raised in a thread
                with lock:
                    results["errors"].append(f"client {i} request {r}: {e!r}")
                continue
            with lock:
                if text == expected[i]:
                    results["ok"] += 1
                else:
                    results["mismatches"].append([i, r, text, expected[i]])

    def disconnect():
        mine = client(a.base_url)
        stream = mine.chat.completions.create(
            model=a.model, messages=[{"role": "user", "content": "Go on forever."}],
            temperature=0, max_tokens=400, stream=True, extra_body={"ignore_eos": True})
        seen = 0
        for _ in stream:
            seen += 1
            if seen == 3:
                break
        stream.close()
        results["disconnected_after_chunks"] = seen

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.clients)]
    threads.append(threading.Thread(target=disconnect))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def sampling(a):
    c = client(a.base_url)
    msgs = [{"role": "user", "content": a.chat_prompt}]
    out = {}
    r = c.chat.completions.create(model=a.model, messages=msgs, temperature=0, max_tokens=8,
                                  logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    out["text"] = r.choices[0].message.content
    out["lp_text"] = "".join(t.token for t in content)
    out["lp_tokens"] = [t.token for t in content]
    out["first_bytes"] = content[0].bytes
    out["lp_top_n"] = sorted({len(t.top_logprobs) for t in content})
    out["lp_greedy_is_top"] = all(t.top_logprobs[0].token == t.token
                                  and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
                                  and t.logprob >= max(x.logprob for x in t.top_logprobs)
                                  for t in content)
    out["lp_nonpositive"] = all(t.logprob <= 0 and all(x.logprob <= 0 for x in t.top_logprobs)
                                for t in content)
    out["lp_mass_le_1"] = all(sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-5
                              for t in content)
    tokens, text = [], ""
    for chunk in c.chat.completions.create(model=a.model, messages=msgs, temperature=0,
                                           max_tokens=8, logprobs=True, top_logprobs=2,
                                           stream=True):
        for ch in chunk.choices:
            text += ch.delta.content or ""
            if ch.logprobs and ch.logprobs.content:
                tokens += [t.token for t in ch.logprobs.content]
    out["stream_text"], out["stream_lp_tokens"] = text, tokens
    lp = c.completions.create(model=a.model, prompt=a.completion_prompt, temperature=0,
                              max_tokens=6, logprobs=2).choices[0].logprobs
    out["cmpl_lengths"] = [len(lp.tokens), len(lp.token_logprobs), len(lp.top_logprobs),
                           len(lp.text_offset)]
    # No seed: two answers at temperature 1 differ, and each returns the seed it ran with.
    runs = []
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(model=a.model, messages=msgs,
                                                          temperature=1, max_tokens=24)
        body = raw.parse()
        runs.append((int(raw.headers["x-flexserve-seed"]), body.choices[0].message.content,
                     (body.model_extra or {}).get("seed")))
    out["seeds"] = [r[0] for r in runs]
    out["body_seeds"] = [r[2] for r in runs]
    out["unseeded_texts"] = [r[1] for r in runs]
    again = c.chat.completions.create(model=a.model, messages=msgs, temperature=1,
                                      max_tokens=24, seed=runs[0][0])
    out["reproduced"] = again.choices[0].message.content
    r = c.chat.completions.create(model=a.model, messages=msgs, temperature=0, max_tokens=8,
                                  presence_penalty=1.5, frequency_penalty=0.5)
    out["penalised"] = r.choices[0].message.content
    r = c.chat.completions.create(model=a.model, messages=msgs, temperature=0, max_tokens=8,
                                  stop=["zq1", "zq2", "zq3", "zq4", "zq5"])
    out["five_stops_finish"] = r.choices[0].finish_reason
    r = c.chat.completions.create(model=a.model, messages=msgs, temperature=0,
                                  max_tokens=100000, extra_body={"ignore_eos": True})
    out["clamped_finish"] = r.choices[0].finish_reason
    out["clamped_tokens"] = r.usage.completion_tokens
    r = c.chat.completions.create(model=a.model, messages=msgs, temperature=1, max_tokens=4,
                                  n=3, seed=5)
    out["n_indexes"] = [ch.index for ch in r.choices]
    out["n_completion_tokens"] = r.usage.completion_tokens
    refused = {}
    # The deprecated `functions`; a schema outside the grammar compiler's subset.
    pattern = {"type": "json_schema",
               "json_schema": {"name": "s", "schema": {"type": "string", "pattern": "a+"}}}
    for name, kw in (("functions", {"extra_body": {"functions": [{"name": "f"}]}}),
                     ("response_format", {"response_format": pattern}),
                     ("unknown", {"extra_body": {"no_such_field": 1}})):
        try:
            c.chat.completions.create(model=a.model, messages=msgs, max_tokens=2, **kw)
            refused[name] = None
        except openai.BadRequestError as e:
            refused[name] = e.param
    out["refused"] = refused
    return out


def bias(a):
    c = client(a.base_url)
    r = c.chat.completions.create(model=a.model,
                                  messages=[{"role": "user", "content": a.chat_prompt}],
                                  temperature=0, max_tokens=8, logprobs=True,
                                  logit_bias=json.loads(a.bias))
    return {"first_bytes": r.choices[0].logprobs.content[0].bytes,
            "text": r.choices[0].message.content}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["basic", "concurrent", "sampling", "bias"])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--uds")
    ap.add_argument("--model", required=True)
    ap.add_argument("--chat-prompt", default="Why is the sky blue?")
    ap.add_argument("--chat-tokens", type=int, default=32)
    ap.add_argument("--completion-prompt", default="Once upon a time")
    ap.add_argument("--completion-tokens", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--bias", default="{}")
    a = ap.parse_args()
    out = {"basic": basic, "concurrent": concurrent, "sampling": sampling,
           "bias": bias}[a.scenario](a)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
