"""Benchmark reports (`python -m realm bench`): every engine on one model, in one run.

Measures prefill/decode tokens/s (median and spread over repeats, after warm-up), start-up cost
(JIT compile / module compile, cold and cached, in fresh subprocesses), the machine's memory
bandwidth and the weight bytes each token reads (so decode reads as a fraction of the physical
limit), guest memory and boundary traffic, and logits agreement between the engines. Writes
report.json, report.md and, when matplotlib is installed, report.png.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from realm.errors import RealmError

Progress = Callable[[str], None]

# A neutral English paragraph; repeated until the prompt has the requested number of tokens.
_PROMPT_TEXT = (
    "The history of the printing press begins with movable type, which let craftsmen compose pages "
    "from reusable letters. Over the following centuries presses spread across cities, books became "
    "cheaper, and reading moved from a few scholars to merchants, students and families. "
)


@dataclass
class BenchSettings:
    model: str | None = None
    engines: tuple[str, ...] = ("wasm", "numba")
    threads: tuple[int, ...] = (1, 2)
    prompt_tokens: int = 128
    gen_tokens: int = 64
    repeat: int = 3
    out_dir: str = "bench-out"
    n_ctx: int | None = None
    budgets: tuple[str, ...] = ("default", "resident")  # wasm memory budgets to measure
    runtimes: tuple[str, ...] = ("all",)  # wasm guest runtimes: names, "auto", or "all" (every installed one)
    startup: bool = True  # measure cold/cached compile in subprocesses
    interleave: bool = True  # round-robin the repeats over all engines (all alive at once)
    compare_llama_cpp: bool = False  # add llama.cpp rows (realm.bench_llamacpp, one process per thread count)
    isolate: bool = True  # each of realm's engine variants in a worker process of its own (realm.bench_local)

    def validate(self) -> "BenchSettings":
        bad = [e for e in self.engines if e not in BENCH_ENGINES]
        if not self.engines or bad:
            raise RealmError(f"unknown engine(s) {bad}; choose from {', '.join(BENCH_ENGINES)}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise RealmError("thread counts must be >= 1")
        from realm.host.runtime import RUNTIME_CHOICES

        bad = [r for r in self.runtimes if r not in (*RUNTIME_CHOICES, "all")]
        if not self.runtimes or bad:
            raise RealmError(f"unknown runtime(s) {bad}; choose from all, {', '.join(RUNTIME_CHOICES)}")
        if self.prompt_tokens < 1 or self.gen_tokens < 1 or self.repeat < 1:
            raise RealmError("--prompt-tokens, --gen-tokens and --repeat must be >= 1")
        return self


# ---------------------------------------------------------------- machine ------------------------


def _bench_engines() -> tuple[str, ...]:
    from realm.engines import ENGINE_NAMES

    return (*ENGINE_NAMES, "node")  # node: the JavaScript host in a worker process (realm.bench_node)


BENCH_ENGINES = _bench_engines()


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "numba", "wasmtime", "wasmer", "llvmlite"):
        try:
            versions[mod] = __import__(mod).__version__ if mod not in ("wasmtime", "wasmer") else _dist_version(mod)
        except Exception:  # an optional component missing is reported, not fatal
            versions[mod] = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
        "python": platform.python_version(), **versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def bench_runtimes(settings: BenchSettings) -> list[str]:
    """The guest runtimes to measure: every installed one for "all", else the named ones (checked)."""
    from realm.host.runtime import available_runtimes, resolve_runtime

    out: list[str] = []
    for r in settings.runtimes:
        for name in (available_runtimes() if r == "all" else (resolve_runtime(r),)):
            if name not in out:
                out.append(name)
    return out


def memory_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> dict[str, float]:
    """Best-of-N GB/s: `read` sums a large float64 array, `copy` counts bytes read + written."""
    a = np.ones(n_bytes // 8, np.float64)  # (n,) touched once so pages exist
    b = np.empty_like(a)
    read = copy = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        read = max(read, n_bytes / (time.perf_counter() - t0) / 1e9)
        t0 = time.perf_counter()
        np.copyto(b, a)
        copy = max(copy, 2 * n_bytes / (time.perf_counter() - t0) / 1e9)
    return {"read_gbps": read, "copy_gbps": copy, "bytes": n_bytes}


def weight_bytes_per_token(gguf_file, config) -> int:
    """Bytes of weights one decode step reads: every layer tensor, the output matrix, one embedding row."""
    total = 0
    for name, t in gguf_file.tensors.items():
        if name == "token_embd.weight":
            total += t.n_bytes // t.shape[0]  # one row
            if config.tied_output:
                total += t.n_bytes
        else:
            total += t.n_bytes
    return total


# ---------------------------------------------------------------- engines ------------------------


def prompt_ids(model, n: int) -> list[int]:
    ids = model.tokenize(_PROMPT_TEXT, add_bos=True)
    body = model.tokenize(_PROMPT_TEXT, add_bos=False)
    while len(ids) < n:
        ids += body
    return ids[:n]


_COUNTERS = ("bytes_fetched", "host_calls")


def time_generation(engine, ids: list[int], gen_tokens: int) -> tuple[float, float, dict[str, float]]:
    """(prefill seconds, decode seconds of gen_tokens greedy steps, per-decode-token counter deltas)."""
    if hasattr(engine, "timed_generation"):  # an engine in another process times itself (llama.cpp)
        return engine.timed_generation(ids, gen_tokens)
    engine.reset()
    t0 = time.perf_counter()
    logits = engine.eval(ids)
    prefill = time.perf_counter() - t0
    token = int(np.argmax(logits))
    before = engine.stats()
    t0 = time.perf_counter()
    for _ in range(gen_tokens):
        token = int(np.argmax(engine.eval([token])))
    decode = time.perf_counter() - t0
    after = engine.stats()
    per_token = {f"{k}_per_token": (after[k] - before[k]) / gen_tokens for k in _COUNTERS if k in after}
    return prefill, decode, per_token


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Logits (T, vocab) of two engines: max |a-b|, max relative to the logits' range, top-1 agreement."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    span = float(np.max(np.abs(a)))
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_rel": float(diff.max() / span) if span else 0.0,
        "top1_agreement": float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1))),
        "positions": int(a.shape[0]),
    }


_STARTUP_SNIPPETS = {
    # the user's cold start: a fresh process from `import realm` to the first decoded token of the model
    "numba": "import time; t=time.perf_counter(); import os, realm; m=realm.load(os.environ['REALM_BENCH_MODEL']); "
             "e=m.engine('numba', n_ctx=64); e.eval([m.tokenize('Hi')[0]]); print(time.perf_counter()-t)",
    "wasm": "import time; t=time.perf_counter(); from realm.host import runtime; m = runtime.load_module(); "
            "print(time.perf_counter()-t, m.runtime)",
}


def startup_times(engine: str, runtime: str | None = None, model_path=None) -> dict[str, float] | None:
    """Cold (empty cache) and cached start-up seconds of an engine's compiled code, in fresh processes."""
    snippet = _STARTUP_SNIPPETS.get(engine)
    if snippet is None:
        return None
    with tempfile.TemporaryDirectory(prefix="realm-bench-") as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp, REALM_WASM_CACHE_DIR=tmp, REALM_BENCH_MODEL=str(model_path or ""))
        if runtime is not None:
            env["REALM_RUNTIME"] = runtime
        out = {}
        for label in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, timeout=900)
            if r.returncode != 0:
                return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
            seconds, *what = r.stdout.strip().splitlines()[-1].split()
            out[f"{label}_seconds"] = float(seconds)
            if what:  # the wasm snippet says which runtime compiled the module
                out["runtime"] = what[0]
        return out


