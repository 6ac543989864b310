"""The guest runtime interface: `Guest` (one sandboxed instance) and the choice of its runtime.

Two adapters implement it: `realm.host.wasmtime_adapter` (the default, every CPython) and
`realm.host.wasmer_adapter` (wasmer-python + Cranelift, whose wheels stop at CPython 3.10). They
are the only modules that import a runtime. Everything here — the tenant, the checked memory
access, quotas, stats, the compiled-module disk cache — is runtime-agnostic; an adapter adds
compiling, linking the tenant's host functions, calls, traps and the memory span.

    g = Guest(wasm, runtime="wasmer", memory_budget=64 << 20, timeout=60)   # runtime: name or None
    g.call("realm_init", ...); g.write(ptr, data); g.read(ptr, n); g.close()

`runtime=None` takes `default_runtime` ($REALM_RUNTIME, else "auto": wasmtime where installed, else wasmer).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import itertools
import logging
import os
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ctypes

from realm.errors import GuestError
from realm.host import abi
from realm.host.abi import Err, code_name, guest_error
from realm.host.store import ModelStore, default_store

log = logging.getLogger("realm.host")

DEFAULT_BUDGET = 64 << 20
# Seconds one guest call may run. A 64-token prefill chunk of the default model (Gemma 3 270M
# Q4_K_M, 253 MB) takes ~3 s on a loaded 2-core machine, so 60 s leaves a ~20x margin; the wasm
# engine scales it up for bigger models (`realm.engines.wasm.default_timeout`). None: no deadline.
DEFAULT_TIMEOUT = 60.0
WASM_PAGE = 65536
MAX_TABLE_ELEMENTS = 1 << 16  # function tables; a hostile module cannot make the host allocate big ones
MAX_CACHED_MODULES = 16  # compiled modules kept on disk, least recently used dropped first
_CACHE_MAGIC = b"realm-cwasm-1\n"

RUNTIMES = ("wasmtime", "wasmer")  # "auto" picks the first one installed
RUNTIME_CHOICES = ("auto", *RUNTIMES)
_ADAPTERS = {"wasmtime": "realm.host.wasmtime_adapter", "wasmer": "realm.host.wasmer_adapter"}
_INSTALL_HINT = {
    "wasmtime": "pip install wasmtime",
    "wasmer": "wasmer-python's wheels stop at CPython 3.10: use Python 3.10 and pip install 'realm[wasmer]'",
}
default_runtime = os.environ.get("REALM_RUNTIME", "auto")

_modules: dict[str, "CompiledModule"] = {}
_live_guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()


@atexit.register
def _drop_modules() -> None:
    # Compiled modules outlive everything else in the process, and so do guests a script keeps in a
    # global; freed by the interpreter's final garbage collection, after the runtime's own module is
    # torn down, wasmtime-py's finalizers fail noisily ("Exception ignored in Managed.__del__").
    # Closing them while the runtime is still whole keeps exit quiet.
    for g in list(_live_guests):
        try:
            g.close()
        except Exception:  # exiting: a guest that cannot close cleanly is dropped anyway
            pass
    _modules.clear()
_holder_ids = itertools.count(1)


# ---- choosing a runtime --------------------------------------------------------------------------------


def unavailable_reason(name: str) -> str | None:
    """Why runtime `name` cannot be used here (None: it can)."""
    if name not in _ADAPTERS:
        return f"unknown runtime {name!r} (choose from {', '.join(RUNTIME_CHOICES)})"
    try:
        importlib.import_module(_ADAPTERS[name])
    except ImportError as e:
        return f"the {name} runtime is not installed ({e}); {_INSTALL_HINT[name]}"
    return None


def available_runtimes() -> tuple[str, ...]:
    return tuple(n for n in RUNTIMES if unavailable_reason(n) is None)


def resolve_runtime(name: str | None = None) -> str:
    """A runtime name (None: `default_runtime`; "auto": the first installed of RUNTIMES) checked to be usable."""
    name = default_runtime if name is None else name
    if name == "auto":
        for n in RUNTIMES:
            if unavailable_reason(n) is None:
                return n
        raise GuestError("no WebAssembly runtime is installed: " + "; or ".join(_INSTALL_HINT.values()))
    why = unavailable_reason(name)
    if why is not None:
        raise GuestError(why)
    return name


def adapter(name: str | None = None):
    """The adapter module of runtime `name` (see `resolve_runtime`)."""
    return importlib.import_module(_ADAPTERS[resolve_runtime(name)])


def runtime_version(name: str | None = None) -> str:
    return adapter(name).version()


# ---- modules ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledModule:
    """A guest module compiled by one runtime (`native`), with the wasm it came from."""

    runtime: str
    native: Any
    wasm: bytes
    info: Any = None  # what the adapter learnt compiling it (wasmer: the memory limits)


def module_cache_dir() -> Path:
    """Compiled-module cache: $REALM_WASM_CACHE_DIR, else `realm.models.cache_dir()/wasm`."""
    env = os.environ.get("REALM_WASM_CACHE_DIR")
    if env:
        return Path(env)
    from realm.models import cache_dir

    return cache_dir() / "wasm"


def default_guest_path() -> Path:
    """The prebuilt guest shipped in the package (`realm/guest/realm_guest.wasm`)."""
    return Path(__file__).resolve().parent.parent / "guest" / "realm_guest.wasm"


def wasm_bytes(wasm: bytes | str | os.PathLike | None, runtime: str | None = None) -> bytes:
    """The bytes of a guest given as wasm bytes, WAT text or a path (None: the shipped guest)."""
    if wasm is None:
        wasm = default_guest_path()
        if not wasm.is_file():
            raise guest_error(f"the guest {wasm} is missing; build it with guest_rs/build.sh")
    if isinstance(wasm, os.PathLike) or (isinstance(wasm, str) and wasm.endswith(".wasm")):
        return Path(wasm).read_bytes()
    if isinstance(wasm, str):  # WAT text
        return adapter(runtime).wat2wasm(wasm)
    return bytes(wasm)


def load_module(wasm: bytes | str | os.PathLike | None = None, *, cache: bool = True,
                runtime: str | None = None) -> CompiledModule:
    """Compile a module (wasm bytes, WAT text, a path; None: the shipped guest), once per process and on disk.

    The disk cache is keyed by the SHA-256 of the wasm, the runtime and its version; each file
    carries the SHA-256 of its payload, and a corrupt or incompatible file is recompiled and
    replaced. It keeps the MAX_CACHED_MODULES most recently used modules (a use refreshes the
    file's mtime).
    """
    name = resolve_runtime(runtime)
    impl = adapter(name)
    wasm = wasm_bytes(wasm, name)
    key = hashlib.sha256(wasm + f"\0{name} {impl.cache_tag()}".encode()).hexdigest()
    module = _modules.get(key)
    if module is not None:
        return module
    path = module_cache_dir() / f"{key}.cwasm"
    native = info = None
    if cache:
        blob = _read_cached(path)
        if blob is not None:
            try:
                native, info = impl.deserialize(blob, wasm)
            except Exception as e:  # an incompatible file: recompile
                log.warning("compiled-module cache %s unusable (%s); recompiling", path, e)
                native = None
    if native is None:
        native, info = impl.compile(wasm)
        if cache:
            _write_cached(path, impl.serialize(native))
    module = _modules[key] = CompiledModule(name, native, wasm, info)
    return module


def _read_cached(path: Path) -> bytes | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(_CACHE_MAGIC) + 32
    if blob[: len(_CACHE_MAGIC)] == _CACHE_MAGIC and hashlib.sha256(blob[head:]).digest() == blob[len(_CACHE_MAGIC):head]:
        try:
            os.utime(path)  # recently used: pruned last
        except OSError:
            pass
        return blob[head:]
    log.warning("compiled-module cache %s is corrupt; recompiling", path)
    return None


def _write_cached(path: Path, payload: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(_CACHE_MAGIC + hashlib.sha256(payload).digest() + bytes(payload))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write compiled-module cache %s: %s", path, e)
        return
    _prune_cache(path.parent, MAX_CACHED_MODULES)


def _prune_cache(folder: Path, keep: int) -> None:
    """Delete all but the `keep` most recently used compiled modules in `folder`."""
    try:
        entries = []
        for p in folder.glob("*.cwasm"):
            try:
                entries.append((p.stat().st_mtime, p))
            except OSError:  # removed by another process meanwhile
                pass
        entries.sort(reverse=True)
        for _, p in entries[keep:]:
            p.unlink(missing_ok=True)
    except OSError as e:
        log.warning("cannot prune the compiled-module cache %s: %s", folder, e)


# ---- the guest -------------------------------------------------------------------------------------------


class Guest:
    """One sandboxed guest instance: its own store/memory, memory limit, tenant and deadline.

    Parameters
    ----------
    wasm : the guest (bytes, WAT text, path or a `CompiledModule`); default: the shipped guest.
    runtime : "wasmtime", "wasmer", "auto" or None (`default_runtime`); `Guest(...)` returns an
        instance of that adapter's subclass.
    model_store : the ModelStore the guest reads from (default: the process-wide one).
    memory_budget : cap on the guest's linear memory in bytes.
    timeout : seconds one call may run before the deadline stops it (default DEFAULT_TIMEOUT,
        None: no limit).
    max_read_bytes, max_models : the tenant's quotas in the store (default None: unlimited).

    Use a Guest from one thread at a time; separate guests run in parallel threads where the
    adapter's `parallel_calls` is true (the runtime releases the GIL during a call).
    """

    runtime = "none"
    parallel_calls = True

    def __new__(cls, *args, runtime: str | None = None, **kwargs):
        if cls is Guest:
            cls = adapter(runtime).Guest
        return super().__new__(cls)

    def __init__(self, wasm=None, *, runtime: str | None = None, model_store: ModelStore | None = None,
                 memory_budget: int = DEFAULT_BUDGET, timeout: float | None = DEFAULT_TIMEOUT,
                 max_read_bytes: int | None = None, max_models: int | None = None, name: str | None = None):
        t0 = time.perf_counter()
        module = self._module(wasm)
        self.compile_seconds = time.perf_counter() - t0
        self.model_store = model_store if model_store is not None else default_store()
        self.holder = f"guest-{next(_holder_ids)}"
        self.name = name or self.holder
        self.memory_budget = int(memory_budget)
        self.timeout = timeout
        self.trapped: str | None = None
        self.closed = False
        if max_read_bytes is not None or max_models is not None:
            self.model_store.set_limits(self.holder, max_read_bytes=max_read_bytes, max_models=max_models)
        self.tenant = abi.Tenant(self.model_store, self.holder, name=self.name)
        t1 = time.perf_counter()
        try:
            self._start(module)
        except BaseException:
            self._release()
            raise
        self.instantiate_seconds = time.perf_counter() - t1
        _live_guests.add(self)

    def _module(self, wasm) -> CompiledModule:
        if isinstance(wasm, CompiledModule):
            return wasm if wasm.runtime == self.runtime else load_module(wasm.wasm, runtime=self.runtime)
        return load_module(wasm, runtime=self.runtime)

    # -- what an adapter provides --------------------------------------------------------------------------

    def _start(self, module: CompiledModule) -> None:
        """Create the store, link `self.tenant.functions()`, instantiate; raise GuestError on failure."""
        raise NotImplementedError

    def _span(self) -> tuple[int, int]:
        """(host address, byte length) of the guest's linear memory now."""
        raise NotImplementedError

    def _invoke(self, name: str, args: tuple) -> Any:
        """Call export `name`; a trap or deadline goes to `_failed`."""
        raise NotImplementedError

    def has_export(self, name: str) -> bool:
        raise NotImplementedError

    def _drop(self) -> None:
        """Let go of the runtime's objects (after close)."""

    # -- memory ------------------------------------------------------------------------------------

    @property
    def memory_size(self) -> int:
        """Current byte length of the guest's linear memory."""
        return self._span()[1]

    def _check(self, ptr: int, n: int) -> int:
        base, size = self._span()
        if ptr < 0 or n < 0 or ptr + n > size:
            raise guest_error(f"range [{ptr}, {ptr + n}) is outside guest memory of {size} bytes", Err.ERR_BOUNDS)
        return base + ptr

    def address(self, ptr: int, n: int) -> int:
        """Host address of guest range [ptr, ptr + n), checked to lie inside its memory (valid
        until the memory grows)."""
        return self._check(ptr, n)

    def write(self, ptr: int, data) -> None:
        """Copy bytes (or a contiguous array) into guest memory at `ptr` (one memmove)."""
        view = memoryview(data).cast("B")
        addr = self._check(ptr, view.nbytes)
        if view.nbytes:
            src = np.frombuffer(view, dtype=np.uint8)
            ctypes.memmove(addr, src.ctypes.data, view.nbytes)

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self._check(ptr, n), n) if n else b""

    def read_array(self, ptr: int, dtype, count: int) -> np.ndarray:
        """A fresh NumPy array (a copy, never a view) of `count` items of `dtype` at `ptr`."""
        out = np.empty(count, dtype=dtype)
        addr = self._check(ptr, out.nbytes)
        if out.nbytes:
            ctypes.memmove(out.ctypes.data, addr, out.nbytes)
        return out

    def alloc(self, size: int) -> int:
        ptr = self.call("realm_alloc", size) & 0xFFFFFFFF
        if ptr == 0:
            raise guest_error(f"the guest could not allocate {size} bytes within its memory budget of "
                              f"{self.memory_budget} bytes", Err.ERR_OOM)
        return ptr

    def free(self, ptr: int, size: int) -> None:
        self.call("realm_free", ptr, size)

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, name: str, *args) -> Any:
        """Call export `name`; traps and deadlines raise GuestError (the guest is unusable after)."""
        if self.closed:
            raise guest_error(f"{self.name} is closed")
        if self.trapped is not None:
            raise guest_error(f"{self.name} trapped earlier ({self.trapped}); create a new guest")
        return self._invoke(name, args)

    def fast_call(self, name: str, *args: int) -> int:
        """`call` for an export of i32 parameters and one i32 result; an adapter may make it cheaper."""
        return self.call(name, *args)

    def _failed(self, name: str, why: str, pending: BaseException | None = None) -> None:
        """Record a trap of export `name` and raise it as GuestError (or `pending`, e.g. a
        KeyboardInterrupt raised inside a host call); the guest is unusable after."""
        self.trapped = why
        if pending is not None:
            raise pending
        raise guest_error(f"{name} trapped: {why}") from None

    def deadline_text(self) -> str:
        return f"stopped by the deadline after {self.timeout} s (runaway guest; the per-call timeout can be raised)"

    def call_checked(self, name: str, *args) -> int:
        """`call`, raising GuestError (with `.code`) when the result is negative."""
        rc = self.call(name, *args)
        if isinstance(rc, int) and rc < 0:
            raise guest_error(f"{name} failed", rc)
        return rc

    # -- models ----------------------------------------------------------------------------------------

    def acquire(self, model_id: int) -> None:
        """Give this guest a reference to a model already in the store."""
        self.tenant.acquire(model_id)

    def stats(self) -> dict[str, Any]:
        return {"host_calls": self.tenant.host_calls, "bytes_copied": self.tenant.bytes_copied,
                "memory_size": self.memory_size if not self.closed else 0, "memory_budget": self.memory_budget,
                "compile_seconds": self.compile_seconds, "instantiate_seconds": self.instantiate_seconds,
                "runtime": self.runtime}

    def _release(self) -> None:
        self.tenant.release_all()
        self.model_store.release_all(self.holder)

    def close(self) -> None:
        """Release the guest's model references and drop the instance."""
        if self.closed:
            return
        self.closed = True
        self._release()
        self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def budget_error(budget: int, detail: str) -> GuestError:
    return guest_error(f"the guest's initial memory does not fit the memory budget of {budget} bytes; "
                       f"raise --memory-budget ({detail})")


__all__ = ["Guest", "CompiledModule", "DEFAULT_BUDGET", "DEFAULT_TIMEOUT", "RUNTIMES", "RUNTIME_CHOICES",
           "adapter", "available_runtimes", "resolve_runtime", "unavailable_reason", "runtime_version",
           "load_module", "module_cache_dir", "default_guest_path", "code_name", "MAX_TABLE_ELEMENTS"]
