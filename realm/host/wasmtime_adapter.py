"""The wasmtime adapter of `realm.host.runtime`: one of the two modules of realm that import a runtime.

One `wasmtime.Engine` per process (epoch interruption driven by a background ticker, SIMD,
Cranelift `speed`); a `Guest` is one instance in its own `wasmtime.Store` with a memory limit
(`Store.set_limits`), linked to the host functions of its `realm.host.abi.Tenant`. Traps,
deadlines and negative codes become `GuestError`. wasmtime-py releases the GIL during calls, so
separate guests run in parallel threads (the wasm engine's shards).
"""

from __future__ import annotations

import ctypes
import struct
import os
import threading
import time
from importlib import metadata
from typing import Any

import wasmtime

from realm.host import abi, runtime
from realm.host.abi import code_name, guest_error
from realm.host.runtime import (  # noqa: F401 - re-exported for callers of the old single-adapter module
    DEFAULT_BUDGET, DEFAULT_TIMEOUT, MAX_TABLE_ELEMENTS, CompiledModule, budget_error, default_guest_path,
    load_module, module_cache_dir,
)

EPOCH_TICK = 0.01  # seconds between epoch increments
NO_DEADLINE = 1 << 40  # ticks: ~350 years at 10 ms
_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()

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


def version() -> str:
    return wasmtime_version()


def cache_tag() -> str:
    return wasmtime_version()


def wat2wasm(text: str) -> bytes:
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as e:
        raise guest_error(f"invalid guest module: {e}") from None


def compile(wasm: bytes):
    """(wasmtime.Module, None) for validated wasm bytes."""
    try:
        return wasmtime.Module(engine(), wasm), None
    except wasmtime.WasmtimeError as e:
        raise guest_error(f"invalid guest module: {e}") from None


def serialize(module: wasmtime.Module) -> bytes:
    return bytes(module.serialize())


def deserialize(blob: bytes, wasm: bytes):
    return wasmtime.Module.deserialize(engine(), blob), None


class Guest(runtime.Guest):
    """`realm.host.runtime.Guest` under wasmtime: its own `wasmtime.Store` with `set_limits`
    (memory budget, 65536 table elements, one instance/memory) and an epoch deadline: a runaway
    call is stopped within `timeout + 2 * EPOCH_TICK` plus scheduling. `wasm` may also be a
    `wasmtime.Module` compiled with `engine()`."""

    runtime = "wasmtime"
    parallel_calls = True  # wasmtime-py calls into wasm through ctypes, which releases the GIL

    def _module(self, wasm) -> CompiledModule:
        if isinstance(wasm, wasmtime.Module):
            return CompiledModule(self.runtime, wasm, b"")
        return super()._module(wasm)

    def _start(self, compiled: CompiledModule) -> None:
        module = compiled.native
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
        try:
            self._set_deadline()
            instance = linker.instantiate(self._store, module)
        except wasmtime.Trap as e:
            raise guest_error(f"guest start trapped: {_trap_text(e, self)}") from None
        except wasmtime.WasmtimeError as e:
            text = str(e)
            if "memory" in text and ("limit" in text or "minimum" in text or "resource" in text):
                raise budget_error(self.memory_budget, text.splitlines()[0]) from None
            raise guest_error(f"cannot instantiate the guest: {text}") from None
        exports = instance.exports(self._store)
        self._exports = exports
        memory = self._export("memory")
        if not isinstance(memory, wasmtime.Memory):
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

    def _span(self) -> tuple[int, int]:
        return self._memory_span(self._store)

    # -- calls ---------------------------------------------------------------------------------------

    def has_export(self, name: str) -> bool:
        return name in self._funcs or isinstance(self._export(name), wasmtime.Func)

    def _set_deadline(self) -> None:
        if self.timeout is None:
            self._store.set_epoch_deadline(NO_DEADLINE)
        else:
            self._store.set_epoch_deadline(max(1, int(self.timeout / EPOCH_TICK + 0.999)) + 1)

    def _invoke(self, name: str, args: tuple) -> Any:
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
            self._trap(name, e)

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
            self._trap(name, wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(_ffi.wasmtime_error_t))))
        if trap.value:
            self._trap(name, wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(_ffi.wasm_trap_t))))
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

    def _trap(self, name: str, e: BaseException) -> None:
        """A wasmtime trap or error of export `name` as GuestError (`_failed`)."""
        pending, self._pending = self._pending, None
        if isinstance(e, wasmtime.Trap):
            why = _trap_text(e, self)
        else:
            why = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip()), "error")
        self._failed(name, why, pending)

    def _drop(self) -> None:
        self._funcs = {}
        self._exports = None
        self._memory = None
        self._memory_ref = None
        self._store = None


def _trap_text(e: wasmtime.Trap, guest: Guest) -> str:
    code = getattr(e, "trap_code", None)
    if code == wasmtime.TrapCode.INTERRUPT:
        return guest.deadline_text()
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return "stack overflow (call stack exhausted)"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # wasmtime's text is "error while executing at wasm backtrace: ... Caused by: ... wasm trap: <why>"
    why = next((ln.split("wasm trap:", 1)[1].strip() for ln in reversed(lines) if "wasm trap:" in ln), None)
    if why is None:
        why = lines[-1] if lines else repr(e)
    return f"{code.name.lower() if code is not None else 'trap'}: {why}"


__all__ = ["Guest", "engine", "wasmtime_version", "EPOCH_TICK", "raw_hostcalls_enabled", "version", "compile",
           "serialize", "deserialize", "wat2wasm", "code_name"]
