"""make bench-agent's KV eviction part: restoring an evicted KV cache vs recomputing it.

Three daemons run side by side under a small budget (`guest.memory_max` set so that one
kept KV cache fits under the daemon's 75 % pressure mark and a second does not), with
`guest.kv_restore` = "restore", "recompute" (forced: for benchmarks only) and "measured"
(the guest's own choice). For each context length (512, 1024, 2048 tokens by default) a
prompt P of about that many tokens is asked, then a short unrelated prompt F, whose kept
cache takes the guest over the mark so that P's cache is sealed and written to the host;
then P again, timed: its cache comes back from the host file or is evaluated again. The
requests alternate between the daemons, round by round; reported are the medians of the
timed requests' time to first token (the restore or the prefill, then one token), which way
the measured daemon chose and the times it predicted for both. The timed requests stream
--kv-answer-tokens greedy tokens, which must be the same from all three daemons: a restored
cache must continue exactly as a recomputed one. The load average before and after is
printed too: on a shared machine the prefill times move with it.
"""
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, metrics, stop, stream, wait_http  # noqa: E402

MODES = ("restore", "recompute", "measured")
WORDS = ("river stone window garden silver market engine letter morning paper forest "
         "bridge candle harbor meadow pencil rocket thunder valley winter yellow circle "
         "dragon famous gentle hollow island jacket kitten lemon mirror needle orange").split()
FILLER = ". Name three colours of the rainbow."


def add_args(ap):
    ap.add_argument("--kv-lengths", default="512,1024,2048",
                    help="context lengths (tokens) of the restore vs recompute part")
    ap.add_argument("--kv-rounds", type=int, default=3)
    ap.add_argument("--kv-ctx", type=int, default=4096, help="the daemons' models.context")
    ap.add_argument("--kv-skip", action="store_true", help="skip the KV eviction part")
    ap.add_argument("--kv-answer-tokens", type=int, default=16,
                    help="greedy tokens of each timed answer, compared across the daemons")


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def complete(port, model, prompt):
    """One greedy token; (seconds, text, prompt tokens, cached tokens)."""
    t0 = time.perf_counter()
    v = post(port, "/v1/completions", {"model": model, "prompt": prompt, "temperature": 0,
                                       "max_tokens": 1})
    dt = time.perf_counter() - t0
    u = v["usage"]
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return dt, v["choices"][0]["text"], u["prompt_tokens"], cached


def timed(port, model, prompt, max_tokens):
    """A streamed greedy answer: (seconds to its first text, its text)."""
    ttft_ms, _, text = stream(port, "/v1/completions", {
        "model": model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens})
    return ttft_ms / 1e3, text


