"""Per-tenant limits: memory bombs, runaway loops, deep recursion, host-call hammering, read quotas.

Each limit must end the offending call cleanly (a negative code inside the guest, or a GuestError
naming the limit), leave the host, the store and other tenants working, and have the documented
default (SECURITY.md). Time bounds are generous (noisy 2-core CI): they catch a limit that does
not fire, not a slow one.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("gguf")

from synth import kquant_dims, make_model  # noqa: E402

from realm.config import ModelConfig  # noqa: E402
from realm.errors import GuestError  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host import abi, runtime  # noqa: E402
from realm.host.abi import Err  # noqa: E402
from realm.host.runtime import DEFAULT_BUDGET, DEFAULT_TIMEOUT, Guest  # noqa: E402
from realm.host.store import DEFAULT_MAX_IMAGE_BYTES, ModelStore  # noqa: E402
from realm.quants import GGMLType  # noqa: E402

pytestmark = pytest.mark.usefixtures("wasm_runtime")  # under every installed runtime (conftest.py)

TIMEOUT = 0.2
TICK = 0.01  # wasmtime's epoch tick: its deadline may fire up to 2 ticks early
STOP_WITHIN = 10.0  # generous: the deadline fires after TIMEOUT + 2 ticks, plus scheduling
PAGE = 65536
NAME_AT, OUT_AT, BUF_AT = 0x100, 0x1000, 0x10000

# grow one page at a time until memory.grow fails; returns the number of pages gained
BOMB = """(module (memory (export "memory") 1)
  (func (export "bomb") (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (local.set $n (i32.add (local.get $n) (i32.const 1))) (br $l)))
    (local.get $n))
  (func (export "huge") (result i32) (memory.grow (i32.const 0x7fffffff)))
  (func (export "touch_past_end") (result i32)
    (i32.load (i32.mul (memory.size) (i32.const 65536)))))"""
SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l)))
  (func (export "work") (param $n i32) (result i32) (local $i i32) (local $x i32)
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1664525)) (i32.const 1013904223)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (local.get $x)))"""
RECURSE_BIG_FRAMES = """(module (memory (export "memory") 1)
  (func $r (export "recurse") (param i32) (result i32)
    (local i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64)
    (i32.add (call $r (i32.add (local.get 0) (i32.const 1))) (i32.const 1))))"""
MUTUAL = """(module (memory (export "memory") 1)
  (func $a (export "a") (param i32) (result i32) (call $b (local.get 0)))
  (func $b (param i32) (result i32) (i32.add (call $a (local.get 0)) (i32.const 1))))"""
