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
@click.option("--chat", "as_chat", is_flag=True, help="Apply the chat template: PROMPT is one user message.")
@click.option("--system", help="With --chat: a system message first.")
@click.option("--chat-template", "template_name", metavar="NAME",
              help="With --chat: a built-in template instead of the model's (chatml, llama3, gemma, phi3, ...).")
@click.option("--chat-template-file", "template_file", type=click.Path(dir_okay=False),
              help="With --chat: a Jinja chat template file instead of the model's.")
@handle_errors
def run(prompt, model, engine, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        seed, stop, special, ctx, threads, memory_budget, runtime, as_json, verbose, as_chat, system, template_name,
        template_file):
    """Generate a completion of PROMPT (default: "What is the capital of France?"; "-" reads stdin).

    With the built-in default prompt (and no --stop or --chat), generation ends at the first blank
    line after the answer: the default model is a base model and would go on with more questions.
    """
    stop_after_text = False
    if (system or template_name or template_file) and not as_chat:
        _fail("--system, --chat-template and --chat-template-file need --chat")
    if prompt is None:
        prompt = DEFAULT_PROMPT
        if not stop and not as_chat:
            stop, stop_after_text = ("\n\n",), True
    elif prompt == "-":
        prompt = sys.stdin.read()
    if not prompt:
        _fail("the prompt is empty")
    m = _open_model(model)
    options = {}
    if engine in ("numba", "wasm") and threads is not None:
        options["threads"] = threads
    if engine == "numba":
        options["progress"] = lambda msg: click.echo(msg, err=True)
    if engine == "wasm":
        options["memory_budget"] = memory_budget
        options["runtime"] = runtime
    if ctx is not None and m.config is not None and ctx > m.config.context_length:
        _fail(f"--ctx {ctx} exceeds the model's trained context length {m.config.context_length}")
    rendered = None
    if as_chat:
        from realm.chat import ChatTemplate

        template = ChatTemplate.for_model(m, name=template_name, file=template_file)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered = template.render(messages)
    t0 = time.perf_counter()
    eng = m.engine(engine, n_ctx=ctx, **options)
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed, stop=stop)
    if as_chat:
        gen = m.chat(messages, template=template, engine=eng, **sampling)
    else:
        gen = m.generate(prompt, engine=eng, special=special, **sampling)
        gen.stop_after_text = stop_after_text
    gen.stats.load_seconds = m.load_seconds + time.perf_counter() - t0
    try:
        for piece in gen:
            if not as_json:
                click.echo(piece, nl=False)
                sys.stdout.flush()
    finally:
        eng.close()
    if as_json:
        out = {"model": str(m.path), "engine": engine, "prompt": prompt, "text": gen.text,
               "tokens": gen.tokens, "stats": gen.stats.to_dict()}
        if rendered is not None:
            out["chat_prompt"] = rendered
        click.echo(json.dumps(out))
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
    from realm.bench import BENCH_ENGINES

    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in BENCH_ENGINES]
    if not items or bad:
        raise click.BadParameter(f"unknown engine(s) {bad}; choose from {','.join(BENCH_ENGINES)}")
    return items


@main.command()
@click.option("-m", "--model", type=click.Path(dir_okay=True), help="GGUF file (default: the default model).")
@click.option("--engines", default="wasm,numba", show_default=True, callback=_engine_list,
              help="Comma-separated: wasm, numba, reference, node (the JavaScript host, Node.js >= 20).")
@click.option("--threads", default="1,2", show_default=True, callback=_int_list,
              help="Thread counts: Numba threads; wasm guest instances sharing the weight matrices.")
