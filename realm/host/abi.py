"""The host side of the host/guest ABI (docs/abi.md): error codes, struct layouts, host functions.

Every host function is a closure over one `Tenant` (a guest): it reads untrusted `ptr`/`len`
arguments as u32, checks each range against the guest memory's *current* size with Python ints,
copies with one `ctypes.memmove`, and returns a negative code from `ERRORS` instead of raising.
wasmtime itself is only touched by `realm.host.runtime`, which links these functions.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import struct
import threading
import time
from typing import Any, Callable

import numpy as np

from realm.errors import ConfigError, GGUFError, GuestError, UnsupportedError
from realm.quants import SUPPORTED, GGMLType
from realm.host.store import BadModelError, IdConflictError, ModelStore, NoModelError, QuotaError, StoredModel

log = logging.getLogger("realm.host")

ABI_VERSION = 2


class Err(enum.IntEnum):
    """The error-code table of docs/abi.md (the Rust twin is `guest_rs/src/abi.rs`)."""

    ERR_BOUNDS = -1  # a pointer/length range lies outside guest memory, or a length is negative
    ERR_NO_MODEL = -2  # no model with that id is held by this guest (missing and not-yours look the same)
    ERR_NO_TENSOR = -3  # no tensor of that name (or handle) in the model
    ERR_RANGE = -4  # the byte range is not inside the tensor's data
    ERR_TOO_SMALL = -5  # the output buffer is too small for the result
    ERR_BAD_GGUF = -6  # the GGUF image given to realm_store_model is malformed
    ERR_ID_CONFLICT = -7  # the requested model id is already used by different content
    ERR_UNSUPPORTED = -8  # the tensor's type cannot be dequantized / the architecture is not supported
    ERR_BAD_ARG = -9  # an argument is invalid (name not UTF-8, bad level, zero id where not allowed)
    ERR_QUOTA = -10  # the tenant's read quota (bytes) or model-count limit is exhausted
    ERR_INTERNAL = -11  # the host hit an unexpected error (logged on the host)
    ERR_OOM = -20  # guest: allocation failed (memory budget exhausted)
    ERR_NOT_INIT = -21  # guest: realm_init has not succeeded
    ERR_CONTEXT_FULL = -22  # guest: evaluating the tokens would exceed the context length
    ERR_BAD_CONFIG = -23  # guest: the model config is invalid or inconsistent with the tensors
    ERR_BAD_TOKEN = -24  # guest: a token id is outside the vocabulary


ERRORS: dict[str, int] = {e.name: int(e) for e in Err}


def code_name(code: int) -> str:
    """`ERR_...` name of a negative code (or `code <n>` when unknown)."""
    try:
        return Err(code).name
    except ValueError:
        return f"code {code}"


def guest_error(message: str, code: int | None = None) -> GuestError:
    """A GuestError carrying the ABI code (`.code`, `.code_name`) when there is one."""
    err = GuestError(message if code is None else f"{message}: {code_name(code)} ({code})")
    err.code = code
    err.code_name = None if code is None else code_name(code)
    return err


# ---- struct layouts (little-endian, no padding) -------------------------------------------------

TENSOR_INFO = struct.Struct("<II4QQ")  # ggml_type, n_dims, ne[4] (GGUF order), n_bytes
READ_REQ = struct.Struct("<iiqii")  # handle, out_ptr, offset, len, reserved
PEER_OUT = struct.Struct("<iiii")  # out_ptr, stride (floats), rows, reserved
SAMPLE_PARAMS = struct.Struct("<fifffiQQ")  # temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, rng in, rng out
GUEST_STATS = struct.Struct("<8Q")
GUEST_STATS_FIELDS = ("bytes_fetched", "host_calls", "cache_hits", "cache_misses", "peak_memory",
                      "n_past", "cache_bytes", "reserved")

# ModelConfigABI: 32 words; 25 used (word: type field), the rest zero.
MODEL_CONFIG = struct.Struct("<9I3f2I3f4If2If7I")
MODEL_CONFIG_SIZE = 128
FLAG_QK_NORM, FLAG_POST_NORMS, FLAG_TIED_OUTPUT = 1, 2, 4
FLAG_QKV_BIAS, FLAG_ATTN_OUTPUT_BIAS, FLAG_FUSED_QKV, FLAG_FUSED_GATE_UP = 8, 16, 32, 64

assert TENSOR_INFO.size == 48 and READ_REQ.size == 24 and PEER_OUT.size == 16 and MODEL_CONFIG.size == MODEL_CONFIG_SIZE
assert SAMPLE_PARAMS.size == 40 and GUEST_STATS.size == 64

MAX_READ_REQS = 4096
MAX_PEER_TOKENS = 64  # tokens per realm_peers_begin (the guest's batch)
MAX_PEER_OUTS = 3  # matrices per group
MAX_NAME_BYTES = 4096
LOG_MAX_BYTES = 1024
_U32 = 0xFFFFFFFF
_I32_MAX = 0x7FFFFFFF


def pack_tensor_info(info) -> bytes:
    """`realm.gguf.TensorInfo` -> 48-byte TensorInfo."""
    ne = tuple(int(n) for n in info.ne)
    return TENSOR_INFO.pack(int(info.ggml_type), len(ne), *(ne + (1,) * (4 - len(ne))), int(info.n_bytes))


def unpack_tensor_info(data: bytes) -> dict[str, Any]:
    ggml_type, n_dims, *rest = TENSOR_INFO.unpack(data)
    return {"ggml_type": ggml_type, "n_dims": n_dims, "ne": tuple(rest[:4]), "n_bytes": rest[4]}


def pack_read_req(handle: int, out_ptr: int, offset: int, length: int) -> bytes:
    return READ_REQ.pack(handle, _signed32(out_ptr), offset, _signed32(length), 0)


def pack_model_config(cfg) -> bytes:
    """`realm.config.ModelConfig` -> 128-byte ModelConfigABI."""
    flags = (FLAG_QK_NORM * bool(cfg.qk_norm) | FLAG_POST_NORMS * bool(cfg.post_norms)
             | FLAG_TIED_OUTPUT * bool(cfg.tied_output) | FLAG_QKV_BIAS * bool(cfg.qkv_bias)
             | FLAG_ATTN_OUTPUT_BIAS * bool(cfg.attn_output_bias) | FLAG_FUSED_QKV * bool(cfg.fused_qkv)
             | FLAG_FUSED_GATE_UP * bool(cfg.fused_gate_up))
    return MODEL_CONFIG.pack(
        ABI_VERSION, cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
        cfg.vocab_size, cfg.context_length,
        cfg.rope_theta, cfg.rope_theta_local, cfg.rope_freq_scale,
        cfg.rope_dim, cfg.rope_style,
        cfg.norm_eps, cfg.embed_scale, cfg.attn_scale,
        cfg.activation, cfg.sliding_window, cfg.sliding_window_pattern, flags,
        cfg.final_logit_softcap, cfg.rope_factors, cfg.rope_orig_ctx, cfg.rope_attn_factor, *([0] * 7))


def unpack_model_config(data: bytes) -> dict[str, Any]:
    names = ("abi_version", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
             "vocab_size", "context_length", "rope_theta", "rope_theta_local", "rope_freq_scale",
             "rope_dim", "rope_style", "norm_eps", "embed_scale", "attn_scale", "activation",
             "sliding_window", "sliding_window_pattern", "flags", "final_logit_softcap",
             "rope_factors", "rope_orig_ctx", "rope_attn_factor")
    return dict(zip(names, MODEL_CONFIG.unpack(data)))


def pack_sample_params(params, rng_state: int) -> bytes:
    """SamplingParams-like object (or dict) and the RNG state before the draw -> 40-byte SampleParams."""
    get = params.get if isinstance(params, dict) else (lambda k, d=None: getattr(params, k, d))
    return SAMPLE_PARAMS.pack(
        float(get("temperature", 0.0)), int(get("top_k", 40)), float(get("top_p", 0.95)),
        float(get("min_p", 0.05)), float(get("repeat_penalty", 1.0)), int(get("repeat_last_n", 64)),
        int(rng_state) & 0xFFFFFFFFFFFFFFFF, 0)


def unpack_guest_stats(data: bytes) -> dict[str, int]:
    return dict(zip(GUEST_STATS_FIELDS, GUEST_STATS.unpack(data)))


def _signed32(x: int) -> int:
    x &= _U32
    return x - (1 << 32) if x & 0x80000000 else x


# ---- host functions -----------------------------------------------------------------------------

# name -> (param types, result type), the imports of module `env`
HOST_FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "realm_store_model": (("i32", "i32", "i64"), "i64"),
    "realm_get_tensor": (("i64", "i32", "i32", "i32", "i32"), "i32"),
    "realm_get_model_info": (("i64", "i32", "i32"), "i32"),
    "realm_remove_model": (("i64",), "i32"),
    "realm_tensor_info": (("i64", "i32", "i32", "i32"), "i32"),
    "realm_read_tensor": (("i64", "i32", "i64", "i32", "i32"), "i32"),
    "realm_read_tensors": (("i64", "i32", "i32"), "i32"),
    "realm_get_config": (("i64", "i32", "i32"), "i32"),
    "realm_log": (("i32", "i32", "i32"), "i32"),
    "realm_peers_begin": (("i32", "i32", "i32", "i32", "i32"), "i32"),
    "realm_peers_end": (("i32", "i32"), "i32"),
    "realm_peer_wait": (("i32",), "i32"),
    "realm_peer_notify": ((), "i32"),
}

MemorySpan = Callable[[Any], tuple[int, int]]  # caller -> (base address, current byte length)


class _HostError(Exception):
    """Internal: a host function's early exit with an ABI code."""

    def __init__(self, code: Err):
        self.code = code


