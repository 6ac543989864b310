"""Bounded load: 8 guests generating concurrently from one stored model, with store churn beside them.

Every guest's tokens and logits must equal its single-guest run bit for bit, the store must hold
exactly one copy of the shared weights at every sample (and nothing else once the churn stops),
and no guest may leave its memory budget. Short by design (~10-30 s on 2 cores); the long version
is `benchmarks/soak.py`.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from synth import kquant_dims, make_model  # noqa: E402

from realm.config import ModelConfig  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host.abi import Err  # noqa: E402
from realm.host.runtime import Guest, default_guest_path, load_module  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from realm.quants import GGMLType  # noqa: E402

if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

from realm.engines.wasm import WasmEngine  # noqa: E402
from realm.generate import greedy

PROXY = (Path(__file__).resolve().parent / "wat" / "proxy.wat").read_text()
N_GUESTS = 8
BUDGET = 64 << 20
PROMPTS = [[1, 5, 9, 100, 200, 7], [1, 42, 43, 44], [1, 250, 3, 3, 3, 3, 3, 8], list(range(1, 70))]
N_STEPS = 16
ROUNDS = 3
BIG_AT = 0x10000

@functools.cache
def guest_module():
    """The shipped guest, compiled once here: references and tenants run the same code even if the
    .wasm is rebuilt while the tests run."""
    return load_module(default_guest_path().read_bytes())


def copies_of(st: ModelStore, mid: int) -> int:
    return sum(1 for m in st.stats()["models"].values() if mid in m["ids"])


class Churn(threading.Thread):
    """Adds/removes other models (consumer and guest side) and takes/drops references to the shared one."""

    def __init__(self, st: ModelStore, shared: int, paths: list[Path]):
        super().__init__(name="churn")
        self.st, self.shared, self.paths = st, shared, paths
        self.images = [p.read_bytes() for p in paths]
        self.stop = threading.Event()
        self.cycles = 0
        self.samples: list[int] = []  # copies of the shared model seen at each sample
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                k = self.cycles % len(self.paths)
                cid = self.st.add(self.paths[k])  # consumer side
                g = Guest(PROXY, model_store=self.st)
                g.call("grow", 40)
                g.acquire(self.shared)  # a short-lived reference to the shared model
                g.write(BIG_AT, self.images[(k + 1) % len(self.images)])
                gid = g.call("call_realm_store_model", BIG_AT, len(self.images[(k + 1) % len(self.images)]), 0)
                assert gid > 0, gid
                assert g.call("call_realm_remove_model", gid) == 0
                assert g.call("call_realm_remove_model", self.shared) == 0
                assert g.call("call_realm_remove_model", self.shared) == Err.ERR_NO_MODEL
                g.close()
                self.st.remove(cid)
                self.samples.append(copies_of(self.st, self.shared))
                self.cycles += 1
        except BaseException as e:
            self.errors.append(e)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    return {
        "shared": make_model(d / "shared.gguf", arch="gemma3", qtype=GGMLType.Q4_K, seed=4, **kquant_dims()),
        "churn": [make_model(d / f"c{i}.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=10 + i) for i in range(3)],
    }


def run_load(path: Path, prompts: list[list[int]], n_steps: int, rounds: int, churn_paths: list[Path],
             n_ctx: int = 128):
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        expect = {}
        for k, prompt in enumerate(prompts):
            solo = WasmEngine(f, config, wasm=guest_module(), n_ctx=n_ctx, memory_budget=BUDGET, store=ModelStore())
            expect[k] = greedy(solo, prompt, n_steps)
            solo.close()
        st = ModelStore()
        mid = st.add(path)
        engines = [WasmEngine(f, config, wasm=guest_module(), n_ctx=n_ctx, memory_budget=BUDGET, store=st)
                   for _ in range(N_GUESTS)]
        results: list[list] = [[] for _ in range(N_GUESTS)]
        errors: list[BaseException] = []
        start = threading.Barrier(N_GUESTS + 1)

        def work(i: int) -> None:
            try:
                start.wait()
                for r in range(rounds):
                    results[i].append(greedy(engines[i], prompts[(i + r) % len(prompts)], n_steps))
            except BaseException as e:
                errors.append(e)

        churn = Churn(st, mid, churn_paths)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(N_GUESTS)]
        for t in threads:
            t.start()
        churn.start()
        start.wait()
        for t in threads:
            t.join()
        churn.stop.set()
        churn.join()
        try:
            assert not errors, errors
            assert not churn.errors, churn.errors
            assert churn.cycles >= 1
            assert set(churn.samples) == {1}, "the shared weights were not exactly one copy"
            for i in range(N_GUESTS):
                for r, (tokens, logits) in enumerate(results[i]):
                    e_tokens, e_logits = expect[(i + r) % len(prompts)]
                    assert tokens == e_tokens, f"guest {i} round {r}: tokens differ from its single-guest run"
                    np.testing.assert_array_equal(logits, e_logits, err_msg=f"guest {i} round {r}")
            stats = st.stats()
            assert stats["n_copies"] == 1 and stats["mapped_bytes"] == path.stat().st_size, stats
            # one holder per guest instance: each engine's main guest and its logits shards
            assert len(st.holders(mid)) == sum(eng.threads for eng in engines) >= N_GUESTS
            for eng in engines:
                assert eng.memory_size <= BUDGET
            return churn.cycles
        finally:
            for eng in engines:
                eng.close()
            st.close()


def test_eight_guests_with_store_churn(models):
    run_load(models["shared"], PROMPTS, N_STEPS, ROUNDS, models["churn"])


@pytest.mark.slow
def test_eight_guests_on_the_default_model(default_model, models):
    """One short round on the real model: 8 x 64 MiB guests, one 253 MB mapping."""
    run_load(default_model, [[2, 818, 5279, 529, 7001], [2, 651, 3823, 8864]], 1, 1, models["churn"][:1], n_ctx=32)