# read_tensor in a loop until it fails; returns (number of successful reads, the failing code)
READ_LOOP = """(module
  (import "env" "realm_read_tensor" (func $read (param i64 i32 i64 i32 i32) (result i32)))
  (import "env" "realm_get_tensor" (func $get (param i64 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (global $fail (mut i32) (i32.const 0))
  (func (export "fail_code") (result i32) (global.get $fail))
  (func (export "read_until_error") (param $id i64) (param $len i32) (result i32) (local $n i32) (local $rc i32)
    (block $done (loop $l
      (local.set $rc (call $read (local.get $id) (i32.const 0) (i64.const 0) (i32.const 0x10000) (local.get $len)))
      (br_if $done (i32.lt_s (local.get $rc) (i32.const 0)))
      (local.set $n (i32.add (local.get $n) (i32.const 1))) (br $l)))
    (global.set $fail (local.get $rc))
    (local.get $n))
  (func (export "get_once") (param $id i64) (param $name i32) (param $len i32) (result i32)
    (call $get (local.get $id) (local.get $name) (local.get $len) (i32.const 0x10000) (i32.const 0x80000)))
  (func (export "get_forever") (param $id i64) (param $name i32) (param $len i32)
    (loop $l (drop (call $get (local.get $id) (local.get $name) (local.get $len) (i32.const 0x10000)
                                (i32.const 0x80000))) (br $l))))"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("limits") / "g.gguf", arch="gemma3", qtype=GGMLType.Q4_K,
                      seed=4, **kquant_dims())


@pytest.fixture()
def store(model_path):
    st = ModelStore()
    st.model_id = st.add(model_path)
    yield st
    still_serves(st)
    st.close()


def still_serves(st: ModelStore) -> None:
    """A fresh guest reads exact bytes of the model: the host and the store survived."""
    g = Guest(READ_LOOP, model_store=st, max_read_bytes=4096)
    g.acquire(st.model_id)
    assert g.call("read_until_error", st.model_id, 1024) == 4
    assert g.call("fail_code") == Err.ERR_QUOTA
    want = st.gguf(st.model_id).tensor_bytes(next(iter(st.gguf(st.model_id).tensors))).tobytes()[:1024]
    assert g.read(0x10000, 1024) == want
    g.close()


# ---- defaults ------------------------------------------------------------------------------------


def test_documented_defaults(store, model_path):
    from realm.engines.wasm import WasmEngine, default_timeout

    assert DEFAULT_BUDGET == 64 << 20
    assert DEFAULT_TIMEOUT == 60.0
    assert DEFAULT_MAX_IMAGE_BYTES == 1 << 30
    assert abi.MAX_NAME_BYTES == 4096 and abi.MAX_READ_REQS == 4096 and abi.LOG_MAX_BYTES == 1024
    g = Guest(SPIN, model_store=store)
    assert g.timeout == DEFAULT_TIMEOUT and g.memory_budget == DEFAULT_BUDGET
    assert store.holder_stats(g.holder)["max_read_bytes"] is None  # no read quota by default
    assert default_timeout(100 << 20) == DEFAULT_TIMEOUT
    assert default_timeout(4 << 30) == 8 * DEFAULT_TIMEOUT  # scaled for models > 512 MiB
    with GGUFFile(model_path) as f:
        eng = WasmEngine(f, ModelConfig.from_gguf(f), n_ctx=16, store=store)
        assert eng.guest.timeout == DEFAULT_TIMEOUT and eng.memory_budget == DEFAULT_BUDGET
        eng.close()


# ---- memory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1 << 20, 3 << 20, 64 << 20])
def test_memory_bomb_stops_at_the_budget(store, budget):
    g = Guest(BOMB, model_store=store, memory_budget=budget)
    assert g.call("bomb") == budget // PAGE - 1
    assert g.memory_size == budget
    assert g.call("huge") == -1  # 2^31 pages at once
    assert g.call("bomb") == 0
    with pytest.raises(GuestError, match="out of bounds"):
        g.call("touch_past_end")  # the page past the budget is not there: a trap, not host memory
    with pytest.raises(GuestError, match="trapped earlier"):
        g.call("bomb")
    g.close()


def test_real_guest_budget_errors_are_clear(model_path):
    from realm.engines.wasm import WasmEngine

    store = ModelStore()
    with GGUFFile(model_path) as f:
        config = ModelConfig.from_gguf(f)
        with pytest.raises(GuestError, match="memory budget.*--memory-budget") as e:
            WasmEngine(f, config, n_ctx=200_000, memory_budget=4 << 20, store=store)
        assert e.value.code == Err.ERR_OOM
        with pytest.raises(GuestError, match="memory budget"):  # smaller than the guest's own image
            WasmEngine(f, config, n_ctx=8, memory_budget=64 << 10, store=store)
        assert store.stats()["n_copies"] == 0  # the failed guests let go of the model


# ---- time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.05, TIMEOUT])
def test_runaway_loop_stopped_within_the_stated_time(store, timeout):
    g = Guest(SPIN, model_store=store, timeout=timeout)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match=f"deadline after {timeout} s") as e:
        g.call("spin")
    elapsed = time.perf_counter() - t0
    assert elapsed >= timeout - 2 * TICK  # not before its time ...
    assert elapsed < timeout + STOP_WITHIN  # ... and surely after it (stated: timeout + 2 ticks)
    assert e.value.code is None and "runaway" in str(e.value)


SIMD_SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (result i32) (local $v v128)
    (loop $l (local.set $v (i32x4.add (local.get $v) (v128.const i32x4 1 1 1 1))) (br $l))
    (i32x4.extract_lane 0 (local.get $v))))"""


def test_runaway_simd_loop_is_stopped(store):
    """A loop of SIMD instructions (under wasmer: the call-free SIMD-loop counter of wasm_rewrite,
    which may fire before the deadline) is stopped too."""
    g = Guest(SIMD_SPIN, model_store=store, timeout=TIMEOUT)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="runaway"):
        g.call("spin")
    assert time.perf_counter() - t0 < TIMEOUT + STOP_WITHIN
    assert g.trapped is not None


