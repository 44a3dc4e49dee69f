"""make bench-prefix (issue 21 point 2): cold TTFT of a sealed model with the layer-prefix
cache vs without.

Two daemons run side by side, the same but for `[guest.layer_prefix] enabled`; each holds a
small sealed anchor model (so its guest stays up when the target is unloaded, and with it a
kept prefix). Each target request asks `keep_alive: 0`: once it ends the daemon unloads the
target (keeping its first K blocks, when the cache is on), so every request after the warm-up
is a cold start, loaded while its prefill runs (the pipelined load): through the kept blocks
at once, then the streamed rest. The warm-up loads each target twice (a whole-load time and a
prefill on the resident model: what K is chosen from). Then the daemons alternate, a cold
start each per round; the medians are reported with K and the per-block times it came from.
Greedy: both daemons must answer alike. The last line is one JSON object.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, metrics, spawn, stop, stream_chat, wait_http  # noqa: E402

ANCHOR = "SmolLM2-135M-Instruct.Q4_0"
PROMPT = "Name three colours and say which one you like best."


def start(a, enabled):
    tmp, port = tempfile.mkdtemp(prefix="flexserve-prefix-"), free_port()
    config = os.path.join(tmp, "flexserve.toml")
    with open(config, "w") as f:
        f.write(f"[guest]\nmemory_max = \"{a.memory_max}\"\n"
                f"[guest.layer_prefix]\nenabled = {str(enabled).lower()}\n"
                "[models]\nkeep_alive = \"10m\"\n")
    cmd = [a.flexserve, "serve", "--config", config,
           "--socket", os.path.join(tmp, "flexserve.sock"), "--tcp", f"127.0.0.1:{port}",
           "--models-dir", a.models, "--model", ANCHOR, "--ctx", "1024",
           "--vcpus", str(a.vcpus), "--min-isolation", "none"]
    proc = spawn(cmd, tmp)
    wait_http(port, "/health", proc, timeout=300)
    return proc, tmp, port


def cold(port, model, a, keep="0"):
    """One request that leaves `model` unloaded (keep_alive 0) once the daemon is idle."""
    ttft, _, text = stream_chat(port, {
        "model": model, "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "max_tokens": a.tokens, "keep_alive": keep})
    # The idle sweep (once a second while nothing runs) unloads it.
    time.sleep(a.settle_s)
    return ttft, text


def bench_model(a, model, daemons):
    for port in daemons.values():
        # Its first (pipelined) load: the load time, an upper bound.
        cold(port, model, a, keep="10m")
        # On the resident model: its prefill; then unloaded, keeping K blocks.
        cold(port, model, a)
    rows = {mode: [] for mode in daemons}
    texts = set()
    for r in range(a.rounds):
        for mode, port in daemons.items():
            ttft, text = cold(port, model, a)
            rows[mode].append(ttft)
            texts.add(text)
            print(f"{model} round {r + 1}/{a.rounds} prefix {mode}: cold TTFT {ttft:.0f} ms",
                  file=sys.stderr)
    if len(texts) != 1:
        raise SystemExit(f"{model}: the answers differ: {texts!r}")
    on = metrics(daemons["on"])
    off = metrics(daemons["off"])
    with_prefix, without = statistics.median(rows["on"]), statistics.median(rows["off"])
    return {"ttft_prefix_ms": with_prefix, "ttft_no_prefix_ms": without,
            "ratio": with_prefix / without,
            "k_blocks": on.get("flexserve_layer_prefix_blocks"),
            "block_compute_ms": on.get("flexserve_layer_prefix_block_compute_ns", 0) / 1e6,
            "block_load_ms": on.get("flexserve_layer_prefix_block_load_ns", 0) / 1e6,
            "pipelined_hits": on.get("flexserve_layer_prefix_pipelined_hits_total"),
            "pipelined_loads_no_prefix": off.get("flexserve_layer_prefix_pipelined_loads_total"),
            "rounds": a.rounds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--models", required=True,
                    help="a directory with the sealed anchor and targets (<name>.fsm)")
    ap.add_argument("--target", action="append", required=True,
                    help="a sealed model to cold-start (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--memory-max", default="3G")
    ap.add_argument("--settle-s", type=float, default=2.5)
    a = ap.parse_args()
    started = {mode: start(a, mode == "on") for mode in ("on", "off")}
    try:
        daemons = {mode: s[2] for mode, s in started.items()}
        out = {m: bench_model(a, m, daemons) for m in a.target}
    except BaseException:
        for mode, (_, tmp, _) in started.items():
            with open(os.path.join(tmp, "server.log")) as f:
                print(f"--- daemon, prefix {mode}:\n" + "".join(f.readlines()[-25:]),
                      file=sys.stderr)
        raise
    finally:
        for proc, tmp, _ in started.values():
            stop(proc, tmp)
    print(f"{'cold TTFT':<38} {'prefix':>9} {'none':>9} {'ratio':>6} {'K':>4}")
    for m, r in out.items():
        print(f"{m:<38} {r['ttft_prefix_ms']:6.0f} ms {r['ttft_no_prefix_ms']:6.0f} ms "
              f"{r['ratio']:6.2f} {r['k_blocks']:4.0f}  (per block {r['block_compute_ms']:.1f} "
              f"ms compute, {r['block_load_ms']:.1f} ms load+decrypt)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
