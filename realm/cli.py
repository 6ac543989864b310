"""`python -m realm`: the command line. The only module that prints or exits.

Every RealmError (and any OS error reading a file) becomes one line on stderr and exit code 1;
click's own usage errors exit with 2.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time

import click

from realm.errors import RealmError

DEFAULT_PROMPT = "What is the capital of France?"
EXIT_ERROR = 1


def _fail(message: str) -> None:
    click.echo(f"realm: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def handle_errors(fn):
    """Turn our errors into one clear line on stderr and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RealmError as e:
            _fail(str(e))
        except (OSError, MemoryError) as e:
            _fail(f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)

    return wrapper


class _Progress:
    """A one-line progress display on stderr, for assembling the default model on first use."""

    def __init__(self, label: str):
        self.label, self.last = label, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        click.echo(f"\r{self.label}: {done / 2**20:7.1f} / {total / 2**20:.1f} MiB ({pct:5.1f}%)", err=True, nl=done >= total)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """`64M`, `64MiB`, `1G`, `1048576`: binary units (1M = 2^20 bytes)."""

    name = "size"

    def __init__(self, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            m = _SIZE.match(str(value))
            if not m:
                self.fail(f"{value!r} is not a size like 64M, 512MiB or 1G", param, ctx)
            n = int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()])
        if not self.minimum <= n <= self.maximum:
            self.fail(f"{value} is outside [{self.minimum // 2**20} MiB, {self.maximum // 2**30} GiB]", param, ctx)
        return n


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="realm", prog_name="realm")
def main():
    """realm: run GGUF LLaMA-family models in a WebAssembly sandbox or natively with Numba."""


def _open_model(path):
    from realm.api import load

    return load(path, progress=_Progress("assembling the default model"))


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.option("--tensors", is_flag=True, help="List every tensor (name, type, shape, bytes).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def info(model, tensors, as_json):
    """Describe a GGUF file (default: the default model)."""
    from realm.gguf import GGUFFile
    from realm.info import format_summary, summarize
    from realm.models import resolve_model

    path = resolve_model(model, _Progress("assembling the default model"))
    with GGUFFile(path) as g:
        summary = summarize(g)
    if as_json:
        if not tensors:
            summary.pop("tensors", None)
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary, show_tensors=tensors))


@main.command()
@click.argument("prompt", required=False)
@click.option("-m", "--model", type=click.Path(dir_okay=True), help="GGUF file (default: the default model).")
@click.option("-e", "--engine", type=click.Choice(["wasm", "numba", "reference"]), default="wasm", show_default=True,
              help="wasm: the sandboxed guest; numba: native; reference: plain NumPy (slow).")
