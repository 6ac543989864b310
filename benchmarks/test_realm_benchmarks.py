"""pytest-benchmark suite over the same measuring code as `python -m realm bench` (realm/bench.py).

Run: python -m pytest benchmarks/test_realm_benchmarks.py --benchmark-only
(not part of the test run: `testpaths` is tests/). Uses the default model.
"""

from __future__ import annotations

import numpy as np
import pytest

from realm import bench

pytest.importorskip("pytest_benchmark")

PROMPT_TOKENS, GEN_TOKENS = 64, 16


@pytest.fixture(scope="module")
def model():
    from realm.api import load

    m = load()
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompt(model):
    return bench.prompt_ids(model, PROMPT_TOKENS)


def test_memory_bandwidth(benchmark):
    result = benchmark.pedantic(bench.memory_bandwidth, kwargs={"n_bytes": 128 << 20, "repeats": 2}, rounds=3)
    benchmark.extra_info.update(result)


@pytest.mark.parametrize("engine,options", [
    ("numba", {"threads": 1}),
    ("numba", {"threads": 2}),
    ("wasm", {"memory_budget": 64 << 20}),
    ("wasm", {"memory_budget": 320 << 20}),
], ids=["numba-1t", "numba-2t", "wasm-64MiB", "wasm-resident"])
def test_generation(benchmark, model, prompt, engine, options):
    eng = model.engine(engine, n_ctx=256, **options)
    bench.time_generation(eng, prompt[:8], 2)  # warm-up: compile / first fetch

    def once():
        return bench.time_generation(eng, prompt, GEN_TOKENS)

    prefill, decode, per_token = benchmark.pedantic(once, rounds=3)
    wbytes = bench.weight_bytes_per_token(model.gguf, model.config)
    benchmark.extra_info.update(prefill_tps=len(prompt) / prefill, decode_tps=GEN_TOKENS / decode,
                                decode_gbps=GEN_TOKENS / decode * wbytes / 1e9, **per_token)
    eng.close()
    assert np.isfinite(prefill) and np.isfinite(decode)