def test_deadline_is_per_call_not_cumulative(store):
    g = Guest(SPIN, model_store=store, timeout=1.0)
    t0 = time.perf_counter()
    calls = 0
    while time.perf_counter() - t0 < 2.5:  # many short calls adding up past the timeout
        g.call("work", 2_000_000)
        calls += 1
    assert calls >= 2 and g.trapped is None


def test_ctrl_c_ends_a_call_and_reaches_the_caller(store):
    """A KeyboardInterrupt during a call without a deadline (a host-call loop) ends the call at its
    next host call; the caller gets the KeyboardInterrupt and the guest refuses further calls. (Under
    wasmer the call runs on the adapter's owner thread while the caller waits.)"""
    g = Guest(READ_LOOP, model_store=store, timeout=None)
    g.acquire(store.model_id)
    name = next(iter(store.gguf(store.model_id).tensors)).encode()
    g.write(NAME_AT, name)
    # one call first: the host call's kernels are compiled before the interrupt (a KeyboardInterrupt
    # inside Numba's compiler, on an empty cache, left the next compile waiting for ever)
    g.call("get_once", store.model_id, NAME_AT, len(name))
    # Python installs its KeyboardInterrupt handler only where SIGINT was not ignored at start-up; a
    # CI job started in the background inherits SIGINT ignored, and the signal would never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, signal.pthread_kill, (threading.get_ident(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            g.call("get_forever", store.model_id, NAME_AT, len(name))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - t0 < STOP_WITHIN
    assert g.trapped is not None
    with pytest.raises(GuestError, match="trapped earlier"):
        g.call("get_once", store.model_id, NAME_AT, len(name))
    g.close()


def test_a_guest_made_in_one_thread_serves_calls_from_another(store):
    """Guests and compiled modules move between threads (wasmer-python's objects are bound to the
    thread that made them, so its adapter makes and calls them all on one owner thread)."""
    g = Guest(SPIN, model_store=store)
    expect = g.call("work", 1000)
    out: dict = {}

    def elsewhere():
        try:
            out["same"] = g.call("work", 1000)
            g.write(OUT_AT, b"abc")
            out["read"] = g.read(OUT_AT, 3)
            with Guest(SPIN, model_store=store) as h:  # the module compiled in the other thread
                out["other"] = h.call("work", 1000)
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert "error" not in out, repr(out["error"])
    assert out == {"same": expect, "read": b"abc", "other": expect}
    assert g.read(OUT_AT, 3) == b"abc" and g.call("work", 1000) == expect
    g.close()


def test_real_guest_deadline_mid_eval(model_path):
    from realm.engines.wasm import WasmEngine

    store = ModelStore()
    with GGUFFile(model_path) as f:
        config = ModelConfig.from_gguf(f)
        eng = WasmEngine(f, config, n_ctx=256, store=store)
        eng.eval([1, 2, 3])
        eng.guest.timeout = 0.001  # 2 epoch ticks: far less than a 64-token prefill pass
        with pytest.raises(GuestError, match="deadline"):
            for _ in range(3):
                eng.eval(list(range(5, 69)))
        with pytest.raises(GuestError, match="trapped earlier"):
            eng.eval([1])
        eng.close()
        assert store.stats()["n_copies"] == 0


# ---- stack -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wat,export", [(RECURSE_BIG_FRAMES, "recurse"), (MUTUAL, "a")])
def test_deep_recursion_traps(store, wat, export):
    g = Guest(wat, model_store=store)
    with pytest.raises(GuestError, match="stack overflow"):
        g.call(export, 0)
    g2 = Guest(wat, model_store=store)  # the host thread's own stack is fine: do it again
    with pytest.raises(GuestError, match="stack overflow"):
        g2.call(export, 0)


# ---- host calls in a tight loop --------------------------------------------------------------------


@pytest.mark.parametrize("quota,length", [(10_000, 1000), (10_000, 3000), (1 << 20, 4096), (0, 1)])
def test_read_loop_is_bounded_by_the_quota(store, quota, length):
    g = Guest(READ_LOOP, model_store=store, max_read_bytes=quota)
    g.acquire(store.model_id)
    n = g.call("read_until_error", store.model_id, length)
    assert n == quota // length
    assert g.call("fail_code") == Err.ERR_QUOTA
    assert store.holder_stats(g.holder)["bytes_read"] == n * length <= quota
    assert g.tenant.host_calls == n + 1
    g.close()


