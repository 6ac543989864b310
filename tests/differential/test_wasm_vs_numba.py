"""The wasm guest vs the Numba engine: logits at every position, decode path, greedy tokens.

Synthetic llama / gemma3 models (tests/synth.py) in every weight type, then the default model.
Both engines read the same quantized bytes; the guest keeps its KV cache in f16 (the Numba engine in
f32) and sums in another order, so the tolerances below are looser than numba-vs-reference.
"""

from __future__ import annotations


import numpy as np
import pytest

from realm.config import ModelConfig
from realm.gguf import GGUFFile
from realm.host.runtime import default_guest_path
from realm.quants import GGMLType

pytest.importorskip("gguf")
if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)
try:
    from realm.engines.numba import NumbaEngine
except ImportError as e:  # pragma: no cover - only while the Numba engine is missing
    pytest.skip(f"realm.engines.numba is not available: {e}", allow_module_level=True)

from realm.engines.wasm import WasmEngine  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from compare import (TOLERANCE, assert_default_model_agrees, assert_greedy_equal,  # noqa: E402
                     assert_logits_close, types_for)
from synth import differential_kwargs, kquant_dims, make_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("wasm_runtime")  # under every installed runtime (conftest.py)


PROMPT = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]  # 12 > sliding window 4 of the gemma3 models
N_PREFILL = 5
N_GREEDY = 8


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synth_wasm")


@pytest.mark.parametrize("qtype", types_for("wasm-vs-numba"), ids=lambda t: t.name)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_synthetic_model(synth_dir, arch, qtype):
    path = make_model(synth_dir / f"{arch}-{qtype.name}.gguf", arch=arch, qtype=qtype, seed=int(qtype),
                      **differential_kwargs(arch, qtype))
    tol = TOLERANCE["wasm-vs-numba", qtype]
    store = ModelStore()
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        ref = NumbaEngine(f, config, n_ctx=64)
        eng = WasmEngine(f, config, n_ctx=64, store=store, timeout=60)
        try:
            expect = ref.eval(PROMPT, all_logits=True)  # (T, vocab)
            assert np.abs(expect).max() > 1.0, "degenerate synthetic model: logits all tiny"

            assert_logits_close(expect, eng.eval(PROMPT, all_logits=True), tol, f"{arch}/{qtype.name} prefill")
            assert eng.n_past == len(PROMPT)

            eng.reset()
            steps = [eng.eval(PROMPT[:N_PREFILL], all_logits=True)]
            steps += [eng.eval([t], all_logits=True) for t in PROMPT[N_PREFILL:]]
            assert_logits_close(expect, np.concatenate(steps), tol, f"{arch}/{qtype.name} prefill+decode")

            eng.reset()
            last = np.stack([eng.eval([t]) for t in PROMPT])  # decode only, last-position logits
            assert_logits_close(expect, last, tol, f"{arch}/{qtype.name} decode")

            assert_greedy_equal(ref, eng, PROMPT, N_GREEDY, tol, f"{arch}/{qtype.name}")
            s = eng.stats()
            assert s["bytes_fetched"] > 0 and s["host_calls"] > 0
            assert s["peak_memory"] <= eng.memory_budget
        finally:
            eng.close()
            ref.close()
    assert store.stats()["n_copies"] == 0  # the engine's reference went with it


def test_tiny_budget_streams_weights(synth_dir):
    """A budget far below the model size still gives the same logits (weights streamed per token)."""
    qtype = GGMLType.Q8_0
    path = make_model(synth_dir / "stream.gguf", arch="gemma3", qtype=qtype, seed=3, **kquant_dims())
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        ref = NumbaEngine(f, config, n_ctx=32)
        big = WasmEngine(f, config, n_ctx=32, store=ModelStore())
        small_budget = 3 << 20
        small = WasmEngine(f, config, n_ctx=32, store=ModelStore(), memory_budget=small_budget)
        try:
            expect = ref.eval(PROMPT, all_logits=True)
            assert_logits_close(expect, big.eval(PROMPT, all_logits=True), TOLERANCE["wasm-vs-numba", qtype], "big budget")
            assert_logits_close(expect, small.eval(PROMPT, all_logits=True), TOLERANCE["wasm-vs-numba", qtype], "small budget")
            assert small.memory_size <= small_budget
        finally:
            big.close()
            small.close()
            ref.close()


def test_sampling_in_the_guest_matches_python(synth_dir):
    from realm.sampling import SamplingParams, SplitMix64, sample

    path = make_model(synth_dir / "sample.gguf", arch="llama", qtype=GGMLType.Q8_0, seed=5)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        eng = WasmEngine(f, config, n_ctx=64, store=ModelStore())
        try:
            logits = eng.eval(PROMPT)
            for params in (SamplingParams(), SamplingParams(temperature=0.8, seed=7),
                           SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=11),
                           SamplingParams(temperature=0.7, repeat_penalty=1.3, repeat_last_n=8, seed=3)):
                rng = SplitMix64(params.seed)
                state = params.seed
                for _ in range(5):
                    expect = sample(logits, PROMPT, params, rng)
                    token, state = eng.sample(params, state)
                    assert token == expect
                    assert state == rng.state
        finally:
            eng.close()


# --- the default model ------------------------------------------------------------------------------

PROMPTS = ["What is the capital of France?", "The quick brown fox"]


@pytest.fixture(scope="module")
def default_engines(default_model):
    from realm.tokenizer import Tokenizer

    f = GGUFFile(default_model)
    config = ModelConfig.from_gguf(f)
    encode = Tokenizer.from_gguf(f).encode
    ref = NumbaEngine(f, config, n_ctx=64)
    eng = WasmEngine(f, config, n_ctx=64, timeout=600)
    yield ref, eng, encode
    eng.close()
    ref.close()
    f.close()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_default_model(default_engines, prompt):
    ref, eng, encode = default_engines
    assert_default_model_agrees(ref, eng, encode(prompt), "wasm-vs-numba", 4, f"default model {prompt!r}")
    assert eng.memory_size <= 64 << 20
