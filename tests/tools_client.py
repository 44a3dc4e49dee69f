#!/usr/bin/env python3
"""Tool calling and structured output with real clients against a running `flexserve serve`
(driven by tests/serve_tools.rs; `make test-venv` installs the clients). Each scenario
prints one JSON object on its last line.

  openai      the `openai` SDK: a forced tool call parsed into `tool_calls` (whole and
              streamed), its result sent back as a `tool` message and answered;
              `.parse()` with a Pydantic model; `json_object`; a seeded batch of
              constrained answers at temperature 1 (the first three the choices of one
              `n` request), each validated against its schema; the streamed call with
              `n: 2`
  langchain   LangChain's ChatOpenAI: `bind_tools(...).invoke(...)` returns the call,
              `with_structured_output(Model)` returns the object
  ollama      the `ollama` client's `chat(..., tools=[...])`: a call in
              `message.tool_calls` (whole and streamed), then its result answered. The
              model is a tiny random-weight one, which never starts a call of its own
              accord, and Ollama has no `tool_choice`: `format` beside `tools` makes the
              answer a call or JSON from its first token, sampled nearly uniformly
              (temperature 100), and the first seed that calls is kept (seeded, so the
              same one every run)
"""
import argparse
import json
import sys
from typing import Annotated, List, Literal, Optional

import openai
from pydantic import BaseModel, Field

try:
    import httpx2 as httpx  # what openai 3.x is built on
except ImportError:  # pragma: no cover - older openai releases
    import httpx

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


# Bounded strings and lists: a small model sampled at temperature 1 may otherwise write one
# string until `max_tokens` runs out, and a cut answer is not JSON.
class Pet(BaseModel):
    name: str = Field(max_length=24)
    species: Literal["cat", "dog", "fish"]
    age: int
    toys: List[Annotated[str, Field(max_length=16)]] = Field(max_length=3)
    owner: Optional[str] = Field(max_length=24)


def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)


def check_weather_call(call):
    assert call.type == "function", call
    assert call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit"), args
    assert set(args) == {"city", "unit"}, args
    return args


def tool_calls(c, model, n):
    out = {}
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = c.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER, CLOCK],
                                  tool_choice=named, temperature=0, max_tokens=n)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls", r
    assert len(msg.tool_calls) >= 1, msg
    out["args"] = check_weather_call(msg.tool_calls[0])
    out["call_id"] = msg.tool_calls[0].id
    # Streamed, with two choices (`n`): each one's deltas add up to the same call (greedy),
    # under ids of its own, and each choice finishes on its own.
    calls, finish = {}, {}
    for chunk in c.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER, CLOCK],
                                           tool_choice=named, temperature=0, max_tokens=n,
                                           stream=True, n=2):
        for ch in chunk.choices:
            finish[ch.index] = ch.finish_reason or finish.get(ch.index)
            for d in ch.delta.tool_calls or []:
                cur = calls.setdefault((ch.index, d.index),
                                       {"id": "", "name": "", "arguments": ""})
                cur["id"] += d.id or ""
                cur["name"] += d.function.name or ""
                cur["arguments"] += d.function.arguments or ""
    assert finish == {0: "tool_calls", 1: "tool_calls"}, finish
    out["stream_args"] = [json.loads(calls[(i, 0)]["arguments"]) for i in range(2)]
    out["stream_ids"] = [calls[(i, 0)]["id"] for i in range(2)]
    assert all(calls[(i, 0)]["name"] == "get_weather" for i in range(2)), calls
    # `required`: some call to a declared tool.
    r = c.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER, CLOCK],
                                  tool_choice="required", temperature=0, max_tokens=n)
    out["required_name"] = r.choices[0].message.tool_calls[0].function.name
    assert out["required_name"] in ("get_weather", "get_time"), r
    # The tool's result goes back and the model answers in prose.
    history = QUESTION + [msg.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": out["call_id"],
                           "content": json.dumps({"temperature": 18, "sky": "clear"})}]
    r = c.chat.completions.create(model=model, messages=history, tools=[WEATHER],
                                  temperature=0, max_tokens=n)
    out["after_tool"] = r.choices[0].message.content
    out["after_tool_finish"] = r.choices[0].finish_reason
    return out


