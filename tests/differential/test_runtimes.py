"""wasmtime vs wasmer: the same guest gives the same bits under both runtimes.

wasm arithmetic is deterministic (no relaxed SIMD in the guest), so the logits must be bit-identical
at every position and the greedy tokens equal — on synthetic models and on the default model, whose
answer must be Paris within the 64 MiB budget. Needs both runtimes: CPython 3.10 (wasmer-python's
wheels stop there; `.ci/run` runs this in a 3.10 venv).
"""

from __future__ import annotations

import numpy as np
import pytest

from realm.config import ModelConfig
from realm.gguf import GGUFFile
from realm.host.runtime import RUNTIMES, default_guest_path, unavailable_reason
from realm.quants import GGMLType

pytest.importorskip("gguf")
_missing = {n: unavailable_reason(n) for n in RUNTIMES if unavailable_reason(n)}
if _missing:
    pytest.skip("needs both runtimes; " + "; ".join(f"{n}: {why}" for n, why in _missing.items()),
                allow_module_level=True)
if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

from compare import assert_bits_equal  # noqa: E402
from synth import differential_kwargs, make_model  # noqa: E402

from realm.engines.wasm import WasmEngine  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402

PROMPT = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]
N_GREEDY = 8


def greedy(engine, ids: list[int], n: int) -> list[int]:
    engine.reset()
    logits = engine.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = engine.eval([out[-1]])
    return out


def both(f, config, **kw) -> dict[str, WasmEngine]:
    store = ModelStore()
    return {name: WasmEngine(f, config, store=store, runtime=name, **kw) for name in RUNTIMES}


@pytest.mark.parametrize("arch,qtype", [("llama", GGMLType.Q4_K), ("gemma3", GGMLType.Q8_0)], ids=["llama-Q4_K", "gemma3-Q8_0"])
def test_synthetic_model_bits_equal(tmp_path, arch, qtype):
    path = make_model(tmp_path / "m.gguf", arch=arch, qtype=qtype, seed=3, **differential_kwargs(arch, qtype))
    with GGUFFile(path) as f:
        engines = both(f, ModelConfig.from_gguf(f), n_ctx=64, timeout=60)
        try:
            a, b = (engines[n] for n in RUNTIMES)
            assert (a.runtime, b.runtime) == RUNTIMES
            assert_bits_equal(b.eval(PROMPT, all_logits=True), a.eval(PROMPT, all_logits=True), f"{arch} prefill")
            assert greedy(a, PROMPT, N_GREEDY) == greedy(b, PROMPT, N_GREEDY)
        finally:
            for e in engines.values():
                e.close()


@pytest.mark.slow
def test_default_model_same_tokens_and_paris(default_model):
    from realm.tokenizer import Tokenizer

    with GGUFFile(default_model) as f:
        tok = Tokenizer.from_gguf(f)
        ids = tok.encode("What is the capital of France?", add_bos=True)
        engines = both(f, ModelConfig.from_gguf(f), n_ctx=128, timeout=600)
        try:
            a, b = (engines[n] for n in RUNTIMES)
            assert_bits_equal(b.eval(ids, all_logits=True), a.eval(ids, all_logits=True), "default model prefill")
            tokens = greedy(a, ids, N_GREEDY)
            assert greedy(b, ids, N_GREEDY) == tokens
            assert "Paris" in tok.decode(tokens)
            assert b.memory_size <= 64 << 20 and b.threads == 1  # wasmer: one instance within the budget
        finally:
            for e in engines.values():
                e.close()