def text_of(words, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def prompts(port, model, lengths):
    """A prompt of about each length (the word count scaled by the tokens it gave)."""
    out = {}
    for n in lengths:
        words = n
        for _ in range(4):
            text = f"Story {n}: " + text_of(words, n)
            tokens = complete(port, model, text)[2]
            if abs(tokens - n) <= n // 50:
                break
            words = max(1, words * n // tokens)
        out[n] = (text, tokens)
    return out


def start(a, mode, memory_max=None):
    tmp, port = tempfile.mkdtemp(prefix=f"flexserve-kv-{mode}-"), free_port()
    config = os.path.join(tmp, "flexserve.toml")
    with open(config, "w") as f:
        f.write(f"[guest]\nkv_restore = \"{mode}\"\n"
                + (f"memory_max = \"{memory_max >> 20}M\"\n" if memory_max else "")
                + "[limits]\nmax_active = 1\n")
    model_dir, name = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    cmd = [a.flexserve, "serve", "--config", config,
           "--socket", os.path.join(tmp, "flexserve.sock"), "--tcp", f"127.0.0.1:{port}",
           "--models-dir", model_dir, "--model", name.removesuffix(".gguf"),
           "--ctx", str(a.kv_ctx), "--vcpus", "2", "--min-isolation", "none"]
    # The sealed files go to the daemon's own scratch directory, removed with it.
    env = dict(os.environ, CACHE_DIRECTORY=tmp)
    with open(os.path.join(tmp, "server.log"), "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(port, "/health", proc)
    return proc, tmp, port


def budget(a, model):
    """A budget where one kept cache stays under the 75 % mark and two go over it: from
    what a daemon without pressure uses with one and with two kept caches."""
    proc, tmp, port = start(a, "measured")
    try:
        complete(port, model, "Story one: " + text_of(8, 1))
        one = metrics(port)["flexserve_memory_used_bytes"]
        complete(port, model, "Story two: " + text_of(8, 2))
        two = metrics(port)["flexserve_memory_used_bytes"]
    finally:
        stop(proc, tmp)
    return int(two / 0.80) >> 21 << 21, one, two  # the VMM takes whole 2 MiB granules


def run(a):
    model = os.path.basename(a.model).removesuffix(".gguf")
    lengths = [int(n) for n in a.kv_lengths.split(",")]
    memory_max, one, two = budget(a, model)
    print(f"kv: {one / 2**20:.0f} MiB with one kept cache, {two / 2**20:.0f} with two; "
          f"budget {memory_max >> 20} MiB", file=sys.stderr)
    daemons = {m: start(a, m, memory_max) for m in MODES}
    times = {(m, n): [] for m in MODES for n in lengths}
    choice, answers, fillers = {}, {}, 0
    predicted = {n: [] for n in lengths}
    load_before = os.getloadavg()
    try:
        texts = prompts(daemons["measured"][2], model, lengths)
        for r in range(a.kv_rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for n in lengths:
                text = texts[n][0]
                for m in order:
                    port = daemons[m][2]
                    complete(port, model, text)
                    # A new filler each time (its start unlike any other prompt's): one
                    # that restored an evicted cache could push P's out of the guest.
                    fillers += 1
                    complete(port, model, text_of(4, -fillers).capitalize() + FILLER)
                    before = metrics(port)
                    dt, out = timed(port, model, text, a.kv_answer_tokens)
                    after = metrics(port)
                    if after["flexserve_kv_evictions_total"] == 0:
                        raise SystemExit(f"kv: the {m} daemon evicted nothing")
                    done = {k: after[f"flexserve_kv_{k}_total"]
                            - before[f"flexserve_kv_{k}_total"]
                            for k in ("restores", "recomputes", "restores_refused")}
                    forced = {"restore": "restores", "recompute": "recomputes"}.get(m)
                    if (done["restores_refused"] or done["restores"] + done["recomputes"] != 1
                            or (forced and done[forced] != 1)):
                        raise SystemExit(f"kv: {m} at {n}: not the way asked: {done}")
                    times[m, n].append(dt * 1e3)
                    answers.setdefault(n, out)
                    if out != answers[n]:
                        raise SystemExit(f"kv: {m} at {n} answered {out!r}, not "
                                         f"{answers[n]!r}")
                    if m == "measured":
                        choice[n] = "restore" if done["restores"] else "recompute"
                        predicted[n].append(
                            (after["flexserve_kv_predicted_restore_microseconds"] / 1e3,
                             after["flexserve_kv_predicted_recompute_microseconds"] / 1e3))
            print(f"kv round {r + 1}/{a.kv_rounds} done", file=sys.stderr)
    except BaseException:
        for m, (_, tmp, _) in daemons.items():
            with open(os.path.join(tmp, "server.log")) as f:
                print(f"--- the {m} daemon's log, last lines:\n"
                      + "".join(f.readlines()[-8:]), file=sys.stderr)
        raise
    finally:
        for proc, tmp, _ in daemons.values():
            stop(proc, tmp)
    load_after = os.getloadavg()
    out = {"kv_budget_mib": memory_max >> 20, "kv_loadavg_before": load_before[0],
           "kv_loadavg_after": load_after[0]}
    print(f"{'context':>7} {'tokens':>6} {'restore':>9} {'recompute':>10} {'ratio':>6}  "
          f"measured: chose, took, predicted restore / recompute (last round)")
    for n in lengths:
        rest = statistics.median(times["restore", n])
        reco = statistics.median(times["recompute", n])
        meas = statistics.median(times["measured", n])
        pr, pc = predicted[n][-1]
        out |= {f"kv_prompt_tokens_{n}": texts[n][1], f"kv_restore_ms_{n}": rest,
                f"kv_recompute_ms_{n}": reco, f"kv_restore_ratio_{n}": rest / reco,
                f"kv_measured_ms_{n}": meas, f"kv_choice_{n}": choice[n],
                f"kv_predicted_restore_ms_{n}": pr, f"kv_predicted_recompute_ms_{n}": pc}
        print(f"{n:7} {texts[n][1]:6} {rest:6.0f} ms {reco:7.0f} ms {rest / reco:6.3f}  "
              f"{choice[n]}, {meas:.0f} ms, {pr:.0f} / {pc:.0f} ms")
    print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after",
          file=sys.stderr)
    return out
