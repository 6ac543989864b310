"""The wasmer adapter of `realm.host.runtime`: wasmer-python 1.1 with the Cranelift compiler.

wasmer-python has no store limiter, no epoch interruption and no metering, so the module is
rewritten before compiling (`realm.host.wasm_rewrite`): its memory becomes an import the host
creates with the maximum lowered to the memory budget, table maxima are capped, and function
entries and loop headers count down a fuel global whose every FUEL_CHECK_EVERY-th step calls a
host check that traps the call past its deadline (host functions check the deadline too); loops
with SIMD instructions get a call-free counter that traps after SIMD_FUEL iterations without an
ordinary check step (see `wasm_rewrite._Code`: a Cranelift miscompile otherwise).
wasmer-python's modules, instances, functions and memories are bound to the thread that made them
(pyo3 "unsendable": touched from another thread they panic), and it holds the GIL during a call
anyway; so one process-wide owner thread makes and calls every one of them (`_Owner`), other
threads hand it their calls and wait. Guests in threads take turns: `parallel_calls` is false and
the wasm engine runs one instance (no shards).
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from importlib import metadata
from typing import Any

import wasmer
import wasmer_compiler_cranelift

from realm.host import abi, runtime, wasm_rewrite
from realm.host.abi import guest_error
from realm.host.runtime import MAX_TABLE_ELEMENTS, WASM_PAGE, CompiledModule, budget_error

_TYPES = {"i32": wasmer.Type.I32, "i64": wasmer.Type.I64}
MAX_PAGES = 65536  # wasm32: 4 GiB
# the exports the engine calls most, looked up once per guest
_HOT = ("realm_alloc", "realm_free", "realm_init", "realm_eval", "realm_logits_ptr", "realm_sample",
        "realm_reset", "realm_stats")

_store: wasmer.Store | None = None
_store_lock = threading.Lock()

assert MAX_TABLE_ELEMENTS == wasm_rewrite.MAX_TABLE_ELEMENTS


class _DeadlineExceeded(Exception):
    """Raised by the host check (and host functions) inside a call past its deadline: a trap."""


class _Interrupted(Exception):
    """Raised by the host check inside a call whose caller was interrupted (KeyboardInterrupt)."""


class _Job:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn, args):
        self.fn, self.args, self.done = fn, args, threading.Event()
        self.result = self.error = None


class _Owner:
    """The one thread that makes, calls and reads every wasmer object of the process (see the
    module docstring); `run(fn, *args)` runs `fn` there and returns its result or raises its error."""

    def __init__(self):
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def here(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn, *args, on_interrupt=None):
        """`fn(*args)` on the owner thread. A KeyboardInterrupt (or other BaseException) while
        waiting calls `on_interrupt()` (which should make the running call stop), waits for the
        job to end and is raised then."""
        if self.here():  # a host function calling back into wasmer: already on the owner thread
            return fn(*args)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="realm-wasmer", daemon=True)
                self._thread.start()
        job = _Job(fn, args)
        self._jobs.put(job)
        pending = None
        while True:
            try:
                job.done.wait()
                break
            except BaseException as e:  # interrupted while waiting: stop the call, then re-raise
                pending = pending or e
                if on_interrupt is not None:
                    on_interrupt()
        if pending is not None:
            raise pending
        if job.error is not None:
            raise job.error
        return job.result

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:
                job.error = e
            finally:
                job.fn = job.args = None
                job.done.set()


_owner = _Owner()


def version() -> str:
    try:
        return metadata.version("wasmer")
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_tag() -> str:
    try:
        cranelift = metadata.version("wasmer-compiler-cranelift")
    except metadata.PackageNotFoundError:
        cranelift = "unknown"
    return f"{version()} cranelift {cranelift} rewrite {wasm_rewrite.REWRITE_VERSION} fuel {wasm_rewrite.FUEL_CHECK_EVERY}"


def store() -> wasmer.Store:
    """The process-wide wasmer Store (JIT engine, Cranelift); every guest's objects live in it."""
    global _store
    with _store_lock:
        if _store is None:
            _store = wasmer.Store(wasmer.engine.JIT(wasmer_compiler_cranelift.Compiler))
        return _store


def wat2wasm(text: str) -> bytes:
    try:
        return bytes(wasmer.wat2wasm(text))
    except Exception as e:  # wasmer raises a bare RuntimeError/ValueError for bad text
        raise guest_error(f"invalid guest module: {e}") from None


def compile(wasm: bytes):
    """(wasmer.Module of the rewritten wasm, the guest memory's (min, max) pages) for wasm bytes."""
    return _owner.run(_compile, wasm)