def test_read_loop_without_quota_is_bounded_by_the_deadline(store):
    g = Guest(READ_LOOP, model_store=store, timeout=TIMEOUT)
    g.acquire(store.model_id)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="deadline"):
        g.call("read_until_error", store.model_id, 4096)
    assert time.perf_counter() - t0 < TIMEOUT + STOP_WITHIN
    assert g.tenant.host_calls > 10
    assert store.holder_stats(g.holder)["bytes_read"] == 4096 * (g.tenant.host_calls)


def test_dequantizing_host_call_loop_is_bounded_by_the_deadline(store):
    """Each realm_get_tensor does host-side work (dequantization); the loop still ends at the deadline."""
    g = Guest(READ_LOOP, model_store=store, timeout=TIMEOUT)
    g.acquire(store.model_id)
    name = b"blk.0.ffn_down.weight"
    g.write(NAME_AT, name)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="deadline"):
        g.call("get_forever", store.model_id, NAME_AT, len(name))
    assert time.perf_counter() - t0 < TIMEOUT + STOP_WITHIN
    assert g.tenant.host_calls >= 1
    n_out = 4 * store.gguf(store.model_id).tensors[name.decode()].n_elements
    assert store.holder_stats(g.holder)["bytes_read"] == n_out * g.tenant.host_calls


def test_get_tensor_loop_is_bounded_by_the_quota(store):
    g = Guest(READ_LOOP, model_store=store, max_read_bytes=1 << 20, timeout=30)
    g.acquire(store.model_id)
    name = b"blk.0.ffn_down.weight"
    g.write(NAME_AT, name)
    n_out = 4 * store.gguf(store.model_id).tensors[name.decode()].n_elements
    got = [g.call("get_once", store.model_id, NAME_AT, len(name)) for _ in range(10)]
    k = (1 << 20) // n_out
    assert 0 < k < 10
    assert got == [n_out] * k + [Err.ERR_QUOTA] * (10 - k)
    assert store.holder_stats(g.holder)["bytes_read"] == k * n_out


def test_real_guest_read_quota_error_is_clear(model_path):
    from realm.engines.wasm import WasmEngine

    store = ModelStore()
    with GGUFFile(model_path) as f:
        config = ModelConfig.from_gguf(f)
        ok = WasmEngine(f, config, n_ctx=32, store=store)
        expect = ok.eval([1, 7, 9])
        quota = 64 << 10
        try:
            limited = WasmEngine(f, config, n_ctx=32, store=store, max_read_bytes=quota)
        except GuestError as e:  # realm_init itself may need more than the quota
            assert e.code == Err.ERR_QUOTA and "read quota" in str(e)
        else:
            with pytest.raises(GuestError, match="read quota of 65536 bytes") as e:
                limited.eval([1, 7, 9])
            assert e.value.code == Err.ERR_QUOTA
            assert store.holder_stats(limited.guest.holder)["bytes_read"] <= quota
            limited.close()
        ok.reset()
        np.testing.assert_array_equal(ok.eval([1, 7, 9]), expect)  # the neighbour is unaffected
        ok.close()


def test_model_count_quota_on_acquire(store, model_path, tmp_path):
    other = store.add(make_model(tmp_path / "o.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=3))
    g = Guest(READ_LOOP, model_store=store, max_models=1)
    g.acquire(store.model_id)
    g.acquire(store.model_id)  # the same model again does not count twice
    with pytest.raises(Exception, match="limit"):
        g.acquire(other)
    assert store.holders(other) == {}
    g.close()
    store.remove(other)


def test_runtime_limits_are_per_store_not_global(store):
    """One guest's exhausted budget, quota and trap leave a neighbour's limits untouched."""
    bomb = Guest(BOMB, model_store=store, memory_budget=1 << 20)
    bomb.call("bomb")
    other = Guest(BOMB, model_store=store, memory_budget=4 << 20)
    assert other.call("bomb") == 63
    spin = Guest(SPIN, model_store=store, timeout=0.05)
    with pytest.raises(GuestError):
        spin.call("spin")
    fresh = Guest(SPIN, model_store=store, timeout=5)
    assert fresh.call("work", 1000) == Guest(SPIN, model_store=store).call("work", 1000)
    again = Guest(SPIN, model_store=store, timeout=0.05)  # the deadline still fires for the next guest
    with pytest.raises(GuestError, match="deadline"):
        again.call("spin")
