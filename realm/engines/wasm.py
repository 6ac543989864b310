"""The `wasm` engine: the Rust guest (realm/guest/realm_guest.wasm) run under wasmtime.

The model goes into a `ModelStore` (mapped once, shared by every guest); the guest holds a
reference, reads weights through the host functions of docs/abi.md and keeps its KV cache and a
tensor cache inside a linear memory capped by `memory_budget`.

A guest is single-threaded. With `threads` > 1 the engine adds `threads - 1` logits shards: more
instances of the same guest, each in its own sandbox, that compute a share of the output matrix's
rows (the biggest matrix of a small model: 178 of 253 MB of Gemma 3 270M) in parallel threads
while the main guest computes the rest. The host passes the main guest's final hidden state (dim
floats) to each shard and copies the shards' logit rows back; every row is computed by the same
kernel on the same input whoever computes it, so the logits are bit-identical for any `threads`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from realm.errors import GuestError
from realm.host import abi
from realm.host.abi import Err, guest_error
from realm.host.runtime import DEFAULT_BUDGET, DEFAULT_TIMEOUT, Guest
from realm.host.store import ModelStore, default_store

MAX_BATCH = 64  # positions per realm_eval call
EVAL_LAST, EVAL_ALL, EVAL_HIDDEN = 0, 1, 2  # realm_eval modes
MAX_DEFAULT_THREADS = 4
MIN_SHARD_OUTPUT_BYTES = 8 << 20  # by default, no shards for output matrices smaller than this
MIN_MAIN_BUDGET = 16 << 20  # shards are left out rather than squeeze the main guest below this
LOGITS_SHARE = 8  # all_logits chunks use at most budget / LOGITS_SHARE bytes of logits
TIMEOUT_SCALE_BYTES = 512 << 20  # DEFAULT_TIMEOUT covers models up to this much tensor data


def default_threads() -> int:
    """Guest instances per engine by default: the cores this process may run on, at most MAX_DEFAULT_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS))


