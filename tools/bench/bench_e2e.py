#!/usr/bin/env python3
"""make bench: FlexServe end to end, the protected guest vs the unprotected host engine vs
llama.cpp, on the same GGUF files in the same run.

For each model: a 128-token prompt, 128 generated tokens (end-of-generation ignored), 2
vCPUs/threads. Each engine runs in a fresh process so cold time-to-first-token (TTFT)
includes reading the model (and, for the guest, booting the VM and streaming the model into
it); warm TTFT is a new session on the already-loaded model. The private-memory floor is the
time a bare guest takes to first-touch as many private bytes as the model occupies. Rounds
alternate the engines and medians are reported. The guest-vs-unprotected speed ratios come
from `bench-e2e --mode paired`: guest and host engine in one process, their warm requests
interleaved, so each pair is a second apart and load that drifts on a shared machine cancels
out; the ratio is the median over every pair of every round, printed with its quartiles. (The
same ratio between the separate processes is printed too, as a cross-check.) Each round also
runs the host engine with the model on 4 KiB pages (`--base-pages`), as the guest's private
memory is, and interleaved pairs with the guest's pool on host-readable 2 MiB pages
(`--host-readable-pool`, no protection: a comparison only), so the page-size share of any gap
is measured from both sides, not guessed. The last line
printed is one JSON object:
{"bench":"e2e","rows":[{"engine":..., "quant":..., "cold_ttft_ms":..., ...}, ...], ...}
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

LLAMA_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, llama_cpp
model, n_prompt, n_gen, threads, reps = sys.argv[1], *map(int, sys.argv[2:6])
t_import = time.perf_counter()
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, flash_attn=False, verbose=False)
ids = [1000 + (i * 7919) % (llm.n_vocab() - 1000) for i in range(n_prompt)]
def once():
    llm.reset()
    a = time.perf_counter()
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    b = time.perf_counter()
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    c = time.perf_counter()
    return a, b, c
a, b, c = once()
cold = (b - t_import) * 1e3
warm, pp, tg = [], [], []
for _ in range(reps):
    a, b, c = once()
    warm.append((b - a) * 1e3)
    pp.append(n_prompt / (b - a))
    tg.append((n_gen - 1) / (c - b))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"mode": "llama.cpp", "cold_ttft_ms": cold, "load_ms": None,
                  "warm_ttft_ms": med(warm), "prefill_tps": med(pp), "decode_tps": med(tg)}))
"""