def _compile(wasm: bytes):
    st = store()
    try:  # first: its refusals (a table or memory the sandbox does not allow) name the reason
        prepared = wasm_rewrite.prepare(wasm)
    except wasm_rewrite.RewriteError as e:
        raise guest_error(f"cannot instantiate the guest: {e}") from None
    if not wasmer.Module.validate(st, wasm):  # the original: its code cannot name what prepare() adds
        raise guest_error("invalid guest module: it does not validate")
    try:
        return wasmer.Module(st, prepared.wasm), prepared.memory
    except Exception as e:
        raise guest_error(f"invalid guest module: {e}") from None


def serialize(module: wasmer.Module) -> bytes:
    return _owner.run(lambda: bytes(module.serialize()))


def deserialize(blob: bytes, wasm: bytes):
    """The cached compiled module (the cache checked its SHA-256); the memory limits are re-read
    from the original wasm (cheap: one pass over the sections)."""
    module = _owner.run(wasmer.Module.deserialize, store(), blob)
    return module, _memory_limits(wasm)


def _memory_limits(wasm: bytes) -> tuple[int, int | None] | None:
    for sid, payload in wasm_rewrite.sections(wasm):
        if sid == wasm_rewrite.MEMORY:
            count, pos = wasm_rewrite._u32(payload, 0)
            if count:
                lo, hi, _ = wasm_rewrite._limits(payload, pos)
                return lo, hi
    return None


