#!/usr/bin/env python3
"""A tampering relay between `flexserve proxy` and the daemon, and the official `openai`
client through the proxy (driven by tests/serve_proxy.rs).

  tamper  starts the relay on a free loopback port and prints the port; reads the proxy's
          base URL on stdin; then, for each tampering (flip a bit in a piece, drop,
          reorder, replay a piece, remove the last one) and each request kind (chat and
          completions, whole and streamed), asks through the proxy and records what the
          client got. Prints one JSON object on its last line.

The relay reads each answer whole (the daemon's chunked encoding undone by http.client),
changes its sealed pieces (the `flexserve_sealed` list of a whole answer, the events that
carry one in a stream) and sends it on with a Content-Length.
"""
import argparse
import base64
import http.client
import http.server
import json
import sys
import threading
import urllib.parse

import openai

SEALED = "flexserve_sealed"
MODES = ["flip", "drop", "reorder", "replay", "cut"]
KINDS = [("chat", False), ("chat", True), ("completion", False), ("completion", True)]


def flip(piece):
    raw = bytearray(base64.b64decode(piece))
    raw[9] ^= 0x01  # the first byte after the header: ciphertext, or the tag if empty
    return base64.b64encode(bytes(raw)).decode()


def tamper_list(items, mode, get, put):
    """Applies `mode` to the sealed items of `items`; returns (items, applied)."""
    idx = [i for i, x in enumerate(items) if get(x) is not None]
    if not idx or (mode == "reorder" and len(idx) < 2):
        return items, False
    items = list(items)
    first = idx[0]
    if mode == "flip":
        items[first] = put(items[first], flip(get(items[first])))
    elif mode == "drop":
        del items[first]
    elif mode == "reorder":
        items[idx[0]], items[idx[1]] = items[idx[1]], items[idx[0]]
    elif mode == "replay":
        items.insert(first + 1, items[first])
    elif mode == "cut":
        del items[idx[-1]]
    return items, True


def tamper_whole(body, mode):
    v = json.loads(body)
    pieces, applied = tamper_list(v.get(SEALED) or [], mode, lambda p: p, lambda _, n: n)
    v[SEALED] = pieces
    return json.dumps(v).encode(), applied


def tamper_stream(body, mode):
    events = [e for e in body.decode().split("\n\n") if e]

    def get(event):
        if not event.startswith("data: {"):
            return None
        return json.loads(event[len("data: "):]).get(SEALED)

    def put(event, piece):
        v = json.loads(event[len("data: "):])
        v[SEALED] = piece
        return "data: " + json.dumps(v)

    events, applied = tamper_list(events, mode, get, put)
    return ("".join(e + "\n\n" for e in events)).encode(), applied


class Relay(http.server.BaseHTTPRequestHandler):
    upstream = None
    mode = None
    applied = []

    def log_message(self, *args):
        pass

    def forward(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(self.upstream, timeout=300)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        ctype = r.getheader("Content-Type") or "application/json"
        if method == "POST" and r.status == 200 and Relay.mode:
            if ctype.startswith("text/event-stream"):
                data, applied = tamper_stream(data, Relay.mode)
            else:
                data, applied = tamper_whole(data, Relay.mode)
            Relay.applied.append(applied)
        self.send_response(r.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.forward("GET")

    def do_POST(self):
        self.forward("POST")


def ask(c, a, kind, stream):
    """One request; what the client got: its text and its error, if any."""
    text, error = "", None
    model, n = a.model, a.max_tokens
    prompt = a.prompt if kind == "chat" else a.completion_prompt
    try:
        if kind == "chat":
            args = dict(model=model, messages=[{"role": "user", "content": prompt}],
                        temperature=0, max_tokens=n)
            if not stream:
                text = c.chat.completions.create(**args).choices[0].message.content or ""
            else:
                for chunk in c.chat.completions.create(stream=True, **args):
                    for ch in chunk.choices:
                        text += ch.delta.content or ""
        else:
            args = dict(model=model, prompt=prompt, temperature=0, max_tokens=n)
            if not stream:
                text = c.completions.create(**args).choices[0].text
            else:
                for chunk in c.completions.create(stream=True, **args):
                    for ch in chunk.choices:
                        text += ch.text
    except openai.APIError as e:
        body = e.body if isinstance(e.body, dict) else {}
        error = {"class": type(e).__name__, "message": str(e), "type": body.get("type")}
    return {"text": text, "error": error}


def tamper(a):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    Relay.upstream = urllib.parse.urlparse(a.upstream).netloc
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    base_url = sys.stdin.readline().strip()
    c = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    out = {"untampered": {}, "tampered": []}
    for kind, stream in KINDS:
        Relay.mode = None
        out["untampered"][f"{kind}{'_stream' if stream else ''}"] = ask(
            c, a, kind, stream)
    for mode in MODES:
        for kind, stream in KINDS:
            Relay.mode, Relay.applied = mode, []
            r = ask(c, a, kind, stream)
            r.update(mode=mode, kind=kind, stream=stream, applied=Relay.applied)
            out["tampered"].append(r)
    server.shutdown()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["tamper"])
    ap.add_argument("--upstream", required=True, help="the daemon, http://HOST:PORT")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="Why is the sky blue?")
    # A bare question can end a raw completion at once; a story opening does not.
    ap.add_argument("--completion-prompt", default="Once upon a time")
    ap.add_argument("--max-tokens", type=int, default=24)
    a = ap.parse_args()
    print(json.dumps(tamper(a)))


if __name__ == "__main__":
    sys.exit(main())
