#!/usr/bin/env python3
"""make bench-structured: what structured output costs in decode speed.

One daemon, the `ollama` client (its answers carry the guest's `eval_count` and
`eval_duration`), greedy. For --rounds rounds, each constrained answer is followed by an
unconstrained one of the same length cap (`num_predict` = the tokens the constrained one
took), so both decode the same number of tokens from the same prompt (decode slows as the
context grows: answers of different lengths would not compare):
  object   `format: "json"` (any JSON object: strings unbounded, so most steps reuse the
           grammar's cached mask);
  schema   `format: <schema>` with bounded strings, an enum and an integer (a string with
           `maxLength` walks the vocabulary on every token: the grammar's worst case).
Reported per mode: decode tokens/s constrained and free (medians over rounds), their ratio
(the issue's target: >= 0.9x), and the time the grammar adds per token (1/rate - 1/free).

The last line printed is one JSON object: {"bench":"structured", ...}.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, spawn, stop, wait_http  # noqa: E402

import ollama  # noqa: E402

PROMPT = "Describe a city you would like to visit, as JSON with its name, country and a long description."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
        "climate": {"enum": ["hot", "mild", "cold"]},
        "description": {"type": "string", "maxLength": 600},
    },
    "required": ["name", "country", "population", "climate", "description"],
    "additionalProperties": False,
}


def start(a, port, tmp):
    model_dir, name = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    cmd = [a.flexserve, "serve", "--socket", os.path.join(tmp, "flexserve.sock"),
           "--tcp", f"127.0.0.1:{port}", "--models-dir", model_dir,
           "--model", name.removesuffix(".gguf"), "--ctx", "2048", "--vcpus", "2",
           "--min-isolation", "none"]
    proc = spawn(cmd, tmp)
    wait_http(port, "/health", proc)
    return proc, name.removesuffix(".gguf")


def one(c, model, fmt, n):
    r = c.chat(model=model, messages=[{"role": "user", "content": PROMPT}], format=fmt,
               options={"temperature": 0, "num_predict": n})
    if fmt is not None:
        json.loads(r.message.content)  # the constrained answer is JSON (or the run is void)
    return r.eval_count, r.eval_duration / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=300)
    a = ap.parse_args()
    modes = {"object": "json", "schema": SCHEMA}
    rates = {m: ([], []) for m in modes}
    counts = {m: [] for m in modes}
    tmp = tempfile.mkdtemp(prefix="bench-structured-")
    port = free_port()
    proc, model = start(a, port, tmp)
    try:
        c = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=600)
        one(c, model, None, 8)  # warm: model loaded, caches filled
        for r in range(a.rounds):
            for m, fmt in modes.items():
                n, secs = one(c, model, fmt, a.tokens)
                free_n, free_secs = one(c, model, None, n)
                rates[m][0].append(n / secs)
                rates[m][1].append(free_n / free_secs)
                counts[m].append(n)
                print(f"round {r + 1} {m:7s} {n:4d} tokens {n / secs:7.1f} tok/s, "
                      f"free {free_n:4d} tokens {free_n / free_secs:7.1f} tok/s", flush=True)
    finally:
        stop(proc, tmp)
    out = {"bench": "structured", "model": os.path.basename(a.model), "rounds": a.rounds}
    for m in modes:
        rate, free = (statistics.median(x) for x in rates[m])
        added = 1000 * (1 / rate - 1 / free)
        out[m] = {"tok_s": round(rate, 1), "free_tok_s": round(free, 1),
                  "tokens": statistics.median(counts[m]), "ratio": round(rate / free, 3),
                  "added_ms_per_token": round(added, 3)}
        print(f"{m:7s} {rate:7.1f} tok/s vs free {free:7.1f}: {rate / free:.2f}x, "
              f"{added:+.2f} ms/token", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