def shard_budget(vocab_size: int) -> int:
    """Memory of one logits shard: the guest image and stack (~1.1 MiB), a 1 MiB streaming chunk,
    the (vocab,) logits, allocator slack (1 MiB) and small buffers, rounded up to 1 MiB."""
    need = (4 << 20) + 4 * int(vocab_size)
    return -(-need // (1 << 20)) * (1 << 20)


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
        streams the weights it cannot cache, so a decoded token can read the whole model). A quota
        keeps the engine to one instance (the quota is the tenant's, not per instance).
    threads : guest instances computing the output matrix in parallel (default: `default_threads()`,
        reduced to 1 for an output matrix under 8 MiB). The shards' memory (`shard_budget`, 5 MiB for
        a 262,144-token vocabulary) comes out of `memory_budget`, which stays the engine's total;
        shards are dropped when the main guest would keep less than 16 MiB.
    """

    def __init__(self, gguf_file, config, n_ctx: int = 2048, memory_budget: int = DEFAULT_BUDGET,
                 store: ModelStore | None = None, timeout: float | str | None = "auto", wasm=None,
                 max_read_bytes: int | None = None, threads: int | None = None, **_ignored: Any):
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
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise GuestError(f"threads must be a positive integer, got {threads!r}")
        n_shards = self._plan_shards(gguf_file, config, threads)
        self._ranges = _row_ranges(int(config.vocab_size), 1 + n_shards)
        self._shard_budgets = self._plan_shard_budgets(gguf_file, config, self._ranges[1:])
        main_budget = self.memory_budget - sum(self._shard_budgets)
        self._shards: list[Guest] = []
        self._pool: ThreadPoolExecutor | None = None
        self._broken: str | None = None  # why a shard failed: the engine's instances are out of step
        t0 = time.perf_counter()
        self.guest = Guest(wasm, model_store=self.model_store, memory_budget=main_budget,
                           timeout=timeout, max_read_bytes=max_read_bytes)
        self.instantiate_seconds = time.perf_counter() - t0
        try:
            self.model_id = self.model_store.add(gguf_file, holder=self.guest.holder, pin=False)
            self.guest.tenant.adopt(self.model_id, self.model_store.get(self.model_id))
            if self.n_ctx <= 0:
                raise GuestError(f"context size must be positive, got {self.n_ctx}")
            t1 = time.perf_counter()
            rc = self.guest.call("realm_init", self.model_id, self.n_ctx, _i32(min(main_budget, 0xFFFFFFFF)))
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
            for budget, (r0, r1) in zip(self._shard_budgets, self._ranges[1:]):
                self._shards.append(self._start_shard(gguf_file, wasm, budget, r0, r1))
            self.threads = 1 + len(self._shards)
            if self._shards:
                self._pool = ThreadPoolExecutor(max_workers=len(self._shards), thread_name_prefix="realm-shard")
                self._hidden_ptr = self.guest.call("realm_hidden_ptr") & 0xFFFFFFFF
        except BaseException:
            self.close()
            raise

    def _plan_shards(self, gguf_file, config, threads: int | None) -> int:
        """How many logits shards this engine gets (see the class docstring)."""
        if self.max_read_bytes is not None:
            return 0
        want = threads
        if want is None:
            want = default_threads()
            out = _output_tensor(gguf_file)
            if out is None or int(out.n_bytes) < MIN_SHARD_OUTPUT_BYTES:
                want = 1
        n = want - 1
        while n > 0 and self.memory_budget - n * shard_budget(config.vocab_size) < MIN_MAIN_BUDGET:
            n -= 1
        return n

    def _plan_shard_budgets(self, gguf_file, config, ranges: list[tuple[int, int]]) -> list[int]:
        """Each shard's memory: `shard_budget` (it streams its rows), or enough to keep its rows of
        the output matrix resident when the rest of the budget still holds every weight in the main
        guest (a "resident" budget: then no instance streams anything after the first token)."""
        base = shard_budget(config.vocab_size)
        if not ranges:
            return []
        out = _output_tensor(gguf_file)
        if out is None:
            return [base] * len(ranges)
        row_bytes = int(out.n_bytes) // int(config.vocab_size)
        pinned = [-(-(base + (r1 - r0) * row_bytes) // (1 << 20)) * (1 << 20) for r0, r1 in ranges]
        kv_bytes = 4 * int(config.n_layers) * int(config.n_kv_heads) * int(config.head_dim) * self.n_ctx
        main_resident = _tensor_bytes(gguf_file) + kv_bytes + (32 << 20)
        if self.memory_budget - sum(pinned) >= main_resident:
            return pinned
        return [base] * len(ranges)

    def _start_shard(self, gguf_file, wasm, budget: int, row0: int, row1: int) -> Guest:
        """One more guest instance holding the model, initialised as a logits shard for rows [row0, row1)."""
        g = Guest(wasm, model_store=self.model_store, memory_budget=budget, timeout=self.timeout,
                  name=f"{self.guest.name}-shard")
        try:
            model_id = self.model_store.add(gguf_file, holder=g.holder, pin=False)
            g.tenant.adopt(model_id, self.model_store.get(model_id))
            rc = g.call("realm_init_shard", model_id, _i32(budget), row0, row1)
            if rc < 0:
                raise guest_error("realm_init_shard failed", rc)
            g.shard_hidden_ptr = g.call("realm_hidden_ptr") & 0xFFFFFFFF
        except BaseException:
            g.close()
            raise
        return g

    # -- evaluation ----------------------------------------------------------------------------------

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the KV cache; logits (vocab,) of the last position, or (len(ids), vocab)."""
        if self._broken is not None:
            raise GuestError(f"a logits shard of this engine failed earlier ({self._broken}); create a new engine")
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
            mode = EVAL_HIDDEN if self._shards else EVAL_LAST
            for lo in range(0, n, self._tok_cap):
                self._eval_chunk(ids[lo:lo + self._tok_cap], mode)
            if self._shards:
                self._sharded_logits()
            return self._read_logits(1)[0]  # (vocab,)
        out = np.empty((n, self._vocab), dtype=np.float32)  # (n_tokens, vocab)
        step = max(1, min(self._tok_cap, self.guest.memory_budget // LOGITS_SHARE // (4 * self._vocab), self._logits_step))
        lo = 0
        while lo < n:
            chunk = ids[lo:lo + step]
            rc = self._eval_chunk(chunk, EVAL_ALL, oom_ok=True)
            if rc == Err.ERR_OOM:  # no room for (step, vocab) logits next to the guest's caches
                if step > 1:
                    step = self._logits_step = step // 2
                    continue
                # last resort: one position at a time, logits of the last position only
                self._eval_chunk(chunk[:1], EVAL_LAST)
                out[lo] = self._read_logits(1)[0]
                lo += 1
                continue
            out[lo:lo + chunk.shape[0]] = self._read_logits(chunk.shape[0])
            lo += chunk.shape[0]
        return out

    def _eval_chunk(self, chunk: np.ndarray, mode: int, oom_ok: bool = False) -> int:
        """realm_eval on at most MAX_BATCH tokens; the guest leaves n_past unchanged on failure."""
        chunk = chunk.astype(np.int32)  # (chunk,)
        self.guest.write(self._tok_ptr, chunk)
        rc = self.guest.call("realm_eval", self._tok_ptr, chunk.shape[0], mode)
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

    def _sharded_logits(self) -> None:
        """Last-position logits computed by the main guest and the shards in parallel, gathered
        into the main guest's logits buffer (where `realm_sample` reads them)."""
        hidden = self.guest.read(self._hidden_ptr, 4 * self.config.dim)
        futures = [self._pool.submit(_shard_rows, g, hidden, r0, r1)
                   for g, (r0, r1) in zip(self._shards, self._ranges[1:])]
        try:
            r0, r1 = self._ranges[0]
            rc = self.guest.call("realm_logits_rows", r0, r1)
            if rc < 0:
                raise guest_error("realm_logits_rows failed" + self._hint(rc), rc)
            ptr = self.guest.call("realm_logits_ptr") & 0xFFFFFFFF
            for f, (a, _) in zip(futures, self._ranges[1:]):
                try:
                    rows = f.result()
                except GuestError as e:
                    self._broken = str(e)
                    raise
                self.guest.write(ptr + 4 * a, rows)
        finally:
            for f in futures:  # never leave a shard running into the next call
                f.exception()

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
        """The guest's `GuestStats`; with shards, their counters and peak memory are added in."""
        rc = self.guest.call("realm_stats", self._stats_ptr)
        if rc < 0:
            raise guest_error("realm_stats failed", rc)
        total = abi.unpack_guest_stats(self.guest.read(self._stats_ptr, abi.GUEST_STATS.size))
        for g in self._shards:
            ptr = g.alloc(abi.GUEST_STATS.size)
            try:
                rc = g.call("realm_stats", ptr)
                if rc < 0:
                    raise guest_error("realm_stats failed", rc)
                part = abi.unpack_guest_stats(g.read(ptr, abi.GUEST_STATS.size))
            finally:
                g.free(ptr, abi.GUEST_STATS.size)
            for key in ("bytes_fetched", "host_calls", "cache_hits", "cache_misses", "peak_memory", "cache_bytes"):
                total[key] += part[key]
        return total

    @property
    def guests(self) -> list[Guest]:
        """The engine's guest instances: the main guest, then its logits shards."""
        return [self.guest, *self._shards]

    @property
    def memory_size(self) -> int:
        """Linear memory of the main guest and its shards, in bytes."""
        return self.guest.memory_size + sum(g.memory_size for g in self._shards)

    def stats(self) -> dict[str, Any]:
        if self.guest.closed:
            return {"engine": "wasm", "closed": True}
        g = self.guest_stats()
        return {
            "engine": "wasm",
            "bytes_fetched": g["bytes_fetched"],
            "host_calls": self.guest.tenant.host_calls + sum(g.tenant.host_calls for g in self._shards),
            "cache_hits": g["cache_hits"],
            "cache_misses": g["cache_misses"],
            "cache_bytes": g["cache_bytes"],
            "peak_memory": max(g["peak_memory"], self.memory_size),
            "memory_size": self.memory_size,
            "memory_budget": self.memory_budget,
            "threads": self.threads,
            "instantiate_ms": round(1000 * self.instantiate_seconds, 3),
            "compile_ms": round(1000 * self.guest.compile_seconds, 3),
            "init_ms": round(1000 * self.init_seconds, 3),
            "n_past": self.n_past,
        }

    def close(self) -> None:
        """Drop the guests (main and shards) and their references to the stored model."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        for g in getattr(self, "_shards", []):
            g.close()
        guest = getattr(self, "guest", None)
        if guest is not None:
            guest.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _shard_rows(g: Guest, hidden: bytes, r0: int, r1: int) -> bytes:
    """Logit rows [r0, r1) computed by shard `g` from `hidden` (runs in a pool thread)."""
    g.write(g.shard_hidden_ptr, hidden)
    rc = g.call("realm_logits_rows", r0, r1)
    if rc < 0:
        raise guest_error(f"{g.name}: realm_logits_rows failed", rc)
    ptr = g.call("realm_logits_ptr") & 0xFFFFFFFF
    return g.read(ptr + 4 * r0, 4 * (r1 - r0))


def _row_ranges(n_rows: int, k: int) -> list[tuple[int, int]]:
    """`n_rows` split into k contiguous ranges, near-equal, every cut a multiple of 4 (the guest
    multiplies rows in aligned groups of four: then no result depends on the split)."""
    cuts = [min(n_rows, n_rows * i // k // 4 * 4) for i in range(k)] + [n_rows]
    return [(cuts[i], cuts[i + 1]) for i in range(k)]


def _output_tensor(gguf_file):
    """TensorInfo of the output matrix (`token_embd.weight` when tied) of an open GGUFFile, else None."""
    tensors = getattr(gguf_file, "tensors", None) or {}
    return tensors.get("output.weight") or tensors.get("token_embd.weight")


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