# A guest that calls realm_read_tensor `n` times in a loop, so only the boundary crossing is timed.
_HOSTCALL_WAT = """
(module
  (import "env" "realm_tensor_info" (func $info (param i64 i32 i32 i32) (result i32)))
  (import "env" "realm_read_tensor" (func $read (param i64 i32 i64 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "lookup") (param $id i64) (param $name i32) (param $len i32) (result i32)
    (call $info (local.get $id) (local.get $name) (local.get $len) (i32.const 1024)))
  (func (export "reads") (param $id i64) (param $h i32) (param $n i32) (param $bytes i32) (result i32)
    (local $r i32)
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $r (call $read (local.get $id) (local.get $h) (i64.const 0) (i32.const 4096) (local.get $bytes)))
      (br_if $done (i32.lt_s (local.get $r) (i32.const 0)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $again)))
    (local.get $r)))
"""


def host_call_cost(path, n_calls: int = 20000, n_bytes: int = 64, runtime: str | None = None) -> dict[str, float]:
    """µs per `realm_read_tensor` call of `n_bytes`, timed from inside a guest loop (best of 3)."""
    from realm.host.runtime import Guest
    from realm.host.store import ModelStore

    store = ModelStore()
    model_id = store.add(path)
    guest = Guest(wasm=_HOSTCALL_WAT, model_store=store, runtime=runtime)
    try:
        guest.acquire(model_id)
        name = next(iter(store.gguf(model_id).tensors)).encode()
        guest.write(0, name)
        handle = guest.call("lookup", model_id, 0, len(name))
        if handle < 0:
            raise RealmError(f"host-call benchmark: tensor lookup failed with code {handle}")
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            r = guest.call("reads", model_id, handle, n_calls, n_bytes)
            best = min(best, time.perf_counter() - t0)
            if r < 0:
                raise RealmError(f"host-call benchmark: read failed with code {r}")
        return {"us_per_call": best / n_calls * 1e6, "bytes_per_call": n_bytes, "calls": n_calls}
    finally:
        guest.close()
        store.close()


