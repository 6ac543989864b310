"""The scheduler: the one place that decides who runs. It owns the served models, their guest
pools and the bounded queue.

    job = scheduler.completion_job(tenant, request, loop)   # tokenize, check limits (ServeError)
    scheduler.submit(job)                                    # 503 + Retry-After when full
    async for kind, value in job.stream(): ...               # ("text", piece) ... ("done", reason)

`parallel` worker threads take jobs first come, first served; each job runs in a guest of its
own taken from the model's pool (created on demand, `reset()` before it goes back, so no KV state
crosses requests or tenants; closed instead when anything went wrong). Guests release the GIL
inside wasmtime, so the workers generate in parallel. A job is cancelled by `job.cancel()` (the
client went away): its generation stops before the next token. A job that runs past its deadline
ends with an error; the guest's own epoch deadline is lowered to what the job has left, so even one
long guest call cannot overrun it by more than a tick, and the guest is recycled.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from realm.api import Model
from realm.engines import DEFAULT_CTX
from realm.errors import ChatTemplateError, GuestError, RealmError, ServeError
from realm.generate import Generation
from realm.host.store import ModelStore
from realm.models import resolve_model
from realm.sampling import SamplingParams
from realm.server.metrics import Metrics
from realm.server.protocol import ChatCompletionRequest, CompletionRequest
from realm.server.settings import Settings
from realm.server.tenants import Tenant

log = logging.getLogger("realm.server")

FINISH = {"eos": "stop", "stop_string": "stop", "max_tokens": "length", "context": "length"}


def _deadline_error(seconds: float) -> ServeError:
    return ServeError(f"the request ran past its deadline of {seconds:g} s and was stopped", 504,
                      type="timeout_error", code="deadline_exceeded")


def _internal(message: str = "the model failed while generating; the request was stopped") -> ServeError:
    return ServeError(message, 500, type="server_error", code="generation_failed")


class ServedModel:
    """One model served under `name`: opened once, stored once, a pool of engines (guests)."""

    def __init__(self, name: str, path: Path, settings: Settings, store: ModelStore):
        self.name, self.settings, self.store = name, settings, store
        self.model = Model(path)
        if self.model.config is None:
            raise RealmError(f"model {name} ({path}) cannot run: {self.model.config_error}")
        trained = int(self.model.config.context_length)
        self.n_ctx = min(trained, settings.ctx or DEFAULT_CTX)
        self.created = int(time.time())
        pieces = self.model.gguf.metadata.get("tokenizer.ggml.tokens") or [""]
        self.max_piece_chars = max(1, max(len(t) for t in pieces if isinstance(t, str)))
        self.store_id = store.add(self.model.gguf) if settings.engine == "wasm" else None  # pinned: stays stored
        self._idle: list = []
        self._live: set = set()
        self._lock = threading.Lock()
        self.chat = None  # realm.chat.ChatTemplate, when the model can chat
        self.chat_stop_ids: frozenset[int] | None = None
        self.chat_error: ServeError | None = None

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _new_engine(self):
        s = self.settings
        options: dict[str, Any] = {}
        if s.engine == "wasm":
            options = dict(memory_budget=s.memory_budget, threads=s.threads, store=self.store)
        elif s.engine == "numba":
            options = dict(threads=s.threads)
        engine = self.model.engine(s.engine, n_ctx=self.n_ctx, **options)
        guest = getattr(engine, "guest", None)
        engine._realm_call_timeout = guest.timeout if guest is not None else None
        return engine

    def acquire(self):
        """An engine with an empty KV cache: a pooled one, or a new one."""
        with self._lock:
            engine = self._idle.pop() if self._idle else None
        if engine is None:
            engine = self._new_engine()
            with self._lock:
                self._live.add(engine)
        return engine

    def release(self, engine, healthy: bool) -> None:
        """Back to the pool after `reset()` (KV cache emptied), or closed if anything went wrong."""
        guest = getattr(engine, "guest", None)
        if guest is not None:
            guest.timeout = engine._realm_call_timeout
        if healthy:
            try:
                engine.reset()
            except RealmError as e:
                log.warning("model %s: a guest failed to reset (%s); recycling it", self.name, e)
                healthy = False
        with self._lock:
            if healthy and len(self._idle) < self.settings.parallel:
                self._idle.append(engine)
                return
            self._live.discard(engine)
        engine.close()

    def guest_memory(self) -> tuple[int, int]:
        """(live engines, bytes of their linear memory)."""
        with self._lock:
            live = list(self._live)
        return len(live), sum(int(getattr(e, "memory_size", 0)) for e in live)

    def close(self) -> None:
        with self._lock:
            engines, self._idle, self._live = list(self._live), [], set()
        for e in engines:
            e.close()
        self.model.close()


class Job:
    """One accepted request: what to generate, and the events its worker sends back to the loop."""

    def __init__(self, served: ServedModel, tenant: Tenant, prompt_ids: list[int], max_tokens: int,
                 sampling: SamplingParams, stop: Sequence[str], loop: asyncio.AbstractEventLoop,
                 stop_ids: frozenset[int] | None = None):
        self.id = secrets.token_hex(12)
        self.served, self.tenant = served, tenant
        self.prompt_ids, self.max_tokens, self.sampling, self.stop = prompt_ids, max_tokens, sampling, tuple(stop)
        self.stop_ids = stop_ids
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.accepted = time.monotonic()
        self.gen: Generation | None = None
        self.cancelled = False
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.error: ServeError | None = None
        self.done = threading.Event()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        """Stop before the next token (from any thread); a queued job never starts."""
        self.cancelled = True
        gen = self.gen
        if gen is not None:
            gen.cancel()

    def _emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    async def stream(self) -> AsyncIterator[tuple[str, Any]]:
        """("text", piece)..., then ("done", finish_reason) or ("error", ServeError)."""
        while True:
            kind, value = await self.events.get()
            yield kind, value
            if kind != "text":
                return


class _DeadlineEngine:
    """An engine whose every eval must finish by `deadline` (monotonic seconds)."""

    def __init__(self, engine, deadline: float, seconds: float):
        self.engine, self.deadline, self.seconds = engine, deadline, seconds
        self.call_timeout = getattr(engine, "_realm_call_timeout", None)

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def eval(self, ids, all_logits: bool = False):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _deadline_error(self.seconds)
        guest = getattr(self.engine, "guest", None)
        if guest is not None:
            guest.timeout = left if self.call_timeout is None else min(self.call_timeout, left)
        try:
            return self.engine.eval(ids, all_logits)
        except GuestError:
            if time.monotonic() >= self.deadline - 0.05:
                raise _deadline_error(self.seconds) from None
            raise


class Scheduler:
    """Loads the models (in a thread: `/health` says "loading" meanwhile), admits jobs into the
    bounded queue and runs them on `parallel` worker threads."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = ModelStore()
        self.models: dict[str, ServedModel] = {}
        self.status = "loading"
        self.load_error: str | None = None
        self._queue: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._in_flight = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._loader: threading.Thread | None = None
        self._loaded = threading.Event()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, background: bool = True) -> None:
        if background:
            self._loader = threading.Thread(target=self._load, name="realm-load", daemon=True)
            self._loader.start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            for spec in self.settings.models or [None]:
                name, path = _parse_model_spec(spec)
                if name in self.models:
                    raise RealmError(f"two models are served as {name!r}; name them with NAME=PATH")
                served = ServedModel(name, path, self.settings, self.store)
                self.models[name] = served
                self._load_chat_template(served)
                served.release(served.acquire(), healthy=True)  # one guest made and checked up front
                log.info("model %s loaded from %s (context %d)", name, path, served.n_ctx)
            for i in range(self.settings.parallel):
                t = threading.Thread(target=self._work, name=f"realm-worker-{i}", daemon=True)
                t.start()
                self._workers.append(t)
            self.status = "ok"
        except Exception as e:  # reported by /health and at start-up; the server answers 503
            self.load_error = str(e) if isinstance(e, RealmError) else f"{type(e).__name__}: {e}"
            self.status = "error"
            log.error("loading the models failed: %s", self.load_error)
        finally:
            self._loaded.set()

    def _load_chat_template(self, served: ServedModel) -> None:
        """The model's chat template (sandboxed, realm.chat), or why chat requests to it get 400."""
        from realm.chat import ChatTemplate

        s = self.settings
        try:
            served.chat = ChatTemplate.for_model(served.model, name=s.chat_template, file=s.chat_template_file)
            served.chat_stop_ids = served.chat.stop_ids_for(served.tokenizer)
        except ChatTemplateError as e:
            log.warning("model %s: no chat: %s", served.name, e)
            served.chat_error = ServeError(f"model {served.name} cannot chat: {e}", 400,
                                           code="chat_template_unavailable")

    def wait_ready(self, timeout: float | None) -> str:
        """Wait until loading finished (or `timeout` seconds); the status then."""
        self._loaded.wait(timeout)
        return self.status

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            queued, self._queue = list(self._queue), collections.deque()
            running = list(self._running)
            self._cv.notify_all()
        for job in queued:
            job.error = ServeError("the server is shutting down", 503, type="server_error", code="shutting_down")
            self._finished(job)
        for job in running:
            job.cancel()
        for t in self._workers:
            t.join(timeout=30)
        if self._loader is not None:
            self._loader.join(timeout=30)
        for served in self.models.values():
            served.close()
        self.store.close()

    # -- admission ---------------------------------------------------------------------------------

    def get_model(self, name: str | None) -> ServedModel:
        self.check_ready()
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        served = self.models.get(name) if name is not None else None
        if served is None:
            known = ", ".join(sorted(self.models))
            raise ServeError(f"the model {name!r} does not exist (served: {known})", 404, param="model",
                             code="model_not_found")
        return served

    def check_ready(self) -> None:
        if self.status == "ok":
            return
        if self.status == "loading":
            raise ServeError("the server is loading its models", 503, type="server_error", code="loading",
                             headers={"Retry-After": str(self.settings.retry_after)})
        raise ServeError("the server failed to load its models", 503, type="server_error", code="load_failed")

    def completion_job(self, tenant: Tenant, req: CompletionRequest, loop) -> Job:
        served = self.get_model(req.model)
        _check_length(served, len(req.prompt))
        ids = served.tokenizer.encode(req.prompt, add_bos=True)
        return self._job(served, tenant, req, ids, req.max_tokens, loop)

    def chat_job(self, tenant: Tenant, req: ChatCompletionRequest, loop) -> Job:
        served = self.get_model(req.model)
        if served.chat is None:
            raise served.chat_error
        messages = req.plain_messages()
        _check_length(served, sum(len(m["content"]) for m in messages))
        try:
            ids = served.chat.encode(served.tokenizer, messages, add_generation_prompt=True)
        except ChatTemplateError as e:  # the template refused the conversation, or broke a sandbox bound
            raise ServeError(f"the chat template failed on these messages: {e}", 400, param="messages",
                             code="chat_template_error") from None
        return self._job(served, tenant, req, ids, req.token_limit, loop, stop_ids=served.chat_stop_ids)

    def _job(self, served: ServedModel, tenant: Tenant, req, ids: list[int], max_tokens: int | None, loop,
             stop_ids=None) -> Job:
        n_ctx, n_prompt = served.n_ctx, len(ids)
        if not ids:
            raise ServeError("the prompt is empty", 400, param="prompt")
        if max_tokens is None:
            max_tokens = min(self.settings.max_tokens, max(0, n_ctx - n_prompt))
            if tenant.max_tokens is not None:
                max_tokens = min(max_tokens, tenant.max_tokens)
        elif tenant.max_tokens is not None and max_tokens > tenant.max_tokens:
            raise ServeError(f"max_tokens {max_tokens} exceeds this API key's limit of {tenant.max_tokens}",
                             400, param="max_tokens", code="max_tokens_exceeded")
        if n_prompt + max_tokens > n_ctx or n_prompt >= n_ctx:
            raise ServeError(f"this model's context holds {n_ctx} tokens, but {n_prompt + max_tokens} were requested "
                             f"({n_prompt} in the prompt, {max_tokens} to generate)", 400, param="max_tokens",
                             code="context_length_exceeded")
        left = tenant.tokens_left()
        if left is not None:
            if left <= n_prompt:
                raise ServeError(f"tenant {tenant.name!r} has {left} tokens of its quota left, the prompt needs "
                                 f"{n_prompt}", 429, type="insufficient_quota", code="insufficient_quota")
            max_tokens = min(max_tokens, left - n_prompt)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        sampling = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                                  repeat_penalty=req.repeat_penalty, seed=seed)
        try:
            sampling.validate()
        except RealmError as e:
            raise ServeError(str(e), 422) from None
        return Job(served, tenant, ids, max_tokens, sampling, req.stop or (), loop, stop_ids=stop_ids)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise 503 (queue full, with Retry-After) / 429 (tenant limits)."""
        s = self.settings
        with self._cv:
            self.check_ready()
            if self._stopping:
                raise ServeError("the server is shutting down", 503, type="server_error", code="shutting_down")
            if self._in_flight >= s.parallel + s.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise ServeError(f"the server is busy ({s.parallel} running, {s.max_queue} queued); retry later",
                                 503, type="server_error", code="queue_full",
                                 headers={"Retry-After": str(s.retry_after)})
            try:
                job.tenant.admit()
            except ServeError:
                self.metrics.rejected.labels("tenant_limit").inc()
                raise
            self._in_flight += 1
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cv.notify()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {"in_flight": self._in_flight, "queued": len(self._queue), "running": len(self._running)}

    # -- running -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._running.add(job)
                self.metrics.queue_depth.set(len(self._queue))
            try:
                self._run(job)
            except BaseException as e:  # never lose a worker
                log.exception("worker failed on a job")
                job.error = _internal() if not isinstance(e, ServeError) else e
            finally:
                with self._cv:
                    self._running.discard(job)
                self._finished(job)

    def _finished(self, job: Job) -> None:
        with self._cv:
            self._in_flight = max(0, self._in_flight - 1)
        job.tenant.finish(job.prompt_tokens + job.completion_tokens if job.gen is not None else 0)
        if job.error is not None:
            job._emit("error", job.error)
            finish = job.error.code or "error"
        else:
            job._emit("done", job.finish_reason)
            finish = job.finish_reason or "none"
        self.metrics.generations.labels(job.served.name, finish).inc()
        job.done.set()

    def _run(self, job: Job) -> None:
        if job.cancelled:
            job.finish_reason = "cancelled"
            return
        served, m = job.served, self.metrics
        m.running.inc()
        engine = None
        healthy = False
        try:
            engine = served.acquire()
            self._update_guest_metrics(served)
            t_start = time.monotonic()
            guarded = _DeadlineEngine(engine, t_start + self.settings.timeout, self.settings.timeout)
            gen = Generation(guarded, served.tokenizer, job.prompt_ids, max_tokens=job.max_tokens,
                             sampling=job.sampling, stop=job.stop, n_ctx=served.n_ctx, stop_ids=job.stop_ids)
            job.gen = gen
            if job.cancelled:
                gen.cancel()
            last = None
            for piece in gen:
                now = time.monotonic()
                if last is None:
                    m.ttft.labels(served.name).observe(now - job.accepted)
                else:
                    m.itl.labels(served.name).observe(now - last)
                last = now
                job._emit("text", piece)
            job.completion_tokens = len(gen.tokens)
            m.prompt_tokens.labels(served.name).inc(job.prompt_tokens)
            m.completion_tokens.labels(served.name).inc(job.completion_tokens)
            reason = gen.stats.stop_reason
            job.finish_reason = "cancelled" if reason == "cancelled" else FINISH.get(reason, "stop")
            healthy = True
        except ServeError as e:  # the deadline
            job.error = e
        except GuestError as e:
            log.warning("model %s: a guest failed (%s); it is recycled", served.name, e)
            job.error = _internal()
        except RealmError as e:
            log.warning("model %s: generation failed: %s", served.name, e)
            job.error = _internal(f"generation failed: {e}")
        finally:
            if job.gen is not None:
                job.completion_tokens = len(job.gen.tokens)
            if engine is not None:
                served.release(engine, healthy)
                self._update_guest_metrics(served)
            m.running.dec()

    def _update_guest_metrics(self, served: ServedModel) -> None:
        n, size = served.guest_memory()
        self.metrics.guests.labels(served.name).set(n)
        self.metrics.guest_memory.labels(served.name).set(size)
        self.metrics.store_bytes.set(self.store.stats()["mapped_bytes"])


def _check_length(served: ServedModel, n_chars: int) -> None:
    """Reject, without tokenizing, text too long for the context whatever its tokens (a token
    covers at most `max_piece_chars` characters)."""
    if n_chars > served.n_ctx * served.max_piece_chars:
        raise ServeError(f"the prompt of {n_chars} characters cannot fit this model's context of {served.n_ctx} tokens",
                         400, param="prompt", code="context_length_exceeded")


def _parse_model_spec(spec: str | None) -> tuple[str, Path]:
    """`None` (the default model), `PATH` or `NAME=PATH` -> (served name, path)."""
    name = None
    if spec is not None and "=" in spec and not Path(spec).exists():
        name, _, spec = spec.partition("=")
        if not name:
            raise RealmError(f"empty model name in {spec!r}")
    path = resolve_model(spec)
    return name or path.stem, path