@click.option("-n", "--max-tokens", type=click.IntRange(0, 1_000_000), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 100), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0, None), default=40, show_default=True, help="0 = off.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--min-p", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--repeat-penalty", type=click.FloatRange(0, 100, min_open=True), default=1.0, show_default=True)
@click.option("--repeat-last-n", type=click.IntRange(0, None), default=64, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop when this text is generated (repeatable).")
@click.option("--special", is_flag=True, help="Parse special-token text such as <start_of_turn> in the prompt.")
@click.option("--ctx", type=click.IntRange(1, 1 << 20), default=None, help="Context length (default: min(model's, 2048)).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="numba: threads; wasm: guest instances sharing the weight matrices (default: all cores, wasm at most 4).")
@click.option("--memory-budget", type=ByteSize(1 << 20, 4 << 30), default="64MiB", show_default=True,
              help="wasm engine: cap on the guest's linear memory.")
@click.option("--runtime", type=click.Choice(["auto", "wasmtime", "wasmer"]), default="auto", show_default=True,
              help="wasm engine: the guest runtime (auto: wasmtime where installed; wasmer needs CPython 3.10).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, tokens and stats.")
@click.option("-v", "--verbose", is_flag=True, help="Print timings (and guest memory/bytes fetched) to stderr.")
@handle_errors
def run(prompt, model, engine, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        seed, stop, special, ctx, threads, memory_budget, runtime, as_json, verbose):
    """Generate a completion of PROMPT (default: "What is the capital of France?"; "-" reads stdin)."""
    if prompt is None:
        prompt = DEFAULT_PROMPT
    elif prompt == "-":
        prompt = sys.stdin.read()
    if not prompt:
        _fail("the prompt is empty")
    m = _open_model(model)
    options = {}
    if engine in ("numba", "wasm") and threads is not None:
        options["threads"] = threads
    if engine == "wasm":
        options["memory_budget"] = memory_budget
        options["runtime"] = runtime
    if ctx is not None and m.config is not None and ctx > m.config.context_length:
        _fail(f"--ctx {ctx} exceeds the model's trained context length {m.config.context_length}")
    t0 = time.perf_counter()
    eng = m.engine(engine, n_ctx=ctx, **options)
    gen = m.generate(prompt, engine=eng, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                     top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                     seed=seed, stop=stop, special=special)
    gen.stats.load_seconds = m.load_seconds + time.perf_counter() - t0
    try:
        for piece in gen:
            if not as_json:
                click.echo(piece, nl=False)
                sys.stdout.flush()
    finally:
        eng.close()
    if as_json:
        click.echo(json.dumps({"model": str(m.path), "engine": engine, "prompt": prompt, "text": gen.text,
                               "tokens": gen.tokens, "stats": gen.stats.to_dict()}))
    else:
        click.echo()
    if verbose:
        _print_stats(gen.stats)


def _int_list(ctx, param, value):
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not items or any(i < 1 or i > 256 for i in items):
        raise click.BadParameter("give integers between 1 and 256, e.g. 1,2")
    return tuple(items)


def _engine_list(ctx, param, value):
    from realm.engines import ENGINE_NAMES

    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in ENGINE_NAMES]
    if not items or bad:
        raise click.BadParameter(f"unknown engine(s) {bad}; choose from {','.join(ENGINE_NAMES)}")
    return items


@main.command()
@click.option("-m", "--model", type=click.Path(dir_okay=True), help="GGUF file (default: the default model).")
@click.option("--engines", default="wasm,numba", show_default=True, callback=_engine_list,
              help="Comma-separated: wasm, numba, reference.")
@click.option("--threads", default="1,2", show_default=True, callback=_int_list,
              help="Thread counts: Numba threads; wasm guest instances sharing the weight matrices.")
@click.option("--prompt-tokens", type=click.IntRange(1, 4096), default=128, show_default=True)
@click.option("--gen-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--repeat", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@click.option("--no-startup", is_flag=True, help="Skip the cold/cached start-up measurements.")
@click.option("--sequential", is_flag=True,
              help="One engine alive at a time (less memory) instead of interleaving the repeats across engines.")
@handle_errors
def bench(model, engines, threads, prompt_tokens, gen_tokens, repeat, out_dir, no_startup, sequential):
    """Benchmark engines on one model; writes report.json, report.md (and report.png with matplotlib)."""
    from realm.bench import BenchSettings, run_bench, write_report

    if model is None:
        from realm.models import default_model_path

        default_model_path(_Progress("assembling the default model"))
    settings = BenchSettings(model=model, engines=engines, threads=threads, prompt_tokens=prompt_tokens,
                             gen_tokens=gen_tokens, repeat=repeat, out_dir=out_dir, startup=not no_startup,
                             interleave=not sequential)
    t0 = time.perf_counter()
    report = run_bench(settings, progress=lambda msg: click.echo(f"[{time.perf_counter() - t0:6.1f}s] {msg}", err=True))
    paths = write_report(report, out_dir)
    click.echo()
    click.echo(f"{'engine':<28} {'prefill tok/s':>14} {'decode tok/s':>13} {'of bandwidth':>13}")
    for run in report["runs"]:
        click.echo(f"{run['label']:<28} {run['prefill_tps']['median']:>14.1f} {run['decode_tps']['median']:>13.2f} "
                   f"{100 * run['decode_fraction_of_bandwidth']:>12.0f}%")
    for pair, a in report.get("agreement", {}).items():
        click.echo(f"agreement {pair}: max abs diff {a['max_abs_diff']:.4f}, top-1 {100 * a['top1_agreement']:.1f}%")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _print_stats(stats) -> None:
    s = stats
    rows = [
        ("load duration", f"{s.load_seconds:.3f}s"),
        ("prompt eval count", f"{s.prompt_tokens} token(s)"),
        ("prompt eval duration", f"{s.prefill_seconds:.3f}s"),
        ("prompt eval rate", f"{s.prefill_tokens_per_second:.2f} tokens/s"),
        ("eval count", f"{s.generated_tokens} token(s)"),
        ("eval duration", f"{s.decode_seconds:.3f}s"),
        ("eval rate", f"{s.decode_tokens_per_second:.2f} tokens/s"),
        ("stop reason", s.stop_reason),
    ]
    for key, value in s.engine.items():
        if isinstance(value, (int, float, str)):
            rows.append((key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value)))
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}", err=True)


if __name__ == "__main__":
    main()
