"""The `wasm` engine: the Rust guest (realm/guest/realm_guest.wasm) run under wasmtime.

The model goes into a `ModelStore` (mapped once, shared by every guest); the guest holds a
reference, reads weights through the host functions of docs/abi.md and keeps its KV cache and a
tensor cache inside a linear memory capped by `memory_budget`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from realm.errors import GuestError
from realm.host import abi
from realm.host.abi import Err, guest_error
from realm.host.runtime import DEFAULT_BUDGET, DEFAULT_TIMEOUT, Guest
from realm.host.store import ModelStore, default_store

MAX_BATCH = 64  # positions per realm_eval call
LOGITS_SHARE = 8  # all_logits chunks use at most budget / LOGITS_SHARE bytes of logits
TIMEOUT_SCALE_BYTES = 512 << 20  # DEFAULT_TIMEOUT covers models up to this much tensor data


def default_timeout(tensor_bytes: int) -> float:
    """The per-call deadline for a model with `tensor_bytes` of weights: DEFAULT_TIMEOUT (60 s) up
    to 512 MiB, then proportionally longer (a 64-token chunk streams every weight once or twice)."""
    return DEFAULT_TIMEOUT * max(1.0, tensor_bytes / TIMEOUT_SCALE_BYTES)


class WasmEngine:
    """Engine interface (`eval`, `n_past`, `reset`, `stats`, `close`) over one guest instance.

    Parameters
    ----------
    gguf_file : an open `realm.gguf.GGUFFile` (or a path) of the model.
    config : its `realm.config.ModelConfig`.
    n_ctx : context length (KV cache positions) to allocate in the guest.
    memory_budget : cap on the guest's linear memory in bytes.
    store : the ModelStore to share (default: the process-wide one).
    timeout : seconds one guest call (`realm_init`, one `realm_eval` chunk of <= 64 tokens, ...) may
        run; "auto" (default): `default_timeout(model tensor bytes)`, 60 s for models up to 512 MiB;
        None: unlimited.
    wasm : another guest module (bytes, path) instead of the shipped one.
    max_read_bytes : the tenant's total read quota in bytes (default None: unlimited; the guest
        streams the weights it cannot cache, so a decoded token can read the whole model).
    """

    def __init__(self, gguf_file, config, n_ctx: int = 2048, memory_budget: int = DEFAULT_BUDGET,
                 store: ModelStore | None = None, timeout: float | str | None = "auto", wasm=None,
                 max_read_bytes: int | None = None, **_ignored: Any):
        self.config = config
        self.n_ctx = int(n_ctx)
        self.memory_budget = int(memory_budget)
        self.n_past = 0
        self._history: list[int] = []
        self.model_store = store if store is not None else default_store()
        self.max_read_bytes = max_read_bytes
        if timeout == "auto":
            timeout = default_timeout(_tensor_bytes(gguf_file))
        self.timeout = timeout
        t0 = time.perf_counter()
        self.guest = Guest(wasm, model_store=self.model_store, memory_budget=self.memory_budget,
                           timeout=timeout, max_read_bytes=max_read_bytes)
        self.instantiate_seconds = time.perf_counter() - t0
        try:
            self.model_id = self.model_store.add(gguf_file, holder=self.guest.holder, pin=False)
            self.guest.tenant.adopt(self.model_id, self.model_store.get(self.model_id))
            if self.n_ctx <= 0:
                raise GuestError(f"context size must be positive, got {self.n_ctx}")
            t1 = time.perf_counter()
            rc = self.guest.call("realm_init", self.model_id, self.n_ctx, _i32(min(self.memory_budget, 0xFFFFFFFF)))
            self.init_seconds = time.perf_counter() - t1
            if rc == Err.ERR_OOM:
                raise guest_error(
                    f"the memory budget of {self.memory_budget / 2**20:.1f} MiB is too small for a context of "
                    f"{self.n_ctx} positions of this model; raise --memory-budget or lower --ctx", rc)
            if rc < 0:
                raise guest_error("realm_init failed" + self._hint(rc), rc)
            self._vocab = int(config.vocab_size)
            self._tok_cap = MAX_BATCH
            self._logits_step = MAX_BATCH  # all_logits positions per call; halved when the guest is short
            self._tok_ptr = self.guest.alloc(4 * self._tok_cap)
            self._params_ptr = self.guest.alloc(abi.SAMPLE_PARAMS.size)
            self._stats_ptr = self.guest.alloc(abi.GUEST_STATS.size)
        except BaseException:
            self.guest.close()
            raise

    # -- evaluation ----------------------------------------------------------------------------------

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the KV cache; logits (vocab,) of the last position, or (len(ids), vocab)."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        n = ids.shape[0]
        if n == 0:
            raise GuestError("eval needs at least one token")
        if ids.min() < 0 or ids.max() >= self._vocab:
            bad = int(ids[(ids < 0) | (ids >= self._vocab)][0])
            raise guest_error(f"token id {bad} is outside the vocabulary of {self._vocab}", Err.ERR_BAD_TOKEN)
        if self.n_past + n > self.n_ctx:
            raise guest_error(f"evaluating {n} token(s) after {self.n_past} exceeds the context of {self.n_ctx}",
                              Err.ERR_CONTEXT_FULL)
        if not all_logits:
            for lo in range(0, n, self._tok_cap):
                self._eval_chunk(ids[lo:lo + self._tok_cap], False)
            return self._read_logits(1)[0]  # (vocab,)
        out = np.empty((n, self._vocab), dtype=np.float32)  # (n_tokens, vocab)
        step = max(1, min(self._tok_cap, self.memory_budget // LOGITS_SHARE // (4 * self._vocab), self._logits_step))
        lo = 0
        while lo < n:
            chunk = ids[lo:lo + step]
            rc = self._eval_chunk(chunk, True, oom_ok=True)
            if rc == Err.ERR_OOM:  # no room for (step, vocab) logits next to the guest's caches
                if step > 1:
                    step = self._logits_step = step // 2
                    continue
                # last resort: one position at a time, logits of the last position only
                self._eval_chunk(chunk[:1], False)
                out[lo] = self._read_logits(1)[0]
                lo += 1
                continue
            out[lo:lo + chunk.shape[0]] = self._read_logits(chunk.shape[0])
            lo += chunk.shape[0]
        return out

    def _eval_chunk(self, chunk: np.ndarray, all_logits: bool, oom_ok: bool = False) -> int:
        """realm_eval on at most MAX_BATCH tokens; the guest leaves n_past unchanged on failure."""
        chunk = chunk.astype(np.int32)  # (chunk,)
        self.guest.write(self._tok_ptr, chunk)
        rc = self.guest.call("realm_eval", self._tok_ptr, chunk.shape[0], 1 if all_logits else 0)
        if rc == Err.ERR_OOM and oom_ok:
            return rc
        if rc < 0:
            if rc == Err.ERR_OOM:
                raise guest_error(
                    f"the guest ran out of its {self.memory_budget / 2**20:.1f} MiB memory budget while "
                    f"evaluating {chunk.shape[0]} token(s); raise --memory-budget or lower --ctx", rc)
            raise guest_error("realm_eval failed" + self._hint(rc), rc)
        self.n_past += chunk.shape[0]
        self._history.extend(int(t) for t in chunk)
        return rc

    def _hint(self, rc: int) -> str:
        if rc == Err.ERR_QUOTA:
            return f" (this tenant's read quota of {self.max_read_bytes} bytes is exhausted)"
        return ""

    def _read_logits(self, n_rows: int) -> np.ndarray:
        """(n_rows, vocab) fresh copy of the guest's logits (never a view of guest memory)."""
        ptr = self.guest.call("realm_logits_ptr") & 0xFFFFFFFF
        return self.guest.read_array(ptr, np.float32, n_rows * self._vocab).reshape(n_rows, self._vocab)

    def sample(self, params, rng_state: int = 0) -> tuple[int, int]:
        """Sample from the last position's logits inside the guest: (token id, RNG state after)."""
        self.guest.write(self._params_ptr, abi.pack_sample_params(params, rng_state))
        token = self.guest.call("realm_sample", self._params_ptr)
        if token < 0:
            raise guest_error("realm_sample failed", token)
        state = int.from_bytes(self.guest.read(self._params_ptr + 32, 8), "little")
        return token, state

    def reset(self) -> None:
        rc = self.guest.call("realm_reset")
        if rc < 0:
            raise guest_error("realm_reset failed", rc)
        self.n_past = 0
        self._history.clear()

    # -- bookkeeping -----------------------------------------------------------------------------------

    def guest_stats(self) -> dict[str, int]:
        rc = self.guest.call("realm_stats", self._stats_ptr)
        if rc < 0:
            raise guest_error("realm_stats failed", rc)
        return abi.unpack_guest_stats(self.guest.read(self._stats_ptr, abi.GUEST_STATS.size))

    def stats(self) -> dict[str, Any]:
        if self.guest.closed:
            return {"engine": "wasm", "closed": True}
        g = self.guest_stats()
        return {
            "engine": "wasm",
            "bytes_fetched": g["bytes_fetched"],
            "host_calls": self.guest.tenant.host_calls,
            "cache_hits": g["cache_hits"],
            "cache_misses": g["cache_misses"],
            "cache_bytes": g["cache_bytes"],
            "peak_memory": max(g["peak_memory"], self.guest.memory_size),
            "memory_size": self.guest.memory_size,
            "memory_budget": self.memory_budget,
            "instantiate_ms": round(1000 * self.instantiate_seconds, 3),
            "compile_ms": round(1000 * self.guest.compile_seconds, 3),
            "init_ms": round(1000 * self.init_seconds, 3),
            "n_past": self.n_past,
        }

    def close(self) -> None:
        """Drop the guest and its reference to the stored model."""
        self.guest.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        guest = getattr(self, "guest", None)
        if guest is not None and not guest.closed:
            try:
                guest.close()
            except Exception:
                pass


def _tensor_bytes(gguf_file) -> int:
    """Bytes of tensor data of an open GGUFFile or a path (0 when unknown)."""
    tensors = getattr(gguf_file, "tensors", None)
    if tensors is not None:
        return sum(int(t.n_bytes) for t in tensors.values())
    try:
        return os.path.getsize(gguf_file)
    except (OSError, TypeError):
        return 0


def _i32(x: int) -> int:
    """A u32 quantity passed as i32 on the wire."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x
