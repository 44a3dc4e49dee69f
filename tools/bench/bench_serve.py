#!/usr/bin/env python3
"""make bench-serve: the FlexServe daemon vs llama.cpp's server (llama-cpp-python[server]) on
the same GGUF model in the same run.

Each server runs alone (the machine has few cores), with 2 threads / vCPUs and a 2048-token
context; they alternate, a fresh server for each client count. The daemon runs twice: with
batching (`limits.batch`, the default: the requests on one model decode together, one
forward pass per step, when the guest batches) and without (`flexserve-unbatched`: one
generation at a time, in slices). For 1, 4 and 8 concurrent clients, every client sends streaming completions one
after another (distinct story prompts of about 64 tokens, greedy, up to --gen-tokens
tokens: exactly that many for FlexServe with `ignore_eos`; llama.cpp may stop earlier at an
end-of-generation token, its tokens are counted as streamed). Reported per server and
client count: throughput (generated tokens of all clients / wall time), and p50/p99 time to
first token (request sent → first streamed text). Without batching throughput stays flat with clients and TTFT grows
with the queue; printed after the rows: each daemon's throughput at 4 and 8 clients over 1
client (the target with batching: >= 2.5x) and batched over unbatched (throughput, TTFT
p50). The last line printed is one JSON object: {"bench":"serve", "rows":[...], ...}.

--abuse (`make bench-serve-abuse`): the daemon alone, with its default connection limits,
16 clients x 10 streaming requests twice, each time on a fresh daemon: first alone, then
while 300 slow connections are held open (each sends half a request head, then a byte a
second, and reconnects when the daemon cuts it). Every answer must be complete and equal
to the same prompt's answer of the first run (greedy); reported: p99 TTFT with the slow
connections over without (target <= 1.5x), and what the daemon's limits did.
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

WORDS = ("river stone lantern orchard winter harbor meadow signal copper violet "
         "thunder garden echo marble falcon willow ember canyon silver basket").split()


def prompt_for(client, i):
    words = " ".join(WORDS[(client * 7 + i * 3 + k) % len(WORDS)] for k in range(50))
    return f"Story {client}-{i}: once upon a time, {words}. Then"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not come up")


def one_request(port, model, prompt, n):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n, "ignore_eos": True,
                       "temperature": 0, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, chunks, usage, text = None, 0, None, ""
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(ev["error"])
        if ev.get("usage"):
            usage = ev["usage"]["completion_tokens"]
        if any(ch.get("text") for ch in ev.get("choices", [])):
            chunks += 1
            text += "".join(ch.get("text") or "" for ch in ev["choices"])
            if ttft is None:
                ttft = time.perf_counter() - t0
    c.close()
    return ttft, usage if usage is not None else chunks, time.perf_counter() - t0, text


def load(port, model, clients, per_client, n, texts=None):
    """`texts`, when given, gets each answer's text by (client, request)."""
    ttfts, tokens, errors = [], [0], []
    lock = threading.Lock()

    def run(c):
        for i in range(per_client):
            try:
                ttft, got, _, text = one_request(port, model, prompt_for(c, i), n)
            except Exception as e:  # reported, not raised in a thread
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                ttfts.append(ttft)
                tokens[0] += got
                if texts is not None:
                    texts[(c, i)] = (text, got)
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[:3]}")
    ttfts.sort()
    pct = lambda p: ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))] * 1e3
    return {"clients": clients, "requests": len(ttfts), "tokens": tokens[0],
            "throughput_tps": tokens[0] / wall, "ttft_p50_ms": pct(50), "ttft_p99_ms": pct(99),
            "wall_s": wall}