def quant_of(path):
    return os.path.basename(path).rsplit(".", 2)[-2]


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--python", default=sys.executable, help="python with llama_cpp")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=4, help="interleaved pairs per round")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()

    common = ["--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens),
              "--vcpus", str(a.vcpus)]
    results = {}
    floors = {}
    for r in range(a.rounds):
        for m in a.models:
            for mode in ("guest", "unprotected"):
                row = run_json([a.flexserve, "bench-e2e", "-m", m, "--mode", mode] + common)
                results.setdefault((m, mode), []).append(row)
            # The host engine on 4 KiB pages, as the guest's private memory is: it separates
            # the page-size effect from the cost of the VM.
            row = run_json([a.flexserve, "bench-e2e", "-m", m, "--mode", "unprotected",
                            "--base-pages"] + common)
            results.setdefault((m, "unprotected-4k"), []).append(row)
            row = run_json([a.python, "-c", LLAMA_SNIPPET, m, str(a.prompt_tokens),
                            str(a.gen_tokens), str(a.vcpus), "3"])
            results.setdefault((m, "llama.cpp"), []).append(row)
            floors.setdefault(m, []).append(
                run_json([a.flexserve, "bench-e2e", "-m", m, "--mode", "floor"])["touch_ms"])
            row = run_json([a.flexserve, "bench-e2e", "-m", m, "--mode", "paired",
                            "--pairs", str(a.pairs)] + common)
            results.setdefault((m, "paired"), []).append(row)
            print(f"round {r + 1}/{a.rounds} {quant_of(m)} done", file=sys.stderr)
    # The same pairs with the guest's pool on host-readable 2 MiB pages: what private memory's
    # 4 KiB pages cost the guest. After the rounds, because a run that frees hundreds of MiB
    # of huge pages leaves the next process's huge-page faults cheap (no compaction), which
    # sped up the host engine's cold read 2x when this ran inside the rounds.
    for m in a.models:
        for _ in range(a.rounds):
            row = run_json([a.flexserve, "bench-e2e", "-m", m, "--mode", "paired",
                            "--host-readable-pool", "--pairs", str(a.pairs)] + common)
            results.setdefault((m, "paired-huge"), []).append(row)
        print(f"host-readable pool pairs {quant_of(m)} done", file=sys.stderr)

    med = lambda rows, k: statistics.median(x[k] for x in rows) if rows[0].get(k) is not None else None
    out_rows = []
    summary = []
    hdr = f"{'quant':6} {'engine':12} {'cold TTFT':>10} {'(boot':>7} {'load':>6} {'prefill)':>9} {'warm TTFT':>10} {'prefill t/s':>12} {'decode t/s':>11}"
    print(hdr)
    for m in a.models:
        q = quant_of(m)
        floor = statistics.median(floors[m])
        by = {}
        for e in ("guest", "unprotected", "llama.cpp"):
            rows = results[(m, e)]
            row = {"engine": e, "quant": q, "vcpus": a.vcpus, "prompt_tokens": a.prompt_tokens,
                   "gen_tokens": a.gen_tokens}
            for k in ("cold_ttft_ms", "warm_ttft_ms", "prefill_tps", "decode_tps", "boot_ms",
                      "load_ms", "prefill_first_ms"):
                v = med(rows, k) if k in rows[0] else None
                if v is not None:
                    row[k] = round(v, 1)
            if e == "guest":
                row["private_floor_ms"] = round(floor, 1)
                # What the guest ran with: its isolation level and its kernels beside the host's.
                for k in ("isolation", "guest_kernels", "host_kernels"):
                    if k in rows[0]:
                        row[k] = rows[0][k]
            by[e] = row
            out_rows.append(row)
            def f(k, w):
                return f"{row[k]:{w}.1f}" if k in row else " " * (w - 1) + "-"
            print(f"{q:6} {e:12} {f('cold_ttft_ms', 10)} {f('boot_ms', 7)} {f('load_ms', 6)} "
                  f"{f('prefill_first_ms', 9)} {f('warm_ttft_ms', 10)} {f('prefill_tps', 12)} "
                  f"{f('decode_tps', 11)}")
        pairs = list(zip(results[(m, "guest")], results[(m, "unprotected")], floors[m],
                         results[(m, "unprotected-4k")]))
        ratios = {
            "decode": [g["decode_tps"] / u["decode_tps"] for g, u, _, _ in pairs],
            "prefill": [g["prefill_tps"] / u["prefill_tps"] for g, u, _, _ in pairs],
            "cold_ttft": [g["cold_ttft_ms"] / (u["cold_ttft_ms"] + f) for g, u, f, _ in pairs],
            "decode_vs_4k": [g["decode_tps"] / b["decode_tps"] for g, _, _, b in pairs],
            "host_4k_vs_huge_decode": [b["decode_tps"] / u["decode_tps"] for _, u, _, b in pairs],
        }
        paired = {k: [x for row in results[(m, "paired")] for x in row[k + "_ratios"]]
                  for k in ("decode", "prefill")}
        huge_decode = statistics.median(
            x for row in results[(m, "paired-huge")] for x in row["decode_ratios"])
        # statistics.quantiles needs two points; one pair (--rounds 1 --pairs 1) is its own.
        quartiles = {k: statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
                     for k, v in paired.items()}
        s = {"quant": q, "floor_ms": round(floor, 1),
             "isolation": results[(m, "paired")][0].get("isolation"),
             "guest_vs_unprotected_decode": round(statistics.median(paired["decode"]), 3),
             "guest_vs_unprotected_prefill": round(statistics.median(paired["prefill"]), 3),
             "paired_requests": len(paired["decode"]),
             "paired_quartiles": {k: [round(v[0], 3), round(v[2], 3)]
                                  for k, v in quartiles.items()},
             "guest_vs_unprotected_decode_separate_processes":
                 round(statistics.median(ratios["decode"]), 3),
             "guest_vs_unprotected_prefill_separate_processes":
                 round(statistics.median(ratios["prefill"]), 3),
             "guest_cold_ttft_vs_unprotected_plus_floor":
                 round(statistics.median(ratios["cold_ttft"]), 3),
             "guest_vs_unprotected_4k_pages_decode":
                 round(statistics.median(ratios["decode_vs_4k"]), 3),
             "unprotected_4k_vs_huge_pages_decode":
                 round(statistics.median(ratios["host_4k_vs_huge_decode"]), 3),
             "guest_host_readable_huge_pages_vs_unprotected_decode": round(huge_decode, 3),
             "guest_private_vs_host_readable_huge_pages_decode":
                 round(statistics.median(paired["decode"]) / huge_decode, 3),
             "spread": {k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()}}
        summary.append(s)
        spread = lambda k: f"[{min(ratios[k]):.2f}-{max(ratios[k]):.2f}]"
        iqr = lambda k: f"[{quartiles[k][0]:.2f}-{quartiles[k][2]:.2f}]"
        print(f"{q:6} guest isolation {s['isolation']}; private-memory floor {floor:.1f} ms; "
              f"guest/unprotected over "
              f"{len(paired['decode'])} interleaved pairs [quartiles]: decode "
              f"{s['guest_vs_unprotected_decode']:.3f}x {iqr('decode')} (target >= 0.97), "
              f"prefill {s['guest_vs_unprotected_prefill']:.3f}x {iqr('prefill')} (>= 0.97); "
              f"guest cold TTFT / (unprotected cold TTFT + floor) "
              f"{s['guest_cold_ttft_vs_unprotected_plus_floor']:.2f} {spread('cold_ttft')} (<= 1.10)")
        print(f"{q:6} the same between separate processes [min-max]: decode "
              f"{s['guest_vs_unprotected_decode_separate_processes']:.2f}x {spread('decode')}, "
              f"prefill {s['guest_vs_unprotected_prefill_separate_processes']:.2f}x "
              f"{spread('prefill')}")
        print(f"{q:6} pages: guest decode / host engine on 4 KiB pages "
              f"{s['guest_vs_unprotected_4k_pages_decode']:.2f}x {spread('decode_vs_4k')}; "
              f"host engine 4 KiB / huge pages {s['unprotected_4k_vs_huge_pages_decode']:.2f}x "
              f"{spread('host_4k_vs_huge_decode')}")
        print(f"{q:6} pages, interleaved pairs: guest on a host-readable 2 MiB pool / unprotected "
              f"decode {s['guest_host_readable_huge_pages_vs_unprotected_decode']:.3f}x, so "
              f"private 4 KiB pages cost the guest "
              f"{s['guest_private_vs_host_readable_huge_pages_decode']:.3f}x")
    print(json.dumps({"bench": "e2e", "rows": out_rows, "summary": summary}))


if __name__ == "__main__":
    main()
