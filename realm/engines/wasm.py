"""The `wasm` engine: the Rust guest (realm/guest/realm_guest.wasm) run under wasmtime or wasmer.

The model goes into a `ModelStore` (mapped once, shared by every guest); the guest holds a
reference, reads weights through the host functions of docs/abi.md and keeps its KV cache and a
tensor cache inside a linear memory capped by `memory_budget`.

A guest is single-threaded. With `threads` > 1 the engine adds `threads - 1` shards (peers): more
instances of the same guest, each in its own sandbox, that multiply a part of every matrix's rows
in parallel threads while the main guest multiplies part 0 and does everything else (norms,
attention, KV cache, sampling). For each group of a layer's matrices (q/k/v, attn_output,
gate/up, down) the main guest calls `realm_peers_begin` (the host copies the group's input into
every shard and starts it on its rows), multiplies its own rows, then `realm_peers_end` (the host
waits and copies the shards' rows into the main guest's output). The output matrix is split the
same way, on the final hidden state. Every row is computed by the same kernel on the same input
whoever computes it, so the results are bit-identical for any `threads`. Shards need a runtime
whose calls run in parallel threads (`Guest.parallel_calls`: wasmtime yes, wasmer-python no, it
holds the GIL); otherwise the engine is one instance.
"""

from __future__ import annotations

import ctypes
import os
import time
import threading
from typing import Any

import logging

import numpy as np

from realm.errors import GuestError
from realm.host import abi
from realm.host.abi import Err, guest_error
from realm.host.runtime import DEFAULT_BUDGET, DEFAULT_TIMEOUT, Guest, adapter, resolve_runtime
from realm.host.store import ModelStore, default_store

log = logging.getLogger("realm.engines.wasm")