def spawn(cmd, tmp, log_name="server.log"):
    """Starts a server with its output in tmp/server.log (shown if it fails to come up)."""
    log = open(os.path.join(tmp, log_name), "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


class Pair:
    """The daemon and the client-side proxy in front of it, stopped together."""

    def __init__(self, daemon, proxy):
        self.procs = (proxy, daemon)

    def poll(self):
        codes = [p.poll() for p in self.procs]
        return next((c for c in codes if c is not None), None)

    @property
    def returncode(self):
        return self.poll()

    def terminate(self):
        for p in self.procs:
            p.terminate()

    def wait(self, timeout=None):
        for p in self.procs:
            p.wait(timeout=timeout)

    def kill(self):
        for p in self.procs:
            p.kill()


def stop(proc, tmp):
    """Stops a server started by spawn() and removes its scratch directory."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def start_flexserve(a, port, tmp, batch=True):
    model_dir, name = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    # `limits.batch` has no flag: a config file holds it (flags override the rest).
    config = os.path.join(tmp, "flexserve.toml")
    with open(config, "w") as f:
        f.write(f"[limits]\nbatch = {'true' if batch else 'false'}\n")
        if a.max_active is not None:
            f.write(f"max_active = {a.max_active}\n")
    cmd = [a.flexserve, "serve", "--config", config, "--socket", os.path.join(tmp, "flexserve.sock"),
           "--tcp", f"127.0.0.1:{port}", "--models-dir", model_dir,
           "--model", name.removesuffix(".gguf"), "--ctx", "2048", "--vcpus", str(a.threads),
           "--queue-depth", "64",
           # A benchmark runs on any host; the level the guest got is in the daemon log.
           "--min-isolation", "none"]
    return spawn(cmd, tmp), "/health"


def start_flexserve_unbatched(a, port, tmp):
    """The daemon with `limits.batch = false`: one generation at a time, in slices."""
    return start_flexserve(a, port, tmp, batch=False)


def start_flexserve_sealed(a, port, tmp):
    """The daemon behind `flexserve proxy`: every request sealed to the guest, every answer
    opened in the proxy (docs/sealed-session.md), as a client of sealed sessions sees it."""
    daemon_port = free_port()
    daemon, ready = start_flexserve(a, daemon_port, tmp)
    wait_http(daemon_port, ready, daemon)
    proxy = spawn([a.flexserve, "proxy", "--listen", f"127.0.0.1:{port}",
                   "--upstream", f"http://127.0.0.1:{daemon_port}"], tmp)
    return Pair(daemon, proxy), "/health"


def start_llama(a, port, tmp):
    cmd = [a.python, "-m", "llama_cpp.server", "--model", a.model, "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(a.threads), "--n_threads_batch",
           str(a.threads), "--n_ctx", "2048", "--verbose", "False",
           # Otherwise each new request cuts the one streaming off.
           "--interrupt_requests", "False"]
    return spawn(cmd, tmp), "/v1/models"


class Slowloris:
    """`n` connections that never finish their request head: half a head, then one byte
    every `interval` seconds; a connection the daemon closes is opened again."""

    def __init__(self, port, n, interval=1.0):
        self.port, self.n, self.interval = port, n, interval
        self.stop, self.opened, self.cut = threading.Event(), 0, 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        socks = [None] * self.n
        while not self.stop.is_set():
            for i in range(self.n):
                try:
                    if socks[i] is None:
                        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n")
                        socks[i] = s
                        self.opened += 1
                    else:
                        socks[i].sendall(b"X")
                except OSError:
                    if socks[i] is not None:
                        socks[i].close()
                        self.cut += 1
                    socks[i] = None
            self.stop.wait(self.interval)
        for s in socks:
            if s is not None:
                s.close()


def stream_chat(port, body):
    """One streamed chat completion (`body` a dict, `stream` set here): (TTFT ms, whole
    answer ms, text). A refused request or an error event in the stream stops the bench."""
    return stream(port, "/v1/chat/completions", body)


def stream(port, path, body):
    """One streamed chat completion or completion (`path`), as `stream_chat`."""
    model = body.get("model")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", path, json.dumps({**body, "stream": True}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{model}: HTTP {r.status}: {r.read().decode()}")
    ttft, text = None, ""
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            raise SystemExit(f"{model}: the answer failed: {event['error']}")
        for ch in event.get("choices", []):
            piece = ch.get("delta", {}).get("content") or ch.get("text") or ""
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            text += piece
    c.close()
    whole = time.perf_counter() - t0
    return (ttft or whole) * 1e3, whole * 1e3, text


def metrics(port, prefix="flexserve_"):
    """The daemon's /metrics samples whose names start with `prefix`, by name (with labels)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(prefix) and " " in line:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            yield line


def abuse(a):
    model = os.path.basename(a.model).removesuffix(".gguf")
    clients, per_client = 16, 10
    runs, expected = {}, {}
    for mode in ("alone", "slow"):
        tmp, port = tempfile.mkdtemp(prefix="bench-serve-"), free_port()
        proc, ready = start_flexserve(a, port, tmp)
        slow = None
        try:
            wait_http(port, ready, proc)
            one_request(port, model, prompt_for(99, 0), a.gen_tokens)  # warm-up
            if mode == "slow":
                slow = Slowloris(port, a.slow_connections)
                slow.thread.start()
                while slow.opened < a.slow_connections:
                    time.sleep(0.1)
            texts = {}
            row = load(port, model, clients, per_client, a.gen_tokens, texts)
            if slow:
                row["slow_connections"] = a.slow_connections
                row["slow_reconnects"] = slow.cut
                row["daemon_metrics"] = list(metric(port, "flexserve_connections_open")) + \
                    list(metric(port, "flexserve_connections_cut_total"))
            if mode == "alone":
                expected = texts
            wrong = [k for k, (t, got) in texts.items()
                     if got != a.gen_tokens or t != expected.get(k, (None,))[0]]
            row["answered"], row["wrong"] = len(texts), len(wrong)
            runs[mode] = row
            print(f"{mode:5}: {row['answered']} answered, {row['wrong']} wrong, TTFT p50 "
                  f"{row['ttft_p50_ms']:7.1f} ms p99 {row['ttft_p99_ms']:7.1f} ms, "
                  f"{row['throughput_tps']:6.1f} tok/s", flush=True)
        finally:
            if slow:
                slow.stop.set()
                slow.thread.join()
            stop(proc, tmp)
    ratio = runs["slow"]["ttft_p99_ms"] / runs["alone"]["ttft_p99_ms"]
    ok = all(r["answered"] == clients * per_client and r["wrong"] == 0 for r in runs.values())
    print(f"p99 TTFT with {a.slow_connections} slow connections / without: {ratio:.2f}x "
          f"(target <= 1.5x); all answered correctly: {ok}", flush=True)
    print(json.dumps({"bench": "serve-abuse", "model": os.path.basename(a.model),
                      "gen_tokens": a.gen_tokens, "runs": runs, "ttft_p99_ratio": ratio,
                      "all_correct": ok}))
    if not ok:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flexserve", required=True)
    ap.add_argument("--python", default=sys.executable, help="python with llama_cpp[server]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=24,
                    help="requests per client count (split over the clients)")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--max-active", type=int, default=None,
                    help="the daemon's limits.max_active (requests in the guest at once, the "
                         "largest batch); default: the daemon's own")
    ap.add_argument("--servers", default="flexserve-unbatched,flexserve,flexserve-sealed,llama.cpp",
                    help="which of flexserve-unbatched (limits.batch = false), flexserve, "
                         "flexserve-sealed (through flexserve proxy), llama.cpp to run, "
                         "alternating in this order")
    ap.add_argument("--abuse", action="store_true",
                    help="flexserve alone, 16 clients x 10 requests without and with slow "
                         "connections held open (see above)")
    ap.add_argument("--slow-connections", type=int, default=300)
    ap.add_argument("model")
    a = ap.parse_args()
    if a.abuse:
        return abuse(a)

    rows = []
    model = os.path.basename(a.model).removesuffix(".gguf")
    # Servers alternate for each client count (a fresh server each time), so that load
    # from elsewhere on a shared machine hits both alike.
    for clients in map(int, a.clients.split(",")):
        starters = {"flexserve": start_flexserve, "flexserve-unbatched": start_flexserve_unbatched,
                    "flexserve-sealed": start_flexserve_sealed, "llama.cpp": start_llama}
        for server in a.servers.split(","):
            starter = starters[server]
            tmp = tempfile.mkdtemp(prefix="bench-serve-")
            port = free_port()
            proc, ready = starter(a, port, tmp)
            try:
                try:
                    wait_http(port, ready, proc)
                except RuntimeError:
                    with open(os.path.join(tmp, "server.log")) as f:
                        sys.stderr.write(f"{server} did not start:\n{f.read()[-3000:]}\n")
                    raise
                one_request(port, model, prompt_for(99, 0), a.gen_tokens)  # warm-up
                per_client = max(1, a.requests // clients)
                row = load(port, model, clients, per_client, a.gen_tokens)
                row["server"] = server
                rows.append(row)
                print(f"{server:19} {clients} clients: {row['throughput_tps']:6.1f} tok/s, "
                      f"TTFT p50 {row['ttft_p50_ms']:7.1f} ms p99 {row['ttft_p99_ms']:7.1f} ms "
                      f"({row['requests']} requests, {row['tokens']} tokens)", flush=True)
            finally:
                stop(proc, tmp)
    def row(server, clients):
        return next((r for r in rows if r["server"] == server and r["clients"] == clients), None)

    ratio, sealed = {}, {}
    for clients in map(int, a.clients.split(",")):
        f, l, z = row("flexserve", clients), row("llama.cpp", clients), row("flexserve-sealed", clients)
        if f and l:
            ratio[str(clients)] = {"throughput": f["throughput_tps"] / l["throughput_tps"],
                                   "ttft_p50": f["ttft_p50_ms"] / l["ttft_p50_ms"]}
        if f and z:
            sealed[str(clients)] = {"throughput": z["throughput_tps"] / f["throughput_tps"],
                                    "ttft_p50": z["ttft_p50_ms"] / f["ttft_p50_ms"]}
            print(f"sealed/plain {clients} clients: throughput {sealed[str(clients)]['throughput']:.3f}x, "
                  f"TTFT p50 {sealed[str(clients)]['ttft_p50']:.3f}x", flush=True)
    scaling, batched = batching_ratios(row, list(map(int, a.clients.split(","))))
    print(json.dumps({"bench": "serve", "model": os.path.basename(a.model),
                      "threads": a.threads, "gen_tokens": a.gen_tokens,
                      "max_active": a.max_active, "rows": rows,
                      "flexserve_over_llama_cpp": ratio, "sealed_over_plain": sealed,
                      "over_one_client": scaling, "batched_over_unbatched": batched}))


def batching_ratios(row, client_counts):
    """Each daemon's throughput and TTFT p50 at N clients over 1 client, and the batched
    daemon's over the unbatched one's at each N; printed and returned."""
    scaling, batched = {}, {}
    for server in ("flexserve-unbatched", "flexserve"):
        one = row(server, 1)
        for clients in client_counts:
            r = row(server, clients)
            if not (one and r) or clients == 1:
                continue
            x = {"throughput": r["throughput_tps"] / one["throughput_tps"],
                 "ttft_p50": r["ttft_p50_ms"] / one["ttft_p50_ms"]}
            scaling.setdefault(server, {})[str(clients)] = x
            print(f"{server} {clients} clients over 1 client: throughput "
                  f"{x['throughput']:.2f}x, TTFT p50 {x['ttft_p50']:.2f}x", flush=True)
    for clients in client_counts:
        on, off = row("flexserve", clients), row("flexserve-unbatched", clients)
        if on and off:
            x = {"throughput": on["throughput_tps"] / off["throughput_tps"],
                 "ttft_p50": on["ttft_p50_ms"] / off["ttft_p50_ms"]}
            batched[str(clients)] = x
            print(f"batched/unbatched {clients} clients: throughput {x['throughput']:.2f}x, "
                  f"TTFT p50 {x['ttft_p50']:.2f}x", flush=True)
    return scaling, batched


if __name__ == "__main__":
    main()