def run_bench(settings: BenchSettings, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Measure everything; returns the report dict (also what report.json holds)."""
    from realm.api import load

    settings.validate()
    runtimes = bench_runtimes(settings) if "wasm" in settings.engines else []  # first: a missing one says so
    report: dict[str, Any] = {"settings": asdict(settings), "machine": machine_facts()}
    model = load(settings.model)
    if model.config is None:
        raise RealmError(f"cannot benchmark {model.path.name}: {model.config_error}")
    progress("measuring memory bandwidth")
    report["bandwidth"] = memory_bandwidth()
    cfg = model.config
    wbytes = weight_bytes_per_token(model.gguf, cfg)
    report["model"] = {"path": str(model.path), "arch": cfg.arch, "file_bytes": model.gguf.file_size,
                       "weight_bytes_per_token": wbytes, "vocab_size": cfg.vocab_size, "n_layers": cfg.n_layers}
    ids = prompt_ids(model, settings.prompt_tokens)
    n_ctx = settings.n_ctx or min(cfg.context_length, max(settings.prompt_tokens + settings.gen_tokens + 8, 256))
    runs: list[dict[str, Any]] = []
    logits: dict[str, np.ndarray] = {}
    for rt in runtimes:
        progress(f"wasm ({rt}): host-call cost (a guest loop of realm_read_tensor calls)")
        report.setdefault("host_calls", {})[rt] = host_call_cost(model.path, runtime=rt)
    if runtimes:
        report["host_call"] = report["host_calls"][runtimes[0]]
    if settings.startup:
        for name in settings.engines:
            for rt in (runtimes if name == "wasm" else [None]):
                key = name if rt is None else f"{name} ({rt})"
                progress(f"{key}: start-up time, cold and cached (fresh processes)")
                report.setdefault("startup", {})[key] = startup_times(name, rt, model.path)
    variants = [(name, variant, options) for name in settings.engines
                for variant, options in _variants(name, settings, model)]
    if settings.compare_llama_cpp:
        variants += [("llama.cpp", _threads_label(t), {"threads": t}) for t in settings.threads]
    # Interleaved (default): every engine is created first and repeat i of every engine runs before
    # repeat i + 1 of any, so a slow spell of a shared machine hits all engines alike instead of
    # whichever ran then. Sequential: one engine alive at a time (less memory for big models).
    groups = [variants] if settings.interleave else [[v] for v in variants]
    for group in groups:
        live = []
        try:
            for name, variant, options in group:
                key = f"{name} ({options['runtime']})" if options.get("runtime") else name
                label = f"{key}[{variant}]" if variant else key
                progress(f"{label}: creating engine")
                t0 = time.perf_counter()
                engine = _create(model, name, n_ctx, options, settings.isolate)
                run = {"engine": name, "variant": variant, "label": label, "threads": options.get("threads"),
                       "runtime": options.get("runtime"),
                       "create_seconds": time.perf_counter() - t0}
                live.append((engine, run, [], []))
                progress(f"{label}: warm-up")
                time_generation(engine, ids[:8], 2)
            for i in range(settings.repeat):
                for engine, run, prefill, decode in live:
                    progress(f"{run['label']}: run {i + 1}/{settings.repeat} "
                             f"({len(ids)} prompt + {settings.gen_tokens} generated tokens)")
                    p, d, per_token = time_generation(engine, ids, settings.gen_tokens)
                    prefill.append(len(ids) / p)
                    decode.append(settings.gen_tokens / d)
                    run.update(per_token)  # boundary traffic of the last run's decode steps
            for engine, run, prefill, decode in live:
                run["prefill_tps"], run["decode_tps"] = _spread(prefill), _spread(decode)
                run["decode_gbps"] = run["decode_tps"]["median"] * wbytes / 1e9
                run["decode_fraction_of_bandwidth"] = run["decode_gbps"] / report["bandwidth"]["read_gbps"]
                run["engine_stats"] = {k: v for k, v in engine.stats().items() if isinstance(v, (int, float, str))}
                key = _engine_key(run)
                if key not in logits:
                    progress(f"{run['label']}: logits of the benchmark prompt for the agreement check")
                    engine.reset()
                    logits[key] = engine.eval(ids, all_logits=True)
                runs.append(run)
        finally:
            for engine, *_ in live:
                engine.close()
    report["runs"] = runs
    if settings.compare_llama_cpp:
        report["llama_cpp_ratios"] = llama_cpp_ratios(runs)
    if "node" in settings.engines:
        report["node_ratios"] = node_ratios(runs)
    names = list(logits)
    if len(names) > 1:
        base = "reference" if "reference" in logits else names[0]
        report["agreement"] = {f"{n} vs {base}": agreement(logits[n], logits[base]) for n in names if n != base}
    model.close()
    return report


def _engine_key(run: dict[str, Any]) -> str:
    """`wasm (wasmer)` for a wasm run, else the engine name."""
    return f"{run['engine']} ({run['runtime']})" if run.get("runtime") else run["engine"]


def _create(model, name: str, n_ctx: int, options: dict[str, Any], isolate: bool = False):
    if name == "llama.cpp":
        from realm.bench_llamacpp import LlamaCppRunner

        return LlamaCppRunner(model.path, n_ctx=n_ctx, threads=options["threads"])
    if name == "node":
        from realm.bench_node import NodeRunner

        return NodeRunner(model.path, n_ctx=n_ctx, memory_budget=options["memory_budget"])
    if isolate:
        from realm.bench_local import LocalRunner

        return LocalRunner(model.path, name, n_ctx, options)
    return model.engine(name, n_ctx=n_ctx, **options)


def _threads_label(t: int) -> str:
    return f"{t} thread{'s' if t > 1 else ''}"


def llama_cpp_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each realm run's prefill and decode medians divided by the llama.cpp run with its thread count."""
    ref = {x["threads"]: x for x in runs if x["engine"] == "llama.cpp"}
    out = []
    for run in runs:
        base = ref.get(run.get("threads"))
        if base is None or run["engine"] == "llama.cpp":
            continue
        out.append({"label": run["label"], "llama_cpp": base["label"],
                    "prefill": run["prefill_tps"]["median"] / base["prefill_tps"]["median"],
                    "decode": run["decode_tps"]["median"] / base["decode_tps"]["median"]})
    return out


def node_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Node host's medians divided by the Python host's guest (wasmtime) at the same budget and
    instance count (1)."""
    out = []
    for run in runs:
        if run["engine"] != "node":
            continue
        base = next((x for x in runs if x["engine"] == "wasm" and x.get("runtime") == "wasmtime"
                     and x.get("threads") == 1 and x["variant"].startswith(run["variant"].split(",")[0])), None)
        if base is not None:
            out.append({"label": run["label"], "python": base["label"],
                        "prefill": run["prefill_tps"]["median"] / base["prefill_tps"]["median"],
                        "decode": run["decode_tps"]["median"] / base["decode_tps"]["median"]})
    return out


def _variants(name: str, settings: BenchSettings, model) -> list[tuple[str, dict[str, Any]]]:
    if name == "node":  # one guest instance at the default budget (the Node host has no shards)
        return [("64 MiB, 1 instance", {"memory_budget": 64 << 20, "threads": 1})]
    if name == "numba":
        return [(f"{t} thread{'s' if t > 1 else ''}", {"threads": t}) for t in settings.threads]
    if name == "wasm":  # every runtime, budget and thread count (guest instances, see realm.engines.wasm)
        from realm.host.runtime import adapter

        out = []
        for rt in bench_runtimes(settings):
            # a runtime without parallel calls (wasmer) runs one instance whatever `threads` says
            threads = settings.threads if adapter(rt).Guest.parallel_calls else (1,)
            for b in settings.budgets:
                if b == "default":
                    label, budget = "64 MiB", 64 << 20
                elif b == "resident":
                    budget = min(4 << 30, ((model.gguf.file_size + (192 << 20)) >> 20) << 20)
                    label = f"resident ({budget >> 20} MiB)"
                else:
                    continue
                for t in threads:
                    out.append((f"{label}, {t} thread{'s' if t > 1 else ''}",
                                {"memory_budget": budget, "threads": t, "runtime": rt}))
        return out
    return [("", {})]


# ---------------------------------------------------------------- reports ------------------------


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=float) + "\n")
    paths[1].write_text(format_markdown(report))
    png = _chart(report, out / "report.png")
    if png:
        paths.append(png)
    return paths


def format_markdown(r: dict[str, Any]) -> str:
    m, bw = r["machine"], r["bandwidth"]
    lines = [
        f"# realm benchmark — {r['model']['path'].rsplit('/', 1)[-1]}",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"numpy {m['numpy']}, numba {m['numba']}, wasmtime {m['wasmtime']}"
        + (f", wasmer {m['wasmer']}." if m.get("wasmer") else "."),
        f"Memory bandwidth (same run): read {bw['read_gbps']:.1f} GB/s, copy {bw['copy_gbps']:.1f} GB/s. "
        f"Weights read per decoded token: {r['model']['weight_bytes_per_token'] / 1e6:.1f} MB.",
        f"Prompt {r['settings']['prompt_tokens']} tokens, {r['settings']['gen_tokens']} generated, "
        f"{r['settings']['repeat']} repeats (median, [min–max]), "
        + ("interleaved across engines." if r["settings"].get("interleave", True) else "one engine after another."),
        "",
        "## Speed",
        "",
        "| engine | prefill tok/s | decode tok/s | decode GB/s | of bandwidth | engine start s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in r["runs"]:
        p, d = run["prefill_tps"], run["decode_tps"]
        lines.append(f"| {run['label']} | {p['median']:.1f} [{p['min']:.1f}–{p['max']:.1f}] | "
                     f"{d['median']:.2f} [{d['min']:.2f}–{d['max']:.2f}] | {run['decode_gbps']:.2f} | "
                     f"{100 * run['decode_fraction_of_bandwidth']:.0f}% | {run['create_seconds']:.2f} |")
    base = next((x for x in r["runs"] if x["engine"] == "numba"), None)
    if base:
        lines += ["", "Ratios to the fastest Numba run:", ""]
        best = max((x for x in r["runs"] if x["engine"] == "numba"), key=lambda x: x["decode_tps"]["median"])
        for run in r["runs"]:
            lines.append(f"- {run['label']}: decode ×{run['decode_tps']['median'] / best['decode_tps']['median']:.2f}, "
                         f"prefill ×{run['prefill_tps']['median'] / best['prefill_tps']['median']:.2f}")
    if r.get("llama_cpp_ratios"):
        lines += ["", "Ratios to llama.cpp at the same thread count (÷ llama.cpp, prefill / decode):", ""]
        for x in r["llama_cpp_ratios"]:
            lines.append(f"- {x['label']}: prefill ×{x['prefill']:.2f}, decode ×{x['decode']:.2f}")
    if r.get("node_ratios"):
        lines += ["", "The Node host ÷ the Python host, same guest, budget and instance count (prefill / decode):", ""]
        for x in r["node_ratios"]:
            lines.append(f"- {x['label']} ÷ {x['python']}: prefill ×{x['prefill']:.2f}, decode ×{x['decode']:.2f}")
    if r.get("startup"):
        lines += ["", "## Start-up (fresh processes)", "", "| engine | cold s | cached s |", "| --- | ---: | ---: |"]
        for name, s in r["startup"].items():
            if s and "error" not in s:
                lines.append(f"| {name} | {s['cold_seconds']:.2f} | {s['cached_seconds']:.2f} |")
            else:
                lines.append(f"| {name} | n/a | n/a |")
    guest = [x for x in r["runs"] if x["engine"] in ("wasm", "node")]
    if guest:
        costs = r.get("host_calls") or {None: r.get("host_call", {})}
        lines += ["", "## Guest memory and boundary traffic", ""]
        for rt, hc in costs.items():
            lines.append(f"One host call (`realm_read_tensor`, {hc.get('bytes_per_call', 0)} bytes, timed in a guest "
                         f"loop){f' under {rt}' if rt else ''} costs {hc.get('us_per_call', float('nan')):.1f} µs.")
        lines += ["",
                  "| run | peak linear memory MiB | bytes fetched / token | host calls / token | host-call overhead / token |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for run in guest:
            st = run["engine_stats"]
            peak = st.get("peak_memory", float("nan")) / 2**20
            calls = run.get("host_calls_per_token", float("nan"))
            if run["engine"] == "node":  # the host-call loop is timed under the Python host's runtimes only
                overhead = "–"
            else:
                us = costs.get(run.get("runtime"), r.get("host_call", {})).get("us_per_call", float("nan"))
                overhead = f"{calls * us / 1000:.2f} ms"
            lines.append(f"| {run['label']} | {peak:.1f} | {run.get('bytes_fetched_per_token', float('nan')) / 1e6:.1f} MB | "
                         f"{calls:.0f} | {overhead} |")
    if r.get("agreement"):
        lines += ["", "## Logits agreement on the benchmark prompt", "",
                  "| pair | max abs diff | relative to max logit | top-1 agreement |", "| --- | ---: | ---: | ---: |"]
        for pair, a in r["agreement"].items():
            lines.append(f"| {pair} | {a['max_abs_diff']:.4f} | {a['max_abs_diff_rel']:.2e} | "
                         f"{100 * a['top1_agreement']:.1f}% of {a['positions']} |")
    return "\n".join(lines) + "\n"


def _chart(r: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [x["label"] for x in r["runs"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "prefill_tps", "prefill tokens/s"), (axes[1], "decode_tps", "decode tokens/s")):
        med = [x[key]["median"] for x in r["runs"]]
        err = [[m - x[key]["min"] for m, x in zip(med, r["runs"])], [x[key]["max"] - m for m, x in zip(med, r["runs"])]]
        ax.barh(labels, med, xerr=err)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
