"""The agent-workflow half of make bench-agent (issue 21 point 5): the paper's metric.

An agent asks SmolLM2 (sealed), then Qwen2.5-Coder-1.5B (sealed) with SmolLM2's answer in
its prompt, then SmolLM2 again with the coder's answer. The paper's metric is the first
model's whole answer plus the second model's time to first token (TTFT): `agent_ms`. The way
back (the coder's whole answer plus SmolLM2's TTFT) is `agent_return_ms`.

Two daemons alternate, a fresh one per run, each with SmolLM2 resident at start-up:
- flexserve: one guest, `guest.memory_max` with room for both models, the workflow in
  `[[workflows]]`, so the daemon prefetches the coder once SmolLM2's answer is done and
  keeps both resident;
- strawman: one model at a time, a reboot per switch, no prefetch: `models.keep_alive = "0"`
  unloads each model as its answer ends and stops the guest with none left, so the next
  model boots a guest and loads from scratch.

Between two calls the agent does its own work (`--agent-think-ms`, e.g. running the code it
was given) before it sends the next request; runs with no such pause are reported too
(`agent_no_think_ms`): there the next request arrives while the prefetch is still loading
and waits for it (the guest's vCPUs load or generate, not both at once). Greedy: the texts of
both daemons must be equal, step for step.
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, metrics, spawn, stop, stream_chat, wait_http  # noqa: E402

FIRST = "SmolLM2-135M-Instruct.Q8_0"
CODER = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M"
TASK = "Describe in two sentences a small Python function that checks whether a word is a palindrome."


def start(a, port, tmp, mode):
    config = os.path.join(tmp, "flexserve.toml")
    with open(config, "w") as f:
        f.write(f"[guest]\nmemory_max = \"{a.agent_memory_max}\"\n")
        if mode == "flexserve":
            f.write(f"[models]\nkeep_alive = \"10m\"\n"
                    f"[[workflows]]\nmodels = [\"{FIRST}\", \"{CODER}\", \"{FIRST}\"]\n")
        else:
            f.write("[models]\nkeep_alive = \"0\"\n")
    cmd = [a.flexserve, "serve", "--config", config,
           "--socket", os.path.join(tmp, "flexserve.sock"), "--tcp", f"127.0.0.1:{port}",
           "--models-dir", a.agent_models, "--model", FIRST, "--ctx", "1024",
           "--vcpus", "2", "--min-isolation", "none"]
    proc = spawn(cmd, tmp)
    wait_http(port, "/health", proc, timeout=300)
    return proc


def ask(port, model, prompt, max_tokens):
    """One streamed greedy chat request: (TTFT ms, whole answer ms, text)."""
    return stream_chat(port, {"model": model, "messages": [{"role": "user", "content": prompt}],
                              "temperature": 0, "max_tokens": max_tokens})


def workflow(a, port, think_s):
    _, first_ms, first = ask(port, FIRST, TASK, a.agent_first_tokens)
    time.sleep(think_s)
    coder_ttft, coder_ms, code = ask(
        port, CODER, f"Write the Python function this describes, code only:\n{first}",
        a.agent_coder_tokens)
    time.sleep(think_s)
    back_ttft, _, back = ask(port, FIRST, f"Explain this code in one sentence:\n{code}",
                             a.agent_first_tokens)
    m = metrics(port, "flexserve_guest_")
    return {"agent_ms": first_ms + coder_ttft, "return_ms": coder_ms + back_ttft,
            "first_ms": first_ms, "coder_ttft_ms": coder_ttft, "coder_ms": coder_ms,
            "back_ttft_ms": back_ttft, "texts": [first, code, back],
            "guest_starts": m.get("flexserve_guest_starts_total"),
            "loads": m.get("flexserve_guest_model_loads_total"),
            "prefetches": m.get("flexserve_guest_model_prefetches_total")}


def run(a):
    """Runs the workflow on both daemons, alternating; returns the JSON fields."""
    runs = {}
    for think_ms in sorted({0, a.agent_think_ms}):
        for r in range(a.agent_rounds):
            for mode in ("flexserve", "strawman"):
                tmp, port = tempfile.mkdtemp(prefix="flexserve-agentflow-"), free_port()
                proc = start(a, port, tmp, mode)
                try:
                    row = workflow(a, port, think_ms / 1e3)
                finally:
                    stop(proc, tmp)
                runs.setdefault((think_ms, mode), []).append(row)
                print(f"agent workflow think={think_ms} ms round {r + 1}/{a.agent_rounds} "
                      f"{mode}: {row['agent_ms']:.0f} ms (first answer {row['first_ms']:.0f} + "
                      f"coder TTFT {row['coder_ttft_ms']:.0f}), back {row['return_ms']:.0f} ms, "
                      f"{row['guest_starts']:.0f} guest starts, {row['loads']:.0f} loads, "
                      f"{row['prefetches']:.0f} prefetches", file=sys.stderr)
    ref = runs[(0, "flexserve")][0]["texts"]
    for key, rows in runs.items():
        for row in rows:
            if row["texts"] != ref:
                raise SystemExit(f"{key}: the workflow's answers differ:\n{row['texts']!r}\n"
                                 f"{ref!r}")
    med = lambda think, mode, k: statistics.median(x[k] for x in runs[(think, mode)])
    t = a.agent_think_ms
    out = {"agent_ms": med(t, "flexserve", "agent_ms"),
           "agent_strawman_ms": med(t, "strawman", "agent_ms"),
           "agent_return_ms": med(t, "flexserve", "return_ms"),
           "agent_return_strawman_ms": med(t, "strawman", "return_ms"),
           "agent_no_think_ms": med(0, "flexserve", "agent_ms"),
           "agent_no_think_strawman_ms": med(0, "strawman", "agent_ms"),
           "agent_think_ms": t,
           "agent_prefetches": runs[(t, "flexserve")][0]["prefetches"],
           "agent_guest_starts": runs[(t, "flexserve")][0]["guest_starts"],
           "agent_strawman_guest_starts": runs[(t, "strawman")][0]["guest_starts"]}
    out["agent_ratio"] = out["agent_strawman_ms"] / out["agent_ms"]
    print(f"{'agent workflow':<34} {'flexserve':>10} {'strawman':>10} {'ratio':>6}")
    for label, k in ((f"first answer + coder TTFT, {t} ms", "agent"),
                     ("coder answer + SmolLM2 TTFT", "agent_return"),
                     ("first answer + coder TTFT, 0 ms", "agent_no_think")):
        f, s = out[f"{k}_ms"], out[f"{k}_strawman_ms"]
        print(f"{label:<34} {f:8.0f} ms {s:8.0f} ms {s / f:5.2f}x")
    print(f"strawman / flexserve on the paper's metric: {out['agent_ratio']:.2f}x "
          f"(target >= 3x)")
    return out


def add_args(ap):
    ap.add_argument("--agent-models", help="a directory with the two sealed models (.fsm); "
                    "without it the agent workflow is skipped")
    ap.add_argument("--agent-rounds", type=int, default=2)
    ap.add_argument("--agent-think-ms", type=int, default=2000,
                    help="the agent's own work between two calls")
    ap.add_argument("--agent-first-tokens", type=int, default=48)
    ap.add_argument("--agent-coder-tokens", type=int, default=48)
    ap.add_argument("--agent-memory-max", default="3G")