@click.option("--prompt-tokens", type=click.IntRange(1, 4096), default=128, show_default=True)
@click.option("--gen-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--repeat", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@click.option("--no-startup", is_flag=True, help="Skip the cold/cached start-up measurements.")
@click.option("--sequential", is_flag=True,
              help="One engine alive at a time (less memory) instead of interleaving the repeats across engines.")
@click.option("--compare-llama-cpp", is_flag=True,
              help="Add llama.cpp rows (extra 'llamacpp': llama-cpp-python, its own process per thread count, "
                   "fed realm's token ids) and the ratios to them.")
@click.option("--runtime", type=click.Choice(["all", "auto", "wasmtime", "wasmer"]), default="all", show_default=True,
              help="wasm engine: guest runtime(s) to measure (all: every installed one; wasmer needs CPython 3.10).")
@click.option("--in-process", is_flag=True,
              help="Run realm's engines in this process instead of one worker process per engine variant.")
@handle_errors
def bench(model, engines, threads, prompt_tokens, gen_tokens, repeat, out_dir, no_startup, sequential,
          compare_llama_cpp, runtime, in_process):
    """Benchmark engines on one model; writes report.json, report.md (and report.png with matplotlib)."""
    from realm.bench import BenchSettings, run_bench, write_report

    if model is None:
        from realm.models import default_model_path

        default_model_path(_Progress("assembling the default model"))
    settings = BenchSettings(model=model, engines=engines, threads=threads, prompt_tokens=prompt_tokens,
                             gen_tokens=gen_tokens, repeat=repeat, out_dir=out_dir, startup=not no_startup,
                             interleave=not sequential, compare_llama_cpp=compare_llama_cpp, runtimes=(runtime,),
                             isolate=not in_process)
    t0 = time.perf_counter()
    report = run_bench(settings, progress=lambda msg: click.echo(f"[{time.perf_counter() - t0:6.1f}s] {msg}", err=True))
    paths = write_report(report, out_dir)
    click.echo()
    width = max([28] + [len(run["label"]) for run in report["runs"]])
    click.echo(f"{'engine':<{width}} {'prefill tok/s':>14} {'decode tok/s':>13} {'of bandwidth':>13}")
    for run in report["runs"]:
        click.echo(f"{run['label']:<{width}} {run['prefill_tps']['median']:>14.1f} {run['decode_tps']['median']:>13.2f} "
                   f"{100 * run['decode_fraction_of_bandwidth']:>12.0f}%")
    for x in report.get("llama_cpp_ratios", []):
        click.echo(f"{x['label']} / {x['llama_cpp']}: prefill x{x['prefill']:.2f}, decode x{x['decode']:.2f}")
    for pair, a in report.get("agreement", {}).items():
        click.echo(f"agreement {pair}: max abs diff {a['max_abs_diff']:.4f}, top-1 {100 * a['top1_agreement']:.1f}%")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@main.command()
@click.option("-m", "--model", "models", multiple=True,
              help="GGUF file, or NAME=PATH to serve it as NAME (repeatable; default: the default model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--parallel", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Requests generating at once, each in its own guest.")
@click.option("--max-queue", type=click.IntRange(0, 100_000), default=8, show_default=True,
              help="Requests waiting beyond those; more get 503 with Retry-After.")
@click.option("--memory-budget", type=ByteSize(1 << 20, 4 << 30), default="64MiB", show_default=True,
              help="wasm engine: linear memory of each guest.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, exists=True),
              help="Lines `KEY TENANT [concurrency=N] [max_tokens=N] [quota=N]`; without it only 127.0.0.1 is served.")
@click.option("-e", "--engine", type=click.Choice(["wasm", "numba"]), default="wasm", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Guest instances (wasm) or Numba threads per request.")
@click.option("--ctx", type=click.IntRange(1, 1 << 20), default=None, help="Context length (default: min(model's, 2048)).")
@click.option("--timeout", type=click.FloatRange(0, None, min_open=True), default=300.0, show_default=True,
              help="Seconds a request may generate for.")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True,
              help="Tokens a chat request generates when it sets no max_tokens.")
@click.option("--max-body", type=ByteSize(1024, 1 << 30), default="1MiB", show_default=True,
              help="Largest request body; larger ones get 413.")
@click.option("--chat-template", "chat_template", default=None,
              help="A built-in chat template (e.g. gemma, chatml, llama3) instead of the models' own.")
@click.option("--chat-template-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A Jinja chat template file instead of the models' own (rendered sandboxed).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@handle_errors
def serve(models, host, port, parallel, max_queue, memory_budget, api_key_file, engine, threads, ctx, timeout,
          max_tokens, max_body, chat_template, chat_template_file, log_level):
    """Serve models over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, ...)."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        _fail(f"`realm serve` needs the serve extra: pip install -e '.[serve]' ({e})")
    import logging
    import threading

    from realm.server.app import create_app
    from realm.server.settings import Settings, is_loopback

    if api_key_file is None and not is_loopback(host):
        _fail(f"--host {host} is not a loopback address: serving other machines needs --api-key-file")
    for spec in models:
        if "=" not in spec:
            from realm.models import resolve_model

            resolve_model(spec)
    if not models:
        from realm.models import default_model_path

        default_model_path(_Progress("assembling the default model"))
    settings = Settings(models=list(models), host=host, port=port, parallel=parallel, max_queue=max_queue,
                        memory_budget=memory_budget, api_key_file=api_key_file, engine=engine, threads=threads,
                        ctx=ctx, timeout=timeout, max_tokens=max_tokens, max_body_bytes=max_body,
                        chat_template=chat_template, chat_template_file=chat_template_file)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    failed = []

    def watch():
        status = app.state.scheduler.wait_ready(timeout=None)
        if status != "ok":
            failed.append(app.state.scheduler.load_error)
            server.should_exit = True
        else:
            names = ", ".join(app.state.scheduler.models)
            bound = port
            for _ in range(600):  # --port 0: say the port the OS picked, once uvicorn has bound it
                if server.started or failed:
                    break
                time.sleep(0.05)
            if server.started and server.servers and server.servers[0].sockets:
                bound = server.servers[0].sockets[0].getsockname()[1]
            click.echo(f"realm: serving {names} on http://{host}:{bound} ({engine} engine, {parallel} parallel, "
                       f"queue {max_queue})", err=True)
            if api_key_file is None:
                click.echo("realm: no --api-key-file: only clients on 127.0.0.1 are served, without keys", err=True)

    threading.Thread(target=watch, daemon=True).start()
    server.run()
    if failed:
        _fail(f"loading the models failed: {failed[0]}")


CHAT_HELP = "/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply"


@main.command()
@click.option("-m", "--model", type=click.Path(dir_okay=True), help="GGUF file (default: the default model).")
@click.option("--system", help="A system message that starts the conversation (kept across /reset).")
@click.option("--chat-template", "template_name", metavar="NAME",
              help="A built-in template instead of the model's own (chatml, llama3, gemma, phi3, mistral-v7, ...).")
@click.option("--chat-template-file", "template_file", type=click.Path(dir_okay=False),
              help="A Jinja chat template file instead of the model's own.")
@click.option("-e", "--engine", type=click.Choice(["wasm", "numba", "reference"]), default="wasm", show_default=True)
@click.option("-n", "--max-tokens", type=click.IntRange(0, 1_000_000), default=512, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--temperature", type=click.FloatRange(0, 100), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0, None), default=40, show_default=True, help="0 = off.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--min-p", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--repeat-penalty", type=click.FloatRange(0, 100, min_open=True), default=1.0, show_default=True)
@click.option("--repeat-last-n", type=click.IntRange(0, None), default=64, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
@click.option("--stop", multiple=True, help="Also end a reply at this text (repeatable).")
@click.option("--ctx", type=click.IntRange(1, 1 << 20), default=None, help="Context length (default: min(model's, 2048)).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="numba: threads; wasm: guest instances sharing the weight matrices.")
@click.option("--memory-budget", type=ByteSize(1 << 20, 4 << 30), default="64MiB", show_default=True,
              help="wasm engine: cap on the guest's linear memory.")
@click.option("-v", "--verbose", is_flag=True, help="After each reply, print its token counts and timings to stderr.")
@handle_errors
def chat(model, system, template_name, template_file, engine, max_tokens, temperature, top_k, top_p, min_p,
         repeat_penalty, repeat_last_n, seed, stop, ctx, threads, memory_budget, verbose):
    """Chat with a model in the terminal (multi-turn; each turn evaluates only its new tokens)."""
    from realm.chat import ChatTemplate

    m = _open_model(model)
    template = ChatTemplate.for_model(m, name=template_name, file=template_file)
    options = {}
    if engine in ("numba", "wasm") and threads is not None:
        options["threads"] = threads
    if engine == "numba":
        options["progress"] = lambda msg: click.echo(msg, err=True)
    if engine == "wasm":
        options["memory_budget"] = memory_budget
    if ctx is not None and m.config is not None and ctx > m.config.context_length:
        _fail(f"--ctx {ctx} exceeds the model's trained context length {m.config.context_length}")
    eng = m.engine(engine, n_ctx=ctx, **options)
    try:
        session = m.chat_session(template=template, engine=eng, system=system, max_tokens=max_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed, stop=stop)
        click.echo(f"realm chat: {m.path.name}, template {template.name}, engine {engine}; {CHAT_HELP}", err=True)
        _chat_loop(session, verbose)
    finally:
        eng.close()


def _chat_loop(session, verbose: bool) -> None:
    import signal

    while True:
        try:
            line = input("> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo("\n(Ctrl-D or /exit quits)", err=True)
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            click.echo("(conversation reset)", err=True)
            continue
        if command.startswith("/") and " " not in command:
            click.echo(f"unknown command {command}; {CHAT_HELP}", err=True)
            continue
        try:
            gen = session.send(line)
        except RealmError as e:
            click.echo(f"realm: error: {e}", err=True)
            continue
        presses = []

        def on_sigint(signum, frame):  # the first Ctrl-C stops the reply, a second one the program
            presses.append(1)
            if len(presses) > 1:
                raise KeyboardInterrupt
            gen.cancel()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            for piece in gen:
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except RealmError as e:
            click.echo(f"\nrealm: error: {e}", err=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        click.echo()
        if verbose:
            s, t = gen.stats, session.last
            click.echo(f"[prompt {s.prompt_tokens} new token(s), {t.reused_tokens} reused from the cache"
                       f"{' (cache reset)' if t.reset else ''}; reply {s.generated_tokens} token(s), "
                       f"{s.decode_tokens_per_second:.1f} tok/s, stop {s.stop_reason}; context {session.n_past}]",
                       err=True)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@handle_errors
def web(port):
    """Serve the browser host (js/web: a page and a Web Worker running the guest) on 127.0.0.1."""
    from realm.web import make_server

    server = make_server(port)
    host, bound = server.server_address[:2]
    click.echo(f"realm web: open http://{host}:{bound}/ (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


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
