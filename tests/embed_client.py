#!/usr/bin/env python3
"""Embeddings through the official clients against a running `flexserve serve` (driven by
tests/serve_embeddings.rs; `make test-venv` installs both clients). Prints one JSON object
on its last line: what each call answered, for the Rust test to check.

  openai  `client.embeddings.create`: a batch of 3 (the SDK asks for base64 by default),
          the same batch as floats, token-id input, `dimensions`, an empty input refused
  ollama  `ollama.Client.embed` with a batch and a string, and the older `embeddings`
"""
import argparse
import json
import math

import ollama
import openai

NEAR = ["The cat sat on the mat.", "A kitten was sitting on the rug."]
FAR = "Interest rates rose sharply at the central bank."
BATCH = [NEAR[0], NEAR[1], FAR]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norms(vectors):
    return [math.sqrt(dot(v, v)) for v in vectors]


def error_of(call, exc):
    """(status, message) of the error `call` raises."""
    try:
        call()
    except exc as e:
        return getattr(e, "status_code", None), str(e)
    raise AssertionError("no error")


def run_openai(a):
    c = openai.OpenAI(base_url=a.base_url + "/v1", api_key="unused", max_retries=0,
                      timeout=120)
    out = {}
    r = c.embeddings.create(model=a.model, input=BATCH)
    vectors = [d.embedding for d in r.data]
    out["object"] = r.object
    out["indices"] = [d.index for d in r.data]
    out["model"] = r.model
    out["usage"] = [r.usage.prompt_tokens, r.usage.total_tokens]
    out["dims"] = [len(v) for v in vectors]
    out["norms"] = norms(vectors)
    out["near"] = dot(vectors[0], vectors[1])
    out["far"] = [dot(vectors[0], vectors[2]), dot(vectors[1], vectors[2])]
    floats = c.embeddings.create(model=a.model, input=BATCH, encoding_format="float")
    out["float_equals_base64"] = [d.embedding for d in floats.data] == vectors
    again = c.embeddings.create(model=a.model, input=NEAR[0])
    out["same_input_same_vector"] = again.data[0].embedding == vectors[0]
    out["single_usage"] = again.usage.prompt_tokens
    ids = c.embeddings.create(model=a.model, input=[[1, 2, 3], [4, 5]])
    out["token_inputs"] = [len(d.embedding) for d in ids.data]
    out["token_usage"] = ids.usage.prompt_tokens
    d = len(vectors[0])
    out["dimensions_ok"] = len(
        c.embeddings.create(model=a.model, input="x", dimensions=d).data[0].embedding)
    out["dimensions_error"] = error_of(
        lambda: c.embeddings.create(model=a.model, input="x", dimensions=d // 2),
        openai.BadRequestError)
    out["empty_error"] = error_of(
        lambda: c.embeddings.create(model=a.model, input=""), openai.BadRequestError)
    out["vector"] = vectors[0]
    return out


def run_ollama(a):
    c = ollama.Client(host=a.base_url, timeout=120)
    out = {}
    r = c.embed(model=a.model, input=BATCH)
    out["model"] = r.model
    out["dims"] = [len(v) for v in r.embeddings]
    out["norms"] = norms(r.embeddings)
    out["prompt_eval_count"] = r.prompt_eval_count
    out["durations"] = [r.total_duration, r.load_duration]
    one = c.embed(model=a.model, input=NEAR[0])
    out["single"] = one.embeddings[0]
    legacy = c.embeddings(model=a.model, prompt=NEAR[0])
    out["legacy"] = list(legacy.embedding)
    out["batch_first"] = r.embeddings[0]
    out["options_error"] = error_of(
        lambda: c.embed(model=a.model, input="x", options={"num_ctx": 8}),
        ollama.ResponseError)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["openai", "ollama"])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    out = run_openai(a) if a.scenario == "openai" else run_ollama(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
