#!/usr/bin/env python3
"""make bench-agent: what KV reuse across requests and keep_alive give a chat client.

Five-turn chat: one client, the official `openai` SDK, greedy, a system prompt and five
user turns, each request carrying the whole conversation so far (as chat front-ends do).
Two daemons alternate for --rounds rounds, a fresh one per round: `guest.kv_reuse = true`
(each turn goes on from the KV cache the previous turn left in the guest) and `false`
(every turn evaluates the whole conversation). Reported: each turn's time to first token
(request sent -> first streamed text), the prompt tokens the guest took from its cache, and
turn 5's TTFT with reuse over without (the issue's target: <= 0.3x). The answers of both
daemons must be equal, turn for turn (greedy: reuse must not change a token).

Idle: after the chat the daemon with `keep_alive = "1s"` is left alone; reported are the
private memory it holds (`flexserve_memory_held_bytes`) and its CPU over --idle-seconds
(from /proc: daemon process and its threads, vCPUs included), against the floor (0: an
idle-stopped guest holds nothing).

Agent workflow (bench_agent_workflow.py, with --agent-models): SmolLM2 -> Qwen2.5-Coder-1.5B
-> SmolLM2, sealed, FlexServe (residency + prefetch) vs a strawman (a reboot per switch):
`agent_ms` and `agent_strawman_ms`.

KV eviction (bench_kv_restore.py): an evicted KV cache restored from its sealed host file
vs evaluated again, at 512, 1024 and 2048 tokens of context (`kv_restore_ms_N`,
`kv_recompute_ms_N`, their ratio, and the guest's own choice); `--kv-only` runs it alone.

The last line printed is one JSON object: {"bench":"agent", ...}.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, spawn, stop, wait_http  # noqa: E402

import bench_agent_workflow  # noqa: E402
import bench_kv_restore  # noqa: E402
import openai  # noqa: E402

SYSTEM = ("You are a patient tutor. Answer in two or three sentences, and end every answer "
          "with a short question that checks the student understood.")
TURNS = [
    "What is photosynthesis?",
    "Why do plants need light for it?",
    "What happens to the oxygen it makes?",
    "Could a plant survive under a lamp instead of the sun?",
    "Summarise what we talked about in one sentence.",
]


def start(a, port, tmp, kv_reuse):
    config = os.path.join(tmp, "flexserve.toml")
    with open(config, "w") as f:
        f.write(f"[guest]\nkv_reuse = {'true' if kv_reuse else 'false'}\n"
                f"[models]\nkeep_alive = \"{a.keep_alive}\"\n")
    model_dir, name = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    cmd = [a.flexserve, "serve", "--config", config,
           "--socket", os.path.join(tmp, "flexserve.sock"), "--tcp", f"127.0.0.1:{port}",
           "--models-dir", model_dir, "--model", name.removesuffix(".gguf"), "--ctx", "2048",
           "--vcpus", "2", "--min-isolation", "none"]
    proc = spawn(cmd, tmp)
    wait_http(port, "/health", proc)
    return proc


def chat(port, model, max_tokens):
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    messages = [{"role": "system", "content": SYSTEM}]
    turns = []
    for user in TURNS:
        messages.append({"role": "user", "content": user})
        t0 = time.perf_counter()
        ttft, text, usage = None, "", None
        for chunk in c.chat.completions.create(
                model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta.content and ttft is None:
                    ttft = time.perf_counter() - t0
                text += ch.delta.content or ""
        details = usage.prompt_tokens_details
        turns.append({"ttft_ms": (ttft or 0) * 1e3, "prompt_tokens": usage.prompt_tokens,
                      "cached_tokens": details.cached_tokens if details else 0, "text": text})
        messages.append({"role": "assistant", "content": text})
    return turns


def metric(port, name):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def cpu_seconds(pid):
    """User + system CPU of a process and all its threads, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(a, port, proc):
    deadline = time.time() + 30
    while metric(port, "flexserve_guest_idle") != 1 and time.time() < deadline:
        time.sleep(0.2)
    held = metric(port, "flexserve_memory_held_bytes") or 0
    c0, t0 = cpu_seconds(proc.pid), time.time()
    time.sleep(a.idle_seconds)
    cpu = (cpu_seconds(proc.pid) - c0) / (time.time() - t0) * 100
    return {"idle_private_mib": held / 2**20, "idle_floor_mib": 0.0, "idle_cpu_pct": cpu,
            "idle_stopped": metric(port, "flexserve_guest_idle") == 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--model", required=True, help="a chat GGUF of the models directory")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--keep-alive", default="1s")
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--kv-only", action="store_true",
                    help="run only the KV restore vs recompute part")
    bench_agent_workflow.add_args(ap)
    bench_kv_restore.add_args(ap)
    a = ap.parse_args()
    if a.kv_only:
        kv = bench_kv_restore.run(a)
        print(json.dumps({"bench": "agent", "model": os.path.basename(a.model)
                          .removesuffix(".gguf"), **kv}))
        return
    kv = {}
    if not a.kv_skip:
        # The chat and workflow numbers stand on their own if this part fails.
        try:
            kv = bench_kv_restore.run(a)
        except (Exception, SystemExit) as e:
            print(f"kv: restore vs recompute failed: {e}", file=sys.stderr)
            kv = {"kv_error": str(e)}
    workflow = bench_agent_workflow.run(a) if a.agent_models else {}
    model = os.path.basename(a.model).removesuffix(".gguf")
    runs = {True: [], False: []}
    idle_row = None
    for r in range(a.rounds):
        for reuse in (True, False):
            tmp, port = tempfile.mkdtemp(prefix="flexserve-agent-"), free_port()
            proc = start(a, port, tmp, reuse)
            try:
                runs[reuse].append(chat(port, model, a.max_tokens))
                if reuse and idle_row is None:
                    idle_row = idle(a, port, proc)
            finally:
                stop(proc, tmp)
            print(f"round {r + 1}/{a.rounds} kv_reuse={reuse} done", file=sys.stderr)
    for with_reuse, without in zip(runs[True], runs[False]):
        for t, (x, y) in enumerate(zip(with_reuse, without)):
            if x["text"] != y["text"]:
                raise SystemExit(f"turn {t + 1}: KV reuse changed the answer:\n{x['text']!r}\n"
                                 f"{y['text']!r}")
    rows = []
    print(f"{'turn':>4} {'prompt':>6} {'cached':>6} {'TTFT reuse':>11} {'TTFT no reuse':>14}")
    for t in range(len(TURNS)):
        med = lambda reuse, k: statistics.median(run[t][k] for run in runs[reuse])
        row = {"turn": t + 1, "prompt_tokens": runs[True][0][t]["prompt_tokens"],
               "cached_tokens": runs[True][0][t]["cached_tokens"],
               "ttft_ms": med(True, "ttft_ms"), "ttft_no_reuse_ms": med(False, "ttft_ms")}
        rows.append(row)
        print(f"{row['turn']:4} {row['prompt_tokens']:6} {row['cached_tokens']:6} "
              f"{row['ttft_ms']:9.0f} ms {row['ttft_no_reuse_ms']:11.0f} ms")
    last = rows[-1]
    ratio = last["ttft_ms"] / last["ttft_no_reuse_ms"]
    print(f"turn 5 TTFT with KV reuse: {ratio:.2f}x of without (target <= 0.3x)")
    print(f"idle after keep_alive {a.keep_alive}: {idle_row['idle_private_mib']:.0f} MiB held, "
          f"{idle_row['idle_cpu_pct']:.2f}% of a core over {a.idle_seconds:.0f} s")
    print(json.dumps({"bench": "agent", "model": model, "turns": rows,
                      "turn5_ttft_ms": last["ttft_ms"],
                      "turn5_ttft_no_reuse_ms": last["ttft_no_reuse_ms"],
                      "turn5_ratio": ratio, **idle_row, **workflow, **kv}))


if __name__ == "__main__":
    main()
