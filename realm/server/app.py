"""The HTTP front: `create_app(settings)` builds the FastAPI app of `realm serve`.

Routes are thin: parse (pydantic, realm.server.protocol), authorize (the gate middleware), hand to
the scheduler, stream the result as server-sent events (`data: {chunk}` ... `data: [DONE]`, the
format OpenAI's clients parse). Every error becomes OpenAI's error body in the handlers below;
nothing else (no traceback) reaches the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from realm.errors import RealmError, ServeError
from realm.server import protocol as p
from realm.server.metrics import Metrics
from realm.server.scheduler import Job, Scheduler
from realm.server.settings import Settings, is_loopback
from realm.server.tenants import KeyRing

log = logging.getLogger("realm.server")

PUBLIC_PATHS = ("/", "/chat.js", "/health", "/metrics", "/favicon.ico")
KNOWN_PATHS = PUBLIC_PATHS + ("/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
POLL_DISCONNECT = 0.5  # seconds between checks that a non-streaming client is still there
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read (FastAPI passes HTTP exceptions through unchanged)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")


def _error_body(message: str, type: str, code: str | int | None = None, param: str | None = None) -> dict:
    return p.ErrorResponse(error=p.ErrorDetail(message=message, type=type, code=code, param=param)).model_dump()


def _json_error(status: int, message: str, type: str, code=None, param=None, headers=None) -> JSONResponse:
    return JSONResponse(_error_body(message, type, code, param), status_code=status, headers=headers)


class _Gate:
    """ASGI middleware: authenticates protected paths (the tenant goes to `request.state.tenant`),
    refuses non-loopback clients when no keys are configured, caps the request body, counts
    responses for /metrics."""

    def __init__(self, app, keyring: KeyRing, max_body: int, metrics: Metrics):
        self.app, self.keyring, self.max_body, self.metrics = app, keyring, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status_seen = {"status": 0}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        async def reject(status, message, type, code=None, headers=None):
            await _json_error(status, message, type, code, headers=headers)(scope, receive, counted_send)

        client = scope.get("client")
        if self.keyring.local is not None and client and not is_loopback(client[0]):
            return await reject(403, "this server has no API keys and only serves clients on 127.0.0.1",
                                "permission_error", "loopback_only")
        if path not in PUBLIC_PATHS:
            headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", []))
            try:
                tenant = self.keyring.authenticate(headers.get("authorization"))
            except ServeError as e:
                return await reject(e.status, str(e), e.type, e.code,
                                    headers={"WWW-Authenticate": "Bearer"})
            scope.setdefault("state", {})["tenant"] = tenant
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await reject(413, f"the request body is larger than {self.max_body} bytes",
                                    "invalid_request_error", "body_too_large")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        await self.app(scope, limited_receive, counted_send)


def create_app(settings: Settings | None = None, *, scheduler: Scheduler | None = None,
               load_in_background: bool = True) -> FastAPI:
    """The server app. Models load when the app starts (in a thread unless `load_in_background`
    is False); `/health` answers 503 until they are ready."""
    settings = settings or Settings()
    metrics = scheduler.metrics if scheduler is not None else Metrics()
    scheduler = scheduler or Scheduler(settings, metrics)
    keyring = KeyRing.from_file(settings.api_key_file) if settings.api_key_file else KeyRing.open_local()

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start(background=load_in_background)
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.shutdown)

    app = FastAPI(title="realm", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.settings, app.state.scheduler, app.state.metrics, app.state.keyring = settings, scheduler, metrics, keyring
    app.add_middleware(_Gate, keyring=keyring, max_body=settings.max_body_bytes, metrics=metrics)
    _add_error_handlers(app)

    # -- pages and monitoring -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(_static("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/chat.js", include_in_schema=False)
    async def page_script():
        return Response(_static("chat.js"), media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/health")
    async def health():
        body = p.Health(status=scheduler.status, models={n: "ready" for n in scheduler.models})
        return JSONResponse(body.model_dump(), status_code=200 if scheduler.status == "ok" else 503)

    @app.get("/metrics")
    async def metrics_page():
        for served in list(scheduler.models.values()):
            scheduler._update_guest_metrics(served)
        return Response(metrics.render(), media_type=metrics.content_type)

    # -- the API -----------------------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models():
        scheduler.check_ready()
        cards = [p.ModelCard(id=name, created=m.created, meta={"n_ctx": m.n_ctx, "engine": settings.engine,
                                                               "n_vocab": m.tokenizer.vocab_size})
                 for name, m in scheduler.models.items()]
        return p.ModelList(data=cards).model_dump()

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _parse(request, p.CompletionRequest)
        job = await _accept(scheduler, scheduler.completion_job, request, req)
        echo = req.prompt if req.echo else ""
        if req.stream:
            return _sse(_completion_chunks(job, req.model, req.include_usage, echo))
        text, reason = await _collect(job, request)
        text = echo + text
        return p.Completion(id=p.new_id("cmpl"), model=req.model,
                            choices=[p.CompletionChoice(text=text, finish_reason=reason)], usage=_usage(job)).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _parse(request, p.ChatCompletionRequest)
        job = await _accept(scheduler, scheduler.chat_job, request, req)
        if req.stream:
            return _sse(_chat_chunks(job, req.model, req.include_usage))
        text, reason = await _collect(job, request)
        return p.ChatCompletion(id=p.new_id("chatcmpl"), model=req.model,
                                choices=[p.ChatChoice(message=p.AssistantMessage(content=text), finish_reason=reason)],
                                usage=_usage(job)).model_dump()

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = await _parse(request, p.TokenizeRequest)
        served = scheduler.get_model(req.model)
        ids = await run_in_threadpool(served.tokenizer.encode, req.content, add_bos=req.add_special)
        return p.TokenizeResponse(tokens=ids).model_dump()

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = await _parse(request, p.DetokenizeRequest)
        served = scheduler.get_model(req.model)
        n = served.tokenizer.vocab_size
        bad = next((t for t in req.tokens if not 0 <= t < n), None)
        if bad is not None:
            raise ServeError(f"token id {bad} is outside the vocabulary of {n}", 400, param="tokens",
                             code="invalid_token")
        text = await run_in_threadpool(served.tokenizer.decode, req.tokens)
        return p.DetokenizeResponse(content=text).model_dump()

    return app


# -- helpers ------------------------------------------------------------------------------------------


async def _parse(request: Request, model: type[BaseModel]):
    """The body as `model`: not JSON or not an object -> 400, a field wrong -> 422 (whatever the
    Content-Type, as curl's `-d` sends form encoding)."""
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ServeError("the request body is not valid JSON", 400, code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ServeError("the request body must be a JSON object", 400, code="invalid_json")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise _invalid(e.errors(include_input=False, include_url=False)) from None


def _invalid(errors: list) -> ServeError:
    first = errors[0] if errors else {}
    field = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    message = f"invalid field {field}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ServeError(message, 422, code="invalid_field", param=field)


async def _accept(scheduler: Scheduler, make_job, request: Request, req) -> Job:
    """Tokenize and check the request (in a thread: a long prompt must not stall the loop), then queue it."""
    tenant = request.state.tenant
    loop = asyncio.get_running_loop()
    job = await run_in_threadpool(make_job, tenant, req, loop)
    scheduler.submit(job)
    return job


async def _collect(job: Job, request: Request) -> tuple[str, str]:
    """The whole text of a non-streaming job; cancels it if the client goes away."""
    pieces: list[str] = []
    checked = time.monotonic()
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), POLL_DISCONNECT)
            except asyncio.TimeoutError:
                kind = None
            if time.monotonic() - checked >= POLL_DISCONNECT:
                checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
            if kind is None:
                continue
            if kind == "text":
                pieces.append(value)
            elif kind == "error":
                raise value
            else:
                return "".join(pieces), _finish(value)
    finally:
        job.cancel()  # a no-op once the job is done


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(job: Job) -> p.Usage:
    return p.Usage(prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens,
                   total_tokens=job.prompt_tokens + job.completion_tokens)


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _sse(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _error_chunk(e: ServeError) -> str:
    return _data(_error_body(str(e), e.type, e.code, e.param))


async def _completion_chunks(job: Job, model: str, include_usage: bool, echo: str = "") -> AsyncIterator[str]:
    cid, created = p.new_id("cmpl"), int(time.time())

    def chunk(text: str, finish=None, usage=None, choices=True) -> str:
        c = p.Completion(id=cid, created=created, model=model, usage=usage,
                         choices=[p.CompletionChoice(text=text, finish_reason=finish)] if choices else [])
        return _data(c.model_dump())

    try:
        if echo:
            yield chunk(echo)
        async for kind, value in job.stream():
            if kind == "text":
                yield chunk(value)
            elif kind == "error":
                yield _error_chunk(value)
                return
            else:
                yield chunk("", _finish(value))
                if include_usage:
                    yield chunk("", usage=_usage(job), choices=False)
                yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away (or we are done): stop before the next token


async def _chat_chunks(job: Job, model: str, include_usage: bool) -> AsyncIterator[str]:
    cid, created = p.new_id("chatcmpl"), int(time.time())

    def chunk(delta: dict | None, finish=None, usage=None) -> str:
        c = p.ChatCompletionChunk(id=cid, created=created, model=model, usage=usage, choices=[])
        body = c.model_dump()
        if delta is not None:
            body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return _data(body)

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in job.stream():
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "error":
                yield _error_chunk(value)
                return
            else:
                yield chunk({}, _finish(value))
                if include_usage:
                    yield chunk(None, usage=_usage(job).model_dump())
                yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request, e: ServeError):
        return _json_error(e.status, str(e), e.type, e.code, e.param, headers=e.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        err = _invalid(list(e.errors()))
        return _json_error(err.status, str(err), err.type, err.code, err.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        code = "body_too_large" if e.status_code == 413 else None
        return _json_error(e.status_code, str(e.detail), kind, code, headers=getattr(e, "headers", None))

    @app.exception_handler(RealmError)
    async def realm_error(request, e: RealmError):  # a bad input found below the routes
        return _json_error(400, str(e), "invalid_request_error", type(e).__name__)

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _json_error(500, "internal server error", "server_error", "internal_error")


def _static(name: str) -> bytes:
    return resources.files("realm.server").joinpath("static", name).read_bytes()


def _version() -> str:
    from realm import __version__

    return __version__
