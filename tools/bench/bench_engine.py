#!/usr/bin/env python3
"""make bench-engine: FlexServe's host engine vs llama.cpp on the same GGUF files, same run.

With `--baseline EXE`, another FlexServe build runs in the same rounds (row engine
`baseline`), for before/after comparisons. Both engines get the same token ids (128 and 512
by default, `--prompt-tokens`) as one prefill batch, then 128 greedy single-token decode steps,
on 2 threads. Engines alternate (A B A B) for `--rounds` rounds and the median is reported
(`--stat max`: the best round, steadier on a machine shared with other work). The last line
printed is one JSON object (rows carry the kernel set, `isa`, and decode's share of the
memory-bandwidth roofline, `roofline_pct`: bytes a decode step reads × tokens/s over the read
bandwidth `flexserve bench-engine` measures in the same round):
{"bench":"engine","rows":[{"engine":..., "quant":..., "prefill_tps":..., "decode_tps":...}, ...],
 "batch_rows":[...]}

With `--batch-sizes 1 4 8`, batched decode too (FlexServe only: `flexserve bench-engine --batch B`):
B sessions, each prefilled alone with a prompt of the first `--prompt-tokens` length, then
`--gen-tokens` steps of all B in one forward pass each; the row gives every session's tokens
per second together and the ratio to the first size's (B = 1). The sizes alternate within each
round. `--batch-only` skips the llama.cpp comparison (and so needs neither llama_cpp nor numpy).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time



def quant_of(path):
    return os.path.basename(path).rsplit(".", 2)[-2]


def prompt_ids(n, n_vocab):
    return [1000 + (i * 7919) % (n_vocab - 1000) for i in range(n)]


def bench_llama(llm, n_prompt, n_gen):
    import numpy as np
    ids = prompt_ids(n_prompt, llm.n_vocab())
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    for _ in range(n_gen):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    t2 = time.perf_counter()
    return n_prompt / (t1 - t0), n_gen / (t2 - t1)


def bench_flexserve(exe, model, n_prompt, n_gen, threads, isa):
    """(prefill tok/s, decode tok/s, the full JSON row `flexserve bench-engine` printed)."""
    out = subprocess.run(
        [exe, "bench-engine", "-m", model, "--prompt-tokens", str(n_prompt),
         "--gen-tokens", str(n_gen), "--threads", str(threads), "--reps", "2", "--isa", isa],
        check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["prefill_tps"], row["decode_tps"], row


def roofline_pct(decode_tps, shape, n_prompt, n_gen, kv_elem_bytes):
    """Decode's share of the read-bandwidth bound: bytes a step reads (weights, plus the KV
    cache half-way through decode at `kv_elem_bytes` a value) × tokens/s over the bandwidth
    `flexserve bench-engine` measured in the same round."""
    kv = shape["kv_bytes_per_position"] * kv_elem_bytes // 4 * (n_prompt + n_gen // 2)
    step = shape["weight_bytes_per_token"] + kv
    return 100.0 * decode_tps * step / (shape["read_gbps"] * 1e9)


def bench_batch(exe, model, batch, n_prompt, n_gen, threads, isa):
    out = subprocess.run(
        [exe, "bench-engine", "-m", model, "--batch", str(batch), "--prompt-tokens", str(n_prompt),
         "--gen-tokens", str(n_gen), "--threads", str(threads), "--reps", "2", "--isa", isa],
        check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["decode_tps"], row.get("isa", "?")


def batch_rows(a, ours, stat):
    """The batched-decode rows: sizes alternating within each round, the median (or max)."""
    n = a.prompt_tokens[0]
    tps = {(m, e, b): [] for m in a.models for e, _, _ in ours for b in a.batch_sizes}
    isa = "?"
    for r in range(a.rounds):
        for m in a.models:
            for b in a.batch_sizes:
                for e, exe, want in ours:
                    t, isa = bench_batch(exe, m, b, n, a.gen_tokens, a.threads, want)
                    tps[(m, e, b)].append(t)
            print(f"round {r + 1}/{a.rounds} {quant_of(m)} batch done", file=sys.stderr)
    rows = []
    print(f"batched decode, isa {isa}, {a.stat} of {a.rounds} rounds, {n}-token prompts")
    print(f"{'quant':6} {'engine':10} {'sessions':>8} {'decode tok/s':>13} {'vs first':>9}")
    for m in a.models:
        for e, _, _ in ours:
            base = stat(tps[(m, e, a.batch_sizes[0])])
            for b in a.batch_sizes:
                t = stat(tps[(m, e, b)])
                row = {"engine": e, "quant": quant_of(m), "isa": isa, "threads": a.threads,
                       "batch": b, "prompt_tokens": n, "gen_tokens": a.gen_tokens,
                       "decode_tps": round(t, 1), "ratio": round(t / base, 3)}
                rows.append(row)
                print(f"{row['quant']:6} {e:10} {b:8} {t:13.1f} {t / base:8.2f}x")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--baseline", help="another flexserve binary (e.g. an older commit's), "
                    "measured in the same rounds as engine `baseline`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--isa", nargs="+", default=["best"],
                    help="FlexServe kernel sets to measure (best, avx2, avx512-vnni, scalar, "
                    "neon); each beyond `best` is a row `flexserve/<isa>`")
    ap.add_argument("--stat", choices=["median", "max"], default="median",
                    help="how rounds combine into the reported figure")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                    help="batched decode rows for these session counts (the first is the "
                    "ratios' base; give 1 first)")
    ap.add_argument("--batch-only", action="store_true",
                    help="only the batched-decode rows, without llama.cpp")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    stat = max if a.stat == "max" else statistics.median
    ours = [("flexserve" if i == "best" else f"flexserve/{i}", a.flexserve, i) for i in a.isa]
    ours += [("baseline", a.baseline, "best")] if a.baseline else []
    if a.batch_only:
        if not a.batch_sizes:
            ap.error("--batch-only needs --batch-sizes")
        print(json.dumps({"bench": "engine", "rows": [],
                          "batch_rows": batch_rows(a, ours, stat)}))
        return
    import llama_cpp

    llms = {}
    for m in a.models:
        n_ctx = max(a.prompt_tokens) + a.gen_tokens + 8
        llms[m] = llama_cpp.Llama(model_path=m, n_ctx=n_ctx, n_batch=n_ctx, n_threads=a.threads,
                                  n_threads_batch=a.threads, flash_attn=False, verbose=False)
        bench_llama(llms[m], a.prompt_tokens[0], 8)  # warm-up
    engines = ["llama.cpp"] + [e for e, _, _ in ours]
    cases = [(m, n) for m in a.models for n in a.prompt_tokens]
    results = {(c, e): ([], []) for c in cases for e in engines}
    isas, shapes = {}, {}
    for r in range(a.rounds):
        for c in cases:
            m, n = c
            for e, exe, want in ours:
                pp, tg, got = bench_flexserve(exe, m, n, a.gen_tokens, a.threads, want)
                isas[e] = got.get("isa", "?")
                if "read_gbps" in got:
                    shapes[c] = got
                results[(c, e)][0].append(pp)
                results[(c, e)][1].append(tg)
            pp, tg = bench_llama(llms[m], n, a.gen_tokens)
            results[(c, "llama.cpp")][0].append(pp)
            results[(c, "llama.cpp")][1].append(tg)
            print(f"round {r + 1}/{a.rounds} {quant_of(m)} {n} done", file=sys.stderr)

    rows = []
    print(f"kernels {', '.join(f'{e}: {i}' for e, i in isas.items())}; "
          f"{a.stat} of {a.rounds} rounds")
    print(f"{'quant':6} {'prompt':>6} {'engine':18} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'roofline':>8}")
    for c in cases:
        m, n = c
        base = None
        for e in engines:
            pp = stat(results[(c, e)][0])
            tg = stat(results[(c, e)][1])
            row = {"engine": e, "quant": quant_of(m), "threads": a.threads,
                   "prompt_tokens": n, "gen_tokens": a.gen_tokens,
                   "prefill_tps": round(pp, 1), "decode_tps": round(tg, 1)}
            if e == "llama.cpp":
                base = row
            else:
                row["isa"] = isas[e]
                row["prefill_ratio"] = round(pp / base["prefill_tps"], 3)
                row["decode_ratio"] = round(tg / base["decode_tps"], 3)
            if c in shapes:
                # llama.cpp keeps its KV cache in f16, FlexServe in f32.
                row["roofline_pct"] = round(roofline_pct(
                    tg, shapes[c], n, a.gen_tokens, 2 if e == "llama.cpp" else 4), 1)
                row["read_gbps"] = shapes[c]["read_gbps"]
            rows.append(row)
            ratio = f"  ({row['prefill_ratio']:.2f}x / {row['decode_ratio']:.2f}x)" if e != "llama.cpp" else ""
            roof = f"{row['roofline_pct']:7.1f}%" if "roofline_pct" in row else f"{'?':>8}"
            print(f"{row['quant']:6} {n:6} {e:18} {pp:14.1f} {tg:13.1f} {roof}{ratio}")
    brows = batch_rows(a, ours, stat) if a.batch_sizes else []
    print(json.dumps({"bench": "engine", "rows": rows, "batch_rows": brows}))


if __name__ == "__main__":
    main()
