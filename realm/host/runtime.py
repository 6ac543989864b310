"""The wasmtime adapter: the only module of realm that imports wasmtime.

One `wasmtime.Engine` per process (epoch interruption driven by a background ticker, SIMD,
Cranelift `speed`); modules compiled once and cached on disk (`Module.serialize`); a `Guest` is
one instance in its own `wasmtime.Store` with a memory limit, linked to the host functions of its
`realm.host.abi.Tenant`. Traps, deadlines and negative codes become `GuestError`.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import struct
import logging
import os
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import wasmtime

from realm.host import abi
from realm.host.abi import Err, code_name, guest_error
from realm.host.store import ModelStore, default_store

log = logging.getLogger("realm.host")

EPOCH_TICK = 0.01  # seconds between epoch increments
NO_DEADLINE = 1 << 40  # ticks: ~350 years at 10 ms
DEFAULT_BUDGET = 64 << 20
# Seconds one guest call may run. A 64-token prefill chunk of the default model (Gemma 3 270M
# Q4_K_M, 253 MB) takes ~3 s on a loaded 2-core machine, so 60 s leaves a ~20x margin; the wasm
# engine scales it up for bigger models (`realm.engines.wasm.default_timeout`). None: no deadline.
DEFAULT_TIMEOUT = 60.0
WASM_PAGE = 65536
MAX_TABLE_ELEMENTS = 1 << 16  # function tables; a hostile module cannot make the host allocate big ones
_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}
_CACHE_MAGIC = b"realm-cwasm-1\n"
MAX_CACHED_MODULES = 16  # compiled modules kept on disk, least recently used dropped first

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
_modules: dict[str, wasmtime.Module] = {}
_holder_ids = itertools.count(1)

# Host functions are linked through wasmtime's raw ("unchecked") C callback when wasmtime-py's
# private `_ffi` module offers it: ~4x cheaper per call than the generic trampoline, which boxes
# every argument in a `Val`. REALM_WASM_SAFE_HOSTCALLS=1 (or a missing symbol) uses the public path.
try:
    from wasmtime import _ffi

    _dll = _ffi.dll

    def _c_function(name: str, restype, *argtypes):
        f = _dll[name]  # a fresh function object: wasmtime-py's own bindings stay untouched
        f.restype, f.argtypes = restype, list(argtypes)
        return f

    _VP, _SZ = ctypes.c_void_p, ctypes.c_size_t
    _caller_context = _c_function("wasmtime_caller_context", _VP, _VP)
    _memory_data = _c_function("wasmtime_memory_data", _VP, _VP, _VP)
    _memory_data_size = _c_function("wasmtime_memory_data_size", _SZ, _VP, _VP)
    _define_unchecked = _c_function("wasmtime_linker_define_func_unchecked", _VP, _VP, ctypes.c_char_p, _SZ,
                                    ctypes.c_char_p, _SZ, _VP, _VP, _VP, _VP)
    _RAW_CALLBACK = ctypes.CFUNCTYPE(_SZ, _VP, _VP, _VP, _SZ)  # (env, caller, args_and_results, n) -> trap
    # (context, func, args_and_results, n, trap out) -> error
    _func_call_unchecked = _c_function("wasmtime_func_call_unchecked", _VP, _VP, _VP, _VP, _SZ, _VP)
    _RAW_OK = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the wasmtime-py version
    _RAW_OK = False

_RESULT = struct.Struct("<q")  # a raw result slot: i32 results are the low half, sign-extended
_RAW_I32 = struct.Struct("<i")


def raw_hostcalls_enabled() -> bool:
    return _RAW_OK and os.environ.get("REALM_WASM_SAFE_HOSTCALLS") != "1"


def wasmtime_version() -> str:
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime Engine; starts the epoch ticker thread on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.wasm_simd = True
            config.cranelift_opt_level = "speed"
            _engine = wasmtime.Engine(config)
            threading.Thread(target=_tick, args=(_engine,), name="realm-wasm-epoch", daemon=True).start()
        return _engine


def _tick(eng: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK)
        eng.increment_epoch()


def module_cache_dir() -> Path:
    """Compiled-module cache: $REALM_WASM_CACHE_DIR, else `realm.models.cache_dir()/wasm`."""
    env = os.environ.get("REALM_WASM_CACHE_DIR")
    if env:
        return Path(env)
    from realm.models import cache_dir

    return cache_dir() / "wasm"


def load_module(wasm: bytes | str | os.PathLike | None = None, *, cache: bool = True) -> wasmtime.Module:
    """Compile a module (wasm bytes, WAT text, a path; None: the shipped guest), once per process and on disk.

    The disk cache is keyed by the SHA-256 of the wasm and the wasmtime version; each file carries
    the SHA-256 of its payload, and a corrupt or incompatible file is recompiled and replaced. It
    keeps the MAX_CACHED_MODULES most recently used modules (a use refreshes the file's mtime).
    """
    if wasm is None:
        wasm = default_guest_path()
        if not wasm.is_file():
            raise guest_error(f"the guest {wasm} is missing; build it with guest_rs/build.sh")
    if isinstance(wasm, os.PathLike) or (isinstance(wasm, str) and wasm.endswith(".wasm")):
        wasm = Path(wasm).read_bytes()
    elif isinstance(wasm, str):  # WAT text
        wasm = wasmtime.wat2wasm(wasm)
    wasm = bytes(wasm)
    key = hashlib.sha256(wasm + b"\0wasmtime " + wasmtime_version().encode()).hexdigest()
    module = _modules.get(key)
    if module is not None:
        return module
    eng = engine()
    path = module_cache_dir() / f"{key}.cwasm"
    if cache:
        module = _read_cached(eng, path)
    if module is None:
        try:
            module = wasmtime.Module(eng, wasm)
        except wasmtime.WasmtimeError as e:
            raise guest_error(f"invalid guest module: {e}") from None
        if cache:
            _write_cached(path, module.serialize())
    _modules[key] = module
    return module


def _read_cached(eng: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(_CACHE_MAGIC) + 32
    if blob[: len(_CACHE_MAGIC)] == _CACHE_MAGIC and hashlib.sha256(blob[head:]).digest() == blob[len(_CACHE_MAGIC):head]:
        try:
            module = wasmtime.Module.deserialize(eng, blob[head:])
        except wasmtime.WasmtimeError as e:
            log.warning("compiled-module cache %s unusable (%s); recompiling", path, e)
        else:
            try:
                os.utime(path)  # recently used: pruned last
            except OSError:
                pass
            return module
    else:
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


def default_guest_path() -> Path:
    """The prebuilt guest shipped in the package (`realm/guest/realm_guest.wasm`)."""
    return Path(__file__).resolve().parent.parent / "guest" / "realm_guest.wasm"


class Guest:
    """One sandboxed guest instance: its own wasmtime Store, memory limit, tenant and deadline.

    Parameters
    ----------
    wasm : the guest (bytes, WAT text, path or a compiled `wasmtime.Module`); default: the shipped guest.
    model_store : the ModelStore the guest reads from (default: the process-wide one).
    memory_budget : cap on the guest's linear memory in bytes (`Store.set_limits`).
    timeout : seconds one call may run before the epoch deadline stops it (default DEFAULT_TIMEOUT,
        None: no limit); a runaway call is stopped within `timeout + 2 * EPOCH_TICK` plus scheduling.
    max_read_bytes, max_models : the tenant's quotas in the store (default None: unlimited).

    Use a Guest from one thread at a time; separate guests run in parallel threads.
    """

    def __init__(self, wasm=None, *, model_store: ModelStore | None = None,
                 memory_budget: int = DEFAULT_BUDGET, timeout: float | None = DEFAULT_TIMEOUT,
                 max_read_bytes: int | None = None, max_models: int | None = None, name: str | None = None):
        t0 = time.perf_counter()
        module = wasm if isinstance(wasm, wasmtime.Module) else load_module(
            default_guest_path() if wasm is None else wasm)
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
        self._store = wasmtime.Store(engine())
        self._store.set_limits(memory_size=self.memory_budget, table_elements=MAX_TABLE_ELEMENTS, instances=1,
                               tables=4, memories=1)
        self._store.set_epoch_deadline(NO_DEADLINE)
        self._memory: wasmtime.Memory | None = None
        self._memory_ref: int | None = None  # address of the memory handle, for the raw path
        self._callbacks: list = []  # raw ctypes callbacks, alive as long as the guest
        self._pending: BaseException | None = None  # KeyboardInterrupt etc. raised inside a host call
        self._fast: dict[str, tuple] = {}  # export name -> (func address, value slots) for fast_call
        self.raw_hostcalls = raw_hostcalls_enabled()
        self.tenant.memory_span = self._raw_span if self.raw_hostcalls else self._memory_span
        linker = wasmtime.Linker(engine())
        for fname, fn in self.tenant.functions().items():
            params, result = abi.HOST_FUNCTIONS[fname]
            ty = wasmtime.FuncType([_VALTYPES[p]() for p in params], [_VALTYPES[result]()])
            if self.raw_hostcalls:
                self._define_raw(linker, fname, ty, params, fn)
            else:
                linker.define_func("env", fname, ty, fn, access_caller=True)
        t1 = time.perf_counter()
        try:
            self._set_deadline()
            instance = linker.instantiate(self._store, module)
        except wasmtime.Trap as e:
            self._release()
            raise guest_error(f"guest start trapped: {_trap_text(e, self.timeout)}") from None
        except wasmtime.WasmtimeError as e:
            self._release()
            text = str(e)
            if "memory" in text and ("limit" in text or "minimum" in text or "resource" in text):
                raise guest_error(f"the guest's initial memory does not fit the memory budget of "
                                  f"{self.memory_budget} bytes; raise --memory-budget ({text.splitlines()[0]})") from None
            raise guest_error(f"cannot instantiate the guest: {text}") from None
        self.instantiate_seconds = time.perf_counter() - t1
        exports = instance.exports(self._store)
        self._exports = exports
        memory = self._export("memory")
        if not isinstance(memory, wasmtime.Memory):
            self._release()
            raise guest_error("the guest exports no linear memory named 'memory'")
        self._memory = memory
        self._memory_ref = ctypes.addressof(memory._memory) if self.raw_hostcalls else None
        self._funcs = {}
        for export_name in ("realm_alloc", "realm_free", "realm_init", "realm_eval", "realm_logits_ptr",
                            "realm_sample", "realm_reset", "realm_stats"):
            f = self._export(export_name)
            if isinstance(f, wasmtime.Func):
                self._funcs[export_name] = f

    def _export(self, name: str):
        try:
            return self._exports[name]
        except (KeyError, TypeError):
            return None

    def _define_raw(self, linker, name: str, ty, params, fn) -> None:
        """Link `fn(ctx, *args)` through wasmtime's unchecked callback: raw 16-byte value slots."""
        args_fmt = struct.Struct("<" + "".join("q8x" if k == "i64" else "i12x" for k in params))
        n_bytes, unpack, pack_result = args_fmt.size, args_fmt.unpack, _RESULT.pack
        guest = self

        def callback(env, caller, vals, n_vals):
            try:
                result = pack_result(fn(_caller_context(caller), *unpack(ctypes.string_at(vals, n_bytes))))
            except BaseException as e:  # fn catches Exception itself; this is Ctrl-C and friends
                guest._pending = e
                trap = wasmtime.Trap(f"host call {name} interrupted")._consume()
                return ctypes.cast(trap, ctypes.c_void_p).value
            ctypes.memmove(vals, result, 8)
            return 0

        cfunc = _RAW_CALLBACK(callback)
        self._callbacks.append(cfunc)
        module_b, name_b = b"env", name.encode()
        err = _define_unchecked(linker.ptr(), module_b, len(module_b), name_b, len(name_b), ty.ptr(),
                                ctypes.cast(cfunc, ctypes.c_void_p), None, None)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(_ffi.wasmtime_error_t)))

    # -- memory ------------------------------------------------------------------------------------

    def _raw_span(self, ctx: int) -> tuple[int, int]:
        addr = self._memory_ref
        if addr is None:
            return 0, 0
        n = _memory_data_size(ctx, addr)
        return (_memory_data(ctx, addr) or 0, n) if n else (0, 0)

    def _memory_span(self, ctx) -> tuple[int, int]:
        memory = self._memory
        if memory is None:
            memory = ctx.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                return 0, 0
        n = memory.data_len(ctx)
        if n == 0:
            return 0, 0
        return ctypes.cast(memory.data_ptr(ctx), ctypes.c_void_p).value, n

    @property
    def memory_size(self) -> int:
        """Current byte length of the guest's linear memory."""
        return self._memory.data_len(self._store)

    def _check(self, ptr: int, n: int) -> int:
        base, size = self._memory_span(self._store)
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

    def has_export(self, name: str) -> bool:
        return name in self._funcs or isinstance(self._export(name), wasmtime.Func)

    def _set_deadline(self) -> None:
        if self.timeout is None:
            self._store.set_epoch_deadline(NO_DEADLINE)
        else:
            self._store.set_epoch_deadline(max(1, int(self.timeout / EPOCH_TICK + 0.999)) + 1)

    def call(self, name: str, *args) -> Any:
        """Call export `name`; traps and deadlines raise GuestError (the guest is unusable after)."""
        if self.closed:
            raise guest_error(f"{self.name} is closed")
        if self.trapped is not None:
            raise guest_error(f"{self.name} trapped earlier ({self.trapped}); create a new guest")
        f = self._funcs.get(name)
        if f is None:
            f = self._export(name)
            if not isinstance(f, wasmtime.Func):
                raise guest_error(f"the guest has no exported function {name!r}")
            self._funcs[name] = f
        self._set_deadline()
        try:
            return f(self._store, *args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            self._failed(name, e)

    def fast_call(self, name: str, *args: int) -> int:
        """`call` for an export of i32 parameters and one i32 result through wasmtime's unchecked
        call (values in raw slots, no per-argument boxing: ~10x less overhead than `call`; the
        shards make one call per matrix group). Falls back to `call` where the raw API is missing."""
        entry = self._fast.get(name)
        if entry is None:
            entry = self._fast[name] = self._fast_entry(name)
        if not entry or self.closed or self.trapped is not None:
            return self.call(name, *args)
        func, slots, n_slots = entry
        if len(args) > n_slots:
            raise guest_error(f"{name} takes fewer arguments than {len(args)}")
        ctx = self._ctx
        self._set_deadline()
        for i, a in enumerate(args):
            _RAW_I32.pack_into(slots, 16 * i, a)
        trap = ctypes.c_void_p()
        err = _func_call_unchecked(ctx, func, slots, n_slots, ctypes.byref(trap))
        if err:
            self._failed(name, wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(_ffi.wasmtime_error_t))))
        if trap.value:
            self._failed(name, wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(_ffi.wasm_trap_t))))
        return _RAW_I32.unpack_from(slots, 0)[0]

    def _fast_entry(self, name: str) -> tuple:
        """(func address, raw slots, slot count) of an (i32...) -> i32 export, or () if unusable."""
        f = self._export(name)
        if not (self.raw_hostcalls and isinstance(f, wasmtime.Func)):
            return ()
        ty = f.type(self._store)
        i32 = wasmtime.ValType.i32()
        if len(ty.results) != 1 or ty.results[0] != i32 or any(p != i32 for p in ty.params):
            return ()
        try:  # wasmtime-py internals, as for the raw host calls: without them, `call`
            self._ctx = ctypes.cast(self._store._context(), ctypes.c_void_p).value
            func = ctypes.addressof(f._func)
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - another wasmtime-py
            return ()
        n_slots = max(1, len(ty.params))
        return func, (ctypes.c_uint8 * (16 * n_slots))(), n_slots

    def _failed(self, name: str, e: BaseException) -> None:
        """Record a trap or error of export `name` and raise it as GuestError (the guest is unusable after)."""
        pending, self._pending = self._pending, None
        if isinstance(e, wasmtime.Trap):
            self.trapped = _trap_text(e, self.timeout)
        else:
            self.trapped = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip()), "error")
        if pending is not None:
            raise pending  # e.g. KeyboardInterrupt raised inside a host call
        raise guest_error(f"{name} trapped: {self.trapped}") from None

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
                "compile_seconds": self.compile_seconds, "instantiate_seconds": self.instantiate_seconds}

    def _release(self) -> None:
        self.tenant.release_all()
        self.model_store.release_all(self.holder)

    def close(self) -> None:
        """Release the guest's model references and drop the instance."""
        if self.closed:
            return
        self.closed = True
        self._release()
        self._funcs = {}
        self._exports = None
        self._memory = None
        self._memory_ref = None
        self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _trap_text(e: wasmtime.Trap, timeout: float | None) -> str:
    code = getattr(e, "trap_code", None)
    if code == wasmtime.TrapCode.INTERRUPT:
        return f"stopped by the deadline after {timeout} s (runaway guest; the per-call timeout can be raised)"
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return "stack overflow (call stack exhausted)"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # wasmtime's text is "error while executing at wasm backtrace: ... Caused by: ... wasm trap: <why>"
    why = next((ln.split("wasm trap:", 1)[1].strip() for ln in reversed(lines) if "wasm trap:" in ln), None)
    if why is None:
        why = lines[-1] if lines else repr(e)
    return f"{code.name.lower() if code is not None else 'trap'}: {why}"


__all__ = ["Guest", "DEFAULT_BUDGET", "DEFAULT_TIMEOUT", "engine", "load_module", "module_cache_dir", "default_guest_path", "wasmtime_version",
           "EPOCH_TICK", "code_name"]