class Guest(runtime.Guest):
    """`realm.host.runtime.Guest` under wasmer: the memory the host creates for the rewritten
    module has its maximum at `memory_budget // 65536` pages; the deadline is checked every
    FUEL_CHECK_EVERY loop iterations or function entries and at every host call. Everything that
    touches a wasmer object runs on the owner thread (`_Owner`); another thread reads the memory
    span that thread left after the last call (memory only grows during a call)."""

    runtime = "wasmer"
    parallel_calls = False  # wasmer-python keeps the GIL for the whole call

    def _start(self, compiled: CompiledModule) -> None:
        self._interrupted = False
        _owner.run(self._start_here, compiled, on_interrupt=self._interrupt)

    def _interrupt(self) -> None:
        self._interrupted = True

    def _start_here(self, compiled: CompiledModule) -> None:
        st = store()
        self._deadline = float("inf")
        self._funcs: dict[str, Any] = {}
        self._memory = None
        self._base, self._size = 0, -1
        self.tenant.memory_span = lambda caller: self._span()
        imports = wasmer.ImportObject()
        env = {}
        for fname, fn in self.tenant.functions().items():
            params, result = abi.HOST_FUNCTIONS[fname]
            ty = wasmer.FunctionType([_TYPES[p] for p in params], [_TYPES[result]])
            env[fname] = wasmer.Function(st, self._host(fn), ty)
        imports.register("env", env)
        ours = {"check": wasmer.Function(st, self._check_deadline, wasmer.FunctionType([], []))}
        limits = compiled.info
        if limits is not None:
            lo, hi = limits
            pages = min(hi if hi is not None else MAX_PAGES, self.memory_budget // WASM_PAGE)
            if lo > pages:
                raise budget_error(self.memory_budget, f"the module asks for {lo} pages of 64 KiB at start")
            self._memory = wasmer.Memory(st, wasmer.MemoryType(minimum=lo, maximum=pages, shared=False))
            ours["memory"] = self._memory
        imports.register(wasm_rewrite.RESERVED_MODULE, ours)
        self._set_deadline()
        try:
            instance = wasmer.Instance(compiled.native, imports)
        except _DeadlineExceeded:
            raise guest_error(f"guest start trapped: {self.deadline_text()}") from None
        except RuntimeError as e:
            why = _trap_text(e)
            if "link" in str(e).lower() or "import" in str(e).lower() or "incompatible" in str(e).lower():
                raise guest_error(f"cannot instantiate the guest: {why}") from None
            raise guest_error(f"guest start trapped: {why}") from None
        except Exception as e:  # wasmer-python reports link errors as other types too
            raise guest_error(f"cannot instantiate the guest: {e}") from None
        self._exports = instance.exports
        memory = self._export("memory")
        if self._memory is None or not isinstance(memory, wasmer.Memory):
            raise guest_error("the guest exports no linear memory named 'memory'")
        for name in _HOT:
            f = self._export(name)
            if isinstance(f, wasmer.Function):
                self._funcs[name] = f
        self._refresh_span()

    def _export(self, name: str):
        try:
            return getattr(self._exports, name)
        except (AttributeError, LookupError, TypeError, RuntimeError):
            return None

    def _host(self, fn):
        """`fn(caller, *args)` as a wasmer host function; past the deadline it traps instead."""
        guest = self

        def host_function(*args):
            if guest._interrupted:
                raise _Interrupted()
            if time.monotonic() > guest._deadline:
                raise _DeadlineExceeded()
            return fn(None, *args)

        return host_function

    def _check_deadline(self) -> None:
        if self._interrupted:
            raise _Interrupted()
        if time.monotonic() > self._deadline:
            raise _DeadlineExceeded()

    def _set_deadline(self) -> None:
        self._deadline = float("inf") if self.timeout is None else time.monotonic() + self.timeout

    # -- memory ------------------------------------------------------------------------------------

    def _span(self) -> tuple[int, int]:
        if not _owner.here():  # the span the owner thread left after the last call
            return (self._base, self._size) if self._size > 0 else (0, 0)
        return self._refresh_span()

    def _refresh_span(self) -> tuple[int, int]:
        memory = self._memory
        if memory is None:
            return 0, 0
        size = memory.data_size
        if size != self._size:  # grown (or first use): the base may only move on growth
            self._base = ctypes.addressof(ctypes.c_char.from_buffer(memory.buffer)) if size else 0
            self._size = size
        return (self._base, size) if size else (0, 0)

    # -- calls ---------------------------------------------------------------------------------------

    def has_export(self, name: str) -> bool:
        return name in self._funcs or _owner.run(lambda: isinstance(self._export(name), wasmer.Function))

    def _invoke(self, name: str, args: tuple) -> Any:
        try:
            return _owner.run(self._invoke_here, name, args, on_interrupt=self._interrupt)
        except BaseException:
            if self._interrupted and self.trapped is None:  # the call ended before a check saw it
                self.trapped = "interrupted (KeyboardInterrupt)"
            raise

    def _invoke_here(self, name: str, args: tuple) -> Any:
        f = self._funcs.get(name)
        if f is None:
            f = self._export(name)
            if not isinstance(f, wasmer.Function):
                raise guest_error(f"the guest has no exported function {name!r}")
            self._funcs[name] = f
        self._set_deadline()
        try:
            return f(*args)
        except _DeadlineExceeded:
            self._failed(name, self.deadline_text())
        except _Interrupted:  # the caller's KeyboardInterrupt is raised in its own thread (`_Owner.run`)
            self._failed(name, "interrupted (KeyboardInterrupt)")
        except RuntimeError as e:  # a wasm trap
            self._failed(name, self.simd_limit_text() if self._simd_fuel_out() else _trap_text(e))
        except (TypeError, ValueError, OverflowError) as e:  # wasmer-python's argument conversion
            raise guest_error(f"bad arguments for {name}: {e}") from None
        except BaseException as e:  # e.g. an exception escaping a host function: the guest is unusable
            self._failed(name, f"interrupted ({type(e).__name__})", e)
        finally:
            self._deadline = float("inf")
            if self._memory is not None:
                self._refresh_span()

    def _simd_fuel_out(self) -> bool:
        """The trap was the SIMD-loop limit of `wasm_rewrite` (its counter ran down to 0)."""
        g = self._export(wasm_rewrite.SIMD_FUEL_EXPORT)
        try:
            return isinstance(g, wasmer.Global) and g.value == 0
        except Exception:
            return False

    def simd_limit_text(self) -> str:
        return (f"stopped by the SIMD-loop limit: a loop with SIMD instructions ran {wasm_rewrite.SIMD_FUEL} "
                "iterations without a deadline check (runaway guest)")

    def _drop(self) -> None:
        _owner.run(self._drop_here)

    def _drop_here(self) -> None:
        self._funcs = {}
        self._exports = None
        self._memory = None
        self._size = -1


def _trap_text(e: BaseException) -> str:
    """wasmer's "RuntimeError: <why>\\n    at <frame> ..." as "<kind>: <why>" (kinds as under wasmtime)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = lines[0] if lines else repr(e)
    if why.startswith("RuntimeError: "):
        why = why[len("RuntimeError: "):]
    if "call stack exhausted" in why:
        return "stack overflow (call stack exhausted)"
    if "out of bounds memory access" in why:
        return f"memory_out_of_bounds: {why}"
    if "unreachable" in why:
        return f"unreachable: {why}"
    return f"trap: {why}"


__all__ = ["Guest", "store", "version", "compile", "serialize", "deserialize", "wat2wasm"]