MAX_BATCH = 64  # positions per realm_eval call
EVAL_LAST, EVAL_ALL, EVAL_HIDDEN = 0, 1, 2  # realm_eval modes
MAX_DEFAULT_THREADS = 4
MIN_SHARD_OUTPUT_BYTES = 8 << 20  # by default, no shards for output matrices smaller than this
MIN_MAIN_BUDGET = 16 << 20  # shards are left out rather than squeeze the main guest below this
LOGITS_SHARE = 8  # all_logits chunks use at most budget / LOGITS_SHARE bytes of logits
TIMEOUT_SCALE_BYTES = 512 << 20  # DEFAULT_TIMEOUT covers models up to this much tensor data


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Guest instances per engine by default: the cores this process may run on, at most MAX_DEFAULT_THREADS."""
    return max(1, min(_cores(), MAX_DEFAULT_THREADS))


def _max_cols(config) -> int:
    return max(int(config.dim), int(config.hidden_dim), int(config.q_dim))


def shard_budget(config, n_parts: int) -> int:
    """Memory of one shard that caches nothing: the guest image and stack (~1.1 MiB), a 1 MiB
    streaming chunk, allocator slack (1 MiB), the (vocab,) logits, and for MAX_BATCH tokens its input
    (f32 and quantized) and its row part of the largest matrix group, rounded up to 1 MiB."""
    max_cols = _max_cols(config)
    group_rows = max(int(config.q_dim) + 2 * int(config.kv_dim), 2 * int(config.hidden_dim), int(config.dim))
    part_rows = group_rows // n_parts + 12
    need = ((4 << 20) + 4 * int(config.vocab_size) + 4 * max_cols
            + MAX_BATCH * (6 * max_cols + 8 * (max_cols // 32 + 1) + 4 * part_rows))
    return _mib_up(need)


def _mib_up(n: int) -> int:
    return -(-int(n) // (1 << 20)) * (1 << 20)


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
    threads : guest instances multiplying the weights in parallel (default: `default_threads()`,
        reduced to 1 for an output matrix under 8 MiB). The shards' memory comes out of
        `memory_budget`, which stays the engine's total: each gets `shard_budget` (7 MiB for Gemma 3
        270M) plus a share of what the main guest's KV cache and buffers leave over, to cache its
        rows (`_plan_shard_budgets`); shards are dropped when the main guest would keep less than
        16 MiB. A runtime without parallel calls (wasmer) always gets one instance.
    runtime : "wasmtime", "wasmer", "auto" or None (`realm.host.runtime.default_runtime`).
    """

    def __init__(self, gguf_file, config, n_ctx: int = 2048, memory_budget: int = DEFAULT_BUDGET,
                 store: ModelStore | None = None, timeout: float | str | None = "auto", wasm=None,
                 max_read_bytes: int | None = None, threads: int | None = None, runtime: str | None = None,
                 **_ignored: Any):
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
        self.runtime = resolve_runtime(runtime)
        n_shards = self._plan_shards(gguf_file, config, threads)
        n_parts = 1 + n_shards
        self._ranges = _row_ranges(int(config.vocab_size), n_parts)
        self._shard_budgets = self._plan_shard_budgets(gguf_file, config, n_parts)
        main_budget = self.memory_budget - sum(self._shard_budgets)
        self._shards: list[Guest] = []
        self._workers: list[_Worker] = []  # one thread per shard
        self._peers: _Peers | None = None
        self._broken: str | None = None  # why a shard failed: the engine's instances are out of step
        t0 = time.perf_counter()
        self.guest = Guest(wasm, runtime=self.runtime, model_store=self.model_store, memory_budget=main_budget,
                           timeout=timeout, max_read_bytes=max_read_bytes)
        self.instantiate_seconds = time.perf_counter() - t0
        try:
            self.model_id = self.model_store.add(gguf_file, holder=self.guest.holder, pin=False)
            self.guest.tenant.adopt(self.model_id, self.model_store.get(self.model_id))
            if self.n_ctx <= 0:
                raise GuestError(f"context size must be positive, got {self.n_ctx}")
            t1 = time.perf_counter()
            budget_arg = _i32(min(main_budget, 0xFFFFFFFF))
            if n_parts > 1:
                rc = self.guest.call("realm_init_main", self.model_id, self.n_ctx, budget_arg, n_parts)
            else:
                rc = self.guest.call("realm_init", self.model_id, self.n_ctx, budget_arg)
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
            for part, budget in enumerate(self._shard_budgets, start=1):
                self._shards.append(self._start_shard(gguf_file, wasm, budget, part, n_parts))
            self.threads = 1 + len(self._shards)
            if self._shards:
                self._workers = [_Worker(g) for g in self._shards]
                self._hidden_ptr = self.guest.call("realm_hidden_ptr") & 0xFFFFFFFF
                self._peers = self.guest.tenant.peers = _Peers(self._workers, _max_cols(config), mailbox=_mailbox_ok())
        except BaseException:
            self.close()
            raise

    def _plan_shards(self, gguf_file, config, threads: int | None) -> int:
        """How many shards this engine gets (see the class docstring)."""
        if self.max_read_bytes is not None:
            return 0
        if not adapter(self.runtime).Guest.parallel_calls:
            if threads is not None and threads > 1:
                log.info("the %s runtime runs one guest call at a time (it holds the GIL): one instance, "
                         "not %d", self.runtime, threads)
            return 0
        want = threads
        if want is None:
            want = default_threads()
            out = _output_tensor(gguf_file)
            if out is None or int(out.n_bytes) < MIN_SHARD_OUTPUT_BYTES:
                want = 1
        n = want - 1
        while n > 0 and self.memory_budget - n * shard_budget(config, n + 1) < MIN_MAIN_BUDGET:
            n -= 1
        return n

    def _plan_shard_budgets(self, gguf_file, config, n_parts: int) -> list[int]:
        """Each shard's memory. When the budget holds every weight (the main guest: its part of
        the layer matrices, the whole output matrix for embedding lookups, the KV cache and 32 MiB
        of buffers; each shard: `shard_budget` plus its parts of the layer and output matrices),
        that. Otherwise `shard_budget` plus an equal share (one of `n_parts`) of what the main
        guest's KV cache and buffers leave of the budget, at most the shard's part of the layer
        matrices: every instance then caches about as much of its part and streams the rest."""
        if n_parts <= 1:
            return []
        base = shard_budget(config, n_parts)
        tensors = getattr(gguf_file, "tensors", None) or {}
        suffixes = tuple(f".{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output",
                                                   "ffn_gate", "ffn_up", "ffn_down"))
        layer_bytes = sum(int(t.n_bytes) for name, t in tensors.items()
                          if name.startswith("blk.") and name.endswith(suffixes))
        out = _output_tensor(gguf_file)
        out_bytes = int(out.n_bytes) if out is not None else 0
        vocab = int(config.vocab_size)
        kv_dim = int(config.n_kv_heads) * int(config.head_dim)
        window = int(getattr(config, "sliding_window", 0) or 0)
        kv_bytes = 4 * kv_dim * sum(min(self.n_ctx, window + MAX_BATCH) if config.layer_is_sliding(il) else self.n_ctx
                                    for il in range(int(config.n_layers)))
        part_layer = -(-layer_bytes // n_parts)
        pinned = [_mib_up(base + part_layer + out_bytes * (r1 - r0) // max(vocab, 1))
                  for r0, r1 in self._ranges[1:]]
        if self.memory_budget - sum(pinned) >= part_layer + out_bytes + kv_bytes + (32 << 20):
            return pinned
        main_fixed = kv_bytes + self.memory_budget // 8 + 12 * vocab + (4 << 20)
        spare = self.memory_budget - main_fixed - (n_parts - 1) * base
        share = max(0, min(part_layer, spare // n_parts,
                           (self.memory_budget - MIN_MAIN_BUDGET) // (n_parts - 1) - base))
        return [base + share // (1 << 20) * (1 << 20)] * (n_parts - 1)

    def _start_shard(self, gguf_file, wasm, budget: int, part: int, n_parts: int) -> Guest:
        """One more guest instance holding the model, initialised as part `part` of `n_parts`."""
        g = Guest(wasm, runtime=self.runtime, model_store=self.model_store, memory_budget=budget,
                  timeout=self.timeout, name=f"{self.guest.name}-shard")
        try:
            model_id = self.model_store.add(gguf_file, holder=g.holder, pin=False)
            g.tenant.adopt(model_id, self.model_store.get(model_id))
            rc = g.call("realm_init_shard", model_id, _i32(budget), part, n_parts)
            if rc == Err.ERR_OOM:
                raise guest_error(f"a shard's memory of {budget / 2**20:.1f} MiB is too small for this model; "
                                  "raise --memory-budget or lower --threads", rc)
            if rc < 0:
                raise guest_error("realm_init_shard failed", rc)
            g.shard_hidden_ptr = g.call("realm_hidden_ptr") & 0xFFFFFFFF
            g.peer_in_ptr = g.call("realm_peer_in_ptr") & 0xFFFFFFFF
            g.peer_out_ptr = g.call("realm_peer_out_ptr") & 0xFFFFFFFF
            g.part, g.n_parts = part, n_parts
        except BaseException:
            g.close()
            raise
        return g

    # -- evaluation ----------------------------------------------------------------------------------

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the KV cache; logits (vocab,) of the last position, or (len(ids), vocab)."""
        if self._broken is not None:
            raise GuestError(f"a shard of this engine failed earlier ({self._broken}); create a new engine")
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
        if self._peers is not None:
            self._peers.start()
        try:
            rc = self.guest.call("realm_eval", self._tok_ptr, chunk.shape[0], mode)
        finally:
            if self._peers is not None:
                self._peers.stop()
        if self._peers is not None and self._peers.failed is not None:
            self._broken = self._peers.failed
            raise GuestError(f"a shard of this engine failed: {self._broken}")
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
        for w, (r0, r1) in zip(self._workers, self._ranges[1:]):
            w.submit(_shard_rows, w.guest, hidden, r0, r1)
        try:
            r0, r1 = self._ranges[0]
            rc = self.guest.call("realm_logits_rows", r0, r1)
            if rc < 0:
                raise guest_error("realm_logits_rows failed" + self._hint(rc), rc)
            ptr = self.guest.call("realm_logits_ptr") & 0xFFFFFFFF
            for w, (a, _) in zip(self._workers, self._ranges[1:]):
                try:
                    rows = w.result()
                except GuestError as e:
                    self._broken = str(e)
                    raise
                self.guest.write(ptr + 4 * a, rows)
        finally:
            for w in self._workers:  # never leave a shard running into the next call
                w.wait()

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
        """The engine's guest instances: the main guest, then its shards."""
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
            "runtime": self.runtime,
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
        workers, self._workers = getattr(self, "_workers", []), []
        for w in workers:
            w.stop()
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


class _Peers:
    """The shards as the main guest's peers: `realm_peers_begin` / `realm_peers_end` (docs/abi.md)
    land here. `begin` copies the group's input into every shard and starts each on its row parts;
    `end` waits for them and copies each shard's rows into the main guest's outputs. At most one
    group is in flight, and no shard runs past the main guest's call (`stop`, `abandon`). A shard
    that fails marks the peers `failed`.

    Two ways to start a shard. With `mailbox` (x86-64, whose stores the shard sees in program
    order), each shard runs `realm_peer_serve` in its worker for the whole `realm_eval` of the
    main guest and polls a mailbox in its own memory: `begin` writes the input and the op, then
    bumps the sequence number; the shard writes its rc, then `done`. No thread hand-off, no call
    into wasm, no GIL on the shard's side: ~10 us a group instead of ~100. Otherwise each group is
    one `realm_peer_run` call made by the shard's worker thread."""

    def __init__(self, workers: list["_Worker"], max_cols: int, mailbox: bool = False):
        self.workers = workers
        self.max_cols = max_cols
        self.n_parts = 1 + len(workers)
        self.failed: str | None = None
        self._pending: int | None = None  # nt of the group in flight
        self.links = [_MailboxLink(w, self.n_parts) for w in workers] if mailbox else None
        self._serving = False

    def start(self) -> None:
        """Before each `realm_eval` of the main guest: set the shards serving their mailboxes."""
        if self.links is None or self.failed is not None:
            return
        for link in self.links:
            link.reset()
            link.worker.submit(_serve, link.worker.guest)
        self._serving = True

    def stop(self) -> None:
        """After each `realm_eval` of the main guest: no shard keeps running."""
        self.abandon()
        if not self._serving:
            return
        self._serving = False
        for link in self.links:
            link.post_stop()
        for link in self.links:
            self._collect(link.worker)

    def begin(self, group: int, layer: int, nt: int, cols: int, data: bytes) -> int:
        if self._pending is not None:
            self.abandon()
            return int(Err.ERR_BAD_ARG)
        if self.failed is not None:
            return int(Err.ERR_INTERNAL)
        if self.links is not None:
            if not self._serving:
                return int(Err.ERR_BAD_ARG)
            for link in self.links:
                link.post(group, layer, nt, data)
        else:
            for w in self.workers:
                w.submit(_peer_run, w.guest, data, group, layer, nt)
        self._pending = nt
        return len(self.workers)

    def end(self, outs: list[tuple[int, int, int]], dst) -> int:
        """Gather; `dst(ptr, n)` validates a range of the main guest's memory, returns its address."""
        if self._pending is None:
            return int(Err.ERR_BAD_ARG)
        nt = self._pending
        rc = self._wait()
        if rc < 0:
            return rc
        for k, w in enumerate(self.workers):
            g = w.guest
            # a serving shard is inside a wasm call: its memory is addressed through the span
            # taken before the call (memory never moves; it can only grow)
            address = self.links[k].address if self._serving else g.address
            off = g.peer_out_ptr
            for out_ptr, stride, rows in outs:
                a, b = _row_ranges(rows, self.n_parts)[g.part]
                n = 4 * (b - a)
                if n:
                    src = address(off, nt * n)
                    if stride * 4 == n:
                        ctypes.memmove(dst(out_ptr + 4 * a, nt * n), src, nt * n)
                    else:
                        for t in range(nt):
                            ctypes.memmove(dst(out_ptr + 4 * (t * stride + a), n), src + t * n, n)
                off += nt * n
        return 0

    def abandon(self) -> None:
        if self._pending is not None:
            self._wait()

    def _wait(self) -> int:
        self._pending = None
        rc = 0
        if self.links is not None:
            for link in self.links:
                r = link.wait_done()
                if r is None:  # the shard's serve call ended early: it failed (`stop` collects the rest)
                    self._collect(link.worker)
                    r = int(Err.ERR_INTERNAL)
                elif r < 0 and self.failed is None:
                    self.failed = f"{link.worker.guest.name}: realm_peer_run failed: {abi.code_name(r)}"
                rc = rc or min(r, 0)
            return rc
        for w in self.workers:
            rc = self._collect(w) or rc
        return rc

    def _collect(self, w: "_Worker") -> int:
        """Take a worker's result: 0, or ERR_INTERNAL (and `failed`) if its job raised."""
        try:
            w.result()
        except GuestError as e:
            if self.failed is None:
                self.failed = str(e)
            return int(Err.ERR_INTERNAL)
        return 0


MB_SEQ, MB_GROUP, MB_LAYER, MB_NT, MB_DONE, MB_RC, MB_STOP, MB_POLLS = range(8)  # mailbox words (guest model.rs)
MAILBOX_POLLS = 1 << 20  # a shard's polls (~1 ms) before it blocks, when every instance has a core


def _mailbox_ok() -> bool:
    """Mailbox peers need x86-64's store order and wasmtime's raw calls; REALM_PEER_MAILBOX=0 turns them off."""
    import platform
    if os.environ.get("REALM_PEER_MAILBOX", "1") == "0":
        return False
    return platform.machine().lower() in ("x86_64", "amd64")


class _MailboxLink:
    """The host's end of one shard's mailbox (8 i32 words in the shard's memory)."""

    def __init__(self, worker: "_Worker", n_parts: int):
        self.worker = worker
        self.n_parts = n_parts
        g = worker.guest
        self.mb_ptr = g.call("realm_peer_mailbox") & 0xFFFFFFFF
        self.seq = 0
        self.wake = threading.Event()  # set by the main side: the shard may stop blocking
        self.done_event = threading.Event()  # set by the shard (`realm_peer_notify`): a result is out
        self.mb = None
        g.tenant.peer_link = self

    def reset(self) -> None:
        """Before a serve call (the shard is idle): map the mailbox, clear stop, done = seq."""
        g = self.worker.guest
        self.base, self.size = g.address(0, 0), g.memory_size
        self.mb = (ctypes.c_int32 * 8).from_address(self.address(self.mb_ptr, 32))
        self.mb[MB_STOP] = 0
        self.mb[MB_SEQ] = self.mb[MB_DONE] = self.seq
        # polling only pays when every instance has a core: more, and pollers take the cores the
        # working instances need (4 instances on 2 cores: 3.4x slower than 2 with polling)
        self.mb[MB_POLLS] = MAILBOX_POLLS if self.n_parts <= _cores() else 0
        self.wake.clear()

    def address(self, ptr: int, n: int) -> int:
        """Host address of [ptr, ptr + n) of the shard's memory, checked against the span of `reset`."""
        if ptr < 0 or n < 0 or ptr + n > self.size:
            raise guest_error(f"range [{ptr}, {ptr + n}) is outside the shard's memory of {self.size} bytes",
                              Err.ERR_BOUNDS)
        return self.base + ptr

    def _bump(self) -> None:
        self.done_event.clear()
        self.seq = (self.seq + 1) & 0x7FFFFFFF
        self.mb[MB_SEQ] = self.seq  # last: the shard reads the op after it sees the new seq
        self.wake.set()

    def post(self, group: int, layer: int, nt: int, data: bytes) -> None:
        ctypes.memmove(self.address(self.worker.guest.peer_in_ptr, len(data)), data, len(data))
        self.mb[MB_GROUP], self.mb[MB_LAYER], self.mb[MB_NT] = group, layer, nt
        self._bump()

    def post_stop(self) -> None:
        self.mb[MB_STOP] = 1
        self._bump()

    def wait_done(self) -> int | None:
        """The shard's rc for the current seq; None if its serve call ended instead."""
        mb, seq, w = self.mb, self.seq, self.worker
        # blocks with the GIL released: polling here would keep this shard's own host calls (its
        # streamed weight reads, its notify) waiting for the GIL
        while mb[MB_DONE] != seq:
            if w.finished:
                return mb[MB_RC] if mb[MB_DONE] == seq else None
            self.done_event.wait(0.01)
        return mb[MB_RC]

    def wait(self, seen: int) -> int:
        """`realm_peer_wait` (on the shard's thread): block until the seq moves past `seen`."""
        mb = self.mb
        while mb is not None and mb[MB_SEQ] == seen:
            self.wake.wait(0.01)
            self.wake.clear()
        return 0


def _serve(g: Guest) -> None:
    rc = g.fast_call("realm_peer_serve")
    if rc < 0:
        raise guest_error(f"{g.name}: realm_peer_serve failed", rc)


class _Worker:
    """One thread running one shard's calls (a job at a time; `submit`, then `result`)."""

    def __init__(self, guest: Guest):
        self.guest = guest
        self._job = None
        self._result = None
        self._error: BaseException | None = None
        self._busy = False  # a job was submitted and its result not yet taken
        self._posted = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._thread = threading.Thread(target=self._loop, name=f"realm-{guest.name}", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        self.wait()
        self._done.clear()
        self._job = (fn, args)
        self._busy = True
        self._posted.set()

    def result(self):
        """Wait for the job; its return value, or raise what it raised."""
        self.wait()
        if not self._busy:
            return None
        self._busy = False
        error, self._error = self._error, None
        result, self._result = self._result, None
        if error is not None:
            raise error
        return result

    def wait(self) -> None:
        self._done.wait()

    @property
    def finished(self) -> bool:
        """The submitted job has ended (returned or raised)."""
        return self._done.is_set()

    def stop(self) -> None:
        self.wait()
        self._job = None
        self._posted.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._posted.wait()
            self._posted.clear()
            job = self._job
            if job is None:
                return
            try:
                self._result = job[0](*job[1])
            except BaseException as e:  # handed to the waiting thread
                self._error = e
            self._done.set()


def _peer_run(g: Guest, data: bytes, group: int, layer: int, nt: int) -> None:
    """Shard `g`'s row parts of one matrix group (runs in its worker thread)."""
    ctypes.memmove(g.address(g.peer_in_ptr, len(data)), data, len(data))
    rc = g.fast_call("realm_peer_run", group, layer, nt)
    if rc < 0:
        raise guest_error(f"{g.name}: realm_peer_run failed", rc)


def _row_ranges(n_rows: int, k: int) -> list[tuple[int, int]]:
    """`n_rows` split into k contiguous ranges, near-equal, every cut a multiple of 4 (the guest
    multiplies rows in aligned groups of four: then no result depends on the split). The guest's
    `part_rows` is the same function."""
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