class _Held:
    """A model a tenant holds: the store entry, the store's id for it, its tensor list (handle = index), refs."""

    __slots__ = ("entry", "store_id", "refs", "tensors", "buffer", "base")

    def __init__(self, entry: StoredModel, store_id: int):
        self.entry = entry
        self.store_id = store_id
        self.refs = 0
        self.tensors = list(entry.gguf.tensors.values())  # handle -> TensorInfo (file order)
        self.buffer = entry.gguf.buffer  # (file_size,) uint8; keeps the mapping alive while held
        self.base = int(self.buffer.ctypes.data) if self.buffer.size else 0  # address of the file's first byte


class Tenant:
    """One guest's view of the model store, and the host functions that act for it.

    `memory_span(caller)` is installed by the runtime; it returns the guest memory's base address
    and current length, queried afresh on every call (memory moves when it grows).

    Ids are looked up in the tenant's own table (`held`) only, never in the store: a model held by
    another tenant and a missing one fail identically (ERR_NO_MODEL) on the same code path. An
    explicit id given to `realm_store_model` is a private alias in this table (the store only ever
    knows the content-derived id), so a guest can neither squat an id the consumer or another
    tenant will use nor probe the store's ids through ERR_ID_CONFLICT.
    """

    def __init__(self, store: ModelStore, holder: Any, *, name: str = "guest",
                 log_rate: float = 50.0, log_burst: int = 100):
        self.store = store
        self.holder = holder
        self.name = name
        self.memory_span: MemorySpan | None = None
        self.peers = None  # the engine's peer instances (`realm_peers_begin`), if it has any
        self.peer_link = None  # a peer's mailbox link to its main guest (`realm_peer_wait`)
        self.held: dict[int, _Held] = {}
        self.host_calls = 0
        self.bytes_copied = 0
        self._log_rate, self._log_burst = float(log_rate), float(log_burst)
        self._log_tokens, self._log_time, self._log_dropped = float(log_burst), time.monotonic(), 0
        self._lock = threading.Lock()  # guards `held` against close() from another thread

    # -- references ----------------------------------------------------------------------------

    def acquire(self, model_id: int) -> None:
        """Take a reference to a stored model for this tenant (raises StoreError).

        IdConflictError when the guest already uses `model_id` as an alias of other content.
        """
        with self._lock:
            held = self.held.get(model_id)
            if held is not None and held.store_id != model_id:
                raise IdConflictError(f"{self.name} already uses id {model_id} for other content")
        entry = self.store.acquire(model_id, self.holder)
        try:
            self.adopt(model_id, entry)
        except BaseException:
            self.store.release(model_id, self.holder)
            raise

    def adopt(self, model_id: int, entry: StoredModel, store_id: int | None = None) -> None:
        """Record one store reference (already taken under `store_id`) under the guest-visible `model_id`."""
        store_id = model_id if store_id is None else store_id
        with self._lock:
            held = self.held.get(model_id)
            if held is None:
                held = self.held[model_id] = _Held(entry, store_id)
            elif held.entry is not entry:
                raise IdConflictError(f"{self.name} already uses id {model_id} for other content")
            held.refs += 1

    def release(self, model_id: int) -> bool:
        with self._lock:
            held = self.held.get(model_id)
            if held is None:
                return False
            held.refs -= 1
            if held.refs <= 0:
                del self.held[model_id]
        self.store.release(held.store_id, self.holder)
        return True

    def release_all(self) -> None:
        with self._lock:
            items = [(h.store_id, h.refs) for h in self.held.values()]
            self.held.clear()
        for store_id, refs in items:
            for _ in range(refs):
                try:
                    self.store.release(store_id, self.holder)
                except NoModelError:  # the store was closed under us
                    pass

    def functions(self) -> dict[str, Callable]:
        """name -> callable(caller, *args) for every import in HOST_FUNCTIONS."""
        return {name: self._wrap(name, getattr(self, "_" + name)) for name in HOST_FUNCTIONS}

    # -- helpers ---------------------------------------------------------------------------------

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def host_function(caller, *args):
            self.host_calls += 1
            try:
                return fn(caller, *args)
            except _HostError as e:
                return int(e.code)
            except Exception:  # never raise across the boundary
                log.exception("%s: host function %s failed", self.name, name)
                return int(Err.ERR_INTERNAL)

        host_function.__name__ = name
        return host_function

    def _span(self, caller) -> tuple[int, int]:
        if self.memory_span is None:
            raise _HostError(Err.ERR_INTERNAL)
        return self.memory_span(caller)

    @staticmethod
    def _range(mem_len: int, ptr: int, length: int) -> int:
        """Check [ptr, ptr + length) (u32 each) lies inside memory; return ptr as u32."""
        ptr &= _U32
        length &= _U32
        if ptr + length > mem_len:
            raise _HostError(Err.ERR_BOUNDS)
        return ptr

    @staticmethod
    def _length(length: int) -> int:
        """A byte count given as i32: negative (>= 2^31 as u32) is ERR_BOUNDS."""
        length &= _U32
        if length > _I32_MAX:
            raise _HostError(Err.ERR_BOUNDS)
        return length

    def _held(self, model_id: int) -> _Held:
        held = self.held.get(model_id)
        if held is None:
            raise _HostError(Err.ERR_NO_MODEL)
        return held

    def _name(self, base: int, mem_len: int, ptr: int, length: int) -> str:
        length = self._length(length)
        ptr = self._range(mem_len, ptr, length)
        if length == 0 or length > MAX_NAME_BYTES:
            raise _HostError(Err.ERR_BAD_ARG)
        try:
            return ctypes.string_at(base + ptr, length).decode("utf-8")
        except UnicodeDecodeError:
            raise _HostError(Err.ERR_BAD_ARG) from None

    def _charge(self, model_id: int, n: int) -> None:
        try:
            self.store.charge(model_id, self.holder, n)
        except QuotaError:
            raise _HostError(Err.ERR_QUOTA) from None
        self.bytes_copied += n

    # -- the host functions (docs/abi.md) ------------------------------------------------------

    def _realm_store_model(self, caller, gguf_ptr: int, gguf_len: int, model_id: int) -> int:
        base, mem_len = self._span(caller)
        length = self._length(gguf_len)
        ptr = self._range(mem_len, gguf_ptr, length)
        if model_id < 0:
            return int(Err.ERR_BAD_ARG)
        if length > self.store.max_image_bytes:
            return int(Err.ERR_QUOTA)
        image = ctypes.string_at(base + ptr, length)  # the one copy out of guest memory
        try:
            # always under its content-derived id in the store; an explicit id is this tenant's alias
            mid, entry = self.store.add_image(image, None, holder=self.holder)
        except BadModelError:
            return int(Err.ERR_BAD_GGUF)
        except IdConflictError:  # a 63-bit prefix collision with a consumer-chosen id
            return int(Err.ERR_ID_CONFLICT)
        except QuotaError:
            return int(Err.ERR_QUOTA)
        alias = model_id or mid
        try:
            self.adopt(alias, entry, store_id=mid)
        except IdConflictError:
            self.store.release(mid, self.holder)
            return int(Err.ERR_ID_CONFLICT)
        return alias

    def _realm_get_tensor(self, caller, model_id: int, name_ptr: int, name_len: int,
                          out_ptr: int, out_max: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        name = self._name(base, mem_len, name_ptr, name_len)
        info = held.entry.gguf.tensors.get(name)
        if info is None:
            return int(Err.ERR_NO_TENSOR)
        out_max = self._length(out_max)
        n_out = 4 * int(info.n_elements)
        if n_out > out_max:
            return int(Err.ERR_TOO_SMALL)
        if n_out > _I32_MAX:
            return int(Err.ERR_TOO_SMALL)
        out = self._range(mem_len, out_ptr, n_out)
        if info.ggml_type not in SUPPORTED:
            return int(Err.ERR_UNSUPPORTED)
        self._charge(model_id, n_out)  # before the work: a tenant over quota costs no dequantization
        try:
            values = _dequantize(held.entry.gguf.tensor_bytes(name), info.ggml_type, int(info.n_elements))
        except (UnsupportedError, NotImplementedError, KeyError):
            return int(Err.ERR_UNSUPPORTED)
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.size * 4 != n_out:
            log.error("%s: dequantizing %s gave %d values, expected %d", self.name, name, values.size, n_out // 4)
            return int(Err.ERR_INTERNAL)
        ctypes.memmove(base + out, values.ctypes.data, n_out)
        return n_out

    def _realm_get_model_info(self, caller, model_id: int, count_ptr: int, size_ptr: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        cp = self._range(mem_len, count_ptr, 4)
        sp = self._range(mem_len, size_ptr, 8)
        ctypes.memmove(base + cp, struct.pack("<I", len(held.tensors)), 4)
        ctypes.memmove(base + sp, struct.pack("<Q", held.entry.tensor_bytes), 8)
        return 0

    def _realm_remove_model(self, caller, model_id: int) -> int:
        if not self.release(model_id):
            return int(Err.ERR_NO_MODEL)
        return 0

    def _realm_tensor_info(self, caller, model_id: int, name_ptr: int, name_len: int, out_ptr: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        name = self._name(base, mem_len, name_ptr, name_len)
        handle = held.entry.handles.get(name)
        if handle is None:
            return int(Err.ERR_NO_TENSOR)
        out = self._range(mem_len, out_ptr, TENSOR_INFO.size)
        ctypes.memmove(base + out, pack_tensor_info(held.tensors[handle]), TENSOR_INFO.size)
        return handle

    def _realm_read_tensor(self, caller, model_id: int, handle: int, offset: int,
                           out_ptr: int, length: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        src = self._check_read(held, mem_len, handle, offset, out_ptr, length)
        n = length & _U32
        self._charge(model_id, n)
        if n:
            ctypes.memmove(base + (out_ptr & _U32), src, n)
        return n

    def _check_read(self, held: _Held, mem_len: int, handle: int, offset: int, out_ptr: int, length: int) -> int:
        """Validate one raw read; return the source address inside the mapped file."""
        if not 0 <= handle < len(held.tensors):
            raise _HostError(Err.ERR_NO_TENSOR)
        n = self._length(length)
        self._range(mem_len, out_ptr, n)
        info = held.tensors[handle]
        if offset < 0 or offset + n > int(info.n_bytes):
            raise _HostError(Err.ERR_RANGE)
        return held.base + int(info.offset) + offset

    def _realm_read_tensors(self, caller, model_id: int, reqs_ptr: int, n_reqs: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        n_reqs &= _U32
        if n_reqs > MAX_READ_REQS:
            return int(Err.ERR_BAD_ARG)
        ptr = self._range(mem_len, reqs_ptr, n_reqs * READ_REQ.size)
        if n_reqs == 0:
            return 0
        raw = ctypes.string_at(base + ptr, n_reqs * READ_REQ.size)  # copied first: outputs may overlap it
        plan = []
        total = 0
        for handle, out, offset, length, reserved in READ_REQ.iter_unpack(raw):
            if reserved != 0:
                return int(Err.ERR_BAD_ARG)
            src = self._check_read(held, mem_len, handle, offset, out, length)
            plan.append((out & _U32, src, length))
            total += length
        if total > _I32_MAX:
            return int(Err.ERR_BAD_ARG)
        self._charge(model_id, total)
        for out, src, length in plan:
            if length:
                ctypes.memmove(base + out, src, length)
        return total

    def _realm_get_config(self, caller, model_id: int, out_ptr: int, out_max: int) -> int:
        held = self._held(model_id)
        base, mem_len = self._span(caller)
        if self._length(out_max) < MODEL_CONFIG_SIZE:
            return int(Err.ERR_TOO_SMALL)
        out = self._range(mem_len, out_ptr, MODEL_CONFIG_SIZE)
        try:
            cfg = held.entry.config()
        except UnsupportedError:
            return int(Err.ERR_UNSUPPORTED)
        except (ConfigError, GGUFError):
            return int(Err.ERR_BAD_GGUF)
        ctypes.memmove(base + out, pack_model_config(cfg), MODEL_CONFIG_SIZE)
        return MODEL_CONFIG_SIZE

    def _realm_peers_begin(self, caller, group: int, layer: int, x_ptr: int, nt: int, cols: int) -> int:
        peers = self.peers
        if peers is None:
            return int(Err.ERR_UNSUPPORTED)
        base, mem_len = self._span(caller)
        nt, cols = self._length(nt), self._length(cols)
        if not 0 < nt <= MAX_PEER_TOKENS or not 0 < cols <= peers.max_cols:
            return int(Err.ERR_BAD_ARG)
        n = 4 * nt * cols
        ptr = self._range(mem_len, x_ptr, n)
        return peers.begin(group, layer, nt, cols, ctypes.string_at(base + ptr, n))

    def _realm_peers_end(self, caller, outs_ptr: int, n_outs: int) -> int:
        peers = self.peers
        if peers is None:
            return int(Err.ERR_UNSUPPORTED)
        try:
            base, mem_len = self._span(caller)
            n_outs &= _U32
            if not 0 < n_outs <= MAX_PEER_OUTS:
                return int(Err.ERR_BAD_ARG)
            ptr = self._range(mem_len, outs_ptr, n_outs * PEER_OUT.size)
            outs = []
            for out_ptr, stride, rows, reserved in PEER_OUT.iter_unpack(ctypes.string_at(base + ptr, n_outs * PEER_OUT.size)):
                if reserved != 0 or rows <= 0 or stride < rows:
                    return int(Err.ERR_BAD_ARG)
                outs.append((out_ptr & _U32, stride, rows))
            return peers.end(outs, lambda p, n: base + self._range(mem_len, p, n))
        finally:
            peers.abandon()  # whatever happened, no peer runs past this call

    def _realm_peer_wait(self, caller, seq: int) -> int:
        link = self.peer_link
        if link is None:
            return int(Err.ERR_UNSUPPORTED)
        return link.wait(seq)

    def _realm_peer_notify(self, caller) -> int:
        link = self.peer_link
        if link is None:
            return int(Err.ERR_UNSUPPORTED)
        link.done_event.set()
        return 0

    def _realm_log(self, caller, level: int, msg_ptr: int, msg_len: int) -> int:
        if not 0 <= level <= 3:
            return int(Err.ERR_BAD_ARG)
        base, mem_len = self._span(caller)
        length = self._length(msg_len)
        ptr = self._range(mem_len, msg_ptr, length)
        now = time.monotonic()
        self._log_tokens = min(self._log_burst, self._log_tokens + (now - self._log_time) * self._log_rate)
        self._log_time = now
        if self._log_tokens < 1.0:
            self._log_dropped += 1
            return 0
        self._log_tokens -= 1.0
        text = ctypes.string_at(base + ptr, min(length, LOG_MAX_BYTES)).decode("utf-8", "replace")
        if length > LOG_MAX_BYTES:
            text += " [truncated]"
        if self._log_dropped:
            text += f" [{self._log_dropped} earlier message(s) dropped by the rate limit]"
            self._log_dropped = 0
        log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[level], "[%s] %s", self.name, text)
        return 0


def _dequantize(data: np.ndarray, ggml_type, n_elements: int) -> np.ndarray:
    """f32 values of a tensor: the Numba kernels when present, else the NumPy reference."""
    if ggml_type == GGMLType.F32 and data.size == 4 * n_elements:
        return data.view(np.float32)  # no conversion (and no Numba import for norm vectors)
    if ggml_type == GGMLType.F16 and data.size == 2 * n_elements:
        return data.view(np.float16).astype(np.float32)  # exact
    try:
        from realm.kernels import dequantize
    except ImportError:
        try:
            from realm.kernels.dequant import dequantize
        except ImportError:
            dequantize = None
    if dequantize is not None:
        return dequantize(data, ggml_type, n_elements)
    from realm.quants import dequantize_ref

    return dequantize_ref(data, ggml_type)


__all__ = [
    "ABI_VERSION", "Err", "ERRORS", "code_name", "guest_error", "HOST_FUNCTIONS", "Tenant",
    "TENSOR_INFO", "READ_REQ", "MODEL_CONFIG", "SAMPLE_PARAMS", "GUEST_STATS", "MAX_READ_REQS",
    "pack_tensor_info", "unpack_tensor_info", "pack_read_req", "pack_model_config",
    "unpack_model_config", "pack_sample_params", "unpack_guest_stats",
]
