"""Many guests, one stored model: 8 wasm engines in threads share one copy of the weights.

Each guest's outputs must equal a single-guest run bit for bit (no cross-talk through the store),
the store must hold one copy, and each guest's linear memory (read from wasmtime, not RSS) must
stay within its 64 MiB budget.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from realm.config import ModelConfig
from realm.gguf import GGUFFile
from realm.host.runtime import default_guest_path, load_module
from realm.quants import GGMLType

pytest.importorskip("gguf")
if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

from realm.engines.wasm import WasmEngine  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from realm.generate import greedy  # noqa: E402
from synth import kquant_dims, make_model  # noqa: E402

N_GUESTS = 8
GUEST = load_module(default_guest_path().read_bytes())  # one compiled guest even if the .wasm is rebuilt meanwhile
BUDGET = 64 << 20
PROMPTS = [[1, 5, 9, 100, 200, 7], [1, 42, 43, 44], [1, 250, 3, 3, 3, 3, 3, 8]]
N_STEPS = 6


def run_tenants(gguf_file, config, store: ModelStore, prompts, n_steps: int, n_ctx: int = 64):
    engines = [WasmEngine(gguf_file, config, wasm=GUEST, n_ctx=n_ctx, memory_budget=BUDGET, store=store, timeout=600)
               for _ in range(len(prompts))]
    results: list = [None] * len(prompts)
    errors: list = []
    start = threading.Barrier(len(prompts))

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = greedy(engines[i], prompts[i], n_steps)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return engines, results, errors


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("tenants") / "g.gguf", arch="gemma3", qtype=GGMLType.Q4_K,
                      seed=4, **kquant_dims())


def test_eight_guests_share_one_copy(synth_model):
    store = ModelStore()
    with GGUFFile(synth_model) as f:
        config = ModelConfig.from_gguf(f)
        expect = {}
        for k, prompt in enumerate(PROMPTS):
            single = WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=BUDGET, store=ModelStore())
            expect[k] = greedy(single, prompt, N_STEPS)
            single.close()

        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(N_GUESTS)]
        engines, results, errors = run_tenants(f, config, store, prompts, N_STEPS)
        try:
            assert not errors, errors
            stats = store.stats()
            assert stats["n_copies"] == 1, stats
            assert stats["mapped_bytes"] == synth_model.stat().st_size
            (mid,) = stats["models"]
            assert len(store.holders(mid)) == sum(e.threads for e in engines) >= N_GUESTS
            for i, (tokens, logits) in enumerate(results):
                e_tokens, e_logits = expect[i % len(PROMPTS)]
                assert tokens == e_tokens, f"guest {i}: tokens differ from a single run"
                np.testing.assert_array_equal(logits, e_logits, err_msg=f"guest {i}: logits differ")
            for eng in engines:
                assert eng.memory_size <= BUDGET
                assert eng.stats()["peak_memory"] <= BUDGET
            assert {e.model_id for e in engines} == {mid}
            served = stats["models"][mid]["bytes_served"]
            assert served == sum(store.holder_stats(g.holder)["bytes_read"] for e in engines for g in e.guests)
        finally:
            for eng in engines:
                eng.close()
    assert store.stats()["n_copies"] == 0  # unpinned: gone with the last guest


def test_a_closed_tenant_does_not_disturb_the_others(synth_model):
    store = ModelStore()
    with GGUFFile(synth_model) as f:
        config = ModelConfig.from_gguf(f)
        a = WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store)
        b = WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store)
        expect = greedy(b, PROMPTS[0], 3)
        a.eval(PROMPTS[1])
        a.close()
        got = greedy(b, PROMPTS[0], 3)
        assert got[0] == expect[0]
        np.testing.assert_array_equal(got[1], expect[1])
        assert store.stats()["n_copies"] == 1
        b.close()
        assert store.stats()["n_copies"] == 0


@pytest.mark.slow
def test_default_model_tenants(default_model):
    """Four guests on the default model in threads, each within 64 MiB, one stored copy."""
    from realm.tokenizer import Tokenizer

    store = ModelStore()
    with GGUFFile(default_model) as f:
        config = ModelConfig.from_gguf(f)
        encode = Tokenizer.from_gguf(f).encode
        prompts = [encode("What is the capital of France?"), encode("The quick brown fox")] * 2
        single = WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=BUDGET, store=store)
        expect = [greedy(single, p, 2) for p in prompts[:2]]
        single.close()
        engines, results, errors = run_tenants(f, config, store, prompts, 2)
        try:
            assert not errors, errors
            assert store.stats()["n_copies"] == 1
            assert store.stats()["mapped_bytes"] == default_model.stat().st_size
            for i, (tokens, logits) in enumerate(results):
                assert tokens == expect[i % 2][0]
                np.testing.assert_array_equal(logits, expect[i % 2][1])
            for eng in engines:
                assert eng.memory_size <= BUDGET
        finally:
            for eng in engines:
                eng.close()


def test_budget_too_small_for_the_context_is_a_clear_error(synth_model):
    from realm.errors import GuestError

    with GGUFFile(synth_model) as f:
        config = ModelConfig.from_gguf(f)
        store = ModelStore()
        with pytest.raises(GuestError, match="--memory-budget"):
            WasmEngine(f, config, wasm=GUEST, n_ctx=100_000, memory_budget=2 << 20, store=store)
        assert store.stats()["n_copies"] == 0  # the failed guest let its reference go
        eng = WasmEngine(f, config, wasm=GUEST, n_ctx=32, memory_budget=4 << 20, store=store)  # a short context fits
        assert eng.eval(PROMPTS[0]).shape == (config.vocab_size,)
        assert eng.memory_size <= 4 << 20
        with pytest.raises(GuestError, match="context"):
            eng.eval([1] * 40)
        with pytest.raises(GuestError, match="vocabulary"):
            eng.eval([config.vocab_size])
        eng.close()


BUSY = """(module (memory (export "memory") 1)
  (func (export "work") (param $n i32) (result i32) (local $i i32) (local $x i32)
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1664525)) (i32.const 1013904223)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (local.get $x)))"""


def test_a_running_guest_releases_the_gil():
    """Python threads (and other guests) run while a guest computes: wasm calls drop the GIL."""
    import time

    from realm.host.runtime import Guest

    g = Guest(BUSY, model_store=ModelStore())
    stamps: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    g.call("work", 200_000_000)  # ~0.3-1 s of pure wasm
    t1 = time.perf_counter()
    done.set()
    t.join()
    inside = [s for s in stamps if t0 + 0.1 * (t1 - t0) < s < t1 - 0.1 * (t1 - t0)]
    assert t1 - t0 > 0.05, "the busy loop was too short to tell"
    assert len(inside) > 100, f"only {len(inside)} Python steps ran during a {t1 - t0:.2f} s guest call"
