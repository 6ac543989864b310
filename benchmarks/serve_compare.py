"""Load-test realm's server and llama-cpp-python's on the same model, one after the other, and write
a dated report (one JSON per server plus a summary table).

    python benchmarks/serve_compare.py --out benchmarks/reports/2026-12-03-serve-load \
        --duration 30 --clients 1,8 --max-tokens 64

Each server runs as its own process on 127.0.0.1 and a free port, alone on the machine while it is
measured; `benchmarks/load.py` drives it (streaming `/v1/completions`, greedy) and samples the
server's RSS and CPU. Servers: realm with its defaults (`--parallel 2`), realm with `--parallel 8`
(a guest per client), and llama-cpp-python's server (`benchmarks/llama_cpp_server.py`, 2 threads,
skipped when llama_cpp is not importable).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} not ready after {timeout:.0f} s")


def servers(model: str, port: int) -> dict[str, list[str]]:
    out = {
        "realm": [sys.executable, "-m", "realm", "serve", "--model", model, "--port", str(port)],
        "realm_parallel8": [sys.executable, "-m", "realm", "serve", "--model", model, "--port", str(port),
                            "--parallel", "8"],
    }
    try:
        import llama_cpp  # noqa: F401

        out["llama_cpp_python"] = [sys.executable, str(HERE / "llama_cpp_server.py"), "--model", model,
                                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                   "--n_threads", "2", "--interrupt_requests", "False"]
    except ImportError:
        print("llama_cpp is not importable: its server is skipped", file=sys.stderr)
    return out


GUEST_BUDGET = 64 << 20  # realm serve's default --memory-budget
PARALLEL = {"realm": 2, "realm_parallel8": 8}  # guests each realm server runs at most


def summary_markdown(report: dict) -> str:
    """The summary as a Markdown table, with issue 13's RSS bound for the realm servers: one copy of the
    weights + one guest budget per parallel request + 200 MB."""
    mb = lambda b: f"{b / 1e6:.0f}" if b else "–"  # noqa: E731
    ms = lambda d, k: f"{d[k] * 1e3:.0f}" if d and d.get(k) is not None else "–"  # noqa: E731
    lines = [f"Model `{Path(report['model']).name}` ({mb(report['model_bytes'])} MB), {report['duration_s']:.0f} s "
             f"per phase, streaming `/v1/completions`, greedy, max_tokens {report['max_tokens']}.", "",
             "| server | clients | ok / sent | errors | lost | tok/s (all clients) | tok/s per request (median) "
             "| TTFT p50 / p99 ms | inter-token p50 / p99 ms | peak RSS MB (anon + file) | RSS bound MB | CPU cores |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        parts = r.get("server_rss_at_peak") or {}
        n = PARALLEL.get(r["server"])
        bound = mb(report["model_bytes"] + n * GUEST_BUDGET + 200e6) if n else "–"
        per = r.get("per_request_decode_tokens_per_s_median")
        cpu = f"{r['server_cpu_cores']:.2f}" if r.get("server_cpu_cores") is not None else "–"
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests_ok']} / {r['requests_sent']} | "
            f"{', '.join(f'{k}: {v}' for k, v in (r['errors'] or {}).items()) or 'none'} | {r['lost']} | "
            f"{r['tokens_per_s']:.1f} | {f'{per:.1f}' if per else '–'} | "
            f"{ms(r['ttft_s'], 'p50')} / {ms(r['ttft_s'], 'p99')} | "
            f"{ms(r['inter_token_s'], 'p50')} / {ms(r['inter_token_s'], 'p99')} | "
            f"{mb(r['server_peak_rss_bytes'])} ({mb(parts.get('RssAnon'))} + {mb(parts.get('RssFile'))}) | {bound} | "
            f"{cpu} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: realm's default model)")
    ap.add_argument("--out", required=True, help="report folder")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--only", default=None, help="comma-separated server names")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from realm.api import load

        model = str(load().path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, cmd in servers(model, 0).items():
        if args.only and name not in args.only.split(","):
            continue
        port = free_port()
        cmd = [str(port) if c == "0" and cmd[i - 1] == "--port" else c for i, c in enumerate(cmd)]
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        # the server's output goes to a file: an unread pipe fills up and blocks a chatty server (llama.cpp)
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                wait_ready(port, proc)
            except RuntimeError:
                log.seek(0)
                print(f"{name}: {' | '.join(log.read().strip().splitlines()[-5:])}", file=sys.stderr)
                raise
            extra = ["--no-usage"] if name == "llama_cpp_python" else []
            r = subprocess.run([sys.executable, str(HERE / "load.py"), "--url", f"http://127.0.0.1:{port}",
                                "--clients", args.clients, "--duration", str(args.duration),
                                "--max-tokens", str(args.max_tokens), "--server-pid", str(proc.pid),
                                "--out", str(out / f"{name}.json"), *extra], cwd=ROOT)
            if r.returncode != 0:
                print(f"{name}: load.py exited {r.returncode}", file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    for name in servers(model, 0):  # every server measured into this folder, by this run or an earlier one
        if not (out / f"{name}.json").is_file():
            continue
        for p in json.loads((out / f"{name}.json").read_text())["phases"]:
            summary.append({"server": name, **{k: p.get(k) for k in (
                "clients", "requests_sent", "requests_ok", "errors", "lost", "tokens_per_s",
                "per_request_decode_tokens_per_s_median", "ttft_s", "inter_token_s", "server_peak_rss_bytes",
                "server_cpu_cores", "server_rss_at_peak", "machine_loadavg_end")}})
    report = {"model": model, "model_bytes": os.path.getsize(model), "duration_s": args.duration,
              "max_tokens": args.max_tokens, "rows": summary}
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report))
    for row in summary:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