def structured(c, model, n, batch):
    out = {}
    prompt = [{"role": "user", "content": "Invent a pet and describe it as JSON."}]
    r = c.chat.completions.parse(model=model, messages=prompt, response_format=Pet,
                                 temperature=0, max_tokens=n)
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet), r
    out["parsed"] = pet.model_dump()
    # Any JSON object (the request asks for a short one: strings are unbounded here, and a
    # small model may repeat itself inside one until `max_tokens`).
    cat = [{"role": "user",
            "content": 'Give me a JSON object with the keys "name" and "age" of a cat.'}]
    r = c.chat.completions.create(model=model, messages=cat, temperature=0, max_tokens=n,
                                  response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict), r
    # A seeded batch at temperature 1: every answer validates (Pydantic checks the schema).
    # Its first three are the choices of one request (`n`; choice i samples with seed 0 + i,
    # each held to the schema), the rest requests of their own.
    r = c.chat.completions.parse(model=model, messages=prompt, response_format=Pet,
                                 temperature=1.0, seed=0, max_tokens=n, n=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2], r
    choices = r.choices
    for seed in range(3, batch):
        r = c.chat.completions.parse(model=model, messages=prompt, response_format=Pet,
                                     temperature=1.0, seed=seed, max_tokens=n)
        choices += r.choices
    assert all(ch.finish_reason == "stop" for ch in choices), choices
    out["batch"] = [Pet.model_validate_json(ch.message.content).model_dump() for ch in choices]
    # Positive control: the same prompt unconstrained does not give a valid Pet.
    r = c.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=n)
    try:
        Pet.model_validate_json(r.choices[0].message.content)
        out["unconstrained_valid"] = True
    except Exception:
        out["unconstrained_valid"] = False
    return out


def run_openai(a):
    c = client(a.base_url)
    return {"tools": tool_calls(c, a.model, a.max_tokens),
            "structured": structured(c, a.model, a.max_tokens, a.batch)}


def run_langchain(a):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The current weather in a city."""
        return "18 degrees"

    llm = ChatOpenAI(base_url=a.base_url, api_key="unused", model=a.model, temperature=0,
                     max_tokens=a.max_tokens, max_retries=0, timeout=300)
    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather", msg
    pet = llm.with_structured_output(Pet).invoke("Invent a pet.")
    assert isinstance(pet, Pet), pet
    return {"call": msg.tool_calls[0]["args"], "pet": pet.model_dump()}


def run_ollama(a):
    import ollama

    host = a.base_url.removesuffix("/v1")
    c = ollama.Client(host=host, timeout=300)
    answer = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12}},
              "required": ["answer"], "additionalProperties": False}
    weather = json.loads(json.dumps(WEATHER))
    weather["function"]["parameters"]["properties"]["city"]["maxLength"] = 12

    def ask(seed, stream=False):
        # Nearly uniform over what the grammar allows (temperature comes after top_k and
        # top_p, so both off): a random-weight model's first token
        # is otherwise all but fixed whatever the seed.
        opts = {"temperature": 100, "top_k": 0, "top_p": 1.0, "seed": seed,
                "num_predict": a.max_tokens}
        return c.chat(model=a.model, messages=QUESTION, tools=[weather], format=answer,
                      options=opts, stream=stream)

    def args_of(calls):
        assert len(calls) >= 1, calls
        call = calls[0]
        assert call.function.name == "get_weather", call
        args = dict(call.function.arguments)
        assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit"), args
        return args

    tried = []
    for seed in range(1, 17):
        r = ask(seed)
        if r.message.tool_calls:
            break
        tried.append(r.message.content)
    else:
        raise AssertionError(f"no seed called: {tried}")
    out = {"seed": seed, "args": args_of(r.message.tool_calls)}
    streamed, lines = [], 0
    for part in ask(seed, stream=True):
        streamed += part.message.tool_calls or []
        lines += 1
    out["stream_args"] = args_of(streamed)
    history = QUESTION + [r.message,
                          {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    after = c.chat(model=a.model, messages=history, tools=[weather],
                   options={"temperature": 0, "num_predict": 16})
    assert not after.message.tool_calls, after
    out["after_tool"] = after.message.content
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["openai", "langchain", "ollama"])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--batch", type=int, default=6)
    a = ap.parse_args()
    run = {"openai": run_openai, "langchain": run_langchain, "ollama": run_ollama}
    out = run[a.scenario](a)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
