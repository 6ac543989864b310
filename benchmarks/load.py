"""Soak an OpenAI-compatible server on this machine with N concurrent streaming clients.

    python benchmarks/load.py --url http://127.0.0.1:8080 --clients 1,8 --duration 60 --max-tokens 32

For each client count (a phase), N threads send streaming `/v1/completions` (or `--chat`) requests
back to back for `--duration` seconds, then finish what they started. Reports per phase: requests
ok and errors by kind (HTTP status, error chunk, broken stream, connection), time to first token
and inter-token latency (p50/p99), request and completion-token throughput, the server's peak RSS
and CPU use (cores busy on average) when `--server-pid` is given, and a check that nothing was lost (every request sent has exactly one
outcome; every completed stream ended with a finish_reason, its usage and `[DONE]`). Prints one JSON
line per phase and writes everything to `--out` (JSON). Only 127.0.0.1 / localhost URLs are accepted.
Standard library only, so it runs against any server (realm, llama-cpp-python, llama.cpp).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper."
REQUEST_TIMEOUT = 300.0


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Outcome:
    """What one request did: timings and how it ended (`kind` "ok" or an error kind)."""

    __slots__ = ("kind", "t_send", "t_first", "t_end", "chunk_times", "completion_tokens", "detail", "counted")

    def __init__(self):
        self.kind = "lost"  # overwritten by every path below; left as is only if the client crashed
        self.t_send = time.perf_counter()
        self.t_first = None
        self.t_end = None
        self.chunk_times: list[float] = []
        self.completion_tokens = 0
        self.detail = ""
        self.counted = False  # completion_tokens counted from text chunks (the server sent no usage)


def one_request(host: str, port: int, path: str, body: dict, headers: dict, need_usage: bool = True) -> Outcome:
    out = Outcome()
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            out.kind = f"http_{resp.status}"
            out.detail = resp.read(2000).decode("utf-8", "replace")
            return out
        finish, usage, done = None, None, False
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                out.kind = "error_chunk"
                out.detail = str(chunk["error"].get("code") or chunk["error"].get("message"))
                return out
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    if out.t_first is None:
                        out.t_first = now
                    out.chunk_times.append(now)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        out.t_end = time.perf_counter()
        if not done or finish is None or (usage is None and need_usage):
            out.kind = "incomplete_stream"
            out.detail = f"done={done} finish={finish} usage={usage is not None}"
            return out
        if usage is not None:
            out.completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            out.completion_tokens, out.counted = len(out.chunk_times), True
        out.kind = "ok"
        return out
    except (OSError, http.client.HTTPException, ValueError) as e:
        out.kind = f"connection:{type(e).__name__}"
        out.detail = str(e)[:200]
        return out
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class RssSampler(threading.Thread):
    """Peak VmRSS of a process (and its anonymous / file-backed parts at that peak), every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.first, self.stop = pid, 0, None, threading.Event()
        self.parts: dict[str, int] = {}

    def run(self):
        while not self.stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    status = {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in f)
                              if k in ("VmRSS", "RssAnon", "RssFile")}
            except (OSError, ValueError):
                return
            rss = status.get("VmRSS", 0)
            self.first = rss if self.first is None else self.first
            if rss > self.peak:
                self.peak, self.parts = rss, status
            self.stop.wait(0.2)


def run_phase(args, host, port, n_clients: int) -> dict:
    path = "/v1/chat/completions" if args.chat else "/v1/completions"
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True}
    if not args.no_usage:
        body["stream_options"] = {"include_usage": True}
    if args.chat:
        body["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        body["prompt"] = args.prompt
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    outcomes: list[Outcome] = []
    sent = Counter()
    lock = threading.Lock()
    t_stop = time.perf_counter() + args.duration

    def client(i: int):
        while time.perf_counter() < t_stop:
            with lock:
                sent["n"] += 1
            o = one_request(host, port, path, body, headers, need_usage=not args.no_usage)
            with lock:
                outcomes.append(o)
            if o.kind.startswith("http_503"):
                time.sleep(min(2.0, max(0.0, t_stop - time.perf_counter())))  # what Retry-After asks

    rss = RssSampler(args.server_pid) if args.server_pid else None
    if rss:
        rss.start()
    cpu0 = cpu_seconds(args.server_pid) if args.server_pid else None
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + REQUEST_TIMEOUT + 10)
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(args.server_pid) if args.server_pid else None
    if rss:
        rss.stop.set()
        rss.join()
    ok = [o for o in outcomes if o.kind == "ok"]
    ttft = [o.t_first - o.t_send for o in ok if o.t_first is not None]
    itl = [b - a for o in ok for a, b in zip(o.chunk_times, o.chunk_times[1:])]
    tokens = sum(o.completion_tokens for o in ok)
    decode = [(o.completion_tokens - 1) / (o.t_end - o.t_first) for o in ok
              if o.t_first is not None and o.completion_tokens > 1 and o.t_end > o.t_first]
    errors = Counter(o.kind for o in outcomes if o.kind != "ok")
    details = Counter(f"{o.kind}: {o.detail[:120]}" for o in outcomes if o.kind != "ok")
    return {
        "clients": n_clients, "duration_s": args.duration, "wall_s": round(wall, 2),
        "requests_sent": sent["n"], "requests_ok": len(ok), "errors": dict(errors),
        "error_details": dict(details.most_common(5)),
        "lost": sent["n"] - len(outcomes) + errors.get("lost", 0),
        "ttft_s": {"p50": percentile(ttft, 0.5), "p99": percentile(ttft, 0.99)},
        "inter_token_s": {"p50": percentile(itl, 0.5), "p99": percentile(itl, 0.99), "n": len(itl)},
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "per_request_decode_tokens_per_s_median": statistics.median(decode) if decode else None,
        "server_peak_rss_bytes": rss.peak if rss else None,
        "server_rss_start_bytes": rss.first if rss else None,
        "server_rss_at_peak": rss.parts if rss else None,
        "server_cpu_cores": (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None and wall > 0 else None,
        "machine_loadavg_end": os.getloadavg(),
        "tokens_counted_from_chunks": sum(o.counted for o in ok),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default=None, help="default: the first model /v1/models lists")
    ap.add_argument("--clients", default="1,8", help="comma-separated client counts, one phase each")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds each phase starts requests for")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--server-pid", type=int, default=None, help="sample this process's peak RSS")
    ap.add_argument("--no-usage", action="store_true",
                    help="for servers without stream_options.include_usage: count text chunks as tokens")
    ap.add_argument("--out", default=None, help="write the phases as JSON here")
    args = ap.parse_args(argv)
    u = urlsplit(args.url)
    if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("--url must be http:// on 127.0.0.1 / localhost")
    host, port = u.hostname, u.port or 80
    if args.model is None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        h = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        conn.request("GET", "/v1/models", headers=h)
        args.model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
    phases = []
    for n in [int(x) for x in args.clients.split(",") if x.strip()]:
        phase = run_phase(args, host, port, n)
        phase.update(model=args.model, url=args.url, max_tokens=args.max_tokens, endpoint="chat" if args.chat else "completions")
        print(json.dumps(phase), flush=True)
        phases.append(phase)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": phases}, f, indent=2)
    return 1 if any(p["lost"] for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
